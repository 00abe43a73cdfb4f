"""A worker process for the multi-process queue and schedule tests.

Usage: python queue_worker.py DB_URL WORKDIR NAME LEASE MODE
  MODE work  - serve the queues below until WORKDIR/stop exists
  MODE sched - the same, and fire the schedule `p.every-second` (6-field cron, every second)

Every run writes its start and end (and a tick its time) to the table `runs` of WORKDIR/runlog.sqlite (the
test makes it), with the wall-clock time: the tests compute overlaps and counts from those rows.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path

from perdure import Perdure, Queue, scheduled, workflow, workflow_id

DB_URL, WORKDIR, NAME, LEASE, MODE = sys.argv[1:6]
DIR = Path(WORKDIR)

CONC3 = Queue("p-conc3", concurrency=3, worker_concurrency=2)
RATE = Queue("p-rate", rate_limit=(3, 0.5))
KILL = Queue("p-kill", concurrency=2, worker_concurrency=1)

_log = sqlite3.connect(DIR / "runlog.sqlite", isolation_level=None, timeout=30)  # made by the test, in WAL


def runlog(event: str) -> None:
    _log.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (workflow_id(), NAME, event, time.time()))


@workflow(name="p.job")
async def job(i: int, hold: float) -> int:
    runlog("start")
    await asyncio.sleep(hold)
    runlog("end")
    return i


@workflow(name="p.tick")
async def tick(scheduled_at: datetime) -> str:
    runlog("tick")
    return scheduled_at.isoformat()


if MODE == "sched":
    scheduled("* * * * * *", name="p.every-second")(tick)


async def main() -> None:
    async with Perdure(DB_URL, executor_id=NAME, lease=float(LEASE), maintenance_interval=0.1):
        (DIR / f"ready-{NAME}").touch()
        while not (DIR / "stop").exists():
            await asyncio.sleep(0.05)


asyncio.run(main())
