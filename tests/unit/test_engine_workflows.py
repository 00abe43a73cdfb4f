"""Workflows on a real SQLite file: calling, starting, idempotency by id, conflicts, children, sync mode."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter

import pytest

import perdure
from perdure import (
    ConfigurationError,
    Perdure,
    WorkflowCancelled,
    WorkflowConflictError,
    WorkflowNotFound,
    WorkflowStatus,
    step,
    workflow,
)
from perdure.errors import PerdureError
from perdure.store import create_store
from perdure.store.base import WorkflowRecord, now_ms

RUNS: Counter[str] = Counter()
GATES: dict[str, asyncio.Event] = {}
SYNC_GATES: dict[str, threading.Event] = {}
SYNC_APP: list[Perdure] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()
    GATES.clear()
    SYNC_GATES.clear()
    SYNC_APP.clear()


def gate(key: str) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


def sync_gate(key: str) -> threading.Event:
    return SYNC_GATES.setdefault(key, threading.Event())


# -- async workflows ------------------------------------------------------------------------------------


@step
async def double(x: int) -> int:
    RUNS["double"] += 1
    return 2 * x


@workflow
async def add_and_double(a: int, b: int) -> int:
    RUNS["add_and_double"] += 1
    return await double(a + b)


@step
async def wait_gate(key: str) -> None:
    RUNS[f"wait_gate:{key}"] += 1
    await gate(key).wait()


@workflow
async def gated(key: str) -> str:
    RUNS[f"gated:{key}"] += 1
    await wait_gate(key)
    return key.upper()


@workflow(name="engine-tests.other")
async def other(key: str) -> str:
    return key


async def test_direct_call_runs_durably_with_a_fresh_id_each_time(app: Perdure) -> None:
    assert await add_and_double(1, 2) == 6
    assert await add_and_double(1, 2) == 6

    runs = await app.list_workflows(name=f"{__name__}.add_and_double")
    assert len(runs) == 2
    assert runs[0].workflow_id != runs[1].workflow_id
    for info in runs:
        assert info.status == WorkflowStatus.SUCCESS
        assert json.loads(info.inputs or "") == {"a": 1, "b": 2}
        assert info.output == "6"
        assert [s.name for s in await app.list_steps(info.workflow_id)] == ["double"]
    assert RUNS["add_and_double"] == 2
    assert RUNS["double"] == 2


async def test_start_result_status_and_retrieve(app: Perdure) -> None:
    h = await app.start(gated, "k", workflow_id="wf-start")
    assert h.workflow_id == "wf-start"
    assert (await h.status()).status == WorkflowStatus.PENDING
    gate("k").set()
    assert await h.result() == "K"
    info = await h.status()
    assert info.status == WorkflowStatus.SUCCESS
    assert info.completed_at is not None

    again = await app.retrieve("wf-start")
    assert again.workflow_id == "wf-start"
    assert await again.result() == "K"
    with pytest.raises(WorkflowNotFound):
        await app.retrieve("no-such-workflow")


async def test_start_passes_keyword_arguments(app: Perdure) -> None:
    h = await app.start(add_and_double, 2, b=3)
    assert await h.result() == 10
    assert json.loads((await h.status()).inputs or "") == {"a": 2, "b": 3}


async def test_result_timeout_while_still_running(app: Perdure) -> None:
    h = await app.start(gated, "slow")
    with pytest.raises(TimeoutError):
        await h.result(timeout=0.05)
    gate("slow").set()
    assert await h.result() == "SLOW"


async def test_same_id_twice_runs_the_body_once(app: Perdure) -> None:
    gate("once").set()
    first = await app.start(gated, "once", workflow_id="dup")
    assert await first.result() == "ONCE"
    # Same id again, even with other arguments: the recorded run is the answer.
    second = await app.start(gated, "different-args", workflow_id="dup")
    assert second.workflow_id == "dup"
    assert await second.result() == "ONCE"
    assert RUNS["gated:once"] == 1
    assert RUNS["gated:different-args"] == 0
    assert len(await app.list_workflows()) == 1


async def test_same_id_started_concurrently_runs_once_and_all_callers_get_the_result(app: Perdure) -> None:
    handles = await asyncio.gather(*(app.start(gated, "conc", workflow_id="conc-id") for _ in range(6)))
    assert {h.workflow_id for h in handles} == {"conc-id"}
    gate("conc").set()
    results = await asyncio.gather(*(h.result() for h in handles))
    assert results == ["CONC"] * 6
    assert RUNS["gated:conc"] == 1
    assert RUNS["wait_gate:conc"] == 1
    assert len(await app.list_workflows()) == 1
    assert len(await app.list_steps("conc-id")) == 1


async def test_same_id_while_the_first_run_is_still_running(app: Perdure) -> None:
    first = await app.start(gated, "mid", workflow_id="mid-id")
    second = await app.start(gated, "mid", workflow_id="mid-id")
    gate("mid").set()
    assert await first.result() == await second.result() == "MID"
    assert RUNS["gated:mid"] == 1


async def test_same_id_with_another_function_is_a_conflict(app: Perdure) -> None:
    gate("c").set()
    assert await (await app.start(gated, "c", workflow_id="taken")).result() == "C"
    with pytest.raises(WorkflowConflictError, match="taken"):
        await app.start(other, "c", workflow_id="taken")
    info = await app.get_workflow("taken")
    assert info.name == f"{__name__}.gated"
    assert info.status == WorkflowStatus.SUCCESS


@pytest.mark.parametrize("bad_id", ["", "   ", 42])
async def test_empty_or_non_string_workflow_id_is_rejected(app: Perdure, bad_id: object) -> None:
    with pytest.raises(ConfigurationError, match="workflow_id"):
        await app.start(gated, "x", workflow_id=bad_id)  # type: ignore[arg-type]
    assert await app.list_workflows() == []
    assert RUNS["gated:x"] == 0


async def test_start_of_a_plain_function_is_a_configuration_error(app: Perdure) -> None:
    async def not_a_workflow() -> None:
        return None

    with pytest.raises(ConfigurationError, match="@workflow"):
        await app.start(not_a_workflow)


async def test_workflow_without_launched_runtime_raises_not_launched() -> None:
    with pytest.raises(perdure.NotLaunchedError):
        await add_and_double(1, 1)
    assert RUNS["add_and_double"] == 0


async def test_workflow_id_inside_and_outside(app: Perdure) -> None:
    @workflow
    async def whoami() -> str:
        return perdure.workflow_id()

    h = await app.start(whoami, workflow_id="me")
    assert await h.result() == "me"
    with pytest.raises(perdure.NotLaunchedError):
        perdure.workflow_id()


# -- child workflows ------------------------------------------------------------------------------------


@workflow
async def child_wf(x: int) -> int:
    RUNS["child_wf"] += 1
    return x + 100


@workflow
async def parent_wf(x: int) -> list[int]:
    a = await double(x)  # position 0
    b = await child_wf(a)  # position 1: a child workflow
    return [a, b]


async def test_child_workflow_has_deterministic_id_parent_and_is_reused(app: Perdure) -> None:
    h = await app.start(parent_wf, 5, workflow_id="parent")
    assert await h.result() == [10, 110]

    child = await app.get_workflow("parent-1")
    assert child.parent_id == "parent"
    assert child.name == f"{__name__}.child_wf"
    assert child.status == WorkflowStatus.SUCCESS
    assert child.output == "110"
    assert [w.workflow_id for w in await app.list_workflows(parent_id="parent")] == ["parent-1"]

    steps = await app.list_steps("parent")
    assert [(s.step_id, s.name, s.child_id) for s in steps] == [
        (0, "double", None),
        (1, f"{__name__}.child_wf", "parent-1"),
    ]
    assert steps[1].output == "110"

    # A replay past the child reuses its recorded result: the child body does not run again.
    fork = await app.fork("parent", from_step=2)
    assert await fork.result() == [10, 110]
    assert RUNS["child_wf"] == 1
    assert RUNS["double"] == 1
    assert await app.list_workflows(parent_id=fork.workflow_id) == []


@workflow
async def failing_child() -> None:
    RUNS["failing_child"] += 1
    raise LookupError("child broke")


@workflow
async def parent_of_failing() -> str:
    try:
        await failing_child()
    except LookupError as exc:
        return f"caught {exc}"
    return "no error"


async def test_child_error_reaches_parent_with_its_type_and_is_replayed(app: Perdure) -> None:
    h = await app.start(parent_of_failing, workflow_id="pf")
    assert await h.result() == "caught child broke"
    assert (await app.get_workflow("pf-0")).status == WorkflowStatus.ERROR
    steps = await app.list_steps("pf")
    assert steps[0].status == "ERROR" and steps[0].error == "LookupError: child broke"

    fork = await app.fork("pf", from_step=1)
    assert await fork.result() == "caught child broke"
    assert RUNS["failing_child"] == 1


@workflow
async def spawner(x: int) -> list[object]:
    from perdure.runtime import active_runtime

    handle = await active_runtime().start(child_wf, x)
    return [handle.workflow_id, await handle.result()]


async def test_app_start_inside_a_workflow_returns_a_child_handle(app: Perdure) -> None:
    h = await app.start(spawner, 1, workflow_id="sp")
    assert await h.result() == ["sp-0", 101]
    assert (await app.get_workflow("sp-0")).parent_id == "sp"
    steps = await app.list_steps("sp")
    assert steps[0].name == f"perdure.start:{__name__}.child_wf"
    assert steps[0].child_id == "sp-0"

    # On replay the recorded child id is returned; no second child is started.
    fork = await app.fork("sp", from_step=1)
    assert await fork.result() == ["sp-0", 101]
    assert RUNS["child_wf"] == 1


# -- sync workflows -------------------------------------------------------------------------------------


@step
def sync_inc(x: int) -> int:
    RUNS["sync_inc"] += 1
    return x + 1


@workflow
def sync_wf(x: int) -> int:
    RUNS["sync_wf"] += 1
    y = sync_inc(x)
    perdure.sleep_sync(0.01)
    stamp = perdure.now_sync()
    assert stamp.tzinfo is not None
    return sync_inc(y)


@workflow
def sync_child(x: int) -> int:
    RUNS["sync_child"] += 1
    return x * 3


@workflow
def sync_parent(x: int) -> int:
    return sync_child(sync_inc(x))


@workflow
def sync_sleeper(key: str) -> str:
    sync_gate(key).set()
    perdure.sleep_sync(30)
    RUNS["sync_sleeper:after"] += 1
    return "woke"


def test_sync_mode_with_statement(sqlite_url: str) -> None:
    with Perdure(sqlite_url, maintenance_interval=0.05) as app:
        assert sync_wf(1) == 3

        h = app.start_sync(sync_wf, 10, workflow_id="s1")
        assert h.result_sync() == 12
        assert h.status_sync().status == WorkflowStatus.SUCCESS
        assert app.retrieve_sync("s1").result_sync() == 12
        steps = app.list_steps_sync("s1")
        assert [s.name for s in steps] == ["sync_inc", "perdure.sleep", "perdure.now", "sync_inc"]
        assert RUNS["sync_wf"] == 2
        assert RUNS["sync_inc"] == 4

        fork = app.fork_sync("s1", 3)
        assert fork.result_sync() == 12
        assert RUNS["sync_inc"] == 5  # only the step at position 3 ran again
        assert len(app.list_workflows_sync()) == 3

        assert app.start_sync(sync_parent, 4, workflow_id="sp").result_sync() == 15
        child = app.get_workflow_sync("sp-1")
        assert child.parent_id == "sp"
        assert child.output == "15"
    assert not app.launched


def test_sync_workflow_cancelled_in_durable_sleep(sqlite_url: str) -> None:
    with Perdure(sqlite_url, maintenance_interval=0.05) as app:
        h = app.start_sync(sync_sleeper, "zz")
        assert sync_gate("zz").wait(5)
        app.cancel_sync(h.workflow_id)
        assert h.status_sync().status == WorkflowStatus.CANCELLED
        with pytest.raises(WorkflowCancelled):
            h.result_sync(timeout=5)
        assert RUNS["sync_sleeper:after"] == 0


@workflow
def sync_spawner(x: int) -> list[object]:
    handle = SYNC_APP[0].start_sync(sync_child, x)
    return [handle.workflow_id, handle.result_sync()]


def test_start_sync_inside_a_sync_workflow_returns_a_child_handle(sqlite_url: str) -> None:
    with Perdure(sqlite_url, maintenance_interval=0.05) as app:
        SYNC_APP.append(app)
        h = app.start_sync(sync_spawner, 2, workflow_id="ssp")
        assert h.result_sync() == ["ssp-0", 6]
        assert app.get_workflow_sync("ssp-0").parent_id == "ssp"
        fork = app.fork_sync("ssp", 1)
        assert fork.result_sync() == ["ssp-0", 6]
        assert RUNS["sync_child"] == 1


async def test_sync_workflow_runs_under_an_async_runtime(app: Perdure) -> None:
    h = await app.start(sync_wf, 1)
    assert await h.result() == 3
    assert [s.name for s in await app.list_steps(h.workflow_id)] == [
        "sync_inc",
        "perdure.sleep",
        "perdure.now",
        "sync_inc",
    ]


async def test_direct_call_of_sync_workflow_on_the_event_loop_is_refused(app: Perdure) -> None:
    with pytest.raises(ConfigurationError, match="async form"):
        sync_wf(1)
    assert RUNS["sync_wf"] == 0
    assert await app.list_workflows() == []


@workflow
async def async_calls_sync_child() -> int:
    return sync_child(1)


async def test_sync_child_called_from_async_workflow_is_a_clear_error(app: Perdure) -> None:
    h = await app.start(async_calls_sync_child)
    with pytest.raises(ConfigurationError, match=r"app\.start"):
        await h.result()
    assert RUNS["sync_child"] == 0


@workflow
async def no_steps(x: int) -> int:
    RUNS["no_steps"] += 1
    return x


@workflow
async def raises_directly(x: int) -> int:
    raise ArithmeticError(f"no {x}")


async def test_direct_calls_record_their_outcome(app: Perdure) -> None:
    assert await no_steps(7) == 7
    with pytest.raises(ArithmeticError, match="no 3"):
        await raises_directly(3)
    done = await app.list_workflows(name=f"{__name__}.no_steps")
    failed = await app.list_workflows(name=f"{__name__}.raises_directly")
    assert [(w.status, w.output) for w in done] == [(WorkflowStatus.SUCCESS, "7")]
    assert [(w.status, w.error) for w in failed] == [(WorkflowStatus.ERROR, "ArithmeticError: no 3")]
    results = await asyncio.gather(*(no_steps(i) for i in range(20)))
    assert results == list(range(20))
    assert len(await app.list_workflows(name=f"{__name__}.no_steps", limit=None)) == 21


@workflow
def sync_recorded_values() -> list[str]:
    flag = perdure.patched_sync("sync-change")
    u = perdure.uuid4_sync()
    perdure.sleep_sync(0)
    return [str(flag), str(u), perdure.workflow_id()]


def test_sync_recorded_values_replay(sqlite_url: str) -> None:
    with Perdure(sqlite_url, maintenance_interval=0.05) as app:
        first = app.start_sync(sync_recorded_values, workflow_id="rv").result_sync()
        assert first[0] == "True" and first[2] == "rv"
        fork = app.fork_sync("rv", 3)
        replayed = fork.result_sync()
        assert replayed[:2] == first[:2]  # same recorded uuid
        assert replayed[2] == fork.workflow_id
        assert [s.name for s in app.list_steps_sync("rv")] == [
            "perdure.patch:sync-change",
            "perdure.uuid4",
            "perdure.sleep",
        ]


@step
async def yielding_double(x: int) -> int:
    for _ in range(5):  # a step that spans loop turns, as a model request does
        await asyncio.sleep(0)
    return 2 * x


@workflow
async def one_yielding_step(x: int) -> int:
    return await yielding_double(x)


async def test_a_direct_call_commits_its_row_with_its_first_checkpoint(db_url: str) -> None:
    commits = []
    async with Perdure(db_url, maintenance_interval=3600) as quiet:  # no heartbeats in between
        # Other writes landing in between (the first dequeues of queues other test modules declare)
        # add commits; one clean run is enough, and without the shared commit no run has only two.
        for _ in range(50):
            before = quiet.store.stats.commits
            assert await one_yielding_step(3) == 6
            commits.append(quiet.store.stats.commits - before)
            if commits[-1] <= 2:
                break
    # The row and the step share one commit, the outcome has its own: two, where three were before.
    assert min(commits) == 2


@workflow
async def slow_first_step(key: str) -> str:
    await wait_gate(key)
    return key


async def test_a_slow_first_step_does_not_keep_the_row_uncommitted(app: Perdure) -> None:
    call = asyncio.create_task(slow_first_step("slow"))
    name = f"{__name__}.slow_first_step"
    async with asyncio.timeout(10):
        # The row waits for the first checkpoint only briefly (FRESH_INSERT_HOLD), then commits alone:
        # the run is listed, PENDING, while its first step is still blocked on the gate.
        while not (runs := await app.list_workflows(name=name)):
            await asyncio.sleep(0.001)
    assert RUNS["wait_gate:slow"] == 1 and not gate("slow").is_set()
    assert [r.status for r in runs] == [WorkflowStatus.PENDING]
    gate("slow").set()
    assert await call == "slow"
    assert (await app.get_workflow(runs[0].workflow_id)).status == WorkflowStatus.SUCCESS


async def test_a_held_insert_fails_cleanly_when_the_store_closes_and_commits_nothing(db_url: str) -> None:
    store = create_store(db_url)
    await store.open()
    t = now_ms()
    record = WorkflowRecord(
        workflow_id="held-1", name="held", status=WorkflowStatus.PENDING, inputs="{}", created_at=t, updated_at=t
    )
    insert = asyncio.ensure_future(store.workflow_insert(record, hold=3600))
    await asyncio.sleep(0)  # the insert task runs up to its held write
    await store.close()  # long before the hold ends
    with pytest.raises(PerdureError, match="store was closed"):
        await insert
    await store.open()
    try:
        assert await store.workflow_get("held-1") is None
        # The store opened again writes as before: nothing of the cancelled commit is left waiting.
        async with asyncio.timeout(30):  # guards a hang only
            assert (await store.workflow_insert(record)).inserted
        assert await store.workflow_get("held-1") is not None
    finally:
        await store.close()


async def test_a_held_insert_takes_a_write_queued_before_its_committer_ran(db_url: str) -> None:
    # A workflow without steps queues its outcome in the same loop turn as its held row, before the
    # committer has run once. That write is the company the row waits for: it must not wait out the
    # hold (an hour here; 5 ms by default, which it once did on PostgreSQL for every such call).
    store = create_store(db_url)
    await store.open()
    try:
        t = now_ms()
        rows = [
            WorkflowRecord(
                workflow_id=f"turn-{i}",
                name="held",
                status=WorkflowStatus.PENDING,
                inputs="{}",
                created_at=t,
                updated_at=t,
            )
            for i in range(2)
        ]
        before = store.stats.commits
        held = asyncio.ensure_future(store.workflow_insert(rows[0], hold=3600))
        company = asyncio.ensure_future(store.workflow_insert(rows[1]))
        async with asyncio.timeout(30):  # guards a hang only; it ends in one commit, at once
            outcomes = await asyncio.gather(held, company)
        assert [o.inserted for o in outcomes] == [True, True]
        assert store.stats.commits - before == 1
    finally:
        await store.close()
