"""PostgreSQL faults: a server restart mid-run, an outage past the limit, migrations racing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import pgcluster
from perdure import Client, Perdure, StoreUnavailable, step, workflow
from perdure.store.postgres import LATEST_VERSION

pytestmark = pytest.mark.postgres

calls: Counter[tuple[int, int]] = Counter()


@step
async def tick(i: int, j: int) -> int:
    calls[(i, j)] += 1
    await asyncio.sleep(0.002)
    return j


@workflow(name="faults.looper")
async def looper(i: int, n: int) -> int:
    total = 0
    for j in range(n):
        total += await tick(i, j)
    return total


@pytest.fixture
def own_cluster() -> Iterator[pgcluster.PgCluster]:
    """A server of this test's own (durable defaults), so restarting it disturbs nobody else."""
    reason = pgcluster.available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(reason)
    with pgcluster.PgCluster() as cluster:
        yield cluster


async def test_server_restart_mid_run_loses_and_repeats_nothing(own_cluster: pgcluster.PgCluster) -> None:
    calls.clear()
    url = own_cluster.create_database("restart")
    async with Perdure(url, maintenance_interval=0.1) as app:
        handles = [await app.start(looper, i, 60) for i in range(8)]
        deadline = time.monotonic() + 30
        while sum(calls.values()) < 80:  # well into the run
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        await asyncio.to_thread(own_cluster.restart, "fast")
        results = [await h.result(timeout=60) for h in handles]
    assert results == [sum(range(60))] * 8
    assert len(calls) == 8 * 60
    # Checkpoint writes that hit the restart were retried; no completed step function ran twice.
    assert set(calls.values()) == {1}


async def test_outage_past_the_limit_fails_clearly(own_cluster: pgcluster.PgCluster) -> None:
    calls.clear()
    url = own_cluster.create_database("outage") + "?outage_limit=1"
    app = Perdure(url, maintenance_interval=0.1)
    await app.launch()
    try:
        await looper(0, 1)
        own_cluster.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="outage_limit=1s"):
            await looper(1, 1)
        assert time.monotonic() - started < 30
    finally:
        await asyncio.wait_for(app.shutdown(), 30)


def test_two_processes_migrate_an_empty_database_at_once(pg_cluster: pgcluster.PgCluster, tmp_path: Path) -> None:
    url = f"{pg_cluster.url}?schema=race_{os.getpid()}"
    code = (
        "import sys, asyncio, pathlib\n"
        "from perdure import Client\n"
        "d = pathlib.Path(sys.argv[2]); (d / f'ready-{sys.argv[3]}').touch()\n"
        "while len(list(d.glob('ready-*'))) < 2: pass\n"
        "async def main():\n"
        "    async with Client(sys.argv[1]) as c: print(await c.store.schema_version())\n"
        "asyncio.run(main())\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url, str(tmp_path), str(n)], stdout=subprocess.PIPE, text=True)
        for n in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [str(LATEST_VERSION)] * 2
    with Client(url) as client:
        assert client.list_workflows_sync() == []
