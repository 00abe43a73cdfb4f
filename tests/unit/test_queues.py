"""Queues in one process, on SQLite and PostgreSQL: flow control, order, dedup, delay, timeout, debounce.

The limits are read back from the database (statuses, DB-side dequeue times), not inferred from timing.
Cross-process behaviour (global limits over several workers, SIGKILL, schedules) is in tests/crash/.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

import perdure
from perdure import (
    Client,
    ConfigurationError,
    DuplicateEnqueue,
    Perdure,
    Queue,
    UnknownWorkflowError,
    WorkflowCancelled,
    WorkflowConflictError,
    WorkflowStatus,
    workflow,
)
from perdure.store.queue_types import DequeueRequest

ORDER: list[str] = []
STARTED: dict[str, asyncio.Event] = {}
GATES: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    ORDER.clear()
    STARTED.clear()
    GATES.clear()


def started(key: str) -> asyncio.Event:
    return STARTED.setdefault(key, asyncio.Event())


def gate(key: str) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll the database until `check()` holds (state other processes or the dispatcher change)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


@workflow(name="q.held")
async def held(key: str) -> str:
    ORDER.append(key)
    started(key).set()
    await gate(key).wait()
    return key


@workflow(name="q.record")
async def record(key: str) -> str:
    ORDER.append(key)
    return key


@workflow(name="q.sleepy")
async def sleepy(key: str, seconds: float) -> str:
    ORDER.append(key)
    await asyncio.sleep(seconds)
    return key


@workflow(name="q.typed")
async def typed(when: timedelta, n: int = 1) -> str:
    return f"{when.total_seconds()}x{n}"


@workflow(name="q.parent")
async def parent(key: str) -> str:
    h = await CHILDREN.enqueue(record, f"child-of-{key}")
    return str(await h.result())


CONC2 = Queue("t-conc2", concurrency=2)
WORKER1 = Queue("t-worker1", worker_concurrency=1)
PRIO = Queue("t-prio", worker_concurrency=1, priority=True)
FIFO = Queue("t-fifo", worker_concurrency=1)
PARTS = Queue("t-parts", concurrency=1, worker_concurrency=1, partitioned=True)
RATED = Queue("t-rated", rate_limit=(3, 0.6))
DEDUP = Queue("t-dedup")
DELAYS = Queue("t-delays")
TIMEOUTS = Queue("t-timeouts", concurrency=1)
BYNAME = Queue("t-byname", worker_concurrency=1)
CHILDREN = Queue("t-children")
SYNCQ = Queue("t-sync")


def held_rows(rows: list[perdure.WorkflowInfo]) -> dict[str, str]:
    return {json.loads(r.inputs or "{}")["key"]: r.status.value for r in rows}


# -- declaring -------------------------------------------------------------------------------------------


def test_same_name_with_other_settings_is_refused() -> None:
    Queue("t-conc2", concurrency=2)  # the same declaration again is fine (a module imported twice)
    with pytest.raises(ConfigurationError, match="already declared with other settings"):
        Queue("t-conc2", concurrency=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"concurrency": 0}, "concurrency must be a positive integer"),
        ({"worker_concurrency": -1}, "worker_concurrency must be a positive integer"),
        ({"concurrency": 2, "worker_concurrency": 3}, "worker_concurrency .* is more than concurrency"),
        ({"rate_limit": (10,)}, r"rate_limit must be \(max_starts, seconds\)"),
        ({"rate_limit": (10, 0)}, "rate_limit's period must be positive"),
        ({"priority": "yes"}, "True or False"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Queue("t-bad", **kwargs)  # type: ignore[arg-type]


def test_reserved_and_empty_names_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="reserved"):
        Queue("_perdure-mine")
    with pytest.raises(ConfigurationError, match="non-empty name"):
        Queue("")


async def test_enqueue_options_are_checked_before_anything_is_written(app: Perdure) -> None:
    with pytest.raises(ConfigurationError, match="not declared with priority=True"):
        await FIFO.enqueue(record, "x", priority=1)
    with pytest.raises(ConfigurationError, match="needs a partition_key"):
        await PARTS.enqueue(record, "x")
    with pytest.raises(ConfigurationError, match="not partitioned"):
        await FIFO.enqueue(record, "x", partition_key="a")
    with pytest.raises(ConfigurationError, match="delay must be >= 0"):
        await FIFO.enqueue(record, "x", delay=-1)
    with pytest.raises(ConfigurationError, match="timeout must be positive"):
        await FIFO.enqueue(record, "x", timeout=0)
    with pytest.raises(ConfigurationError, match="on_duplicate"):
        await FIFO.enqueue(record, "x", on_duplicate="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not a perdure workflow"):
        await FIFO.enqueue(print, "x")
    with pytest.raises(TypeError, match="record"):
        await FIFO.enqueue(record, "x", "too many")
    assert await app.list_workflows() == []


async def test_enqueue_needs_a_runtime() -> None:
    with pytest.raises(perdure.NotLaunchedError, match="Client"):
        await FIFO.enqueue(record, "x")


# -- flow control ----------------------------------------------------------------------------------------


async def test_concurrency_2_keeps_the_third_enqueued_while_two_run(app: Perdure) -> None:
    handles = [await CONC2.enqueue(held, k) for k in ("a", "b", "c")]
    await started("a").wait()
    await started("b").wait()
    rows = await app.list_queue_workflows(CONC2)
    assert held_rows(rows) == {"a": "PENDING", "b": "PENDING", "c": "ENQUEUED"}
    # The budget is the database's: another executor asking for work gets none.
    other = await app.store.queue_dequeue(DequeueRequest("t-conc2", "someone-else", 10, concurrency=2))
    assert other.records == [] and other.backlog
    gate("a").set()
    assert await handles[0].result(timeout=10) == "a"
    await started("c").wait()
    gate("b").set()
    gate("c").set()
    assert [await h.result(timeout=10) for h in handles[1:]] == ["b", "c"]
    info = {q.name: q for q in await app.list_queues()}["t-conc2"]
    assert info.counts["SUCCESS"] == 3 and info.running == 0 and info.concurrency == 2


async def test_worker_concurrency_counts_this_process(app: Perdure) -> None:
    handles = [await WORKER1.enqueue(held, k) for k in ("a", "b")]
    await started("a").wait()
    assert held_rows(await app.list_queue_workflows(WORKER1)) == {"a": "PENDING", "b": "ENQUEUED"}
    gate("a").set()
    gate("b").set()
    assert [await h.result(timeout=10) for h in handles] == ["a", "b"]


async def test_priority_lower_first_and_fifo_among_equals(app: Perdure) -> None:
    blocker = await PRIO.enqueue(held, "blocker", priority=0)
    await started("blocker").wait()  # the one worker slot is taken: the rest queue up
    handles = [await PRIO.enqueue(record, k, priority=p) for k, p in [("p5", 5), ("p1a", 1), ("p3", 3), ("p1b", 1)]]
    gate("blocker").set()
    for h in [blocker, *handles]:
        await h.result(timeout=10)
    assert ORDER == ["blocker", "p1a", "p1b", "p3", "p5"]
    rows = await app.list_queue_workflows(PRIO, status="SUCCESS")
    assert {json.loads(w.inputs or "{}")["key"]: w.priority for w in rows} == {
        "blocker": 0,
        "p5": 5,
        "p1a": 1,
        "p3": 3,
        "p1b": 1,
    }


async def test_fifo_without_priority(app: Perdure) -> None:
    blocker = await FIFO.enqueue(held, "blocker")
    await started("blocker").wait()
    handles = [await FIFO.enqueue(record, f"k{i}") for i in range(5)]
    gate("blocker").set()
    for h in [blocker, *handles]:
        await h.result(timeout=10)
    assert ORDER == ["blocker", "k0", "k1", "k2", "k3", "k4"]


async def test_partitions_take_turns(app: Perdure) -> None:
    # One worker slot; partition a has a long backlog enqueued first. Partitions b and c must not wait
    # for a to drain: partitions are served least recently served first.
    blocker = await PARTS.enqueue(held, "blocker", partition_key="z")
    await started("blocker").wait()
    handles = [await PARTS.enqueue(record, f"a{i}", partition_key="a") for i in range(5)]
    handles += [await PARTS.enqueue(record, f"b{i}", partition_key="b") for i in range(2)]
    handles += [await PARTS.enqueue(record, f"c{i}", partition_key="c") for i in range(2)]
    gate("blocker").set()
    for h in [blocker, *handles]:
        await h.result(timeout=10)
    runs = ORDER[1:]
    assert runs[:6] == ["a0", "b0", "c0", "a1", "b1", "c1"]
    assert runs[6:] == ["a2", "a3", "a4"]


async def test_partition_concurrency_is_per_partition(app: Perdure) -> None:
    q = Queue("t-parts-conc", concurrency=1, partitioned=True)
    handles = [await q.enqueue(held, k, partition_key=k[0]) for k in ("a1", "a2", "b1")]
    await started("a1").wait()
    await started("b1").wait()
    assert held_rows(await app.list_queue_workflows(q)) == {"a1": "PENDING", "a2": "ENQUEUED", "b1": "PENDING"}
    for k in ("a1", "a2", "b1"):
        gate(k).set()
    assert [await h.result(timeout=10) for h in handles] == ["a1", "a2", "b1"]


async def test_rate_limit_rolling_window_from_db_dequeue_times(app: Perdure) -> None:
    n, period_ms = 3, 600
    handles = [await RATED.enqueue(record, f"k{i}") for i in range(9)]
    for h in handles:
        await h.result(timeout=20)
    starts = sorted(w.started_at.timestamp() * 1000 for w in await app.list_queue_workflows(RATED, status="SUCCESS"))
    assert len(starts) == 9
    for s in starts:  # every window [s, s + period) holds at most n dequeues
        assert sum(1 for x in starts if s <= x < s + period_ms) <= n
    # ... and the budget is used: each window's n start together, the next window right when it frees.
    groups = [starts[i : i + n] for i in range(0, 9, n)]
    for g in groups:
        assert g[-1] - g[0] < period_ms / 2
    for prev, nxt in itertools.pairwise(groups):
        assert period_ms <= nxt[0] - prev[0] < period_ms + 500


# -- dedup, ids ------------------------------------------------------------------------------------------


async def test_dedup_key_held_until_the_first_finishes(app: Perdure) -> None:
    first = await DEDUP.enqueue(held, "one", dedup_key="user-7")
    with pytest.raises(DuplicateEnqueue) as err:
        await DEDUP.enqueue(held, "two", dedup_key="user-7")
    assert err.value.existing_id == first.workflow_id and err.value.dedup_key == "user-7"
    same = await DEDUP.enqueue(held, "two", dedup_key="user-7", on_duplicate="return_existing")
    assert same.workflow_id == first.workflow_id
    await started("one").wait()  # running still holds the key
    with pytest.raises(DuplicateEnqueue):
        await DEDUP.enqueue(record, "three", dedup_key="user-7")
    assert (await first.status()).dedup_key == "user-7"
    gate("one").set()
    assert await first.result(timeout=10) == "one"
    again = await DEDUP.enqueue(record, "four", dedup_key="user-7")  # finished: the key is free
    assert again.workflow_id != first.workflow_id
    assert await again.result(timeout=10) == "four"
    assert (await first.status()).dedup_key is None


async def test_same_workflow_id_enqueues_once(app: Perdure) -> None:
    h1 = await DEDUP.enqueue(record, "x", workflow_id="fixed-1")
    h2 = await DEDUP.enqueue(record, "y", workflow_id="fixed-1")
    assert h1.workflow_id == h2.workflow_id == "fixed-1"
    assert await h2.result(timeout=10) == "x"
    with pytest.raises(WorkflowConflictError, match=r"already used by a run of 'q\.record'"):
        await DEDUP.enqueue(held, "z", workflow_id="fixed-1")
    assert ORDER == ["x"]


async def test_enqueue_inside_a_workflow_is_a_recorded_child(app: Perdure) -> None:
    h = await app.start(parent, "p", workflow_id="parent-1")
    assert await h.result(timeout=10) == "child-of-p"
    steps = await app.list_steps("parent-1")
    assert steps[0].name == "perdure.enqueue:q.record" and steps[0].child_id == "parent-1-0"
    child = await app.get_workflow("parent-1-0")
    assert child.parent_id == "parent-1" and child.queue_name == "t-children"


# -- delay, timeout -----------------------------------------------------------------------------------------


async def test_delay_keeps_it_delayed_until_its_time(app: Perdure) -> None:
    h = await DELAYS.enqueue(record, "late", delay=0.4)
    info = await h.status()
    assert info.status == WorkflowStatus.DELAYED and info.delay_until is not None
    assert await h.result(timeout=10) == "late"
    info = await h.status()
    assert info.started_at is not None and info.started_at >= info.delay_until
    assert (info.started_at - info.created_at).total_seconds() >= 0.4


async def test_cancel_and_resume_a_delayed_workflow(app: Perdure) -> None:
    h = await DELAYS.enqueue(record, "never-yet", delay=timedelta(hours=1))
    await app.cancel(h.workflow_id)
    assert (await h.status()).status == WorkflowStatus.CANCELLED
    with pytest.raises(WorkflowCancelled):
        await h.result(timeout=5)
    resumed = await app.resume(h.workflow_id)  # back on its own queue, runnable now
    assert await resumed.result(timeout=10) == "never-yet"
    assert (await h.status()).queue_name == "t-delays"
    assert ORDER == ["never-yet"]


async def test_timeout_counts_from_dequeue(app: Perdure) -> None:
    first = await TIMEOUTS.enqueue(sleepy, "first", 0.5)
    patient = await TIMEOUTS.enqueue(sleepy, "patient", 0.05, timeout=0.3)  # waits ~0.5 s queued: fine
    slow = await TIMEOUTS.enqueue(sleepy, "slow", 5.0, timeout=0.3)
    assert await first.result(timeout=10) == "first"
    assert await patient.result(timeout=10) == "patient"
    with pytest.raises(WorkflowCancelled):
        await slow.result(timeout=10)
    for h in (patient, slow):
        info = await h.status()
        assert info.started_at is not None and info.deadline_at is not None
        assert info.deadline_at - info.started_at == timedelta(milliseconds=300)
    assert (await patient.status()).started_at - (await patient.status()).created_at > timedelta(seconds=0.3)


# -- debounce ----------------------------------------------------------------------------------------------


async def test_debounce_runs_once_with_the_last_arguments(app: Perdure) -> None:
    handles = [await perdure.debounce(record, f"v{i}", key="doc-1", period=0.3) for i in range(5)]
    assert len({h.workflow_id for h in handles}) == 1
    assert await handles[-1].result(timeout=10) == "v4"
    assert ORDER == ["v4"]
    later = await perdure.debounce(record, "v5", key="doc-1", period=0.05)  # a new burst: a new run
    assert later.workflow_id != handles[0].workflow_id
    assert await later.result(timeout=10) == "v5"


async def test_debounce_max_wait_caps_the_delay(app: Perdure) -> None:
    loop = asyncio.get_running_loop()
    first = loop.time()
    handle = await perdure.debounce(record, "b0", key="burst", period=0.4, max_wait=0.6)
    i = 0
    while not (await handle.status()).status.is_terminal:  # keep bouncing well past max_wait
        i += 1
        assert loop.time() - first < 5, "max_wait did not cap the delay"
        if (await perdure.debounce(record, f"b{i}", key="burst", period=0.4, max_wait=0.6)).workflow_id != (
            handle.workflow_id
        ):
            break
        await asyncio.sleep(0.05)
    assert (await handle.result(timeout=10)).startswith("b")  # one of the burst's calls, the last before it ran
    info = await handle.status()
    assert info.started_at is not None
    assert (info.started_at - info.created_at).total_seconds() < 0.6 + 0.3


# -- by name, from a Client ------------------------------------------------------------------------------


async def test_client_enqueues_by_name_and_the_worker_checks_the_arguments(app: Perdure, db_url: str) -> None:
    async with Client(db_url) as client:
        h = await client.enqueue("t-byname", "q.typed", 90, n=2)  # a number of seconds for a timedelta
        assert await h.result(timeout=10) == "90.0x2"
        bad = await client.enqueue("t-byname", "q.typed", "not a duration")
        with pytest.raises(perdure.SerializationError):
            await bad.result(timeout=10)


async def test_unknown_name_fails_that_workflow_and_the_queue_goes_on(app: Perdure, db_url: str) -> None:
    async with Client(db_url) as client:
        ghost = await client.enqueue(BYNAME, "no.such.workflow", 1)
        after = await client.enqueue(BYNAME, "q.record", "after")
        with pytest.raises(UnknownWorkflowError, match="not registered in the process that took it"):
            await ghost.result(timeout=10)
        assert await after.result(timeout=10) == "after"
        assert (await client.get_workflow(ghost.workflow_id)).status == WorkflowStatus.ERROR
        queues = {q.name: q for q in await client.list_queues()}
        assert queues["t-byname"].counts["ERROR"] == 1 and queues["t-byname"].declared


async def test_client_dedup_and_list(app: Perdure, db_url: str) -> None:
    async with Client(db_url) as client:
        h = await client.enqueue("t-dedup", held, "c1", dedup_key="k")
        with pytest.raises(DuplicateEnqueue):
            await client.enqueue("t-dedup", "q.held", "c2", dedup_key="k")
        await started("c1").wait()
        rows = await client.list_queue_workflows("t-dedup")
        assert [(r.workflow_id, r.status.value) for r in rows] == [(h.workflow_id, "PENDING")]
        gate("c1").set()
        assert await h.result(timeout=10) == "c1"


# -- sync API ---------------------------------------------------------------------------------------------


@workflow(name="q.sync_parent")
def sync_parent(n: int) -> list[str]:
    handles = [SYNCQ.enqueue_sync(record, f"s{i}") for i in range(n)]
    return [h.result_sync(timeout=10) for h in handles]


def test_sync_programs_and_sync_workflows_enqueue(sqlite_url: str) -> None:
    with Perdure(sqlite_url) as app:
        h = SYNCQ.enqueue_sync(record, "direct")
        assert h.result_sync(timeout=10) == "direct"
        assert app.start_sync(sync_parent, 2).result_sync(timeout=10) == ["s0", "s1"]
        assert [s.name for s in app.list_steps_sync(app.list_workflows_sync(name="q.sync_parent")[0].workflow_id)][
            :2
        ] == ["perdure.enqueue:q.record"] * 2
        assert perdure.debounce_sync(record, "d", key="s", period=0.05).result_sync(timeout=10) == "d"
