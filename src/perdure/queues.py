"""Queues: `Queue` (declared at import time), `enqueue`, `debounce`, the dispatcher, queue management.

A queue holds ENQUEUED (and DELAYED) workflows until a worker takes them. Every launched runtime runs one
dispatcher that serves every queue declared in its process, plus perdure's internal queue (work a `Client`
asked for). The dispatcher dequeues through the store, and the store enforces each queue's budget inside
the dequeuing transaction, so the limits hold across processes and hosts:

- `concurrency`: workflows of the queue PENDING anywhere at once;
- `worker_concurrency`: workflows of the queue this process runs at once (counted here);
- `rate_limit=(n, seconds)`: at most n dequeues in any rolling window of that length;
- `priority=True`: lower `priority` first, FIFO among equals (otherwise FIFO);
- `partitioned=True`: every enqueue names a `partition_key`; `concurrency` and `rate_limit` apply per
  partition, and partitions take turns so none starves.

Wake-ups: an enqueue wakes this process's dispatcher at once and, on PostgreSQL, every other process's by
NOTIFY; a run that ends frees its slot and wakes the dispatcher; a DELAYED workflow or a rate window that
frees a slot is waited for exactly. A slow poll (SQLite: `poll_interval`, since other processes cannot
notify) is only the safety net.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from . import _context
from ._management import WorkflowHandle
from .errors import (
    ConfigurationError,
    DuplicateEnqueue,
    NotLaunchedError,
    PerdureError,
    UnknownWorkflowError,
    WorkflowConflictError,
)
from .serialization import dump_error, load_error
from .store.base import INTERNAL_QUEUE, Store, WorkflowRecord, WorkflowStatus, now_ms
from .store.queue_types import DequeueRequest
from .workflows import WorkflowDef, registered_workflows, workflow_def_of

if TYPE_CHECKING:
    from .runtime import Perdure
    from .schedules import Scheduler

T = TypeVar("T")
log = logging.getLogger("perdure")

OnDuplicate = Literal["raise", "return_existing"]
DEFAULT_BATCH = 100
"""At most this many workflows per dequeue when the queue sets no `worker_concurrency`."""
RATE_SLACK_MS = 2
"""Wake this long after a rate window frees a slot (clocks of the process and the database differ a little)."""
IDLE_RECHECK_NOTIFIED = 1.0
"""Seconds between safety re-checks of an idle queue on a store that notifies other processes."""

_QUEUES: dict[str, Queue] = {}
_QUEUES_LOCK = threading.Lock()


def declared_queues() -> dict[str, Queue]:
    with _QUEUES_LOCK:
        return dict(_QUEUES)


def queue_key(name: str) -> str:
    return f"queue:{name}"


# -- Queue ----------------------------------------------------------------------------------------------


def _positive_int(value: object, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{what} must be a positive integer or None, got {value!r}")
    return value


def _seconds(value: float | timedelta | None, what: str, *, allow_zero: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigurationError(f"{what} must be a number of seconds (or a timedelta), got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(f"{what} must be {'>= 0' if allow_zero else 'positive'}, got {value!r}")
    return float(value)


class Queue:
    """A named queue of workflows with flow control. Declare it once, at import time, in every process that
    enqueues on it or works it (the same name with other settings is an error).

    `concurrency`: at most this many of its workflows run at once across all processes (per partition
    when `partitioned`). `worker_concurrency`: at most this many run at once in each process.
    `rate_limit=(n, seconds)`: at most n start in any rolling window of `seconds` (per partition when
    `partitioned`). `priority=True`: `enqueue(..., priority=p)` runs lower p first. `partitioned=True`:
    every enqueue names a `partition_key`, and partitions take turns.
    """

    def __init__(
        self,
        name: str,
        concurrency: int | None = None,
        worker_concurrency: int | None = None,
        rate_limit: tuple[int, float] | None = None,
        priority: bool = False,
        partitioned: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"a queue needs a non-empty name, got {name!r}")
        if name.startswith("_perdure"):
            raise ConfigurationError(f"queue names starting with '_perdure' are reserved, got {name!r}")
        self.name = name
        self.concurrency = _positive_int(concurrency, f"Queue {name!r}: concurrency")
        self.worker_concurrency = _positive_int(worker_concurrency, f"Queue {name!r}: worker_concurrency")
        if (
            self.concurrency is not None
            and self.worker_concurrency is not None
            and self.worker_concurrency > self.concurrency
            and not partitioned
        ):
            raise ConfigurationError(
                f"Queue {name!r}: worker_concurrency ({worker_concurrency}) is more than concurrency "
                f"({concurrency}); no process could ever use it all"
            )
        self.rate_limit: tuple[int, float] | None = None
        if rate_limit is not None:
            try:
                n, period = rate_limit
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"Queue {name!r}: rate_limit must be (max_starts, seconds), got {rate_limit!r}"
                ) from None
            count = _positive_int(n, f"Queue {name!r}: rate_limit's count")
            seconds = _seconds(period, f"Queue {name!r}: rate_limit's period", allow_zero=False)
            assert count is not None and seconds is not None
            self.rate_limit = (count, seconds)
        if not isinstance(priority, bool) or not isinstance(partitioned, bool):
            raise ConfigurationError(f"Queue {name!r}: priority and partitioned are True or False")
        self.priority = priority
        self.partitioned = partitioned
        with _QUEUES_LOCK:
            existing = _QUEUES.get(name)
            if existing is not None and existing.settings != self.settings:
                raise ConfigurationError(
                    f"queue {name!r} is already declared with other settings ({existing.settings}, now "
                    f"{self.settings}); declare each queue once"
                )
            _QUEUES[name] = self
        _tell_runtime(self)

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "worker_concurrency": self.worker_concurrency,
            "rate_limit": list(self.rate_limit) if self.rate_limit is not None else None,
            "priority": self.priority,
            "partitioned": self.partitioned,
        }

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.settings.items() if v not in (None, False))
        return f"Queue({self.name!r}{', ' if shown else ''}{shown})"

    def _options(
        self,
        *,
        workflow_id: str | None,
        dedup_key: str | None,
        priority: int | None,
        partition_key: str | None,
        delay: float | timedelta | None,
        timeout: float | timedelta | None,
        on_duplicate: str,
    ) -> EnqueueOptions:
        if priority is not None and not self.priority:
            raise ConfigurationError(f"queue {self.name!r} was not declared with priority=True; priority= is refused")
        if self.partitioned and partition_key is None:
            raise ConfigurationError(f"queue {self.name!r} is partitioned: enqueue needs a partition_key")
        if not self.partitioned and partition_key is not None:
            raise ConfigurationError(f"queue {self.name!r} is not partitioned; partition_key= is refused")
        return EnqueueOptions.check(
            workflow_id=workflow_id,
            dedup_key=dedup_key,
            priority=priority,
            partition_key=partition_key,
            delay=delay,
            timeout=timeout,
            on_duplicate=on_duplicate,
        )

    async def enqueue(
        self,
        fn: Callable[..., Any],
        *args: Any,
        workflow_id: str | None = None,
        dedup_key: str | None = None,
        priority: int | None = None,
        partition_key: str | None = None,
        delay: float | timedelta | None = None,
        timeout: float | timedelta | None = None,
        on_duplicate: OnDuplicate = "raise",
        **kwargs: Any,
    ) -> WorkflowHandle:
        """Put a run of workflow `fn(*args, **kwargs)` on this queue; it stays ENQUEUED until a worker takes it.

        `workflow_id`: the run's id (the same id twice enqueues once). `dedup_key`: while a run with this
        key is queued or running, another enqueue with it raises `DuplicateEnqueue` (carrying the existing
        id), or returns the existing run's handle with `on_duplicate="return_existing"`. `priority`: lower
        runs first (queues declared with `priority=True`). `partition_key`: required on partitioned queues.
        `delay` (seconds or timedelta): DELAYED until then. `timeout`: cancels the run that long after it is
        dequeued. Inside a workflow the enqueue is durable: a replay returns the same handle.
        """
        defn = workflow_def_of(fn)
        opts = self._options(
            workflow_id=workflow_id,
            dedup_key=dedup_key,
            priority=priority,
            partition_key=partition_key,
            delay=delay,
            timeout=timeout,
            on_duplicate=on_duplicate,
        )
        runtime = _runtime("Queue.enqueue")
        ctx = _context.current()
        return await runtime._on_loop(_enqueue_here(runtime, ctx, self.name, defn, args, kwargs, opts))

    def enqueue_sync(
        self,
        fn: Callable[..., Any],
        *args: Any,
        workflow_id: str | None = None,
        dedup_key: str | None = None,
        priority: int | None = None,
        partition_key: str | None = None,
        delay: float | timedelta | None = None,
        timeout: float | timedelta | None = None,
        on_duplicate: OnDuplicate = "raise",
        **kwargs: Any,
    ) -> WorkflowHandle:
        """`enqueue` for sync code (a sync workflow, or a program using `with Perdure(...)`)."""
        defn = workflow_def_of(fn)
        opts = self._options(
            workflow_id=workflow_id,
            dedup_key=dedup_key,
            priority=priority,
            partition_key=partition_key,
            delay=delay,
            timeout=timeout,
            on_duplicate=on_duplicate,
        )
        runtime = _runtime("Queue.enqueue_sync")
        ctx = _context.current()
        return runtime.call_blocking(_enqueue_here(runtime, ctx, self.name, defn, args, kwargs, opts))


def _runtime(what: str) -> Perdure:
    from .runtime import active_runtime

    try:
        return active_runtime()
    except NotLaunchedError:
        raise NotLaunchedError(
            f"{what} needs a launched perdure runtime in this process (`async with Perdure(...)`); "
            "from a process that does not run workflows, use `Client(...).enqueue(queue_name, workflow_name, ...)`"
        ) from None


def _tell_runtime(queue: Queue) -> None:
    """A queue declared after launch: the running dispatcher starts serving it."""
    from . import runtime as runtime_module

    rt = runtime_module._active
    engine = getattr(rt, "_queue_engine", None) if rt is not None else None
    if rt is not None and engine is not None and rt._loop is not None:
        rt._loop.call_soon_threadsafe(engine.add_queue, queue)


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    workflow_id: str | None = None
    dedup_key: str | None = None
    priority: int = 0
    partition_key: str | None = None
    delay_ms: int | None = None
    timeout_ms: int | None = None
    on_duplicate: OnDuplicate = "raise"

    @classmethod
    def check(
        cls,
        *,
        workflow_id: str | None,
        dedup_key: str | None,
        priority: int | None,
        partition_key: str | None,
        delay: float | timedelta | None,
        timeout: float | timedelta | None,
        on_duplicate: str,
    ) -> EnqueueOptions:
        for what, value in (("workflow_id", workflow_id), ("dedup_key", dedup_key), ("partition_key", partition_key)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")
        if workflow_id is not None and len(workflow_id) > 512:
            raise ConfigurationError("workflow_id must be at most 512 characters")
        if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
            raise ConfigurationError(f"priority must be an integer (lower runs first), got {priority!r}")
        if on_duplicate not in ("raise", "return_existing"):
            raise ConfigurationError(f"on_duplicate must be 'raise' or 'return_existing', got {on_duplicate!r}")
        delay_s = _seconds(delay, "delay", allow_zero=True)
        timeout_s = _seconds(timeout, "timeout", allow_zero=False)
        return cls(
            workflow_id=workflow_id,
            dedup_key=dedup_key,
            priority=priority or 0,
            partition_key=partition_key,
            delay_ms=int(delay_s * 1000) if delay_s else None,
            timeout_ms=int(timeout_s * 1000) if timeout_s is not None else None,
            on_duplicate=cast(OnDuplicate, on_duplicate),
        )

    def record(
        self,
        *,
        workflow_id: str,
        name: str,
        inputs: str,
        serializer: str,
        queue_name: str,
        app_version: str | None,
        parent_id: str | None,
    ) -> WorkflowRecord:
        t = now_ms()
        return WorkflowRecord(
            workflow_id=workflow_id,
            name=name,
            status=WorkflowStatus.DELAYED if self.delay_ms else WorkflowStatus.ENQUEUED,
            inputs=inputs,
            created_at=t,
            updated_at=t,
            serializer=serializer,
            app_version=app_version,
            parent_id=parent_id,
            timeout_ms=self.timeout_ms,
            queue_name=queue_name,
            dedup_key=self.dedup_key,
            priority=self.priority,
            partition_key=self.partition_key,
            delay_until=t + self.delay_ms if self.delay_ms else None,
        )


async def submit(store: Store, owner: Any, record: WorkflowRecord, on_duplicate: OnDuplicate) -> WorkflowHandle:
    """Write an enqueue; the same id twice is one run, a held dedup key raises or returns the holder."""
    for _ in range(10):
        outcome = await store.queue_enqueue(record)
        if outcome.inserted:
            return WorkflowHandle(record.workflow_id, owner)
        if outcome.existing is not None:
            if outcome.existing.name != record.name:
                raise WorkflowConflictError(
                    f"workflow id {record.workflow_id!r} is already used by a run of {outcome.existing.name!r}, "
                    f"not {record.name!r}"
                )
            return WorkflowHandle(record.workflow_id, owner)
        if outcome.duplicate_of is not None:
            if on_duplicate == "return_existing":
                return WorkflowHandle(outcome.duplicate_of, owner)
            assert record.queue_name is not None and record.dedup_key is not None
            raise DuplicateEnqueue(record.queue_name, record.dedup_key, outcome.duplicate_of)
        # The dedup key's holder finished between our statements: the key is free now, try again.
    raise PerdureError(f"could not enqueue {record.workflow_id!r}: its dedup key kept changing hands")


async def _enqueue_here(
    runtime: Perdure,
    ctx: _context.WorkflowContext | None,
    queue_name: str,
    defn: WorkflowDef,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    opts: EnqueueOptions,
) -> WorkflowHandle:
    """On the runtime loop. Inside a workflow, the enqueue is recorded at the workflow's next position."""
    if not runtime.launched:
        raise NotLaunchedError("the perdure runtime is not launched (or was shut down)")
    inputs = defn.codec.dump_args(args, kwargs)  # bad input is refused before anything is written

    def record(wid: str, parent: str | None) -> WorkflowRecord:
        return opts.record(
            workflow_id=wid,
            name=defn.name,
            inputs=inputs,
            serializer=defn.codec.serializer,
            queue_name=queue_name,
            app_version=runtime.app_version,
            parent_id=parent,
        )

    if ctx is None:
        fresh = record(opts.workflow_id or uuid.uuid4().hex, None)
        return await submit(runtime.store, runtime, fresh, opts.on_duplicate)
    step_name = f"perdure.enqueue:{defn.name}"
    pos, rec = await ctx.next_position()
    if rec is not None:
        ctx.check_replay(pos, rec, step_name, None)
        if rec.error is not None:
            raise load_error(rec.error)
        assert rec.child_id is not None
        return WorkflowHandle(rec.child_id, runtime)
    wid = opts.workflow_id or f"{ctx.workflow_id}-{pos}"
    try:
        handle = await submit(runtime.store, runtime, record(wid, ctx.workflow_id), opts.on_duplicate)
    except DuplicateEnqueue as exc:
        await ctx.record(ctx.step_record(pos, step_name, error=dump_error(exc)))
        raise
    await ctx.record(ctx.step_record(pos, step_name, child_id=handle.workflow_id))
    return handle


# -- debouncing ------------------------------------------------------------------------------------------


async def debounce(
    fn: Callable[..., Any],
    *args: Any,
    key: str,
    period: float | timedelta,
    max_wait: float | timedelta | None = None,
    queue: Queue | None = None,
    **kwargs: Any,
) -> WorkflowHandle:
    """Run workflow `fn` once, `period` after the last of a burst of calls with the same `key`, with the
    last call's arguments. `max_wait` caps the wait from the first call of the burst. Calls after the run
    has started begin a new burst. The run goes on `queue` (default: perdure's internal queue).

    Returns the handle of the pending run (the same for every call of a burst). Inside a workflow the call
    is durable: a replay returns the same handle.
    """
    defn = workflow_def_of(fn)
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"debounce key must be a non-empty string, got {key!r}")
    period_s = _seconds(period, "period", allow_zero=False)
    max_wait_s = _seconds(max_wait, "max_wait", allow_zero=False)
    assert period_s is not None
    if queue is not None and (queue.partitioned or queue.priority):
        raise ConfigurationError(f"debounce on queue {queue.name!r}: partitioned and priority queues are refused")
    runtime = _runtime("perdure.debounce")
    ctx = _context.current()
    return await runtime._on_loop(
        _debounce_here(runtime, ctx, defn, args, kwargs, key, period_s, max_wait_s, queue.name if queue else None)
    )


def debounce_sync(
    fn: Callable[..., Any],
    *args: Any,
    key: str,
    period: float | timedelta,
    max_wait: float | timedelta | None = None,
    queue: Queue | None = None,
    **kwargs: Any,
) -> WorkflowHandle:
    """`debounce` for sync code."""
    runtime = _runtime("perdure.debounce_sync")
    coro = debounce(fn, *args, key=key, period=period, max_wait=max_wait, queue=queue, **kwargs)
    ctx = _context.current()
    if ctx is None:
        return runtime.call_blocking(coro)

    async def bound() -> WorkflowHandle:
        token = _context.bind(ctx)
        try:
            return await coro
        finally:
            _context.unbind(token)

    return runtime.call_blocking(bound())


async def _debounce_here(
    runtime: Perdure,
    ctx: _context.WorkflowContext | None,
    defn: WorkflowDef,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    key: str,
    period_s: float,
    max_wait_s: float | None,
    queue_name: str | None,
) -> WorkflowHandle:
    if not runtime.launched:
        raise NotLaunchedError("the perdure runtime is not launched (or was shut down)")
    inputs = defn.codec.dump_args(args, kwargs)
    step_name = f"perdure.debounce:{defn.name}"
    pos = -1
    if ctx is not None:
        pos, rec = await ctx.next_position()
        if rec is not None:
            ctx.check_replay(pos, rec, step_name, None)
            assert rec.child_id is not None
            return WorkflowHandle(rec.child_id, runtime)
    t = now_ms()
    period_ms = int(period_s * 1000)
    max_wait_ms = int(max_wait_s * 1000) if max_wait_s is not None else None
    first_wait = period_ms if max_wait_ms is None else min(period_ms, max_wait_ms)
    record = WorkflowRecord(
        workflow_id=uuid.uuid4().hex,
        name=defn.name,
        status=WorkflowStatus.DELAYED,
        inputs=inputs,
        created_at=t,
        updated_at=t,
        serializer=defn.codec.serializer,
        app_version=runtime.app_version,
        parent_id=ctx.workflow_id if ctx is not None else None,
        queue_name=queue_name or INTERNAL_QUEUE,
        delay_until=t + first_wait,
    )
    wid, _ = await runtime.store.queue_debounce(record, f"{defn.name}:{key}", max_wait_ms)
    if ctx is not None:
        await ctx.record(ctx.step_record(pos, step_name, child_id=wid))
    return WorkflowHandle(wid, runtime)


# -- the dispatcher ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _QueueState:
    name: str
    queue: Queue | None
    """None: perdure's internal queue (no limits; only workflows whose code is here)."""
    running: set[str] = field(default_factory=set)
    dirty: bool = True
    next_at: float = 0.0


class QueueEngine:
    """The dispatcher of one runtime: dequeues within each queue's budget and runs what it took; also runs
    the scheduler of the `@scheduled` workflows declared in this process."""

    def __init__(self, runtime: Perdure) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self._states: dict[str, _QueueState] = {}
        self._wake: asyncio.Event | None = None
        self._main: asyncio.Task[None] | None = None
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self.scheduler: Scheduler | None = None
        notified = self.store.notifies_other_processes
        self.idle_poll = max(IDLE_RECHECK_NOTIFIED, runtime.poll_interval) if notified else runtime.poll_interval
        self.busy_poll = runtime.poll_interval
        self._add(INTERNAL_QUEUE, None)
        for queue in declared_queues().values():
            self._add(queue.name, queue)

    def _add(self, name: str, queue: Queue | None) -> _QueueState:
        st = self._states.get(name)
        if st is None:
            st = self._states[name] = _QueueState(name, queue)
        else:
            st.queue = queue
        return st

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        from .schedules import Scheduler, declared_schedules

        self._wake = asyncio.Event()
        await self.store.queue_register(
            [(q.name, json.dumps(q.settings, sort_keys=True)) for q in declared_queues().values()]
        )
        for name in self._states:
            self._watch(name)
        self._main = asyncio.create_task(self._run(), name="perdure-dispatcher")
        schedules = declared_schedules()
        if schedules:
            self.scheduler = Scheduler(self.runtime, schedules)
            await self.scheduler.start()

    async def stop(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        tasks = [t for t in (self._main, *self._watchers.values()) if t is not None]
        if self.scheduler is not None:
            await self.scheduler.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._main = None
        self._watchers.clear()

    def add_queue(self, queue: Queue) -> None:
        """On the loop: a queue declared after launch."""
        st = self._add(queue.name, queue)
        if self._wake is not None:
            self._watch(queue.name)
            self.runtime.loop.create_task(
                self.store.queue_register([(queue.name, json.dumps(queue.settings, sort_keys=True))])
            )
        self.poke(st.name)

    def poke(self, name: str) -> None:
        """Something may be ready on queue `name`: dequeue soon."""
        st = self._states.get(name)
        if st is not None:
            st.dirty = True
            if self._wake is not None:
                self._wake.set()

    def _watch(self, name: str) -> None:
        if name not in self._watchers:
            self._watchers[name] = asyncio.create_task(self._watcher(name), name=f"perdure-queue-watch:{name}")

    async def _watcher(self, name: str) -> None:
        key = queue_key(name)
        while not self._stopping:
            # Registered again at once after each wake (no await in between), so no firing is missed.
            await self.store.notifier.wait(key, 3600)
            self.poke(name)

    # -- the loop --------------------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._wake.clear()
            for st in list(self._states.values()):
                if st.dirty or loop.time() >= st.next_at:
                    by_event = st.dirty
                    st.dirty = False
                    try:
                        await self._attempt(st, by_event)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("perdure: dequeue from queue %r failed, will retry: %s", st.name, exc)
                        st.next_at = loop.time() + max(self.busy_poll, 0.5)
            wait = min((st.next_at for st in self._states.values()), default=math.inf) - loop.time()
            if wait > 0:
                # `asyncio.timeout`, not `wait_for`, which on 3.11 can swallow the cancel of `stop()`.
                try:
                    async with asyncio.timeout(None if math.isinf(wait) else wait):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    def _request(self, st: _QueueState, limit: int) -> DequeueRequest:
        rt = self.runtime
        q = st.queue
        if q is None:
            return DequeueRequest(st.name, rt.executor_id, limit, rt.app_version, names=tuple(registered_workflows()))
        return DequeueRequest(
            st.name,
            rt.executor_id,
            limit,
            rt.app_version,
            concurrency=q.concurrency,
            rate_limit=q.rate_limit[0] if q.rate_limit else None,
            rate_period_ms=int(q.rate_limit[1] * 1000) if q.rate_limit else None,
            partitioned=q.partitioned,
            wake_others=q.worker_concurrency is not None,
        )

    async def _attempt(self, st: _QueueState, by_event: bool) -> None:
        loop = asyncio.get_running_loop()
        wc = st.queue.worker_concurrency if st.queue is not None else None
        capacity = DEFAULT_BATCH if wc is None else wc - len(st.running)
        if capacity <= 0 or self.runtime._closing:
            st.next_at = math.inf  # a run of ours that ends wakes us
            return
        request = self._request(st, capacity)
        started = loop.time()
        if not by_event:
            peek = await self.store.queue_peek(request)
            if not peek.ready:
                # Work waits but the budget is spent (by other processes): look again soon.
                st.next_at = started + (self.busy_poll if peek.backlog else self.idle_poll)
                if peek.due_in is not None:
                    st.next_at = min(st.next_at, started + max(0, peek.due_in) / 1000)
                if peek.backlog and peek.rate_free_in is not None:
                    st.next_at = min(st.next_at, started + (max(0, peek.rate_free_in) + RATE_SLACK_MS) / 1000)
                return
        result = await self.store.queue_dequeue(request)
        await self._dispatch(st, result.records)
        if len(result.records) >= capacity and result.backlog:
            st.dirty = True  # took all we could; take more at once (capacity permitting)
        st.next_at = started + (self.busy_poll if result.backlog else self.idle_poll)
        if result.next_due is not None:
            st.next_at = min(st.next_at, started + max(0, result.next_due - result.now) / 1000)
        if result.backlog and result.rate_free_at is not None:
            st.next_at = min(st.next_at, started + (max(0, result.rate_free_at - result.now) + RATE_SLACK_MS) / 1000)

    async def _dispatch(self, st: _QueueState, records: list[WorkflowRecord]) -> None:
        if not records:
            return
        rt = self.runtime
        registry = registered_workflows()
        steps = await self.store.queue_steps([r.workflow_id for r in records])
        failures = []
        for record in records:
            wid = record.workflow_id
            defn = registry.get(record.name)
            if defn is None:
                failures.append(
                    self._fail(
                        record,
                        UnknownWorkflowError(
                            f"workflow {record.name!r} (dequeued from queue {record.queue_name!r}) is not registered "
                            f"in the process that took it (executor {rt.executor_id!r}); import the module that "
                            "defines it in every process that works this queue"
                        ),
                    )
                )
                continue
            limit = defn.max_recovery_attempts or rt.max_recovery_attempts
            if record.recovery_attempts > limit:
                err = RuntimeError(f"recovered {record.recovery_attempts - 1} times without finishing")
                failures.append(self._fail(record, err, WorkflowStatus.RETRIES_EXCEEDED))
                continue
            if wid in rt._running:
                await rt._dispatch_stored(defn, record)
            else:
                try:
                    args, kwargs = defn.codec.load_args(record.inputs or "{}")
                except Exception as exc:
                    failures.append(self._fail(record, exc))
                    continue
                recorded = {s.step_id: s for s in steps.get(wid, ())}
                rt._dispatch(defn, record, args, kwargs, recorded=recorded)
            run = rt._running.get(wid)
            if run is not None and st.queue is not None:
                st.running.add(wid)
                run.done.add_done_callback(functools.partial(self._ended, st, wid))
        if failures:
            await asyncio.gather(*failures)

    async def _fail(
        self, record: WorkflowRecord, exc: BaseException, status: WorkflowStatus = WorkflowStatus.ERROR
    ) -> None:
        log.error("perdure: workflow %s (%s) cannot run: %s", record.workflow_id, record.name, exc)
        rt = self.runtime
        if status == WorkflowStatus.ERROR:
            await self.store.workflow_finish(record.workflow_id, rt.executor_id, "ERROR", None, dump_error(exc))
        else:
            await self.store.workflow_set_status(record.workflow_id, status, error=dump_error(exc))
        rt._notify_changed(record.workflow_id)

    def _ended(self, st: _QueueState, workflow_id: str, _: object) -> None:
        st.running.discard(workflow_id)
        self.poke(st.name)


def resume_queue(record: WorkflowRecord) -> str | None:
    """The queue a resumed workflow goes back to: its own, so the queue's limits hold (None: not queued)."""
    if record.queue_name is not None and record.queue_name != INTERNAL_QUEUE:
        return record.queue_name
    return None


__all__ = [
    "Queue",
    "QueueEngine",
    "debounce",
    "debounce_sync",
    "declared_queues",
]
