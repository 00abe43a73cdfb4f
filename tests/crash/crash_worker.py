"""A child process for crash tests: runs one scenario's workflow and may SIGKILL itself on purpose.

Usage: python crash_worker.py DB_URL SCENARIO WORKFLOW_ID WORKDIR (start|recover)

Every step appends its name to WORKDIR/effects.log, so the parent counts executions. A crash point fires
only if the file WORKDIR/crash-<point> exists, and removes it first (so it fires once), except the
poison workflow, which crashes every time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import perdure
from perdure import Perdure, step, workflow

WORKDIR = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(".")
CODE_VERSION = os.environ.get("CRASH_CODE_VERSION", "A")


def effect(name: str) -> None:
    with open(WORKDIR / "effects.log", "a") as f:
        f.write(name + "\n")
        f.flush()


def crash_point(point: str) -> None:
    marker = WORKDIR / f"crash-{point}"
    if marker.exists():
        marker.unlink()
        os.kill(os.getpid(), signal.SIGKILL)


@step
async def record(name: str) -> str:
    effect(name)
    return name.upper()


@step
async def crashing(name: str) -> str:
    effect(name)
    crash_point("in-step")
    return name.upper()


@workflow(name="crash.in_step")
async def in_step() -> list[str]:
    return [await record("one"), await crashing("two"), await record("three")]


@workflow(name="crash.between_steps")
async def between_steps() -> list[str]:
    a = await record("one")
    b = await record("two")
    crash_point("between")
    c = await record("three")
    return [a, b, c]


@workflow(name="crash.sleep")
async def sleeper(seconds: float) -> str:
    await record("before")
    (WORKDIR / "sleeping").touch()
    await perdure.sleep(seconds)
    await record("after")
    return "woke"


@workflow(name="crash.child")
async def child(n: int) -> int:
    await record(f"child-{n}-a")
    await crashing(f"child-{n}-b")
    return n * 10


@workflow(name="crash.parent")
async def parent() -> int:
    await record("parent-a")
    value = await child(4)
    await record("parent-b")
    return value + 1


@step
async def poison_step() -> None:
    effect("poison")
    os.kill(os.getpid(), signal.SIGKILL)


@workflow(name="crash.poison", max_recovery_attempts=2)
async def poison() -> None:
    await poison_step()


@workflow(name="crash.changed")
async def changed() -> str:
    await record("first")
    if CODE_VERSION == "A":
        await record("old-path")
    else:
        await record("new-path")
    crash_point("changed")
    return "done"


@workflow(name="crash.once")
async def once() -> str:
    effect("once-body")
    await record("once-step")
    return "ran"


SCENARIOS = {
    "in_step": (in_step, ()),
    "between_steps": (between_steps, ()),
    "sleep": (sleeper, (1.5,)),
    "parent": (parent, ()),
    "poison": (poison, ()),
    "changed": (changed, ()),
    "once": (once, ()),
}


async def main() -> None:
    db_url, scenario, workflow_id, _, mode = sys.argv[1:6]
    fn, args = SCENARIOS[scenario]
    version = os.environ.get("CRASH_APP_VERSION") or None
    async with Perdure(db_url, maintenance_interval=0.05, app_version=version) as app:
        if mode == "launch-only":
            # Launching ran recovery: whatever this executor may claim, it has claimed by now.
            print(json.dumps({"status": "LAUNCHED"}), flush=True)
            return
        if mode == "start":
            if scenario == "once":
                # Line the two processes up so their starts really race.
                (WORKDIR / f"ready-{os.getpid()}").touch()
                while len(list(WORKDIR.glob("ready-*"))) < 2:
                    await asyncio.sleep(0.001)
            handle = await app.start(fn, *args, workflow_id=workflow_id)
        else:
            handle = await app.retrieve(workflow_id)
        try:
            result = await handle.result(timeout=30)
            out = {"status": "SUCCESS", "result": result}
        except Exception as exc:
            out = {"status": "ERROR", "error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
