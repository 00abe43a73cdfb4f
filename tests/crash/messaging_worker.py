"""A child process for messaging crash tests: runs one workflow and may SIGKILL itself on purpose.

Usage: python messaging_worker.py DB_URL SCENARIO WORKFLOW_ID WORKDIR (start|recover)

Every effect is appended to WORKDIR/effects.log so the parent counts executions. A crash point fires only
if the file WORKDIR/crash-<point> exists, and removes it first (so it fires once).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import perdure
from perdure import Perdure, step, workflow

WORKDIR = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(".")
STREAM_VALUES = 1000
CHUNK = 10


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
async def record(name: str) -> None:
    effect(name)


@workflow(name="msg.inbox")
async def inbox(timeout: float) -> list[str]:
    got = []
    for _ in range(2):
        message = await perdure.recv("mail", timeout=timeout)
        await record(f"got:{message}")
        got.append(message)
    return got


@workflow(name="msg.short_wait")
async def short_wait(timeout: float) -> str | None:
    message = await perdure.recv(timeout=timeout)
    effect(f"woke:{time.time_ns() // 1_000_000}")
    return message


@step
async def emit(chunk: int) -> int:
    """Writes one chunk of the stream from inside a step (the crash hits in the middle of one)."""
    for i in range(chunk * CHUNK, (chunk + 1) * CHUNK):
        await perdure.write_stream("numbers", i)
        if i == STREAM_VALUES // 2 + 5:
            crash_point("stream-half")
    return chunk


@workflow(name="msg.stream")
async def numbers() -> int:
    for chunk in range(STREAM_VALUES // CHUNK):
        if chunk % 2 == 0:
            await emit(chunk)
        else:  # odd chunks are written by the workflow body itself
            for i in range(chunk * CHUNK, (chunk + 1) * CHUNK):
                await perdure.write_stream("numbers", i)
    await perdure.close_stream("numbers")
    return STREAM_VALUES


SCENARIOS = {
    "inbox": (inbox, (120.0,)),
    "short_wait": (short_wait, (3.0,)),
    "stream": (numbers, ()),
}


async def main() -> None:
    db_url, scenario, workflow_id, _, mode = sys.argv[1:6]
    fn, args = SCENARIOS[scenario]
    async with Perdure(db_url, maintenance_interval=0.05) as app:
        if mode == "start":
            handle = await app.start(fn, *args, workflow_id=workflow_id)
        else:
            handle = await app.retrieve(workflow_id)
        try:
            out = {"status": "SUCCESS", "result": await handle.result(timeout=60)}
        except Exception as exc:
            out = {"status": "ERROR", "error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
