"""Durable waiting and talking to workflows: sleep, messages, events and streams.

Inside a workflow body every call here is a durable operation at the next position: `send` is sent exactly
once across replays, `recv` consumes a message in the same transaction that checkpoints it, `get_event`
records what it saw. Inside a step, writes (`send`, `set_event`, `write_stream`) are numbered within the
attempt, so a step that runs again rewrites the same values instead of adding new ones. Outside workflows
(and from a `Client`) `send`, `get_event`, `get_all_events` and `read_stream` work on the database directly.

Waiting never holds a thread of an async workflow: a waiter sleeps on the store's notifier, woken by writes
of this process at once, by PostgreSQL NOTIFY from other processes, and otherwise re-checks on a short
interval that grows from 2 ms to the runtime's `poll_interval` (SQLite across processes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

from pydantic import TypeAdapter

from . import _context
from .errors import (
    ConfigurationError,
    NotLaunchedError,
    SerializationError,
    StreamClosed,
    WorkflowNotFound,
)
from .serialization import args_hash, dump_error, dump_value
from .store.base import TERMINAL_STATUSES, GuardOutcome, StepRecord, Store, now_ms
from .store.notify import event_key, message_key, stream_key, workflow_key

if TYPE_CHECKING:
    from .runtime import Perdure

T = TypeVar("T")

SLEEP_STEP = "perdure.sleep"
SEND_STEP = "perdure.send"
RECV_STEP = "perdure.recv"
SET_EVENT_STEP = "perdure.set_event"
GET_EVENT_STEP = "perdure.get_event"
GET_ALL_EVENTS_STEP = "perdure.get_all_events"
WRITE_STREAM_STEP = "perdure.write_stream"
CLOSE_STREAM_STEP = "perdure.close_stream"

DEFAULT_TIMEOUT = 60.0
"""Seconds `recv` and `get_event` wait by default (`timeout=None` waits without limit)."""
SAFETY_RECHECK = 2.0
"""Seconds between re-checks while waiting on a store that notifies: a guard against a lost notification."""
FIRST_RECHECK = 0.002
STREAM_BATCH = 500
MAX_NAME = 1024


# -- sleep ----------------------------------------------------------------------------------------------


def _wake_time(ctx: _context.WorkflowContext, seconds: float) -> tuple[int, int, bool]:
    """(position, wake-up time in ms, whether it still has to be recorded)."""
    if seconds < 0:
        raise ConfigurationError(f"sleep seconds must not be negative, got {seconds}")
    pos, rec = ctx.take_position()
    if rec is not None:
        ctx.check_replay(pos, rec, SLEEP_STEP, None)
        return pos, int(rec.output or 0), False
    return pos, now_ms() + int(seconds * 1000), True


async def sleep(seconds: float) -> None:
    """Sleep durably: the wake-up time is checkpointed, so after a restart only the rest is slept.

    An async workflow holds no thread while it sleeps; a cancel ends the sleep at once.
    """
    ctx = _context.require("perdure.sleep()")
    pos, wake_at, fresh = _wake_time(ctx, seconds)
    await ctx.settle()
    if fresh:
        await ctx.record(ctx.step_record(pos, SLEEP_STEP, output=str(wake_at)))
    remaining = (wake_at - now_ms()) / 1000
    if remaining > 0:
        await asyncio.sleep(remaining)
    ctx.raise_if_cancelled()


def sleep_sync(seconds: float) -> None:
    """`sleep` for sync workflows (the workflow's thread waits; a cancel wakes it)."""
    ctx = _context.require("perdure.sleep_sync()")
    if ctx.on_loop_thread():
        raise ConfigurationError("perdure.sleep_sync() is for sync workflows; use `await perdure.sleep()`")
    pos, wake_at, fresh = _wake_time(ctx, seconds)
    if fresh:
        ctx.blocking(ctx.record(ctx.step_record(pos, SLEEP_STEP, output=str(wake_at))))
    while True:
        remaining = (wake_at - now_ms()) / 1000
        if remaining <= 0:
            break
        ctx.wakeup.wait(remaining)
        ctx.raise_if_cancelled()
        if not ctx.wakeup.is_set():
            time.sleep(0)
    ctx.raise_if_cancelled()


# -- values ---------------------------------------------------------------------------------------------

_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    try:
        adapter = _ADAPTERS.get(tp)
    except TypeError:  # an unhashable annotation: build it each time
        return TypeAdapter(tp)
    if adapter is None:
        adapter = _ADAPTERS[tp] = TypeAdapter(tp)
    return adapter


def _dump(value: Any, what: str) -> str:
    return dump_value(value, None, "json", what)


def _load(text: str | None, tp: Any, what: str) -> Any:
    """A stored JSON value, validated into `tp` when given (None stays None)."""
    if text is None:
        return None
    if tp is None:
        return json.loads(text)
    value = json.loads(text)
    if value is None:
        return None
    try:
        return _adapter(tp).validate_python(value)
    except Exception as exc:
        raise SerializationError(f"{what} does not fit {getattr(tp, '__name__', tp)!r}: {exc}") from exc


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME:
        raise ConfigurationError(f"{what} must be at most {MAX_NAME} characters")
    return value


def _topic(topic: str | None) -> str:
    """The stored form of a topic: the default topic (None) is ''."""
    return "" if topic is None else _name(topic, "topic")


def _timeout(timeout: float | None) -> float | None:
    if timeout is not None and timeout < 0:
        raise ConfigurationError(f"timeout must not be negative, got {timeout}")
    return timeout


def _deadline(timeout: float | None) -> int | None:
    return None if timeout is None else now_ms() + int(timeout * 1000)


# -- waiting --------------------------------------------------------------------------------------------


async def _wait_for(
    store: Store,
    keys: list[str],
    check: Callable[[bool, bool], Awaitable[T | None]],
    deadline: int | None,
    poll_interval: float,
    ctx: _context.WorkflowContext | None = None,
    watch: str | None = None,
) -> T | None:
    """Call `check(final, woken)` until it returns a value; between calls sleep until one of `keys` fires
    or a re-check is due. `final` is True once the deadline (ms) has passed: that call's answer is the
    last. `woken` says a notification (not a timer) ended the previous wait. `watch`: a workflow whose
    finish ends the wait; before the first sleep it is watched (`Store.workflow_watch`) and checked again.

    Waiting for a workflow (`ctx`), a cancel of it ends the wait: its task is cancelled, and as a guard
    (on Python 3.11 a cancel racing a timeout deep in a driver can be lost) every re-check looks too.
    """
    ceiling = SAFETY_RECHECK if store.notifies_other_processes else poll_interval
    if ctx is not None:
        keys = [*keys, workflow_key(ctx.workflow_id)]  # a cancel here fires it
    delay = FIRST_RECHECK
    woken = True
    while True:
        fut = store.notifier.subscribe(keys)
        try:
            if ctx is not None:
                ctx.raise_if_cancelled()
            final = deadline is not None and now_ms() >= deadline
            got = await check(final, woken)
            if got is not None or final:
                return got
            if watch is not None and store.notifies_other_processes:
                await store.workflow_watch(watch)
                watch = None
                continue
            wait = min(delay, ceiling)
            if deadline is not None:
                wait = max(0.0, min(wait, (deadline - now_ms()) / 1000))
            try:
                async with asyncio.timeout(wait):
                    await fut
                woken = True
            except TimeoutError:
                woken = False
                delay *= 2
        finally:
            store.notifier.unsubscribe(keys, fut)


def _accept(ctx: _context.WorkflowContext, outcome: StepRecord | GuardOutcome, pos: int, name: str) -> StepRecord:
    """The checkpoint a combined write left at `pos`, kept for replay; a refusal raises."""
    if not isinstance(outcome, StepRecord):
        ctx.refused(outcome, pos)
    if outcome.name != name:
        ctx.refused("conflict", pos)
    ctx.recorded[pos] = outcome
    return outcome


def _blocking(ctx: _context.WorkflowContext, coro: Coroutine[Any, Any, T], what: str) -> T:
    """Run a durable operation of a sync workflow (or sync step) on the runtime loop and wait for it.

    The operation runs as a task a cancel (or shutdown) interrupts, so a sync workflow waiting in
    `recv_sync` stops at once.
    """
    if ctx.on_loop_thread():
        coro.close()
        raise ConfigurationError(f"perdure.{what}_sync() is for sync code; use `await perdure.{what}()` here")

    async def tracked() -> T:
        task = asyncio.current_task()
        assert task is not None
        ctx.inflight.add(task)
        try:
            ctx.raise_if_cancelled()
            return await coro
        finally:
            ctx.inflight.discard(task)

    try:
        return ctx.blocking(tracked())
    except (concurrent.futures.CancelledError, asyncio.CancelledError):
        ctx.raise_if_cancelled()
        raise


def _where(what: str) -> tuple[_context.WorkflowContext | None, _context.StepScope | None]:
    """(workflow body context, step scope): at most one is set; neither outside workflows."""
    ctx = _context.current()
    scope = _context.step_scope() if ctx is None else None
    return ctx, scope


def _runtime_for(what: str) -> Perdure:
    ctx = _context.current()
    if ctx is not None:
        return ctx.runtime
    scope = _context.step_scope()
    if scope is not None:
        return scope.ctx.runtime
    from .runtime import active_runtime

    return active_runtime()


def _not_in_workflow(what: str) -> NoReturn:
    raise NotLaunchedError(f"perdure.{what}() can only be called inside a perdure workflow (or one of its steps)")


# -- messages -------------------------------------------------------------------------------------------


def _message_id(*parts: object) -> str:
    return json.dumps(parts, separators=(",", ":"))


async def _send_plain(store: Store, destination_id: str, value: str, topic: str, message_id: str) -> None:
    await store.message_send(destination_id, topic, value, message_id)


async def _send_durable(
    ctx: _context.WorkflowContext, destination_id: str, value: str, topic: str, idempotency_key: str | None
) -> None:
    pos, rec = await ctx.next_position()
    h = args_hash((destination_id, topic), {})
    if rec is not None:
        ctx.check_replay(pos, rec, SEND_STEP, h)
        if rec.error is not None:
            raise WorkflowNotFound(destination_id)
        return
    if idempotency_key is not None:
        message_id = _message_id("key", destination_id, idempotency_key)
    else:
        message_id = _message_id("wf", ctx.workflow_id, pos)
    checkpoint = ctx.step_record(pos, SEND_STEP, args_hash=h, output="null")
    outcome = await ctx.store.message_send_step(
        destination_id,
        topic,
        value,
        message_id,
        checkpoint,
        ctx.executor_id,
        dump_error(WorkflowNotFound(destination_id)),
    )
    if _accept(ctx, outcome, pos, SEND_STEP).error is not None:
        raise WorkflowNotFound(destination_id)


def _send_parts(
    destination_id: str, message: Any, topic: str | None, idempotency_key: str | None
) -> tuple[str, str, str]:
    _name(destination_id, "destination workflow id")
    if idempotency_key is not None:
        _name(idempotency_key, "idempotency_key")
    return destination_id, _dump(message, "the message"), _topic(topic)


def _step_message_id(scope: _context.StepScope, destination_id: str, idempotency_key: str | None) -> str:
    if idempotency_key is not None:
        return _message_id("key", destination_id, idempotency_key)
    return _message_id("step", scope.ctx.workflow_id, scope.position, scope.next_write())


async def send(
    destination_id: str, message: Any, topic: str | None = None, *, idempotency_key: str | None = None
) -> None:
    """Send `message` (any JSON-ready value) to workflow `destination_id`, on `topic`.

    In a workflow it is sent exactly once, however often the workflow is replayed; in a step, once per
    step however often it runs; elsewhere `idempotency_key` makes a retried send safe. Raises
    `WorkflowNotFound` when the destination does not exist.
    """
    ctx, scope = _where("send")
    if ctx is not None:
        dest, value, tp = _send_parts(destination_id, message, topic, idempotency_key)
        return await _send_durable(ctx, dest, value, tp, idempotency_key)
    if scope is not None:
        dest, value, tp = _send_parts(destination_id, message, topic, idempotency_key)
        mid = _step_message_id(scope, dest, idempotency_key)
        return await scope.ctx.runtime._on_loop(_send_plain(scope.ctx.store, dest, value, tp, mid))
    runtime = _runtime_for("send")
    await runtime.send(destination_id, message, topic, idempotency_key=idempotency_key)


def send_sync(
    destination_id: str, message: Any, topic: str | None = None, *, idempotency_key: str | None = None
) -> None:
    """`send` for sync code."""
    ctx, scope = _where("send")
    if ctx is not None:
        dest, value, tp = _send_parts(destination_id, message, topic, idempotency_key)
        return _blocking(ctx, _send_durable(ctx, dest, value, tp, idempotency_key), "send")
    if scope is not None:
        dest, value, tp = _send_parts(destination_id, message, topic, idempotency_key)
        mid = _step_message_id(scope, dest, idempotency_key)
        return _blocking(scope.ctx, _send_plain(scope.ctx.store, dest, value, tp, mid), "send")
    runtime = _runtime_for("send")
    runtime.send_sync(destination_id, message, topic, idempotency_key=idempotency_key)


def _waiting(
    ctx: _context.WorkflowContext, pos: int, name: str, h: str | None, timeout: float | None
) -> tuple[StepRecord, int | None]:
    """The checkpoint of a wait under way (no `completed_at` yet, its deadline as output), and the deadline:
    `timeout` from the checkpoint's own start, to the millisecond."""
    started = now_ms()
    deadline = None if timeout is None else started + int(timeout * 1000)
    record = ctx.step_record(pos, name, args_hash=h, output=json.dumps(deadline), started_at=started)
    return replace(record, completed_at=None), deadline


async def _recv(ctx: _context.WorkflowContext, topic: str, timeout: float | None) -> str | None:
    """The JSON text of the received message, or None on timeout.

    One position: while it waits, its checkpoint holds the deadline (so a restarted workflow waits only
    for the rest); the message completes the checkpoint in the transaction that consumes it.
    """
    h = args_hash((topic,), {})
    pos, rec = await ctx.next_position()
    if rec is not None:
        ctx.check_replay(pos, rec, RECV_STEP, h)
        if rec.completed_at is not None:
            return rec.output
        deadline: int | None = json.loads(rec.output or "null")
        wait: StepRecord | None = None
    else:
        wait, deadline = _waiting(ctx, pos, RECV_STEP, h, timeout)
    store = ctx.store
    result = ctx.step_record(pos, RECV_STEP, args_hash=h, output="null")
    if rec is not None and rec.started_at is not None:
        result = replace(result, started_at=rec.started_at)

    async def attempt(final: bool, woken: bool) -> StepRecord | None:
        nonlocal wait
        if wait is None and not (final or woken) and not await store.message_available(ctx.workflow_id, topic):
            return None
        outcome = await store.message_receive(ctx.workflow_id, topic, ctx.executor_id, result, wait=wait, final=final)
        if isinstance(outcome, str):
            ctx.refused(outcome, pos)
        wait = None
        if outcome is None:
            return None
        stored = _accept(ctx, outcome, pos, RECV_STEP)
        return stored if stored.completed_at is not None else None

    got = await _wait_for(store, [message_key(ctx.workflow_id)], attempt, deadline, ctx.runtime.poll_interval, ctx)
    return None if got is None else got.output


@overload
async def recv(topic: str | None = None, timeout: float | None = DEFAULT_TIMEOUT, *, type: None = None) -> Any: ...
@overload
async def recv(topic: str | None = None, timeout: float | None = DEFAULT_TIMEOUT, *, type: type[T]) -> T | None: ...
async def recv(topic: str | None = None, timeout: float | None = DEFAULT_TIMEOUT, *, type: Any = None) -> Any:
    """Wait for the next message on `topic` (oldest first) and return it; None after `timeout` seconds.

    Workflows only. The wait is durable: after a restart the workflow waits only for the rest of the
    timeout, and a message is consumed in the same transaction that checkpoints it, so it is received
    exactly once. `type=Model` validates the message into that type.
    """
    ctx = _context.current()
    if ctx is None:
        _recv_outside()
    text = await _recv(ctx, _topic(topic), _timeout(timeout))
    return _load(text, type, "the received message")


@overload
def recv_sync(topic: str | None = None, timeout: float | None = DEFAULT_TIMEOUT, *, type: None = None) -> Any: ...
@overload
def recv_sync(topic: str | None = None, timeout: float | None = DEFAULT_TIMEOUT, *, type: type[T]) -> T | None: ...
def recv_sync(topic: str | None = None, timeout: float | None = DEFAULT_TIMEOUT, *, type: Any = None) -> Any:
    """`recv` for sync workflows."""
    ctx = _context.current()
    if ctx is None:
        _recv_outside()
    text = _blocking(ctx, _recv(ctx, _topic(topic), _timeout(timeout)), "recv")
    return _load(text, type, "the received message")


def _recv_outside() -> NoReturn:
    if _context.step_scope() is not None:
        raise ConfigurationError(
            "perdure.recv() cannot be called inside a step (a step may run more than once); "
            "call it in the workflow body"
        )
    _not_in_workflow("recv")


# -- events ---------------------------------------------------------------------------------------------


async def _set_event(
    ctx: _context.WorkflowContext | None, scope: _context.StepScope | None, key: str, value: str
) -> None:
    if ctx is not None:
        pos, rec = await ctx.next_position()
        h = args_hash((key,), {})
        if rec is not None:
            ctx.check_replay(pos, rec, SET_EVENT_STEP, h)
            return
        checkpoint = ctx.step_record(pos, SET_EVENT_STEP, args_hash=h, output="null")
        outcome = await ctx.store.event_set(
            ctx.workflow_id, key, value, step_id=pos, sub=0, executor_id=ctx.executor_id, checkpoint=checkpoint
        )
        if outcome != "ok":
            ctx.refused(outcome, pos)
        ctx.recorded[pos] = checkpoint
        return
    assert scope is not None
    wctx = scope.ctx
    outcome = await wctx.store.event_set(
        wctx.workflow_id, key, value, step_id=scope.position, sub=scope.next_write(), executor_id=wctx.executor_id
    )
    if outcome != "ok":
        wctx.refused(outcome, scope.position)


async def set_event(key: str, value: Any) -> None:
    """Set event `key` of this workflow to `value` (the latest value wins; every value is kept in history).

    Workflows and their steps only. Readers anywhere see it with `get_event`.
    """
    ctx, scope = _where("set_event")
    if ctx is None and scope is None:
        _not_in_workflow("set_event")
    text = _dump(value, f"the value of event {key!r}")
    _name(key, "event key")
    if scope is not None:
        return await scope.ctx.runtime._on_loop(_set_event(None, scope, key, text))
    await _set_event(ctx, None, key, text)


def set_event_sync(key: str, value: Any) -> None:
    """`set_event` for sync code."""
    ctx, scope = _where("set_event")
    owner = ctx or (scope.ctx if scope is not None else None)
    if owner is None:
        _not_in_workflow("set_event")
    text = _dump(value, f"the value of event {key!r}")
    _name(key, "event key")
    _blocking(owner, _set_event(ctx, scope, key, text), "set_event")


async def _read_event(
    store: Store,
    workflow_id: str,
    key: str,
    deadline: int | None,
    poll: float,
    ctx: _context.WorkflowContext | None = None,
) -> str | None:
    """Wait until the event is set (its JSON), the deadline passes or the workflow finished without it."""

    async def check(final: bool, woken: bool) -> str | None:
        value = await store.event_get(workflow_id, key)
        if value is not None or final:
            return value
        status = (await store.workflow_statuses([workflow_id])).get(workflow_id)
        if status in TERMINAL_STATUSES:
            return await store.event_get(workflow_id, key) or "null"
        return None

    keys = [event_key(workflow_id, key), workflow_key(workflow_id)]
    got = await _wait_for(store, keys, check, deadline, poll, ctx, watch=workflow_id)
    return None if got == "null" else got


async def _get_event_durable(
    ctx: _context.WorkflowContext, workflow_id: str, key: str, timeout: float | None
) -> str | None:
    """`get_event` in a workflow body: one position, whose checkpoint holds the deadline while it waits
    and the value seen (JSON, or None) once it returns."""
    h = args_hash((workflow_id, key), {})
    pos, rec = await ctx.next_position()
    store = ctx.store
    if rec is not None:
        ctx.check_replay(pos, rec, GET_EVENT_STEP, h)
        if rec.completed_at is not None:
            return None if rec.output in (None, "null") else rec.output
        deadline: int | None = json.loads(rec.output or "null")
        started = rec.started_at
    else:
        value = await store.event_get(workflow_id, key)
        if value is not None:
            await ctx.record(ctx.step_record(pos, GET_EVENT_STEP, args_hash=h, output=value))
            return value
        waiting, deadline = _waiting(ctx, pos, GET_EVENT_STEP, h, timeout)
        await ctx.record(waiting)
        started = waiting.started_at
    value = await _read_event(store, workflow_id, key, deadline, ctx.runtime.poll_interval, ctx)
    done = ctx.step_record(pos, GET_EVENT_STEP, args_hash=h, output=value or "null", started_at=started)
    outcome = await store.step_complete(done, ctx.executor_id)
    if outcome != "ok":
        ctx.refused(outcome, pos)
    ctx.recorded[pos] = done
    return value


@overload
async def get_event(
    workflow_id: str, key: str, timeout: float | None = DEFAULT_TIMEOUT, *, type: None = None
) -> Any: ...
@overload
async def get_event(
    workflow_id: str, key: str, timeout: float | None = DEFAULT_TIMEOUT, *, type: type[T]
) -> T | None: ...
async def get_event(workflow_id: str, key: str, timeout: float | None = DEFAULT_TIMEOUT, *, type: Any = None) -> Any:
    """The latest value of event `key` of a workflow, waiting up to `timeout` seconds for it to be set.

    None when the timeout passes first, or when the workflow finished without setting it. In a workflow
    body the answer is checkpointed (a replay sees the same value). `type=Model` validates the value.
    """
    _name(workflow_id, "workflow_id")
    _name(key, "event key")
    ctx = _context.current()
    if ctx is not None:
        text = await _get_event_durable(ctx, workflow_id, key, _timeout(timeout))
        return _load(text, type, f"event {key!r}")
    return await _runtime_for("get_event").get_event(workflow_id, key, timeout, type=type)


@overload
def get_event_sync(
    workflow_id: str, key: str, timeout: float | None = DEFAULT_TIMEOUT, *, type: None = None
) -> Any: ...
@overload
def get_event_sync(
    workflow_id: str, key: str, timeout: float | None = DEFAULT_TIMEOUT, *, type: type[T]
) -> T | None: ...
def get_event_sync(workflow_id: str, key: str, timeout: float | None = DEFAULT_TIMEOUT, *, type: Any = None) -> Any:
    """`get_event` for sync code."""
    _name(workflow_id, "workflow_id")
    _name(key, "event key")
    ctx, scope = _where("get_event")
    if ctx is not None:
        text = _blocking(ctx, _get_event_durable(ctx, workflow_id, key, _timeout(timeout)), "get_event")
        return _load(text, type, f"event {key!r}")
    runtime = _runtime_for("get_event")
    coro = runtime.get_event(workflow_id, key, timeout, type=type)
    if scope is not None:
        return _blocking(scope.ctx, coro, "get_event")
    return runtime.call_blocking(coro)


async def _get_all_events_durable(ctx: _context.WorkflowContext, workflow_id: str) -> dict[str, Any]:
    pos, rec = await ctx.next_position()
    h = args_hash((workflow_id,), {})
    if rec is not None:
        ctx.check_replay(pos, rec, GET_ALL_EVENTS_STEP, h)
        return dict(json.loads(rec.output or "{}"))
    values = {k: json.loads(v) for k, v in (await ctx.store.event_get_all(workflow_id)).items()}
    await ctx.record(ctx.step_record(pos, GET_ALL_EVENTS_STEP, args_hash=h, output=json.dumps(values)))
    return values


async def get_all_events(workflow_id: str) -> dict[str, Any]:
    """The latest value of every event of a workflow (JSON values), by key."""
    _name(workflow_id, "workflow_id")
    ctx = _context.current()
    if ctx is not None:
        return await _get_all_events_durable(ctx, workflow_id)
    return await _runtime_for("get_all_events").get_all_events(workflow_id)


def get_all_events_sync(workflow_id: str) -> dict[str, Any]:
    """`get_all_events` for sync code."""
    _name(workflow_id, "workflow_id")
    ctx, scope = _where("get_all_events")
    if ctx is not None:
        return _blocking(ctx, _get_all_events_durable(ctx, workflow_id), "get_all_events")
    runtime = _runtime_for("get_all_events")
    if scope is not None:
        return _blocking(scope.ctx, runtime.get_all_events(workflow_id), "get_all_events")
    return runtime.call_blocking(runtime.get_all_events(workflow_id))


# -- streams --------------------------------------------------------------------------------------------


async def _stream_op(
    ctx: _context.WorkflowContext | None, scope: _context.StepScope | None, key: str, value: str | None
) -> None:
    name = WRITE_STREAM_STEP if value is not None else CLOSE_STREAM_STEP
    if ctx is not None:
        pos, rec = await ctx.next_position()
        h = args_hash((key,), {})
        if rec is not None:
            ctx.check_replay(pos, rec, name, h)
            return
        checkpoint = ctx.step_record(pos, name, args_hash=h, output="null")
        outcome = await ctx.store.stream_write(
            ctx.workflow_id, key, value, step_id=pos, sub=0, executor_id=ctx.executor_id, checkpoint=checkpoint
        )
        wctx, where = ctx, pos
    else:
        assert scope is not None
        wctx, where = scope.ctx, scope.position
        outcome = await wctx.store.stream_write(
            wctx.workflow_id, key, value, step_id=where, sub=scope.next_write(), executor_id=wctx.executor_id
        )
    if outcome == "closed":
        raise StreamClosed(wctx.workflow_id, key)
    if outcome != "ok":
        wctx.refused(outcome, where)
    if ctx is not None:
        ctx.recorded[where] = checkpoint


def _stream_where(what: str) -> tuple[_context.WorkflowContext | None, _context.StepScope | None, Perdure]:
    ctx, scope = _where(what)
    if ctx is not None:
        return ctx, None, ctx.runtime
    if scope is not None:
        return None, scope, scope.ctx.runtime
    _not_in_workflow(what)


async def write_stream(key: str, value: Any) -> None:
    """Append `value` to this workflow's stream `key` (workflows and their steps only).

    Each value gets the next offset (0, 1, 2, ...). A value written by a step that runs again is not
    written twice. Raises `StreamClosed` after `close_stream(key)`.
    """
    ctx, scope, runtime = _stream_where("write_stream")
    _name(key, "stream key")
    text = _dump(value, f"a value of stream {key!r}")
    await runtime._on_loop(_stream_op(ctx, scope, key, text))


def write_stream_sync(key: str, value: Any) -> None:
    """`write_stream` for sync code."""
    ctx, scope, _ = _stream_where("write_stream")
    _name(key, "stream key")
    text = _dump(value, f"a value of stream {key!r}")
    owner = ctx if ctx is not None else scope.ctx  # type: ignore[union-attr]
    _blocking(owner, _stream_op(ctx, scope, key, text), "write_stream")


async def close_stream(key: str) -> None:
    """Close this workflow's stream `key`: readers end after its last value. Closing twice is harmless."""
    ctx, scope, runtime = _stream_where("close_stream")
    _name(key, "stream key")
    await runtime._on_loop(_stream_op(ctx, scope, key, None))


def close_stream_sync(key: str) -> None:
    """`close_stream` for sync code."""
    ctx, scope, _ = _stream_where("close_stream")
    _name(key, "stream key")
    owner = ctx if ctx is not None else scope.ctx  # type: ignore[union-attr]
    _blocking(owner, _stream_op(ctx, scope, key, None), "close_stream")


async def _stream_batch(
    store: Store, workflow_id: str, key: str, offset: int, poll: float
) -> tuple[list[tuple[int, str]], bool]:
    """The next stored values from `offset` (waiting for some), and whether the stream has ended."""

    async def check(final: bool, woken: bool) -> tuple[list[tuple[int, str]], bool] | None:
        rows = await store.stream_read(workflow_id, key, offset, STREAM_BATCH)
        if not rows:
            status = (await store.workflow_statuses([workflow_id])).get(workflow_id)
            if status is None:
                raise WorkflowNotFound(workflow_id)
            if status not in TERMINAL_STATUSES:
                return None
            # Finished: what it wrote before finishing is all there will be.
            rows = await store.stream_read(workflow_id, key, offset, STREAM_BATCH)
            if not rows:
                return [], True
        values = [(o, v) for o, v in rows if v is not None]
        return values, len(values) < len(rows)

    got = await _wait_for(
        store, [stream_key(workflow_id, key), workflow_key(workflow_id)], check, None, poll, watch=workflow_id
    )
    assert got is not None
    return got


def read_stream(workflow_id: str, key: str, offset: int = 0, *, type: Any = None) -> AsyncIterator[Any]:
    """Iterate over a workflow's stream `key` from `offset`: the stored values, then live ones as they are
    written. Ends when the stream is closed or the workflow has finished.

    The n-th value yielded has offset `offset + n`: a reader that disconnects resumes with the offset of
    the first value it did not get, and sees every later value exactly once. `type=Model` validates.
    """
    return _runtime_for("read_stream").read_stream(workflow_id, key, offset, type=type)


def read_stream_sync(workflow_id: str, key: str, offset: int = 0, *, type: Any = None) -> Iterator[Any]:
    """`read_stream` for sync code: a plain iterator."""
    return _runtime_for("read_stream").read_stream_sync(workflow_id, key, offset, type=type)


# -- the API of Perdure and Client ----------------------------------------------------------------------


class Messaging:
    """`send`, `get_event`, `get_all_events`, `read_stream` on a runtime or a Client (mixed into both).

    On a runtime, calls made inside one of its workflows are durable operations of that workflow (as
    with the module-level functions); everything else goes straight to the database.
    """

    poll_interval: float

    if TYPE_CHECKING:

        @property
        def store(self) -> Store: ...

        async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T: ...

        def _blocking(self, coro: Coroutine[Any, Any, T]) -> T: ...

    def _own_context(self) -> _context.WorkflowContext | None:
        ctx = _context.current()
        return ctx if ctx is not None and ctx.runtime is self else None

    async def send(
        self, destination_id: str, message: Any, topic: str | None = None, *, idempotency_key: str | None = None
    ) -> None:
        """Send `message` to workflow `destination_id` (see `perdure.send`). With `idempotency_key`, sending
        again with the same key (and destination) does nothing: retries are safe."""
        dest, value, tp = _send_parts(destination_id, message, topic, idempotency_key)
        ctx = self._own_context()
        if ctx is not None:
            return await _send_durable(ctx, dest, value, tp, idempotency_key)
        scope = _context.step_scope()
        if scope is not None and scope.ctx.runtime is self:
            message_id = _step_message_id(scope, dest, idempotency_key)
        elif idempotency_key is not None:
            message_id = _message_id("key", dest, idempotency_key)
        else:
            message_id = _message_id("id", uuid.uuid4().hex)
        await self._on_loop(_send_plain(self.store, dest, value, tp, message_id))

    @overload
    async def get_event(
        self, workflow_id: str, key: str, timeout: float | None = DEFAULT_TIMEOUT, *, type: None = None
    ) -> Any: ...
    @overload
    async def get_event(
        self, workflow_id: str, key: str, timeout: float | None = DEFAULT_TIMEOUT, *, type: type[T]
    ) -> T | None: ...
    async def get_event(
        self, workflow_id: str, key: str, timeout: float | None = DEFAULT_TIMEOUT, *, type: Any = None
    ) -> Any:
        """The latest value of event `key`, waiting up to `timeout` seconds (see `perdure.get_event`)."""
        _name(workflow_id, "workflow_id")
        _name(key, "event key")
        ctx = self._own_context()
        if ctx is not None:
            text = await _get_event_durable(ctx, workflow_id, key, _timeout(timeout))
        else:
            deadline = _deadline(_timeout(timeout))
            text = await self._on_loop(_read_event(self.store, workflow_id, key, deadline, self.poll_interval))
        return _load(text, type, f"event {key!r}")

    async def get_all_events(self, workflow_id: str) -> dict[str, Any]:
        """The latest value of every event of the workflow, by key (JSON values)."""
        _name(workflow_id, "workflow_id")
        ctx = self._own_context()
        if ctx is not None:
            return await _get_all_events_durable(ctx, workflow_id)
        stored = await self._on_loop(self.store.event_get_all(workflow_id))
        return {k: json.loads(v) for k, v in stored.items()}

    async def read_stream(self, workflow_id: str, key: str, offset: int = 0, *, type: Any = None) -> AsyncIterator[Any]:
        """The values of stream `key` from `offset` on, stored then live (see `perdure.read_stream`)."""
        _name(workflow_id, "workflow_id")
        _name(key, "stream key")
        if not isinstance(offset, int) or offset < 0:
            raise ConfigurationError(f"offset must be a non-negative integer, got {offset!r}")
        while True:
            batch, ended = await self._on_loop(_stream_batch(self.store, workflow_id, key, offset, self.poll_interval))
            for at, text in batch:
                offset = at + 1
                yield _load(text, type, f"a value of stream {key!r}")
            if ended:
                return

    def send_sync(
        self, destination_id: str, message: Any, topic: str | None = None, *, idempotency_key: str | None = None
    ) -> None:
        self._blocking(self.send(destination_id, message, topic, idempotency_key=idempotency_key))

    def get_event_sync(
        self, workflow_id: str, key: str, timeout: float | None = DEFAULT_TIMEOUT, *, type: Any = None
    ) -> Any:
        return self._blocking(self.get_event(workflow_id, key, timeout, type=type))

    def get_all_events_sync(self, workflow_id: str) -> dict[str, Any]:
        return self._blocking(self.get_all_events(workflow_id))

    def read_stream_sync(self, workflow_id: str, key: str, offset: int = 0, *, type: Any = None) -> Iterator[Any]:
        _name(workflow_id, "workflow_id")
        _name(key, "stream key")
        if not isinstance(offset, int) or offset < 0:
            raise ConfigurationError(f"offset must be a non-negative integer, got {offset!r}")
        return self._read_stream_sync(workflow_id, key, offset, type)

    def _read_stream_sync(self, workflow_id: str, key: str, offset: int, tp: Any) -> Iterator[Any]:
        while True:
            batch, ended = self._blocking(_stream_batch(self.store, workflow_id, key, offset, self.poll_interval))
            for at, text in batch:
                offset = at + 1
                yield _load(text, tp, f"a value of stream {key!r}")
            if ended:
                return
