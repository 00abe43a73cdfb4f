"""Queues and schedules across real worker processes, on SQLite and PostgreSQL.

Each run records its start and end in a table (tests/crash/queue_worker.py); limits are checked from those
rows and from the DB-side dequeue times, never from timing guesses. Each worker plays a separate host
(PERDURE_HOST_ID), so a killed worker's work is taken over after the lease, as across machines.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from perdure import Client, WorkflowInfo

pytestmark = pytest.mark.crash

WORKER = Path(__file__).with_name("queue_worker.py")
LEASE = "1.5"


class Workers:
    def __init__(self, db_url: str, workdir: Path) -> None:
        self.db_url = db_url
        self.dir = workdir
        self.procs: dict[str, subprocess.Popen[str]] = {}
        # Made here, before any worker runs: workers racing to switch a new file to WAL would fail.
        log = sqlite3.connect(workdir / "runlog.sqlite", isolation_level=None)
        log.execute("PRAGMA journal_mode=WAL")
        log.execute("CREATE TABLE runs (wid TEXT, proc TEXT, event TEXT, t REAL)")
        log.close()

    def start(self, *names: str, mode: str = "work") -> None:
        for name in names:
            env = dict(os.environ, PERDURE_HOST_ID=f"host-{name}")
            self.procs[name] = subprocess.Popen(
                [sys.executable, str(WORKER), self.db_url, str(self.dir), name, LEASE, mode],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        wait_until(
            "the workers are up", lambda: self._alive(names) and all((self.dir / f"ready-{n}").exists() for n in names)
        )

    def _alive(self, names: tuple[str, ...]) -> bool:
        """True while every named worker runs; a worker that died fails the test with its stderr."""
        for name in names:
            proc = self.procs[name]
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"worker {name} exited with {proc.returncode} before it was ready:\n{err}")
        return True

    def kill(self, name: str) -> float:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()
        return time.time()

    def stop(self) -> None:
        (self.dir / "stop").touch()
        for name, proc in self.procs.items():
            if proc.returncode is not None:
                continue
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"worker {name} failed:\n{err}"

    def runs(self) -> list[tuple[str, str, str, float]]:
        with sqlite3.connect(self.dir / "runlog.sqlite", timeout=30) as conn:
            return [tuple(r) for r in conn.execute("SELECT wid, proc, event, t FROM runs ORDER BY t")]


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(db_url, tmp_path)
    try:
        yield w
    finally:
        (tmp_path / "stop").touch()
        for proc in w.procs.values():
            if proc.poll() is None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.02)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an end at the same instant as a start closes first)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most


def intervals(runs: list[tuple[str, str, str, float]], killed: dict[str, float]) -> list[tuple[float, float]]:
    """One interval per execution: its start to its end (or to the kill of its process)."""
    open_runs: dict[tuple[str, str], float] = {}
    out: list[tuple[float, float]] = []
    for wid, proc, event, t in runs:
        if event == "start":
            open_runs[(wid, proc)] = t
        elif event == "end":
            out.append((open_runs.pop((wid, proc)), t))
    for (_, proc), started in open_runs.items():
        assert proc in killed, f"a run in live worker {proc} never ended"
        out.append((started, killed[proc]))
    return out


def all_done(client: Client, name: str, n: int) -> Callable[[], bool]:
    def check() -> bool:
        rows = client.list_workflows_sync(name=name, limit=None)
        return len(rows) == n and all(r.status.value == "SUCCESS" for r in rows)

    return check


# -- flow control across processes ----------------------------------------------------------------------


def test_global_concurrency_holds_across_three_processes(workers: Workers, db_url: str) -> None:
    workers.start("w1", "w2", "w3")
    with Client(db_url) as client:  # this process has no workflow code: it enqueues by name
        for i in range(12):
            client.enqueue_sync("p-conc3", "p.job", i, 0.25)
        wait_until("all 12 ran", all_done(client, "p.job", 12))
    runs = workers.runs()
    spans = intervals(runs, killed={})
    assert len(spans) == 12
    assert max_overlap(spans) == 3  # never more than 3, and the budget was used
    # worker_concurrency=2 in each process: reaching 3 at once took two processes.
    assert len({proc for _, proc, _, _ in runs}) >= 2
    workers.stop()


def test_rate_limit_holds_across_processes(workers: Workers, db_url: str) -> None:
    workers.start("r1", "r2")
    n, period = 3, timedelta(milliseconds=500)
    with Client(db_url) as client:
        for i in range(9):
            client.enqueue_sync("p-rate", "p.job", i, 0.0)
        wait_until("all 9 ran", all_done(client, "p.job", 9))
        rows: list[WorkflowInfo] = client.list_queue_workflows_sync("p-rate", status="SUCCESS")
    starts = sorted(r.started_at for r in rows if r.started_at is not None)  # the database's dequeue times
    assert len(starts) == 9
    for s in starts:
        assert sum(1 for x in starts if s <= x < s + period) <= n
    for first, nxt in zip(starts[::n], starts[n::n], strict=False):
        assert period <= nxt - first  # the limit: a window never admits more than n
        # and the budget is used again once it frees (a loose bound: a busy machine delays the pickup)
        assert nxt - first < period + timedelta(seconds=2)
    workers.stop()


def test_killed_worker_queued_runs_complete_elsewhere_within_the_limits(workers: Workers, db_url: str) -> None:
    workers.start("k1", "k2", "k3")
    with Client(db_url) as client:
        for i in range(5):
            client.enqueue_sync("p-kill", "p.job", i, 0.5)

        def victim() -> str | None:
            started = {(w, p) for w, p, e, _ in workers.runs() if e == "start"}
            ended = {(w, p) for w, p, e, _ in workers.runs() if e == "end"}
            running = started - ended
            return next((p for _, p in sorted(running)), None)

        wait_until("a worker is running a job", lambda: victim() is not None)
        name = victim()
        assert name is not None
        killed_at = workers.kill(name)
        wait_until("all 5 ran", all_done(client, "p.job", 5))
        rows = client.list_workflows_sync(name="p.job", limit=None)
    runs = workers.runs()
    spans = intervals(runs, killed={name: killed_at})
    assert max_overlap(spans) <= 2  # the dead run kept its slot until it was taken over
    retried = [r for r in rows if r.recovery_attempts == 1]
    assert len(retried) == 1 and retried[0].executor_id != name
    assert sum(1 for w, _, e, _ in runs if w == retried[0].workflow_id and e == "start") == 2
    assert all(r.recovery_attempts == 0 for r in rows if r is not retried[0])
    workers.stop()


# -- schedules ----------------------------------------------------------------------------------------------


def test_schedule_ticks_once_per_second_across_three_processes_one_killed(workers: Workers, db_url: str) -> None:
    workers.start("s1", "s2", "s3", mode="sched")
    began = datetime.now(UTC)
    time.sleep(4.0)  # the schedule runs for 10 s in all: ticks are time itself here
    killed_at = datetime.fromtimestamp(workers.kill("s2"), UTC)
    time.sleep(6.0)
    ended = datetime.now(UTC)
    workers.stop()
    first = began.replace(microsecond=0) + timedelta(seconds=1)
    last = ended.replace(microsecond=0) - timedelta(seconds=1)  # ticks settled before the stop
    expected = [first + timedelta(seconds=i) for i in range(int((last - first).total_seconds()) + 1)]
    assert len(expected) >= 8
    with Client(db_url) as client:
        rows = {r.workflow_id: r for r in client.list_workflows_sync(name="p.tick", limit=None)}
    ids = [f"sched:p.every-second:{t.strftime('%Y-%m-%dT%H:%M:%SZ')}" for t in expected]
    missing = [i for i in ids if i not in rows]
    assert missing == [], "ticks lost"
    assert all(rows[i].status.value == "SUCCESS" for i in ids)
    ran = Counter(w for w, _, e, _ in workers.runs() if e == "tick")
    for i in ids:
        # Exactly once, unless the killed process died inside that tick's run (then it ran again elsewhere).
        assert ran[i] == 1 or (ran[i] == 2 and rows[i].recovery_attempts == 1), (i, ran[i])
    # After the kill the survivors kept every tick (which of them fired which is a race).
    after = [i for t, i in zip(expected, ids, strict=True) if t >= killed_at + timedelta(seconds=1)]
    assert len(after) >= 4
    assert {rows[i].executor_id for i in after} <= {"s1", "s3"}
