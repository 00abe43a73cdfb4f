"""`perdure demo`: a durable AI agent survives `kill -9` of its process and resumes where it stopped.

The seed's geography agent, `Agent(model, instructions="You're an expert in geography.", name="geography")`
with one tool, `get_capital(country)`, wrapped in `DurableAgent` and durable on SQLite.

The parent (`run_demo`) starts a child process (`python -m perdure.demo child ...`) that runs
`durable.run("What is the capital of Mexico?", workflow_id=...)`. The model calls the tool, then answers from
its result. At the start of the second model request, so right after the first model turn and the tool call
were checkpointed, the child SIGKILLs itself (first run only, armed by a marker file next to the database).
The parent then starts a second child, which only launches the runtime: recovery finds the PENDING run of the
dead process and resumes it. The checkpointed model turn and tool call are replayed, not run again; every real
model request and tool call appends a line to a side-effect log, so the parent shows exactly what ran where.

By default the model is a scripted `FunctionModel` (offline, no key, no network), on a fresh temporary SQLite
database, a couple of seconds in all. `perdure demo --model openai:gpt-5` (any pydantic-ai model string) runs
the same agent on that model instead; the crash is at the same point, the start of the request that follows
the tool's result.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __name__ == "__main__":  # pragma: no cover - the child process
    # Run the code of the importable module `perdure.demo`, not a `__main__` copy.
    from perdure.demo import main as _main

    raise SystemExit(_main(sys.argv[1:]))

from .client import Client
from .errors import PerdureError
from .runtime import Perdure
from .store.base import now_ms
from .workflows import StepInfo, WorkflowInfo

if TYPE_CHECKING:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse
    from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
    from pydantic_ai.models.function import AgentInfo
    from pydantic_ai.settings import ModelSettings
    from pydantic_ai.tools import RunContext
    from rich.console import Console

    from .pydantic_ai import DurableAgent

AGENT_NAME = "geography"
WORKFLOW_NAME = f"{AGENT_NAME}.run"
INSTRUCTIONS = "You're an expert in geography."
PROMPT = "What is the capital of Mexico?"
TOOL_NAME = "get_capital"
MODEL_STEP = f"{AGENT_NAME}__model.request"
TOOL_STEP = f"{AGENT_NAME}__function_toolset__<agent>.call_tool:{TOOL_NAME}"
MODEL_ENV = "PERDURE_DEMO_MODEL"
"""The child reads the `--model` string from here (unset: the scripted model)."""
EFFECTS_FILE = "demo-effects.log"
CRASH_MARKER = "demo-crash-armed"
CHILD_TIMEOUT = 60.0
REAL_MODEL_TIMEOUT = 300.0
"""A real model's requests can take a while; the offline demo takes about a second per child."""

ATLAS: dict[str, dict[str, Any]] = {
    "mexico": {"country": "Mexico", "capital": "Mexico City", "also_known_as": ["Ciudad de México", "CDMX"]},
    "france": {"country": "France", "capital": "Paris", "also_known_as": []},
    "japan": {"country": "Japan", "capital": "Tokyo", "also_known_as": ["東京"]},
    "peru": {"country": "Peru", "capital": "Lima", "also_known_as": ["Ciudad de los Reyes"]},
}


class DemoFailed(PerdureError):
    """The demo did not go as scripted (a child failed, or the run did not finish)."""


# -- the agent (runs in the child processes) ------------------------------------------------------------

_workdir: Path | None = None
"""Where the side-effect log and the crash marker live; set by the child process."""


def _effect(what: str, detail: str) -> None:
    """A visible side effect: one line per real execution of a model request or a tool call."""
    if _workdir is None:
        return
    line = json.dumps({"pid": os.getpid(), "step": what, "detail": detail, "at": time.time()}, ensure_ascii=False)
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


def get_capital(country: str) -> dict[str, Any]:
    """Look up the capital of a country, and the other names it goes by."""
    facts = ATLAS.get(country.strip().lower(), {"country": country, "capital": "unknown", "also_known_as": []})
    _effect(TOOL_NAME, f"{TOOL_NAME}({country!r}) -> {facts['capital']}")
    return facts


def scripted_geographer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """The offline model: turn 1 calls `get_capital` for the country asked about; turn 2 answers from its result."""
    from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart, UserPromptPart

    results: list[Any] = [
        p.content for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)
    ]
    if not results:
        question = " ".join(
            p.content
            for m in messages
            if isinstance(m, ModelRequest)
            for p in m.parts
            if isinstance(p, UserPromptPart) and isinstance(p.content, str)
        )
        match = re.search(r"capital of ([\w .'-]+?)\s*\??$", question, re.IGNORECASE)
        country = match.group(1) if match else "Mexico"
        return ModelResponse(parts=[ToolCallPart(TOOL_NAME, {"country": country}, tool_call_id="call-1")])
    facts = results[-1]
    if not isinstance(facts, dict) or facts.get("capital", "unknown") == "unknown":
        return ModelResponse(parts=[TextPart("I could not find that capital.")])
    names = ", ".join(str(n) for n in facts.get("also_known_as") or [])
    return ModelResponse(parts=[TextPart(f"{facts['capital']} ({names})" if names else str(facts["capital"]))])


def _turn(messages: list[ModelMessage]) -> int:
    from pydantic_ai.messages import ModelResponse

    return 1 + sum(isinstance(m, ModelResponse) for m in messages)


def _before_request(messages: list[ModelMessage]) -> None:
    """The crash point: the start of the first model request that carries a tool's result (first run only).

    A model request is a step; killed at its start, the earlier model turn and the tool call are checkpointed.
    """
    from pydantic_ai.messages import ModelRequest, ToolReturnPart

    last = messages[-1] if messages else None
    if isinstance(last, ModelRequest) and any(isinstance(p, ToolReturnPart) for p in last.parts):
        _crash_once()


def _describe_response(response: ModelResponse) -> str:
    from pydantic_ai.messages import TextPart, ToolCallPart

    calls = [f"{p.tool_name}({_short_args(p.args_as_dict())})" for p in response.parts if isinstance(p, ToolCallPart)]
    if calls:
        return "calls " + ", ".join(calls)
    text = "".join(p.content for p in response.parts if isinstance(p, TextPart))
    return f"answers {_clip(text)!r}"


def _short_args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _clip(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def build_agent(model: str | None = None) -> DurableAgent[None, str]:
    """The seed's agent, on the scripted model (`model=None`) or a pydantic-ai model string, in `DurableAgent`.

    The model is wrapped so every real request is logged as a side effect and the first request after a
    tool result crashes the process once.
    """
    from pydantic_ai import Agent
    from pydantic_ai.models.function import FunctionModel
    from pydantic_ai.models.wrapper import WrapperModel

    from .pydantic_ai import DurableAgent

    class DemoModel(WrapperModel):
        async def request(
            self,
            messages: list[ModelMessage],
            model_settings: ModelSettings | None,
            model_request_parameters: ModelRequestParameters,
        ) -> ModelResponse:
            _before_request(messages)
            response = await super().request(messages, model_settings, model_request_parameters)
            _effect(f"model turn {_turn(messages)}", _describe_response(response))
            return response

        @asynccontextmanager
        async def request_stream(
            self,
            messages: list[ModelMessage],
            model_settings: ModelSettings | None,
            model_request_parameters: ModelRequestParameters,
            run_context: RunContext[Any] | None = None,
        ) -> AsyncIterator[StreamedResponse]:
            _before_request(messages)
            async with super().request_stream(
                messages, model_settings, model_request_parameters, run_context
            ) as stream:
                yield stream
            _effect(f"model turn {_turn(messages)}", _describe_response(stream.get()))

    inner: Model | str = FunctionModel(scripted_geographer) if model is None else model
    agent: Agent[None, str] = Agent(DemoModel(inner), instructions=INSTRUCTIONS, name=AGENT_NAME, tools=[get_capital])
    return DurableAgent(agent)


async def _child(database_url: str, workflow_id: str, mode: str, model: str | None) -> str:
    durable = build_agent(model)  # before the runtime launches, so recovery finds the agent's workflow
    async with Perdure(database_url, maintenance_interval=0.05):
        if mode == "start":
            result = await durable.run(PROMPT, workflow_id=workflow_id)
        else:
            # Nothing is started here: launching the runtime recovered the dead process's PENDING run.
            result = await durable.result(workflow_id, timeout=REAL_MODEL_TIMEOUT)
        return result.output


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m perdure.demo child [--database-url URL] --workdir DIR --workflow-id ID --mode start|recover`.

    The model string, if any, comes from `$PERDURE_DEMO_MODEL` (unset: the scripted offline model).
    """
    global _workdir
    parser = argparse.ArgumentParser(prog="python -m perdure.demo")
    sub = parser.add_subparsers(dest="command", required=True)
    child = sub.add_parser("child", help="run the demo agent (used by `perdure demo`)")
    child.add_argument("--database-url", default=None, help="default: $PERDURE_DATABASE_URL")
    child.add_argument("--workdir", required=True)
    child.add_argument("--workflow-id", required=True)
    child.add_argument("--mode", choices=("start", "recover"), required=True)
    args = parser.parse_args(argv)
    _workdir = Path(args.workdir)
    url = args.database_url or os.environ.get("PERDURE_DATABASE_URL")
    if not url:
        parser.error("--database-url or $PERDURE_DATABASE_URL is required")
    output = asyncio.run(_child(url, args.workflow_id, args.mode, os.environ.get(MODEL_ENV) or None))
    print(json.dumps(output, ensure_ascii=False))
    return 0


# -- the parent: orchestrate, then explain ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Effect:
    pid: int
    step: str
    """`model turn N` for a model request, the tool's name for a tool call."""
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


def check_model(model: str) -> None:
    """Fail in one line, before any child starts, if pydantic-ai cannot build this model (unknown name,
    provider package not installed, API key not set)."""
    from pydantic_ai.models import infer_model

    try:
        infer_model(model)
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if reason.startswith("Unknown model"):
            reason += " (pydantic-ai model strings look like 'openai:gpt-5' or 'anthropic:claude-sonnet-4-5')"
        raise DemoFailed(f"cannot use model {model!r}: {reason}") from None


def _require_pydantic_ai() -> None:
    if importlib.util.find_spec("pydantic_ai") is None:
        raise DemoFailed("the demo runs a Pydantic AI agent: pip install 'perdure[pydantic-ai]'")


def _spawn(database_url: str, workdir: Path, workflow_id: str, mode: str, model: str | None) -> subprocess.Popen[str]:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PERDURE_DATABASE_URL"] = database_url  # not on the command line, where `ps` shows a password
    env.pop(MODEL_ENV, None)
    if model is not None:
        env[MODEL_ENV] = model
    cmd = [sys.executable, "-m", "perdure.demo", "child", "--workdir", str(workdir)]
    cmd += ["--workflow-id", workflow_id, "--mode", mode]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait(proc: subprocess.Popen[str], what: str, timeout: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise DemoFailed(f"{what} did not finish within {timeout:g} s") from None
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


def _step_labels(steps: Sequence[StepInfo]) -> list[str]:
    """The side-effect label of each step: `model turn N` for the Nth model request, the tool's name for a tool."""
    labels, turn = [], 0
    for s in steps:
        if s.name.endswith("model.request"):
            turn += 1
            labels.append(f"model turn {turn}")
        elif ".call_tool:" in s.name:
            labels.append(s.name.rsplit(":", 1)[1])
        else:
            labels.append("")
    return labels


def _step_summary(s: StepInfo) -> str:
    """What a step's checkpoint holds, in a few words."""
    try:
        data = json.loads(s.output) if s.output else None
    except ValueError:
        return _clip(s.output or "-", 50)
    if isinstance(data, dict) and isinstance(data.get("parts"), list):  # a model response
        calls = [p for p in data["parts"] if isinstance(p, dict) and p.get("part_kind") == "tool-call"]
        if calls:
            return "calls " + ", ".join(
                f"{c.get('tool_name')}({_short_args(c['args']) if isinstance(c.get('args'), dict) else ''})"
                for c in calls
            )
        text = "".join(str(p.get("content", "")) for p in data["parts"] if p.get("part_kind") == "text")
        return f"answers {_clip(text, 45)!r}"
    if isinstance(data, dict) and isinstance(data.get("result"), dict) and "result" in data["result"]:  # a tool
        return "returned " + _clip(json.dumps(data["result"]["result"], ensure_ascii=False, separators=(",", ":")))
    return _clip(json.dumps(data, ensure_ascii=False), 50)


def run_demo(
    *,
    database_url: str | None = None,
    keep: bool = False,
    model: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the crash-and-recover agent demo, printing what happens. Returns the run's stored outcome."""
    from rich.console import Console

    from .cli import display_url

    console = console or Console(highlight=False)
    _require_pydantic_ai()
    if model is not None:
        check_model(model)
    workdir = Path(tempfile.mkdtemp(prefix="perdure-demo-"))
    url = database_url or f"sqlite:///{workdir / 'demo.sqlite'}"
    try:
        return _run(console, url, workdir, display_url(url), model)
    finally:
        if keep:
            console.print(f"\nkept the demo folder (database, side-effect log): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(console: Console, url: str, workdir: Path, shown_url: str, model: str | None) -> dict[str, Any]:
    from rich.markup import escape

    began = time.monotonic()
    asyncio.run(_prepare(url))  # a bad URL fails here, in one line, before any child starts
    timeout = CHILD_TIMEOUT if model is None else REAL_MODEL_TIMEOUT
    workflow_id = f"{AGENT_NAME}-{uuid.uuid4().hex[:8]}"
    console.print("[bold]perdure demo[/]: a durable AI agent survives kill -9 of its process\n")
    console.print(f"database  {escape(shown_url)}")
    console.print(
        escape(
            f"agent     DurableAgent(Agent(model, instructions={INSTRUCTIONS!r}, name={AGENT_NAME!r}, "
            f"tools=[{TOOL_NAME}]))"
        )
    )
    if model is None:
        console.print(
            f"model     scripted FunctionModel, offline: turn 1 calls {TOOL_NAME}, turn 2 answers from its result "
            "(--model openai:gpt-5 for a real one)"
        )
    else:
        console.print(f"model     {escape(model)}")
    console.print(f"run       durable.run({PROMPT!r}, workflow_id={workflow_id!r})\n")

    # -- run 1: crash at the start of the model request that follows the tool call ------------------------
    (workdir / CRASH_MARKER).touch()
    first = _spawn(url, workdir, workflow_id, "start", model)
    console.print(
        f"[bold]run 1[/]  child process {first.pid} starts the run; it will crash at the start of the second "
        "model request, right after the tool call was checkpointed"
    )
    code, err = _wait(first, "the first child process", timeout)
    effects = read_effects(workdir)
    for e in effects:
        console.print(f"       [green]✓[/] {e.step:<14} executed  ({escape(e.detail)})")
    if code != -signal.SIGKILL:
        if code == 0 and not any(e.step == TOOL_NAME for e in effects):
            raise DemoFailed(
                f"the model answered without calling {TOOL_NAME}, so there was no tool step to crash after; "
                "run the demo again, or try another model"
            )
        raise DemoFailed(
            f"the first child process was expected to be killed, but ended with {_signal_name(code)}: {_last_line(err)}"
        )
    console.print(
        f"       [red]✗ process {first.pid} crashed: killed by {_signal_name(code)} (exit code {code}), "
        "at the start of the next model request[/]"
    )
    info, steps = asyncio.run(_inspect(url, workflow_id))
    console.print(
        f"       database: run is [yellow]{info.status.value}[/], {len(steps)} step(s) checkpointed: "
        + ", ".join(escape(s.name) for s in steps)
        + "\n"
    )

    # -- run 2: a new process launches the runtime; recovery resumes the run --------------------------------
    restarted_at = now_ms()
    second = _spawn(url, workdir, workflow_id, "recover", model)
    console.print(
        f"[bold]run 2[/]  child process {second.pid} launches the runtime (starts nothing): "
        "recovery finds the dead process's PENDING run and resumes it"
    )
    code, err = _wait(second, "the second child process", timeout)
    if code != 0:
        raise DemoFailed(f"the recovering child process ended with {_signal_name(code)}: {_last_line(err)}")
    info, steps = asyncio.run(_inspect(url, workflow_id))
    effects = read_effects(workdir)
    for e in effects:
        if e.pid == second.pid:
            console.print(f"       [green]✓[/] {e.step:<14} executed  ({escape(e.detail)})")
    console.print(f"       [green]✓ process {second.pid} finished the run: {info.status.value}[/]\n")

    _timeline(console, info, steps, effects, (first.pid, second.pid), restarted_at)
    stored = json.loads(info.output) if info.output else None
    usage = stored.get("usage") if isinstance(stored, dict) else None
    usage_text = ""
    if isinstance(usage, dict):
        tokens = int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)
        usage_text = (
            f"; usage {usage.get('requests', 0)} model request(s), {usage.get('tool_calls', 0)} tool call(s), "
            f"{tokens} tokens"
        )
    console.print(f"recovered {info.recovery_attempts} time(s); status [green]{info.status.value}[/]{usage_text}")
    if info.status.value != "SUCCESS" or not isinstance(stored, dict):
        raise DemoFailed(f"run {workflow_id!r} ended {info.status.value}")
    console.print(f"\n[bold]{escape(PROMPT)}[/]")
    console.print(f"[bold green]{escape(str(stored.get('output')))}[/]\n")
    console.print(f"[dim]demo took {time.monotonic() - began:.1f} s[/]")
    return {"workflow_id": workflow_id, "output": stored.get("output"), "usage": usage}


def _timeline(
    console: Console,
    info: WorkflowInfo,
    steps: Sequence[StepInfo],
    effects: Sequence[Effect],
    pids: tuple[int, int],
    restarted_at: int,
) -> None:
    """The step timeline from `list_steps`, each step matched with its side effects, then the verdict."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="step timeline (from the checkpoints: perdure workflows steps)", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True, min_width=1)
    table.add_column("step, and what its checkpoint holds", overflow="ellipsis")
    table.add_column(f"run 1 (pid {pids[0]})", no_wrap=True)
    table.add_column(f"run 2 (pid {pids[1]})", no_wrap=True)
    table.add_column("ran", justify="right", no_wrap=True, min_width=3)
    labels = _step_labels(steps)
    width = max((len(s.name) for s in steps), default=50)
    expected = {label: labels.count(label) for label in labels if label}
    seen: dict[str, int] = {}
    before: list[str] = []
    after: list[str] = []
    for s, label in zip(steps, labels, strict=True):
        done_ms = int(s.completed_at.timestamp() * 1000) if s.completed_at else restarted_at
        if done_ms < restarted_at:
            run1, run2 = "[green]executed[/]", "[cyan]replayed[/]"
            before.append(label)
        else:
            if not after:
                table.add_section()  # a line between what was checkpointed before and after the crash
            run1 = "[red]killed at start[/]" if not after else "[dim]not reached[/]"
            run2 = "[green]executed[/]"
            after.append(label)
        ran = sum(1 for e in effects if e.step == label)
        ordinal = seen.get(label, 0)
        seen[label] = ordinal + 1
        if not label:
            count = "-"
        elif expected[label] == 1:
            count = str(ran)
        else:  # the same tool called several times: the Nth step matches the Nth logged call
            count = "1" if ordinal < ran else "0"
        what = _clip(f"{label.removeprefix('model ')}: {_step_summary(s)}" if label else _step_summary(s), width)
        table.add_row(str(s.step_id), f"{escape(s.name)}\n[dim]{escape(what)}[/]", run1, run2, count)
    console.print(table)
    console.print("[dim]replayed: its recorded result was returned from the checkpoint; it did not run again[/]")

    counts = {label: sum(1 for e in effects if e.step == label) for label in expected}
    unexpected = sorted({e.step for e in effects} - set(expected))
    shown = ", ".join(f"{k} x{n}" for k, n in counts.items())
    console.print(f"side effects (one log line per real model request or tool call): {escape(shown)}")
    first = list(dict.fromkeys(label for label in before if label))
    later = list(dict.fromkeys(label for label in after if label))
    if counts == expected and not unexpected:
        console.print(
            f"[bold green]nothing ran twice:[/] {' and '.join(first) or 'no step'} ran once, before the crash, and "
            f"{'were' if len(first) > 1 else 'was'} replayed from the checkpoints after the restart; only "
            f"{', '.join(later) or 'nothing'} ran after the restart."
        )
    else:
        console.print(
            f"[bold red]a model request or tool call ran more than once[/] {escape(', '.join(unexpected))}".rstrip()
        )
