"""Management (list/get/steps/delete/gc), runtime lifecycle, schema versions and recovery on launch."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

import perdure
from perdure import (
    ConfigurationError,
    MaxRecoveryAttemptsExceeded,
    Perdure,
    SchemaVersionError,
    WorkflowCancelled,
    WorkflowNotFound,
    WorkflowStatus,
    step,
    workflow,
)
from perdure.store.base import now_ms

RUNS: Counter[str] = Counter()
GATES: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()
    GATES.clear()


def gate(key: str) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


async def tick() -> None:
    """Let the millisecond clock move on, so creation times are distinct."""
    t = now_ms()
    while now_ms() <= t:
        await asyncio.sleep(0.001)


@step
async def tagged(tag: str) -> str:
    RUNS[tag] += 1
    return tag


@step
async def blocks(key: str) -> str:
    RUNS[f"blocks:{key}"] += 1
    gate(f"entered:{key}").set()
    await gate(f"open:{key}").wait()
    return f"opened {key}"


async def entered(key: str) -> None:
    await asyncio.wait_for(gate(f"entered:{key}").wait(), 5)
    gate(f"entered:{key}").clear()


@workflow
async def ok_wf(tag: str) -> str:
    return await tagged(tag)


@workflow
async def bad_wf(tag: str) -> None:
    await tagged(tag)
    raise ValueError(f"bad {tag}")


@workflow
async def blocked_wf(key: str) -> list[str]:
    return [await tagged(f"{key}-a"), await blocks(key), await tagged(f"{key}-c")]


# -- listing --------------------------------------------------------------------------------------------


async def test_list_workflows_filters(app: Perdure) -> None:
    ids: list[str] = []
    for i in range(3):
        await (await app.start(ok_wf, f"ok{i}", workflow_id=f"ok{i}")).result()
        ids.append(f"ok{i}")
        await tick()
    middle = datetime.now(UTC)
    await tick()
    for i in range(2):
        with pytest.raises(ValueError):
            await (await app.start(bad_wf, f"bad{i}", workflow_id=f"bad{i}")).result()
        ids.append(f"bad{i}")
        await tick()
    await app.start(blocked_wf, "p", workflow_id="pending")
    ids.append("pending")

    def wids(infos: list[perdure.WorkflowInfo]) -> list[str]:
        return [i.workflow_id for i in infos]

    assert wids(await app.list_workflows()) == ids[::-1]  # newest first by default
    assert wids(await app.list_workflows(order="oldest")) == ids
    assert wids(await app.list_workflows(status=WorkflowStatus.SUCCESS, order="oldest")) == ["ok0", "ok1", "ok2"]
    assert wids(await app.list_workflows(status="ERROR", order="oldest")) == ["bad0", "bad1"]
    assert wids(await app.list_workflows(status=["ERROR", WorkflowStatus.PENDING], order="oldest")) == [
        "bad0",
        "bad1",
        "pending",
    ]
    assert wids(await app.list_workflows(name=f"{__name__}.bad_wf", order="oldest")) == ["bad0", "bad1"]
    assert await app.list_workflows(name="no.such.name") == []
    assert wids(await app.list_workflows(created_after=middle, order="oldest")) == ["bad0", "bad1", "pending"]
    assert wids(await app.list_workflows(created_before=middle, order="oldest")) == ["ok0", "ok1", "ok2"]
    assert wids(await app.list_workflows(created_after=middle, status="ERROR", name=f"{__name__}.bad_wf")) == [
        "bad1",
        "bad0",
    ]
    assert wids(await app.list_workflows(limit=2)) == ["pending", "bad1"]
    assert wids(await app.list_workflows(limit=2, offset=1)) == ["bad1", "bad0"]
    assert wids(await app.list_workflows(limit=2, offset=1, order="oldest")) == ["ok1", "ok2"]
    assert wids(await app.list_workflows(limit=None)) == ids[::-1]
    assert await app.list_workflows(offset=10) == []
    assert wids(await app.list_workflows(workflow_ids=["ok1", "bad0", "missing"], order="oldest")) == ["ok1", "bad0"]
    assert wids(await app.list_workflows(executor_id=app.executor_id)) == ids[::-1]

    with pytest.raises(ConfigurationError, match="order"):
        await app.list_workflows(order="sideways")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        await app.list_workflows(limit=-1)
    with pytest.raises(ConfigurationError, match="timezone"):
        await app.list_workflows(created_after=datetime.now())
    with pytest.raises(ValueError):
        await app.list_workflows(status="NOT_A_STATUS")
    gate("open:p").set()


async def test_get_workflow_fields(db_url: str) -> None:
    async with Perdure(db_url, app_version="1.2.3", executor_id="exec-A", maintenance_interval=0.05) as app:
        before = datetime.now(UTC)
        with pytest.raises(ValueError):
            await (await app.start(bad_wf, "x", workflow_id="failed")).result()
        info = await app.get_workflow("failed")
        assert info.workflow_id == "failed"
        assert info.name == f"{__name__}.bad_wf"
        assert info.status == WorkflowStatus.ERROR
        assert before - timedelta(seconds=1) <= info.created_at <= info.updated_at
        assert info.started_at is not None and info.completed_at is not None
        assert info.created_at <= info.started_at <= info.completed_at <= datetime.now(UTC)
        assert info.executor_id == "exec-A"
        assert info.app_version == "1.2.3"
        assert info.parent_id is None and info.forked_from is None
        assert info.recovery_attempts == 0
        assert info.queue_name is None
        assert info.deadline_at is None
        assert json.loads(info.inputs or "") == {"tag": "x"}
        assert info.output is None
        assert info.error == "ValueError: bad x"
        assert info.error_traceback is not None and "bad_wf" in info.error_traceback

        handle = await app.start(blocked_wf, "g", workflow_id="running", timeout=60)
        await entered("g")
        running = await handle.status()
        assert running.status == WorkflowStatus.PENDING
        assert running.completed_at is None
        assert running.deadline_at is not None
        assert running.error is None and running.output is None
        gate("open:g").set()
        await handle.result()
        done = await app.get_workflow("running")
        assert done.status == WorkflowStatus.SUCCESS
        assert json.loads(done.output or "") == ["g-a", "opened g", "g-c"]

        with pytest.raises(WorkflowNotFound) as nf:
            await app.get_workflow("missing")
        assert nf.value.workflow_id == "missing"


async def test_list_steps_fields(app: Perdure) -> None:
    with pytest.raises(ValueError):
        await (await app.start(bad_wf, "s", workflow_id="steps")).result()
    await (await app.start(parent_of_ok, workflow_id="parent")).result()

    [s] = await app.list_steps("steps")
    assert s.workflow_id == "steps"
    assert s.step_id == 0
    assert s.name == "tagged"
    assert s.status == "SUCCESS"
    assert s.output == '"s"'
    assert s.error is None
    assert s.attempts == 1
    assert s.child_id is None
    assert s.started_at is not None and s.completed_at is not None and s.started_at <= s.completed_at

    child_step = (await app.list_steps("parent"))[0]
    assert child_step.child_id == "parent-0"
    assert child_step.output == '"kid"'
    with pytest.raises(WorkflowNotFound):
        await app.list_steps("missing")


@workflow
async def parent_of_ok() -> str:
    return await ok_wf("kid")


async def test_unknown_ids_raise_workflow_not_found_everywhere(app: Perdure, db_url: str) -> None:
    for call in (
        app.get_workflow("missing"),
        app.list_steps("missing"),
        app.retrieve("missing"),
        app.cancel("missing"),
        app.resume("missing"),
        app.fork("missing", 0),
    ):
        with pytest.raises(WorkflowNotFound):
            await call
    async with perdure.Client(db_url) as client:
        for call in (client.get_workflow("missing"), client.retrieve("missing"), client.fork("missing", 0)):
            with pytest.raises(WorkflowNotFound):
                await call
    assert await app.delete_workflows(["missing"]) == 0


# -- deleting -------------------------------------------------------------------------------------------


async def test_delete_workflows_never_deletes_pending(app: Perdure) -> None:
    await (await app.start(ok_wf, "d", workflow_id="done")).result()
    await (await app.start(parent_of_ok, workflow_id="tree")).result()
    handle = await app.start(blocked_wf, "q", workflow_id="pending")
    await entered("q")

    assert await app.delete_workflows(["done", "pending", "tree", "missing"]) == 2
    with pytest.raises(WorkflowNotFound):
        await app.get_workflow("done")
    with pytest.raises(WorkflowNotFound):
        await app.list_steps("done")
    assert (await app.get_workflow("pending")).status == WorkflowStatus.PENDING
    assert (await app.get_workflow("tree-0")).status == WorkflowStatus.SUCCESS  # only named ids go
    gate("open:q").set()
    assert await handle.result() == ["q-a", "opened q", "q-c"]
    assert await app.delete_workflows([]) == 0


async def test_delete_never_deletes_enqueued(db_url: str) -> None:
    async with Perdure(db_url, maintenance_interval=0.05) as app:
        handle = await app.start(blocked_wf, "e", workflow_id="later")
        await entered("e")
        await app.cancel("later")
        with pytest.raises(WorkflowCancelled):
            await handle.result()
    # No runtime now: a client's resume queues the work for whoever has the code.
    async with perdure.Client(db_url) as client:
        await client.resume("later")
        assert (await client.get_workflow("later")).status == WorkflowStatus.ENQUEUED
        assert await client.delete_workflows(["later"]) == 0
        assert await client.garbage_collect(0) == 0
        assert (await client.get_workflow("later")).status == WorkflowStatus.ENQUEUED
    # And a runtime picks it up and finishes it from its checkpoints.
    gate("open:e").set()
    async with Perdure(db_url, maintenance_interval=0.05) as app:
        assert await asyncio.wait_for((await app.retrieve("later")).result(), 5) == ["e-a", "opened e", "e-c"]
    assert RUNS["e-a"] == 1


async def test_garbage_collect_deletes_only_old_terminal_workflows(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    async with Perdure(sqlite_url, maintenance_interval=0.05) as app:
        await (await app.start(ok_wf, "old", workflow_id="old")).result()
        with pytest.raises(ValueError):
            await (await app.start(bad_wf, "olderr", workflow_id="old-error")).result()
        await (await app.start(ok_wf, "new", workflow_id="new")).result()
        handle = await app.start(blocked_wf, "gc", workflow_id="pending")
        await entered("gc")
        hour_ago = now_ms() - 3_600_000
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE workflows SET completed_at = ?, created_at = ? WHERE workflow_id IN ('old', 'old-error')",
                (hour_ago, hour_ago),
            )
            # Even a PENDING row that looks old is never collected.
            conn.execute("UPDATE workflows SET completed_at = ? WHERE workflow_id = 'pending'", (hour_ago,))

        with pytest.raises(ConfigurationError):
            await app.garbage_collect(-1)
        assert await app.garbage_collect(timedelta(hours=2)) == 0
        assert await app.garbage_collect(timedelta(minutes=30)) == 2
        remaining = {w.workflow_id for w in await app.list_workflows()}
        assert remaining == {"new", "pending"}
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM steps WHERE workflow_id LIKE 'old%'").fetchone()[0] == 0
        gate("open:gc").set()
        await handle.result()


async def test_garbage_collect_by_seconds(app: Perdure) -> None:
    await (await app.start(ok_wf, "a", workflow_id="a")).result()
    handle = await app.start(blocked_wf, "b", workflow_id="b")
    await entered("b")
    await tick()
    assert await app.garbage_collect(3600) == 0
    assert await app.garbage_collect(0) == 1
    assert [w.workflow_id for w in await app.list_workflows()] == ["b"]
    gate("open:b").set()
    await handle.result()


# -- runtime lifecycle ----------------------------------------------------------------------------------


async def test_a_second_runtime_in_one_process_is_refused(app: Perdure, db_url: str, sqlite_url: str) -> None:
    other = Perdure(db_url)
    with pytest.raises(ConfigurationError, match="one per process"):
        await other.launch()
    assert not other.launched
    elsewhere = Perdure(sqlite_url.replace("perdure.sqlite", "other.sqlite"))
    with pytest.raises(ConfigurationError, match="one per process"):
        await elsewhere.launch()
    with pytest.raises(ConfigurationError, match="already launched"):
        await app.launch()
    # The first runtime is unaffected.
    assert await (await app.start(ok_wf, "still")).result() == "still"


def test_a_second_sync_runtime_is_refused(sqlite_url: str) -> None:
    with Perdure(sqlite_url, maintenance_interval=0.05) as app:
        with pytest.raises(ConfigurationError, match="one per process"):
            Perdure(sqlite_url).launch_sync()
        assert app.launched
    # After shutdown another one may launch.
    with Perdure(sqlite_url, maintenance_interval=0.05) as again:
        assert again.launched


async def test_database_newer_than_the_code_is_refused(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    async with Perdure(sqlite_url, maintenance_interval=0.05) as app:
        await (await app.start(ok_wf, "v", workflow_id="v")).result()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (999, 0)")

    newer = Perdure(sqlite_url)
    with pytest.raises(SchemaVersionError, match="999"):
        await newer.launch()
    assert not newer.launched
    with pytest.raises(SchemaVersionError):
        async with perdure.Client(sqlite_url) as client:
            await client.list_workflows()
    # Nothing was touched, and the failed launch left no runtime behind.
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 999
        assert conn.execute("SELECT status FROM workflows WHERE workflow_id = 'v'").fetchone()[0] == "SUCCESS"
    async with Perdure(sqlite_url.replace("perdure.sqlite", "fresh.sqlite"), maintenance_interval=0.05) as fresh:
        assert fresh.launched


async def test_launch_waits_out_another_process_writing_a_fresh_file(sqlite_url: str) -> None:
    # A writer on a file still in rollback mode makes SQLite refuse the switch to WAL at once, without its
    # busy handler: two processes launching on a new file together hit exactly this.
    path = sqlite_url.removeprefix("sqlite:///")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE unrelated (x)")
    other.execute("BEGIN IMMEDIATE")
    app = Perdure(sqlite_url, maintenance_interval=0.05)
    launching = asyncio.create_task(app.launch())
    while app.store.stats.busy_retries == 0:  # refused once, and retrying
        assert not launching.done(), launching.exception()
        await asyncio.sleep(0.005)
    other.execute("COMMIT")
    other.close()
    await launching
    try:
        assert await app.store.schema_version() >= 1
    finally:
        await app.shutdown()


async def test_a_checkpoint_meeting_another_process_lock_waits_and_lands(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    async with Perdure(sqlite_url, maintenance_interval=0.05) as app:
        handle = await app.start(blocked_wf, "lk")
        await entered("lk")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process is writing
        gate("open:lk").set()  # the step returns: its checkpoint is the only write, and meets the lock
        async with asyncio.timeout(10):
            while app.store.stats.busy_retries == 0:
                await asyncio.sleep(0.005)
        assert (await handle.status()).status == WorkflowStatus.PENDING
        other.execute("COMMIT")
        other.close()
        assert await handle.result() == ["lk-a", "opened lk", "lk-c"]
        assert RUNS["blocks:lk"] == 1
        assert [s.output for s in await app.list_steps(handle.workflow_id)][1] == '"opened lk"'


async def test_schema_is_created_with_a_version(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    async with Perdure(sqlite_url, maintenance_interval=0.05) as app:
        version = await app.store.schema_version()
    assert version >= 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == version
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Launching again does not re-apply migrations.
    async with Perdure(sqlite_url, maintenance_interval=0.05):
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version WHERE version = ?", (version,)).fetchone()[0] == 1


def test_runtime_configuration_errors(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERDURE_DATABASE_URL", "sqlite:///from-env.sqlite")
    assert Perdure().database_url == "sqlite:///from-env.sqlite"
    monkeypatch.delenv("PERDURE_DATABASE_URL")
    assert Perdure().database_url == "sqlite:///perdure.sqlite"
    for bad in ("mysql://x/y", "sqlite://", "sqlite:///:memory:", "sqlite:///x.sqlite?bogus=1"):
        with pytest.raises(ConfigurationError):
            Perdure(bad)
    with pytest.raises(ConfigurationError):
        Perdure("sqlite:///x.sqlite", max_recovery_attempts=0)
    with pytest.raises(ConfigurationError):
        Perdure("sqlite:///x.sqlite", executor_id="  ")


async def test_not_launched_runtime_refuses_to_start(sqlite_url: str) -> None:
    app = Perdure(sqlite_url)
    with pytest.raises(perdure.NotLaunchedError):
        await app.start(ok_wf, "x")


# -- recovery on launch ---------------------------------------------------------------------------------


@pytest.mark.parametrize("second_executor", ["exec-1", "exec-2"])
async def test_launch_recovers_pending_workflows(db_url: str, second_executor: str) -> None:
    async with Perdure(db_url, executor_id="exec-1", maintenance_interval=0.05) as first:
        await first.start(blocked_wf, "r", workflow_id="rec")
        await entered("r")
    # Shut down mid-step: the workflow stays PENDING.
    async with perdure.Client(db_url) as client:
        assert (await client.get_workflow("rec")).status == WorkflowStatus.PENDING

    gate("open:r").set()
    async with Perdure(db_url, executor_id=second_executor, maintenance_interval=0.05) as second:
        handle = await second.retrieve("rec")
        assert await asyncio.wait_for(handle.result(), 5) == ["r-a", "opened r", "r-c"]
        info = await second.get_workflow("rec")
        assert info.executor_id == second_executor
        assert info.recovery_attempts == 1
    assert RUNS["r-a"] == 1  # completed before the shutdown: not run again
    assert RUNS["blocks:r"] == 2  # interrupted: run again
    assert RUNS["r-c"] == 1


@workflow
async def parent_then_block(key: str) -> list[str]:
    child = await ok_wf(f"{key}-child")
    return [child, await blocks(key)]


async def test_recovered_parent_reuses_its_finished_child(db_url: str) -> None:
    async with Perdure(db_url, maintenance_interval=0.05) as first:
        await first.start(parent_then_block, "pc", workflow_id="pc")
        await entered("pc")
    gate("open:pc").set()
    async with Perdure(db_url, maintenance_interval=0.05) as second:
        result = await asyncio.wait_for((await second.retrieve("pc")).result(), 5)
        assert result == ["pc-child", "opened pc"]
        assert [w.workflow_id for w in await second.list_workflows(parent_id="pc")] == ["pc-0"]
    assert RUNS["pc-child"] == 1


@workflow(max_recovery_attempts=1)
async def fragile_wf(key: str) -> list[str]:
    return [await tagged(f"{key}-a"), await blocks(key), await tagged(f"{key}-c")]


@pytest.mark.parametrize(("runtime_limit", "wf"), [(1, blocked_wf), (20, fragile_wf)], ids=["runtime", "workflow"])
async def test_workflow_recovered_too_often_becomes_retries_exceeded(
    db_url: str, runtime_limit: int, wf: object
) -> None:
    async with Perdure(db_url, maintenance_interval=0.05, max_recovery_attempts=runtime_limit) as first:
        await first.start(wf, "poison", workflow_id="poison")  # type: ignore[arg-type]
        await entered("poison")
    async with Perdure(db_url, maintenance_interval=0.05, max_recovery_attempts=runtime_limit):
        await entered("poison")  # recovery 1 of 1: runs again, and again never finishes
    async with Perdure(db_url, maintenance_interval=0.05, max_recovery_attempts=runtime_limit) as third:
        info = await third.get_workflow("poison")
        assert info.status == WorkflowStatus.RETRIES_EXCEEDED
        assert info.error is not None
        with pytest.raises(MaxRecoveryAttemptsExceeded):
            await (await third.retrieve("poison")).result()
        assert RUNS["blocks:poison"] == 2

        # Fixed: resume continues it from its checkpoints.
        gate("open:poison").set()
        resumed = await third.resume("poison")
        assert await asyncio.wait_for(resumed.result(), 5) == ["poison-a", "opened poison", "poison-c"]
    assert RUNS["poison-a"] == 1
    assert RUNS["blocks:poison"] == 3


async def test_workflow_timeout_survives_a_restart(db_url: str) -> None:
    started = time.monotonic()
    async with Perdure(db_url, maintenance_interval=0.05) as first:
        await first.start(blocked_wf, "dl", workflow_id="deadline", timeout=0.5)
        await entered("dl")
        deadline = (await first.get_workflow("deadline")).deadline_at
    async with Perdure(db_url, maintenance_interval=0.05) as second:
        with pytest.raises(WorkflowCancelled):
            await asyncio.wait_for((await second.retrieve("deadline")).result(), 5)
        info = await second.get_workflow("deadline")
        assert info.status == WorkflowStatus.CANCELLED
        assert info.deadline_at == deadline
    assert time.monotonic() - started >= 0.45
    assert RUNS["dl-c"] == 0


async def test_recovery_only_takes_workflows_of_its_app_version(db_url: str) -> None:
    async with Perdure(db_url, app_version="v1", maintenance_interval=0.05) as first:
        await first.start(blocked_wf, "ver", workflow_id="versioned")
        await entered("ver")
    gate("open:ver").set()
    async with Perdure(db_url, app_version="v2", maintenance_interval=0.05) as other_version:
        info = await other_version.get_workflow("versioned")
        assert info.status == WorkflowStatus.PENDING
        assert info.executor_id != other_version.executor_id
        assert RUNS["blocks:ver"] == 1
    async with Perdure(db_url, app_version="v1", maintenance_interval=0.05) as same_version:
        result = await asyncio.wait_for((await same_version.retrieve("versioned")).result(), 5)
        assert result == ["ver-a", "opened ver", "ver-c"]
        assert (await same_version.get_workflow("versioned")).app_version == "v1"
    assert RUNS["blocks:ver"] == 2
