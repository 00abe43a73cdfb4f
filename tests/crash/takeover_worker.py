"""A worker process for multi-process takeover tests.

Usage: python takeover_worker.py DB_URL WORKDIR NAME LEASE MODE
  MODE many  - start job-0..job-99 (the same ids in every worker), wait for all their results
  MODE stale - start the workflow "stale-1", wait for its result
  MODE idle  - run the runtime (takes work over) until WORKDIR/stop exists
Steps append to WORKDIR/effects.log; step b waits for WORKDIR/gate.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

from perdure import Perdure, step, workflow

DB_URL, WORKDIR, NAME, LEASE, MODE = sys.argv[1:6]
DIR = Path(WORKDIR)


def effect(text: str) -> None:
    with open(DIR / "effects.log", "a") as f:
        f.write(text + "\n")


async def gate() -> None:
    while not (DIR / "gate").exists():
        await asyncio.sleep(0.02)


@step
async def a(i: int) -> int:
    effect(f"a-{i}")
    return i


@step
async def b(i: int) -> str:
    await gate()
    effect(f"b-{i}-{NAME}")
    return f"b-by-{NAME}"


@step
async def c(i: int) -> int:
    effect(f"c-{i}")
    return i


@workflow(name="takeover.job")
async def job(i: int) -> str:
    await a(i)
    by = await b(i)
    await c(i)
    return by


async def main() -> None:
    async with Perdure(DB_URL, executor_id=NAME, lease=float(LEASE), maintenance_interval=0.1) as app:
        if MODE == "many":
            ids = list(range(100))
            random.shuffle(ids)
            # Line the three workers up so their starts of the same ids really race.
            (DIR / f"ready-{NAME}").touch()
            while len(list(DIR.glob("ready-*"))) < 3:
                await asyncio.sleep(0.005)
            handles = [await app.start(job, i, workflow_id=f"job-{i}") for i in ids]
            (DIR / f"started-{NAME}").touch()
            results = [await h.result(timeout=120) for h in handles]
            print(json.dumps({"done": len(results)}))
        elif MODE == "stale":
            handle = await app.start(job, 1, workflow_id="stale-1")
            print(json.dumps({"result": await handle.result(timeout=120)}))
        else:
            while not (DIR / "stop").exists():
                await asyncio.sleep(0.05)


asyncio.run(main())
