"""`perdure demo`: a durable workflow survives `kill -9` of its process and resumes where it stopped.

The parent (`run_demo`) starts a child process (`python -m perdure.demo child ...`) that runs the "research
trip" workflow: fetch the weather, book a hotel, wait durably for the confirmation, write a summary. Right
after the booking is checkpointed, the child SIGKILLs itself (first run only, armed by a marker file next to
the database). The parent then starts a second child, which only launches the runtime: recovery finds the
PENDING workflow of the dead process and resumes it. Completed steps are replayed from their checkpoints,
not run again; every real execution appends a line to a side-effect log, so the parent shows exactly what
ran where.

Offline, no network, a fresh temporary SQLite database by default, a couple of seconds in all.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __name__ == "__main__":  # pragma: no cover - the child process
    # Run the code of the importable module `perdure.demo`, not a `__main__` copy, so the workflow is
    # registered once, under the name stored in the database.
    from perdure.demo import main as _main

    raise SystemExit(_main(sys.argv[1:]))

from .client import Client
from .errors import PerdureError
from .messaging import sleep
from .runtime import Perdure
from .store.base import now_ms
from .workflows import StepInfo, WorkflowInfo, step, workflow

if TYPE_CHECKING:
    from rich.console import Console

WORKFLOW_NAME = "perdure.demo.research_trip"
EFFECTS_FILE = "demo-effects.log"
CRASH_MARKER = "demo-crash-armed"
CONFIRMATION_WAIT = 0.2
CHILD_TIMEOUT = 60.0
EFFECT_STEPS = ("fetch_weather", "book_hotel", "summarize")


class DemoFailed(PerdureError):
    """The demo did not go as scripted (a child failed, or the workflow did not finish)."""


# -- the workflow (runs in the child processes) -----------------------------------------------------------

_workdir: Path | None = None
"""Where the side-effect log and the crash marker live; set by the child process."""


def _effect(step_name: str, detail: str) -> None:
    """A visible side effect: one line per real execution of a step."""
    if _workdir is None:
        return
    line = json.dumps({"pid": os.getpid(), "step": step_name, "detail": detail, "at": time.time()})
    with open(_workdir / EFFECTS_FILE, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _crash_once() -> None:
    """SIGKILL this process if the marker is armed, disarming it first: the first run crashes, later ones not."""
    if _workdir is None:
        return
    marker = _workdir / CRASH_MARKER
    if marker.exists():
        marker.unlink()
        os.kill(os.getpid(), signal.SIGKILL)


@step
async def fetch_weather(city: str) -> str:
    skies = ("sunny", "partly cloudy", "light rain", "windy")
    digest = hashlib.sha256(city.encode()).digest()
    forecast = f"{skies[digest[0] % len(skies)]}, {14 + digest[1] % 15} °C"
    _effect("fetch_weather", forecast)
    return forecast


@step
async def book_hotel(city: str) -> str:
    reference = f"BK-{uuid.uuid4().hex[:6].upper()}"  # random: a replay must return the recorded one
    _effect("book_hotel", reference)
    return reference


@step
async def summarize(city: str, forecast: str, booking: str) -> str:
    summary = f"Trip to {city}: {forecast}; hotel booked under {booking}."
    _effect("summarize", summary)
    return summary


@workflow(name=WORKFLOW_NAME)
async def research_trip(city: str) -> dict[str, str]:
    forecast = await fetch_weather(city)
    booking = await book_hotel(city)
    _crash_once()  # first run only: killed right after step 2 was checkpointed
    await sleep(CONFIRMATION_WAIT)  # durable wait for the hotel's confirmation
    summary = await summarize(city, forecast, booking)
    return {"city": city, "forecast": forecast, "booking": booking, "summary": summary}


async def _child(database_url: str, workflow_id: str, city: str, mode: str) -> Any:
    async with Perdure(database_url, maintenance_interval=0.05) as app:
        if mode == "start":
            handle = await app.start(research_trip, city, workflow_id=workflow_id)
        else:
            # Nothing is started here: launching the runtime recovered the dead process's PENDING workflow.
            handle = await app.retrieve(workflow_id)
        return await handle.result(timeout=CHILD_TIMEOUT / 2)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m perdure.demo child [--database-url URL] --workdir DIR --workflow-id ID --mode start|recover`."""
    global _workdir
    parser = argparse.ArgumentParser(prog="python -m perdure.demo")
    sub = parser.add_subparsers(dest="command", required=True)
    child = sub.add_parser("child", help="run the demo workflow (used by `perdure demo`)")
    child.add_argument("--database-url", default=None, help="default: $PERDURE_DATABASE_URL")
    child.add_argument("--workdir", required=True)
    child.add_argument("--workflow-id", required=True)
    child.add_argument("--city", default="Lisbon")
    child.add_argument("--mode", choices=("start", "recover"), required=True)
    args = parser.parse_args(argv)
    _workdir = Path(args.workdir)
    url = args.database_url or os.environ.get("PERDURE_DATABASE_URL")
    if not url:
        parser.error("--database-url or $PERDURE_DATABASE_URL is required")
    result = asyncio.run(_child(url, args.workflow_id, args.city, args.mode))
    print(json.dumps(result))
    return 0


# -- the parent: orchestrate, then explain ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Effect:
    pid: int
    step: str
    detail: str


def read_effects(workdir: Path) -> list[Effect]:
    path = workdir / EFFECTS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            raw = json.loads(line)
            out.append(Effect(int(raw["pid"]), str(raw["step"]), str(raw["detail"])))
    return out


def _spawn(database_url: str, workdir: Path, workflow_id: str, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PERDURE_DATABASE_URL"] = database_url  # not on the command line, where `ps` shows a password
    cmd = [sys.executable, "-m", "perdure.demo", "child", "--workdir", str(workdir)]
    cmd += ["--workflow-id", workflow_id, "--mode", mode]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait(proc: subprocess.Popen[str], what: str) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise DemoFailed(f"{what} did not finish within {CHILD_TIMEOUT:g} s") from None
    return proc.returncode, err


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _signal_name(returncode: int) -> str:
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


async def _prepare(database_url: str) -> None:
    async with Client(database_url):
        pass  # creates or migrates the schema


async def _inspect(database_url: str, workflow_id: str) -> tuple[WorkflowInfo, list[StepInfo]]:
    async with Client(database_url) as client:
        return await client.get_workflow(workflow_id), await client.list_steps(workflow_id)


def run_demo(*, database_url: str | None = None, keep: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run the crash-and-recover demo, printing what happens. Returns the workflow's result."""
    from rich.console import Console

    from .cli import display_url

    console = console or Console(highlight=False)
    workdir = Path(tempfile.mkdtemp(prefix="perdure-demo-"))
    url = database_url or f"sqlite:///{workdir / 'demo.sqlite'}"
    try:
        return _run(console, url, workdir, display_url(url))
    finally:
        if keep:
            console.print(f"\nkept the demo folder (database, side-effect log): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(console: Console, url: str, workdir: Path, shown_url: str) -> dict[str, Any]:
    from rich.markup import escape
    from rich.table import Table

    began = time.monotonic()
    asyncio.run(_prepare(url))  # a bad URL fails here, in one line, before any child starts
    workflow_id = f"trip-{uuid.uuid4().hex[:8]}"
    console.print("[bold]perdure demo[/]: a durable workflow survives kill -9 of its process\n")
    console.print(f"database  {escape(shown_url)}")
    console.print(
        f"workflow  {WORKFLOW_NAME}({'Lisbon'!r}), id {workflow_id}: fetch_weather -> book_hotel -> "
        f"durable sleep {CONFIRMATION_WAIT:g} s -> summarize\n"
    )

    # -- run 1: crash right after step 2 ------------------------------------------------------------------
    (workdir / CRASH_MARKER).touch()
    first = _spawn(url, workdir, workflow_id, "start")
    console.print(f"[bold]run 1[/]  child process {first.pid} starts the workflow; it will crash right after step 2")
    code, err = _wait(first, "the first child process")
    if code != -signal.SIGKILL:
        raise DemoFailed(
            f"the first child process was expected to be killed, but ended with {_signal_name(code)}: {_last_line(err)}"
        )
    for e in read_effects(workdir):
        console.print(f"       [green]✓[/] {e.step:<14} executed  ({escape(e.detail)})")
    console.print(f"       [red]✗ process {first.pid} crashed: killed by {_signal_name(code)} (exit code {code})[/]")
    info, steps = asyncio.run(_inspect(url, workflow_id))
    console.print(
        f"       database: workflow is [yellow]{info.status.value}[/], {len(steps)} step(s) checkpointed: "
        + ", ".join(s.name for s in steps)
        + "\n"
    )

    # -- run 2: a new process launches the runtime; recovery resumes the workflow ------------------------
    restarted_at = now_ms()
    second = _spawn(url, workdir, workflow_id, "recover")
    console.print(
        f"[bold]run 2[/]  child process {second.pid} launches the runtime (starts nothing): "
        "recovery finds the dead process's PENDING workflow and resumes it"
    )
    code, err = _wait(second, "the second child process")
    if code != 0:
        raise DemoFailed(f"the recovering child process ended with {_signal_name(code)}: {_last_line(err)}")
    info, steps = asyncio.run(_inspect(url, workflow_id))
    effects = read_effects(workdir)
    for e in effects:
        if e.pid == second.pid:
            console.print(f"       [green]✓[/] {e.step:<14} executed  ({escape(e.detail)})")
    console.print(f"       [green]✓ process {second.pid} finished the workflow: {info.status.value}[/]\n")

    # -- the timeline --------------------------------------------------------------------------------------
    table = Table(title="step timeline (from the checkpoints: perdure workflows steps)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("step")
    table.add_column("checkpointed", justify="right")
    table.add_column(f"run 1 (pid {first.pid})")
    table.add_column(f"run 2 (pid {second.pid})")
    table.add_column("side effects", justify="right")
    origin = info.created_at
    crash_drawn = False
    for s in steps:
        done_ms = int(s.completed_at.timestamp() * 1000) if s.completed_at else restarted_at
        in_first = done_ms < restarted_at
        ran = [e for e in effects if e.step == s.name]
        counted = s.name in EFFECT_STEPS
        if not in_first and not crash_drawn:
            table.add_section()  # a line between what was checkpointed before and after the crash
            crash_drawn = True
        run1 = "[green]executed[/]" if in_first else "[red]not reached (crash)[/]"
        if any(e.pid == second.pid for e in ran) or not in_first:
            run2 = "[green]executed[/]"
        else:
            run2 = "[cyan]replayed from checkpoint[/]"
        at = f"+{(s.completed_at - origin).total_seconds():.3f} s" if s.completed_at else "-"
        table.add_row(str(s.step_id), s.name, at, run1, run2, f"{len(ran)}" if counted else "-")
    console.print(table)

    counts = {name: sum(1 for e in effects if e.step == name) for name in EFFECT_STEPS}
    console.print("side effects: " + ", ".join(f"{name} x{n}" for name, n in counts.items()))
    if all(n == 1 for n in counts.values()):
        console.print(
            "[bold green]no step ran twice:[/] fetch_weather and book_hotel ran once, before the crash, and were "
            "replayed from their checkpoints after the restart; summarize ran after the restart."
        )
    else:
        console.print("[bold red]a step ran more than once[/]")
    output = json.loads(info.output) if info.output else None
    console.print(f"recovered {info.recovery_attempts} time(s); status [green]{info.status.value}[/]; result:")
    console.print_json(data=output)
    booking = output.get("booking") if isinstance(output, dict) else None
    if booking:
        console.print(
            f"the booking reference {booking} is random, yet the summary written after the restart uses the one "
            "from before the crash: the checkpoint was replayed, the hotel was not booked twice."
        )
    console.print(f"[dim]demo took {time.monotonic() - began:.1f} s[/]")
    if info.status.value != "SUCCESS" or not isinstance(output, dict):
        raise DemoFailed(f"workflow {workflow_id!r} ended {info.status.value}")
    return output
