"""Messages on both stores: send → recv exactly once, FIFO per topic, timeouts, idempotency, typed loading."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from typing import Any

import pytest
from pydantic import BaseModel

import perdure
from helpers import query, waiting_on
from perdure import (
    ConfigurationError,
    NotLaunchedError,
    Perdure,
    WorkflowCancelled,
    WorkflowNotFound,
    WorkflowStatus,
    step,
    workflow,
)
from perdure.messaging import RECV_STEP, SEND_STEP

RUNS: Counter[str] = Counter()
GATES: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()
    GATES.clear()


def gate(key: str) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


class Approval(BaseModel):
    approved: bool
    by: str


# -- workflows ------------------------------------------------------------------------------------------


@workflow
async def inbox(n: int, topic: str | None = None, timeout: float | None = 10.0) -> list[Any]:
    got = []
    for _ in range(n):
        got.append(await perdure.recv(topic, timeout=timeout))
    RUNS["inbox"] += 1
    return got


@workflow
async def two_topics() -> dict[str, list[Any]]:
    b = [await perdure.recv("b", timeout=10) for _ in range(2)]
    a = [await perdure.recv("a", timeout=10) for _ in range(2)]
    return {"a": a, "b": b}


@workflow
async def approval_gate() -> str:
    answer = await perdure.recv("approval", timeout=10, type=Approval)
    assert answer is None or isinstance(answer, Approval)
    return "timeout" if answer is None else f"{answer.approved}:{answer.by}"


@step
async def effect(name: str) -> None:
    RUNS[name] += 1


@workflow
async def sender(target: str, fail_once: bool) -> str:
    await perdure.send(target, "hello", topic="t")
    await effect("sender-sent")
    if fail_once and RUNS["sender-failed"] == 0:
        RUNS["sender-failed"] += 1
        raise RuntimeError("first run fails after sending")
    return "sent"


@workflow
async def send_to_nobody() -> str:
    try:
        await perdure.send("no-such-workflow", 1)
    except WorkflowNotFound:
        RUNS["not-found"] += 1
        return "not found"
    return "sent?"


@step(max_attempts=2, retry_interval=0)
async def sends_in_a_step(target: str) -> None:
    RUNS["step-attempt"] += 1
    await perdure.send(target, "from-step-1")
    await perdure.send(target, "from-step-2")
    if RUNS["step-attempt"] == 1:
        raise RuntimeError("retry me")


@workflow
async def step_sender(target: str) -> None:
    await sends_in_a_step(target)


@workflow
def sync_inbox(n: int) -> list[Any]:
    return [perdure.recv_sync(timeout=10) for _ in range(n)]


@workflow
def sync_sender(target: str) -> None:
    perdure.send_sync(target, {"from": "sync"})


# -- send and recv --------------------------------------------------------------------------------------


async def test_messages_arrive_once_in_fifo_order(app: Perdure) -> None:
    # Two sent before the receiver exists would fail (no such workflow): send after start.
    h = await app.start(inbox, 4, workflow_id="box")
    await perdure.send("box", {"n": 1})
    await perdure.send("box", [2])
    await perdure.send("box", "three")
    await perdure.send("box", None)
    assert await h.result() == [{"n": 1}, [2], "three", None]
    steps = await app.list_steps("box")
    assert [(s.name, s.status) for s in steps] == [(RECV_STEP, "SUCCESS")] * 4
    assert [s.output for s in steps if s.name == RECV_STEP] == ['{"n":1}', "[2]", '"three"', "null"]
    # Each message was consumed by the position that checkpointed it, in the same transaction.
    consumed = await query(
        app, "SELECT value, consumed_step FROM {s}messages WHERE destination_id = ? ORDER BY seq", "box"
    )
    assert consumed == [('{"n":1}', 0), ("[2]", 1), ('"three"', 2), ("null", 3)]


async def test_a_waiting_workflow_is_woken_by_a_send(app: Perdure) -> None:
    waiting = waiting_on(app, "msg:wake")
    h = await app.start(inbox, 1, workflow_id="wake", timeout=None)
    await asyncio.wait_for(waiting.wait(), 5)
    assert (await h.status()).status == WorkflowStatus.PENDING
    await perdure.send("wake", "now")
    assert await asyncio.wait_for(h.result(), 5) == ["now"]


async def test_a_waiting_recv_is_checkpointed_with_its_deadline(app: Perdure) -> None:
    waiting = waiting_on(app, "msg:deadline")
    h = await app.start(inbox, 1, None, 30.0, workflow_id="deadline")
    await asyncio.wait_for(waiting.wait(), 5)
    steps = await app.list_steps("deadline")
    for _ in range(500):  # the waiter subscribes first, then commits its checkpoint: wait for that commit
        if steps:
            break
        await asyncio.sleep(0.01)
        steps = await app.list_steps("deadline")
    (rec,) = steps
    assert (rec.name, rec.status, rec.completed_at) == (RECV_STEP, "WAITING", None)
    assert rec.started_at is not None
    assert json.loads(rec.output or "") == int(rec.started_at.timestamp() * 1000) + 30_000
    await perdure.send("deadline", "in time")
    assert await h.result() == ["in time"]
    (rec,) = await app.list_steps("deadline")
    assert (rec.status, rec.output) == ("SUCCESS", '"in time"')


async def test_topics_are_separate_queues(app: Perdure) -> None:
    h = await app.start(two_topics, workflow_id="topics")
    for i in range(2):
        await perdure.send("topics", f"a{i}", topic="a")
        await perdure.send("topics", f"b{i}", topic="b")
    await perdure.send("topics", "default topic")
    assert await h.result() == {"a": ["a0", "a1"], "b": ["b0", "b1"]}
    # The message on the default topic is still there for a later recv().
    left = await query(
        app, "SELECT topic, value FROM {s}messages WHERE consumed_at IS NULL AND destination_id = ?", "topics"
    )
    assert left == [("", '"default topic"')]


async def test_recv_timeout_returns_none_and_is_checkpointed(app: Perdure) -> None:
    h = await app.start(inbox, 1, None, 0.05, workflow_id="quiet")
    assert await h.result() == [None]
    (got,) = await app.list_steps("quiet")
    assert (got.name, got.status, got.output) == (RECV_STEP, "SUCCESS", "null")
    assert got.completed_at is not None and got.started_at is not None
    assert (got.completed_at - got.started_at).total_seconds() >= 0.049
    # A message sent after the timeout is not lost: it waits for the next recv.
    await perdure.send("quiet", "late")
    assert await query(app, "SELECT count(*) FROM {s}messages WHERE consumed_at IS NULL") == [(1,)]


async def test_recv_zero_timeout_takes_what_is_there(app: Perdure) -> None:
    @workflow
    async def poll_twice() -> list[Any]:
        await gate("poll").wait()
        return [await perdure.recv(timeout=0), await perdure.recv(timeout=0)]

    h = await app.start(poll_twice, workflow_id="poll")
    await perdure.send("poll", 1)
    gate("poll").set()
    assert await h.result() == [1, None]


async def test_typed_recv(app: Perdure) -> None:
    h = await app.start(approval_gate, workflow_id="typed")
    await perdure.send("typed", Approval(approved=True, by="ana"), topic="approval")
    assert await h.result() == "True:ana"


async def test_typed_recv_rejects_a_message_of_another_shape(app: Perdure) -> None:
    h = await app.start(approval_gate, workflow_id="typed-bad")
    await perdure.send("typed-bad", {"approved": "maybe"}, topic="approval")
    with pytest.raises(perdure.SerializationError, match="Approval"):
        await h.result()


async def test_idempotent_send_from_outside(app: Perdure) -> None:
    h = await app.start(inbox, 2, None, 0.2, workflow_id="idem")
    for _ in range(3):
        await perdure.send("idem", "once", idempotency_key="req-1")
    await perdure.send("idem", "other", idempotency_key="req-2")
    assert await h.result() == ["once", "other"]
    assert await query(app, "SELECT count(*) FROM {s}messages WHERE destination_id = ?", "idem") == [(2,)]


async def test_send_to_an_unknown_workflow(app: Perdure) -> None:
    with pytest.raises(WorkflowNotFound, match="nobody"):
        await perdure.send("nobody", "hi")
    with pytest.raises(WorkflowNotFound):
        await app.send("nobody", "hi", idempotency_key="k")
    assert await query(app, "SELECT count(*) FROM {s}messages") == [(0,)]


async def test_send_to_an_unknown_workflow_inside_a_workflow_is_recorded(app: Perdure) -> None:
    h = await app.start(send_to_nobody, workflow_id="lonely")
    assert await h.result() == "not found"
    (rec,) = await app.list_steps("lonely")
    assert rec.name == SEND_STEP and rec.error is not None and "WorkflowNotFound" in rec.error
    # A replay raises the recorded error again without sending (fork re-runs from position 1).
    forked = await app.fork("lonely", 1)
    assert await forked.result() == "not found"
    assert RUNS["not-found"] == 2


async def test_send_inside_a_workflow_happens_once_across_replays(app: Perdure) -> None:
    box = await app.start(inbox, 2, "t", 0.3, workflow_id="target")
    h = await app.start(sender, "target", True, workflow_id="snd")
    with pytest.raises(RuntimeError, match="first run fails"):
        await h.result()
    resumed = await app.resume("snd")
    assert await resumed.result() == "sent"
    assert RUNS["sender-sent"] == 1  # the step before the failure was not run again
    assert await box.result() == ["hello", None]
    assert [s.name for s in await app.list_steps("snd")] == [SEND_STEP, "effect"]


async def test_sends_inside_a_retried_step_are_not_duplicated(app: Perdure) -> None:
    box = await app.start(inbox, 3, None, 0.3, workflow_id="step-target")
    h = await app.start(step_sender, "step-target")
    await h.result()
    assert RUNS["step-attempt"] == 2
    assert await box.result() == ["from-step-1", "from-step-2", None]


async def test_sync_workflows_send_and_receive(app: Perdure) -> None:
    box = await app.start(sync_inbox, 2, workflow_id="sync-box")
    await app.start(sync_sender, "sync-box")
    await asyncio.to_thread(perdure.send_sync, "sync-box", "from a thread")
    got = await box.result()
    assert sorted(got, key=str) == sorted([{"from": "sync"}, "from a thread"], key=str)


async def test_cancel_ends_a_wait_in_recv(app: Perdure) -> None:
    waiting = waiting_on(app, "msg:cancel-me")
    h = await app.start(inbox, 1, None, None, workflow_id="cancel-me")
    await asyncio.wait_for(waiting.wait(), 5)
    await app.cancel("cancel-me")
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)


async def test_cancel_ends_a_wait_in_recv_sync(app: Perdure) -> None:
    waiting = waiting_on(app, "msg:cancel-sync")
    h = await app.start(sync_inbox, 1, workflow_id="cancel-sync")
    await asyncio.wait_for(waiting.wait(), 5)
    await app.cancel("cancel-sync")
    with pytest.raises(WorkflowCancelled):
        await asyncio.wait_for(h.result(), 5)
    # The workflow thread is free again: a new run can use the pool.
    box = await app.start(sync_inbox, 1, workflow_id="after-cancel")
    await perdure.send("after-cancel", 1)
    assert await asyncio.wait_for(box.result(), 5) == [1]


async def test_recv_is_only_for_workflows(app: Perdure) -> None:
    with pytest.raises(NotLaunchedError, match="inside a perdure workflow"):
        await perdure.recv()

    @step
    async def receives() -> Any:
        return await perdure.recv(timeout=0)

    @workflow
    async def wrong() -> Any:
        return await receives()

    with pytest.raises(ConfigurationError, match="inside a step"):
        await wrong()


async def test_bad_arguments_are_refused_before_anything_is_written(app: Perdure) -> None:
    h = await app.start(inbox, 1, None, 0.05, workflow_id="args")
    with pytest.raises(perdure.SerializationError):
        await perdure.send("args", object())
    with pytest.raises(ConfigurationError, match="topic"):
        await perdure.send("args", 1, topic="")
    with pytest.raises(ConfigurationError, match="destination"):
        await perdure.send("", 1)
    assert await h.result() == [None]
    assert await query(app, "SELECT count(*) FROM {s}messages") == [(0,)]


async def test_many_workflows_wait_at_once_and_a_thread_sends_to_them(app: Perdure) -> None:
    # A waiting async workflow holds no thread: many can wait at once.
    handles = [await app.start(inbox, 1, None, None, workflow_id=f"many-{i}") for i in range(50)]
    done = threading.Event()

    def sender_thread() -> None:
        for i in range(50):
            app.send_sync(f"many-{i}", i)
        done.set()

    await asyncio.to_thread(sender_thread)
    assert done.is_set()
    assert [await h.result() for h in handles] == [[i] for i in range(50)]


@step(max_attempts=2, retry_interval=0)
async def app_sends_in_a_step(target: str) -> None:
    from perdure.runtime import active_runtime

    RUNS["app-step-attempt"] += 1
    await active_runtime().send(target, "attempt-independent")
    if RUNS["app-step-attempt"] == 1:
        raise RuntimeError("retry me")


@workflow
async def app_step_sender(target: str) -> None:
    await app_sends_in_a_step(target)


async def test_app_send_inside_a_retried_step_is_not_duplicated(app: Perdure) -> None:
    box = await app.start(inbox, 2, None, 0.3, workflow_id="app-step-target")
    await (await app.start(app_step_sender, "app-step-target")).result()
    assert RUNS["app-step-attempt"] == 2
    assert await box.result() == ["attempt-independent", None]
