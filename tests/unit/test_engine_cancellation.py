"""Cancellation, resume, workflow timeouts and fork."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest

import perdure
from perdure import (
    ConfigurationError,
    Perdure,
    WorkflowCancelled,
    WorkflowNotFound,
    WorkflowStatus,
    step,
    workflow,
)

RUNS: Counter[str] = Counter()
GATES: dict[str, asyncio.Event] = {}
INTERRUPTED: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()
    GATES.clear()
    INTERRUPTED.clear()


def gate(key: str) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


@step
async def tagged(tag: str) -> str:
    RUNS[tag] += 1
    gate(f"ran:{tag}").set()
    return tag


@step
async def blocks(key: str) -> str:
    """Signals `entered:key`, then waits for `open:key` (recording an interruption)."""
    RUNS[f"blocks:{key}"] += 1
    gate(f"entered:{key}").set()
    try:
        await gate(f"open:{key}").wait()
    except asyncio.CancelledError:
        INTERRUPTED.append(key)
        raise
    return f"opened {key}"


async def entered(key: str) -> None:
    await asyncio.wait_for(gate(f"entered:{key}").wait(), 5)


@workflow
async def long_sleeper(tag: str) -> str:
    await tagged(tag)
    await perdure.sleep(30)
    RUNS[f"{tag}:after-sleep"] += 1
    return "woke"


async def test_cancel_during_long_sleep(app: Perdure) -> None:
    h = await app.start(long_sleeper, "s", workflow_id="zz")
    await asyncio.wait_for(gate("ran:s").wait(), 5)
    started = time.monotonic()
    await app.cancel("zz")
    info = await app.get_workflow("zz")
    assert info.status == WorkflowStatus.CANCELLED  # at once, not when the body notices
    assert info.completed_at is not None
    with pytest.raises(WorkflowCancelled) as exc:
        await asyncio.wait_for(h.result(), 5)
    assert exc.value.workflow_id == "zz"
    assert time.monotonic() - started < 5
    assert RUNS["s:after-sleep"] == 0
    # Cancelling again, or a finished workflow, changes nothing.
    await app.cancel("zz")
    assert (await app.get_workflow("zz")).status == WorkflowStatus.CANCELLED
    # Retrieving later (from the row) reports the cancellation too.
    with pytest.raises(WorkflowCancelled):
        await (await app.retrieve("zz")).result()


async def test_cancel_from_a_client_reaches_the_running_body(app: Perdure, db_url: str) -> None:
    h = await app.start(long_sleeper, "c", workflow_id="remote")
    await asyncio.wait_for(gate("ran:c").wait(), 5)
    async with perdure.Client(db_url) as client:
        await client.cancel("remote")
        assert (await client.get_workflow("remote")).status == WorkflowStatus.CANCELLED
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)
    assert RUNS["c:after-sleep"] == 0


async def test_cancel_unknown_workflow(app: Perdure) -> None:
    with pytest.raises(WorkflowNotFound):
        await app.cancel("nope")


async def test_cancel_of_a_finished_workflow_keeps_its_outcome(app: Perdure) -> None:
    h = await app.start(simple, workflow_id="fin")
    assert await h.result() == "simple"
    await app.cancel("fin")
    assert (await app.get_workflow("fin")).status == WorkflowStatus.SUCCESS
    assert await (await app.retrieve("fin")).result() == "simple"


@workflow
async def simple() -> str:
    return await tagged("simple")


@workflow
async def sleeping_child(tag: str) -> str:
    await tagged(tag)
    await perdure.sleep(30)
    RUNS[f"{tag}:child-after"] += 1
    return tag


@workflow
async def parent_of_sleeper(tag: str) -> str:
    result = await sleeping_child(tag)
    RUNS[f"{tag}:parent-after"] += 1
    return result


async def test_cancel_reaches_children(app: Perdure) -> None:
    h = await app.start(parent_of_sleeper, "k", workflow_id="par")
    await asyncio.wait_for(gate("ran:k").wait(), 5)
    await app.cancel("par")
    assert (await app.get_workflow("par")).status == WorkflowStatus.CANCELLED
    assert (await app.get_workflow("par-0")).status == WorkflowStatus.CANCELLED
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for((await app.retrieve("par-0")).result(), 5)
    assert RUNS["k:child-after"] == 0
    assert RUNS["k:parent-after"] == 0


@workflow
async def three_steps(key: str) -> list[str]:
    return [await tagged(f"{key}-a"), await blocks(key), await tagged(f"{key}-c")]


async def test_cancel_interrupts_a_running_async_step(app: Perdure) -> None:
    h = await app.start(three_steps, "i", workflow_id="intr")
    await entered("i")
    await app.cancel("intr")
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)
    assert INTERRUPTED == ["i"]
    assert [s.name for s in await app.list_steps("intr")] == ["tagged"]  # the interrupted step is not recorded


@step(max_attempts=5, retry_interval=30)
async def fails_then_waits(tag: str) -> None:
    RUNS[tag] += 1
    gate(f"entered:{tag}").set()
    raise ConnectionError("down")


@workflow
async def retrying(tag: str) -> None:
    await fails_then_waits(tag)


async def test_cancel_stops_a_step_waiting_to_retry(app: Perdure) -> None:
    h = await app.start(retrying, "r", workflow_id="retry-wait")
    await entered("r")
    await app.cancel("retry-wait")
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)
    assert RUNS["r"] == 1
    assert await app.list_steps("retry-wait") == []


# -- resume ---------------------------------------------------------------------------------------------


async def test_resume_continues_a_cancelled_workflow_from_its_last_completed_step(app: Perdure) -> None:
    h = await app.start(three_steps, "x", workflow_id="res")
    await entered("x")
    await app.cancel("res")
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)

    gate("open:x").set()
    resumed = await app.resume("res")
    assert resumed.workflow_id == "res"
    assert await asyncio.wait_for(resumed.result(), 5) == ["x-a", "opened x", "x-c"]
    assert RUNS["x-a"] == 1  # completed before the cancel: replayed, not run
    assert RUNS["blocks:x"] == 2  # interrupted: runs again
    assert RUNS["x-c"] == 1
    info = await app.get_workflow("res")
    assert info.status == WorkflowStatus.SUCCESS
    assert [s.name for s in await app.list_steps("res")] == ["tagged", "blocks", "tagged"]


async def test_resume_of_a_finished_or_unknown_workflow(app: Perdure) -> None:
    h = await app.start(simple, workflow_id="ok")
    await h.result()
    with pytest.raises(ConfigurationError, match="SUCCESS"):
        await app.resume("ok")
    with pytest.raises(WorkflowNotFound):
        await app.resume("nope")


async def test_resume_of_a_running_workflow_does_not_start_a_second_run(app: Perdure) -> None:
    h = await app.start(three_steps, "p", workflow_id="running")
    await entered("p")
    again = await app.resume("running")
    assert again.workflow_id == "running"
    gate("open:p").set()
    assert await h.result() == await again.result() == ["p-a", "opened p", "p-c"]
    assert RUNS["blocks:p"] == 1


# -- timeouts -------------------------------------------------------------------------------------------


async def test_workflow_timeout_cancels_it(app: Perdure) -> None:
    started = time.monotonic()
    h = await app.start(three_steps, "t", workflow_id="timed", timeout=0.3)
    info = await app.get_workflow("timed")
    assert info.deadline_at is not None
    assert 0.29 <= (info.deadline_at - info.created_at).total_seconds() <= 0.31
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)
    assert time.monotonic() - started >= 0.29
    assert (await app.get_workflow("timed")).status == WorkflowStatus.CANCELLED
    assert INTERRUPTED == ["t"]
    assert RUNS["t-c"] == 0


async def test_child_inherits_the_parents_deadline(app: Perdure) -> None:
    h = await app.start(parent_of_sleeper, "d", workflow_id="dl", timeout=0.3)
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)
    parent, child = await app.get_workflow("dl"), await app.get_workflow("dl-0")
    assert child.deadline_at == parent.deadline_at
    assert child.status == WorkflowStatus.CANCELLED


@pytest.mark.parametrize("timeout", [0, -1.0])
async def test_non_positive_timeout_is_refused(app: Perdure, timeout: float) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        await app.start(simple, timeout=timeout)
    assert await app.list_workflows() == []


# -- fork -----------------------------------------------------------------------------------------------


@workflow
async def four_steps(key: str) -> list[str]:
    return [await tagged(f"{key}{i}") for i in range(4)]


async def test_fork_reuses_checkpoints_before_n_and_reruns_from_n(app: Perdure) -> None:
    h = await app.start(four_steps, "f", workflow_id="src")
    assert await h.result() == ["f0", "f1", "f2", "f3"]
    source_steps = await app.list_steps("src")

    fork = await app.fork("src", from_step=2)
    assert fork.workflow_id != "src"
    assert await fork.result() == ["f0", "f1", "f2", "f3"]
    assert [RUNS[f"f{i}"] for i in range(4)] == [1, 1, 2, 2]

    info = await app.get_workflow(fork.workflow_id)
    assert info.forked_from == "src"
    assert info.status == WorkflowStatus.SUCCESS
    assert info.inputs == (await app.get_workflow("src")).inputs
    fork_steps = await app.list_steps(fork.workflow_id)
    assert [s.step_id for s in fork_steps] == [0, 1, 2, 3]
    # Positions < 2 are the source's checkpoints (same times); the rest are new.
    assert [s.completed_at for s in fork_steps[:2]] == [s.completed_at for s in source_steps[:2]]
    assert fork_steps[2].started_at is not None and source_steps[2].completed_at is not None
    assert fork_steps[2].started_at >= source_steps[3].completed_at  # type: ignore[operator]
    # The source is untouched.
    assert await app.list_steps("src") == source_steps
    assert (await app.get_workflow("src")).forked_from is None


async def test_fork_with_chosen_id_and_from_zero(app: Perdure) -> None:
    await (await app.start(four_steps, "z", workflow_id="src")).result()
    fork = await app.fork("src", from_step=0, new_workflow_id="again")
    assert fork.workflow_id == "again"
    assert await fork.result() == ["z0", "z1", "z2", "z3"]
    assert [RUNS[f"z{i}"] for i in range(4)] == [2, 2, 2, 2]
    # Beyond the last step: everything is replayed.
    beyond = await app.fork("src", from_step=99)
    assert await beyond.result() == ["z0", "z1", "z2", "z3"]
    assert [RUNS[f"z{i}"] for i in range(4)] == [2, 2, 2, 2]


async def test_fork_errors(app: Perdure) -> None:
    with pytest.raises(WorkflowNotFound):
        await app.fork("nope", from_step=0)
    await (await app.start(simple, workflow_id="src")).result()
    with pytest.raises(ConfigurationError):
        await app.fork("src", from_step=-1)
    with pytest.raises(ConfigurationError, match="workflow_id"):
        await app.fork("src", from_step=0, new_workflow_id="")


async def test_resume_right_after_cancel_of_an_async_workflow(app: Perdure) -> None:
    await app.start(three_steps, "q", workflow_id="quick")
    await entered("q")
    await app.cancel("quick")
    resumed = await app.resume("quick")  # without waiting for the cancelled run to wind down
    gate("open:q").set()
    assert await asyncio.wait_for(resumed.result(), 5) == ["q-a", "opened q", "q-c"]
    assert (await app.get_workflow("quick")).status == WorkflowStatus.SUCCESS
    assert RUNS["q-a"] == 1


SYNC_GATES: dict[str, threading.Event] = {}


def sync_gate(key: str) -> threading.Event:
    return SYNC_GATES.setdefault(key, threading.Event())


@step
def sync_blocks(key: str) -> str:
    RUNS[f"sync_blocks:{key}"] += 1
    sync_gate(f"entered:{key}").set()
    assert sync_gate(f"open:{key}").wait(10)
    return f"opened {key}"


@workflow
def sync_three_steps(key: str) -> list[str]:
    return [sync_blocks(f"{key}-a"), sync_blocks(key), sync_blocks(f"{key}-c")]


async def start_sync_three(app: Perdure, key: str, workflow_id: str) -> None:
    SYNC_GATES.clear()
    sync_gate(f"open:{key}-a").set()
    sync_gate(f"open:{key}-c").set()
    await app.start(sync_three_steps, key, workflow_id=workflow_id)
    assert await asyncio.to_thread(sync_gate(f"entered:{key}").wait, 5)


async def test_resume_right_after_cancel_of_a_sync_workflow_still_in_a_step(app: Perdure) -> None:
    await start_sync_three(app, "s", "sync-quick")
    await app.cancel("sync-quick")  # the thread is still inside the step: it stops at its next durable operation
    resumed = await app.resume("sync-quick")
    sync_gate("open:s").set()
    assert await asyncio.wait_for(resumed.result(), 5) == ["opened s-a", "opened s", "opened s-c"]
    assert (await app.get_workflow("sync-quick")).status == WorkflowStatus.SUCCESS
    assert RUNS["sync_blocks:s-a"] == 1
    assert RUNS["sync_blocks:s-c"] == 1
    assert [s.name for s in await app.list_steps("sync-quick")] == ["sync_blocks"] * 3


async def test_client_resume_right_after_cancel_of_a_sync_workflow(app: Perdure, db_url: str) -> None:
    await start_sync_three(app, "r", "sync-remote")
    async with perdure.Client(db_url) as client:
        await client.cancel("sync-remote")
        await client.resume("sync-remote")
        sync_gate("open:r").set()
        result = await asyncio.wait_for((await client.retrieve("sync-remote")).result(), 5)
    assert result == ["opened r-a", "opened r", "opened r-c"]
    assert RUNS["sync_blocks:r-a"] == 1


async def test_sync_workflow_cancelled_in_a_step_is_not_continued(app: Perdure) -> None:
    await start_sync_three(app, "n", "sync-stop")
    h = await app.retrieve("sync-stop")
    await app.cancel("sync-stop")
    sync_gate("open:n").set()
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)
    # The step that was running finishes, but its outcome is not recorded and nothing after it runs.
    assert [s.name for s in await app.list_steps("sync-stop")] == ["sync_blocks"]
    assert RUNS["sync_blocks:n-c"] == 0
    assert (await app.get_workflow("sync-stop")).status == WorkflowStatus.CANCELLED


@workflow
async def catches_cancelled_child(tag: str) -> str:
    try:
        return await sleeping_child(tag)
    except WorkflowCancelled as exc:
        return f"child {exc.workflow_id} cancelled"


async def test_cancelling_only_the_child_raises_in_the_parent(app: Perdure) -> None:
    h = await app.start(catches_cancelled_child, "cc", workflow_id="cp")
    await asyncio.wait_for(gate("ran:cc").wait(), 5)
    await app.cancel("cp-0")
    result = await asyncio.wait_for(h.result(), 5)
    assert result.startswith("child ") and result.endswith(" cancelled")
    assert (await app.get_workflow("cp")).status == WorkflowStatus.SUCCESS
    assert (await app.get_workflow("cp-0")).status == WorkflowStatus.CANCELLED


async def test_parent_not_catching_its_cancelled_child_ends_in_error(app: Perdure) -> None:
    h = await app.start(parent_of_sleeper, "nc", workflow_id="np")
    await asyncio.wait_for(gate("ran:nc").wait(), 5)
    await app.cancel("np-0")
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)
    info = await app.get_workflow("np")
    assert info.status == WorkflowStatus.ERROR  # finished, not left PENDING forever
    assert info.error is not None and info.error.startswith("WorkflowCancelled")
    assert RUNS["nc:parent-after"] == 0


@workflow
async def blocking_child(key: str) -> str:
    return await blocks(key)


@workflow
async def parent_of_blocking(key: str) -> str:
    return "parent got " + await blocking_child(key)


async def test_resume_of_a_cancelled_parent_continues_its_cancelled_child(app: Perdure) -> None:
    h = await app.start(parent_of_blocking, "pb", workflow_id="rp")
    await entered("pb")
    await app.cancel("rp")
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)
    assert (await app.get_workflow("rp-0")).status == WorkflowStatus.CANCELLED

    gate("open:pb").set()
    resumed = await app.resume("rp")
    assert await asyncio.wait_for(resumed.result(), 5) == "parent got opened pb"
    assert (await app.get_workflow("rp-0")).status == WorkflowStatus.SUCCESS
    assert RUNS["blocks:pb"] == 2


async def test_client_resume_of_a_cancelled_parent_continues_its_cancelled_child(app: Perdure, db_url: str) -> None:
    h = await app.start(parent_of_blocking, "cb", workflow_id="crp")
    await entered("cb")
    async with perdure.Client(db_url) as client:
        await client.cancel("crp")
        with pytest.raises(WorkflowCancelled):
            await asyncio.wait_for(h.result(), 5)
        gate("open:cb").set()
        resumed = await client.resume("crp")
        assert await asyncio.wait_for(resumed.result(), 5) == "parent got opened cb"
        assert (await client.get_workflow("crp-0")).status == WorkflowStatus.SUCCESS


@workflow
async def catches_then_blocks(tag: str) -> list[str]:
    return [await catches_cancelled_child(tag), await blocks(tag)]


async def test_resume_leaves_a_child_cancelled_on_its_own_alone(app: Perdure) -> None:
    h = await app.start(catches_then_blocks, "own", workflow_id="own")
    await asyncio.wait_for(gate("ran:own").wait(), 5)
    await app.cancel("own-0-0")  # only the grandchild
    await entered("own")
    await app.cancel("own")
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)

    gate("open:own").set()
    resumed = await app.resume("own")
    assert await asyncio.wait_for(resumed.result(), 5) == ["child own-0-0 cancelled", "opened own"]
    assert (await app.get_workflow("own-0")).status == WorkflowStatus.SUCCESS
    assert (await app.get_workflow("own-0-0")).status == WorkflowStatus.CANCELLED
    assert RUNS["own"] == 1
