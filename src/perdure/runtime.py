"""`Perdure`: the in-process runtime. Configuration, launch and shutdown, starting and recovering work.

A launched runtime owns one store and one event loop. Async workflows run as tasks on that loop; sync
workflows run on worker threads and reach the loop for every durable operation. One runtime may be
launched per process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from . import _context, _executors
from ._loopthread import LoopThread
from ._management import Manager, WorkflowHandle, cancelled_with, decode_outcome
from .errors import (
    ConfigurationError,
    NotLaunchedError,
    OwnershipLost,
    SerializationError,
    UnknownWorkflowError,
    WorkflowCancelled,
    WorkflowConflictError,
    WorkflowNotFound,
)
from .queue_admin import QueueAdmin
from .queues import QueueEngine, resume_queue
from .serialization import dump_error, load_error
from .store import create_store
from .store.base import (
    INTERNAL_QUEUE,
    RESUMABLE_STATUSES,
    ClaimRequest,
    Store,
    WorkflowFilter,
    WorkflowRecord,
    WorkflowStatus,
    now_ms,
)
from .store.notify import workflow_key
from .workflows import WorkflowDef, registered_workflows, workflow_def_of

T = TypeVar("T")
log = logging.getLogger("perdure")

DEFAULT_DATABASE_URL = "sqlite:///perdure.sqlite"
DEFAULT_MAX_RECOVERY_ATTEMPTS = 20
FRESH_INSERT_HOLD = 0.005
"""Seconds a directly called workflow's row may wait for its first checkpoint to share one commit."""

_active: Perdure | None = None
_active_lock = threading.Lock()


def active_runtime() -> Perdure:
    if _active is None:
        raise NotLaunchedError(
            "no launched perdure runtime in this process: use `async with Perdure(...):` "
            "(or `with Perdure(...):`) before calling workflows"
        )
    return _active


@dataclass(slots=True)
class _Run:
    """A workflow running in this process."""

    ctx: _context.WorkflowContext
    done: asyncio.Future[tuple[str, Any]]
    timer: asyncio.TimerHandle | None = None
    insert: asyncio.Task[Any] | None = None
    """The row's insert when the body started before it committed (a direct call with a fresh id)."""


def _check_workflow_id(workflow_id: object) -> str:
    if not isinstance(workflow_id, str) or not workflow_id.strip():
        raise ConfigurationError(f"workflow_id must be a non-empty string, got {workflow_id!r}")
    if len(workflow_id) > 512:
        raise ConfigurationError("workflow_id must be at most 512 characters")
    return workflow_id


class Perdure(QueueAdmin, Manager):
    """The durable-execution runtime of this process.

    `database_url`: `sqlite:///path.sqlite` (default: `$PERDURE_DATABASE_URL`, else
    `sqlite:///perdure.sqlite`) or `postgresql://...`. `executor_id` names this process for recovery and
    takeover (default: generated). `app_version` is recorded with each workflow; when set, recovery and
    takeover only hand over workflows of the same version. `lease` is how long (seconds) another host's
    executor may be silent before its work is taken over.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        executor_id: str | None = None,
        app_version: str | None = None,
        max_recovery_attempts: int = DEFAULT_MAX_RECOVERY_ATTEMPTS,
        lease: float = 30.0,
        poll_interval: float = 0.1,
        maintenance_interval: float = 1.0,
        max_threads: int = 128,
    ) -> None:
        url = database_url or os.environ.get("PERDURE_DATABASE_URL") or DEFAULT_DATABASE_URL
        if max_recovery_attempts < 1:
            raise ConfigurationError("max_recovery_attempts must be at least 1")
        if lease <= 0 or poll_interval <= 0 or maintenance_interval <= 0:
            raise ConfigurationError("lease, poll_interval and maintenance_interval must be positive")
        if executor_id is not None and (not isinstance(executor_id, str) or not executor_id.strip()):
            raise ConfigurationError(f"executor_id must be a non-empty string, got {executor_id!r}")
        self.database_url = url
        self._store = create_store(url)
        self.executor_id = executor_id or _executors.new_executor_id()
        self.app_version = app_version
        self.max_recovery_attempts = max_recovery_attempts
        self.lease_ms = int(lease * 1000)
        self.poll_interval = poll_interval
        self.maintenance_interval = maintenance_interval
        self._max_threads = max_threads
        self._threads: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: LoopThread | None = None
        self._running: dict[str, _Run] = {}
        self._maintenance: asyncio.Task[None] | None = None
        self._queue_wakeup: asyncio.Event | None = None
        self._queue_engine: QueueEngine | None = None
        self._launched = False
        self._closing = False
        self._unknown_reported: set[str] = set()

    # -- properties --------------------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        return self._store

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise NotLaunchedError("the perdure runtime is not launched")
        return self._loop

    @property
    def launched(self) -> bool:
        return self._launched

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def launch(self) -> None:
        """Open (create or migrate) the database, recover pending work, start background duties."""
        global _active
        with _active_lock:
            if self._launched:
                raise ConfigurationError("this runtime is already launched")
            if _active is not None:
                raise ConfigurationError("another perdure runtime is already launched in this process; one per process")
            _active = self
        try:
            self._loop = asyncio.get_running_loop()
            self._threads = ThreadPoolExecutor(self._max_threads, thread_name_prefix="perdure-wf")
            await self._store.open()
            await self._register_executor()
            self._queue_wakeup = asyncio.Event()
            self._launched = True
            self._closing = False
            self._queue_engine = QueueEngine(self)  # before recovery: recovered queued work goes back on its queue
            await self._recover(include_self=True)
            await self._queue_engine.start()
            self._maintenance = asyncio.create_task(self._maintain(), name="perdure-maintenance")
        except BaseException:
            self._launched = False
            with _active_lock:
                _active = None
            await self._store.close()
            raise

    async def shutdown(self) -> None:
        """Stop background duties; running workflows stay PENDING and are recovered later."""
        global _active
        if not self._launched:
            return
        self._closing = True
        if self._queue_engine is not None:
            await self._queue_engine.stop()
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        tasks = []
        for run in list(self._running.values()):
            if run.timer is not None:
                run.timer.cancel()
            if run.ctx.task is not None:
                run.ctx.task.cancel()
                tasks.append(run.ctx.task)
            run.ctx.wakeup.set()
            for op in list(run.ctx.inflight):  # a sync workflow's wait on the loop (recv_sync, ...)
                op.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        try:
            # Leaving no executor row hands our PENDING work to the next live executor at once.
            await self._store.executor_remove(self.executor_id)
        except Exception as exc:  # pragma: no cover - best effort on the way out
            log.warning("perdure: could not unregister executor %s: %s", self.executor_id, exc)
        await self._store.close()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        self._launched = False
        self._running.clear()
        with _active_lock:
            if _active is self:
                _active = None

    async def __aenter__(self) -> Perdure:
        await self.launch()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def launch_sync(self) -> None:
        """Launch on a private event loop in a background thread, for sync programs."""
        runner = LoopThread("perdure-loop")
        try:
            runner.run(self.launch())
        except BaseException:
            runner.stop()
            raise
        self._loop_thread = runner

    def shutdown_sync(self) -> None:
        runner = self._loop_thread
        if runner is None:
            raise ConfigurationError("shutdown_sync() is for a runtime started with launch_sync() / `with`")
        runner.run(self.shutdown())
        runner.stop()
        self._loop_thread = None
        self._loop = None

    def __enter__(self) -> Perdure:
        self.launch_sync()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown_sync()

    # -- calling onto the runtime loop -------------------------------------------------------------------
    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
        loop = self.loop
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def _blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.call_blocking(coro)

    def call_blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise ConfigurationError(
                "a blocking (sync) perdure call was made on the runtime's own event loop; use the async form"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    # -- starting ----------------------------------------------------------------------------------------
    async def start(
        self,
        fn: Callable[..., Any],
        *args: Any,
        workflow_id: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle:
        """Start a workflow in the background and return its handle.

        The same `workflow_id` started twice runs once; the second call gets a handle to the first run.
        `timeout` (seconds) is a durable deadline: reaching it cancels the workflow, even across restarts.
        """
        defn = workflow_def_of(fn)
        ctx = _context.current()
        if ctx is not None:
            return await self._on_loop(
                self.start_child(ctx, defn, args, kwargs, workflow_id=workflow_id, timeout=timeout)
            )
        return await self._on_loop(self._start(defn, args, kwargs, workflow_id=workflow_id, timeout=timeout))

    def start_sync(
        self,
        fn: Callable[..., Any],
        *args: Any,
        workflow_id: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle:
        return self.call_blocking(self.start(fn, *args, workflow_id=workflow_id, timeout=timeout, **kwargs))

    async def retrieve(self, workflow_id: str) -> WorkflowHandle:
        """A handle to an existing workflow (raises `WorkflowNotFound`)."""
        if await self._on_loop(self._store.workflow_get(workflow_id)) is None:
            raise WorkflowNotFound(workflow_id)
        return WorkflowHandle(workflow_id, self)

    def retrieve_sync(self, workflow_id: str) -> WorkflowHandle:
        return self.call_blocking(self.retrieve(workflow_id))

    async def _start(
        self,
        defn: WorkflowDef,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        workflow_id: str | None = None,
        timeout: float | None = None,
        parent: _context.WorkflowContext | None = None,
        optimistic: bool = False,
    ) -> WorkflowHandle:
        if not self._launched:
            raise NotLaunchedError("the perdure runtime is not launched (or was shut down)")
        wid = uuid.uuid4().hex if workflow_id is None else _check_workflow_id(workflow_id)
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout}")
        inputs = defn.codec.dump_args(args, kwargs)  # refuses bad input before anything is written
        t = now_ms()
        timeout_ms = None if timeout is None else int(timeout * 1000)
        deadline = None if timeout_ms is None else t + timeout_ms
        if parent is not None and parent.deadline_at is not None:
            deadline = parent.deadline_at if deadline is None else min(deadline, parent.deadline_at)
        record = WorkflowRecord(
            workflow_id=wid,
            name=defn.name,
            status=WorkflowStatus.PENDING,
            inputs=inputs,
            created_at=t,
            updated_at=t,
            started_at=t,
            serializer=defn.codec.serializer,
            executor_id=self.executor_id,
            app_version=self.app_version,
            parent_id=parent.workflow_id if parent is not None else None,
            timeout_ms=timeout_ms,
            deadline_at=deadline,
        )
        if optimistic and workflow_id is None:
            # A fresh id cannot conflict, and the caller only hears back after the outcome commits, so
            # the body need not wait for the insert: it is queued first and held (briefly) for the first
            # checkpoint, which shares its commit. A run whose first step is quick saves one commit;
            # one whose first step is slow (a model call) has its row committed alone after the hold.
            insert = self.loop.create_task(self._store.workflow_insert(record, hold=FRESH_INSERT_HOLD))
            self._dispatch(defn, record, args, kwargs, recorded={}, insert=insert)
            return WorkflowHandle(wid, self)
        outcome = await self._store.workflow_insert(record)
        existing = outcome.record
        if outcome.inserted:
            self._dispatch(defn, record, args, kwargs, recorded={})
        elif existing.name != defn.name:
            raise WorkflowConflictError(
                f"workflow id {wid!r} is already used by a run of {existing.name!r}, not {defn.name!r}"
            )
        elif (
            existing.status == WorkflowStatus.PENDING
            and existing.executor_id == self.executor_id
            and wid not in self._running
        ):
            # Ours, yet nobody here runs it: our own insert whose commit answer was lost and retried.
            await self._dispatch_stored(defn, existing)
        return WorkflowHandle(wid, self)

    async def run_direct(self, defn: WorkflowDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return (await self.run_fresh(defn, args, kwargs))[1]

    async def run_fresh(self, defn: WorkflowDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
        """Run a workflow durably with a fresh id and wait for it: (workflow id, result)."""

        async def go() -> tuple[str, Any]:
            handle = await self._start(defn, args, kwargs, optimistic=True)
            return handle.workflow_id, await self._result_here(handle.workflow_id, None)

        return await self._on_loop(go())

    # -- children ----------------------------------------------------------------------------------------
    async def start_child(
        self,
        ctx: _context.WorkflowContext,
        defn: WorkflowDef,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        workflow_id: str | None = None,
        timeout: float | None = None,
    ) -> WorkflowHandle:
        """`app.start()` inside a workflow: the child's id is recorded at this position."""
        name = f"perdure.start:{defn.name}"
        pos, rec = await ctx.next_position()
        if rec is not None:
            ctx.check_replay(pos, rec, name, None)
            assert rec.child_id is not None
            return WorkflowHandle(rec.child_id, self)
        child_id = workflow_id or f"{ctx.workflow_id}-{pos}"
        await self._start(defn, args, kwargs, workflow_id=child_id, timeout=timeout, parent=ctx)
        await ctx.record(ctx.step_record(pos, name, child_id=child_id))
        return WorkflowHandle(child_id, self)

    async def run_child(
        self, ctx: _context.WorkflowContext, defn: WorkflowDef, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A workflow called from a workflow: deterministic id, result recorded at this position."""
        pos, rec = await ctx.next_position()
        if rec is not None:
            ctx.check_replay(pos, rec, defn.name, None)
            if rec.error is not None:
                raise load_error(rec.error)
            return defn.codec.load_result(rec.output)
        child_id = f"{ctx.workflow_id}-{pos}"
        started = now_ms()
        # Started at most once: after a parent crash the same id finds the child already there, running or done.
        await self._start(defn, args, kwargs, workflow_id=child_id, parent=ctx)
        final = await self._wait_child(ctx, child_id)
        if final.status == WorkflowStatus.SUCCESS:
            await ctx.record(
                ctx.step_record(pos, defn.name, output=final.output, child_id=child_id, started_at=started)
            )
            return defn.codec.load_result(final.output)
        try:
            decode_outcome(final)
        except Exception as exc:
            await ctx.record(
                ctx.step_record(
                    pos, defn.name, error=final.error or dump_error(exc), child_id=child_id, started_at=started
                )
            )
            raise
        raise AssertionError("unreachable")

    async def run_in_step(
        self, scope: _context.StepScope, defn: WorkflowDef, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A workflow called inside a step body: a child whose id is derived from the step's position."""
        child_id = scope.next_child_id()
        await self._start(defn, args, kwargs, workflow_id=child_id, parent=scope.ctx)
        return await self._result_here(child_id, None)

    async def _wait_child(self, ctx: _context.WorkflowContext, child_id: str) -> WorkflowRecord:
        run = self._running.get(child_id)
        if run is not None:
            await asyncio.shield(run.done)
        return await self._wait_terminal(child_id, None)

    # -- running -----------------------------------------------------------------------------------------
    def _dispatch(
        self,
        defn: WorkflowDef,
        record: WorkflowRecord,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        recorded: dict[int, Any],
        insert: asyncio.Task[Any] | None = None,
    ) -> None:
        wid = record.workflow_id
        if wid in self._running:
            return
        ctx = _context.WorkflowContext(
            self, wid, defn.name, recorded=recorded, deadline_at=record.deadline_at, is_sync=not defn.is_async
        )
        loop = self.loop
        run = _Run(ctx, loop.create_future(), insert=insert)
        self._running[wid] = run
        task = loop.create_task(self._execute(run, defn, args, kwargs), name=f"perdure:{wid}")
        ctx.task = task
        if record.deadline_at is not None:
            delay = max(0.0, (record.deadline_at - now_ms()) / 1000)
            run.timer = loop.call_later(delay, lambda: loop.create_task(self._expire(wid)))

    async def _execute(self, run: _Run, defn: WorkflowDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ctx = run.ctx
        wid = ctx.workflow_id
        token = _context.bind(ctx)
        outcome: tuple[str, Any]
        try:
            try:
                value = await self._run_body(ctx, defn, args, kwargs)
            except WorkflowCancelled as exc:
                if ctx.cancel_reason is None:
                    # Not this workflow's own cancellation (a cancelled child, say): an ordinary error.
                    ctx.task = None
                    outcome = await self._finish(run, "ERROR", None, exc)
                else:
                    await ctx.settle_quietly()
                    outcome = ("CANCELLED", None)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if (ctx.cancel_reason is None and ctx.lost is None) or self._closing:
                    # Shutdown: stay PENDING, to be recovered, with every step that ran checkpointed.
                    await ctx.settle_quietly()
                    raise
                if task is not None:
                    task.uncancel()
                # A checkpoint still committing lands before the run counts as ended (and can be resumed).
                await ctx.settle_quietly()
                if ctx.lost is not None:  # a checkpoint written in the background was refused
                    log.warning("perdure: %s", ctx.lost)
                    outcome = ("LOST", None)
                else:
                    outcome = ("CANCELLED", None)
            except OwnershipLost as exc:
                log.warning("perdure: %s", exc)
                await ctx.settle_quietly()
                outcome = ("LOST", None)
            except Exception as exc:
                ctx.task = None
                outcome = await self._finish(run, "ERROR", None, exc)
            else:
                ctx.task = None
                try:
                    output = defn.codec.dump_result(value)
                except SerializationError as exc:
                    outcome = await self._finish(run, "ERROR", None, exc)
                else:
                    outcome = await self._finish(run, "SUCCESS", output, value)
            if run.insert is not None:
                try:
                    await run.insert
                except Exception as exc:  # the workflow was never recorded: its caller gets the reason
                    outcome = ("ERROR", exc)
        except asyncio.CancelledError:
            if not run.done.done():
                run.done.set_result(("LOST", None))
            raise
        finally:
            _context.unbind(token)
            if run.timer is not None:
                run.timer.cancel()
            self._running.pop(wid, None)
        if not run.done.done():
            run.done.set_result(outcome)
        self._notify_changed(wid)

    async def _run_body(
        self, ctx: _context.WorkflowContext, defn: WorkflowDef, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The workflow body's value, once every checkpoint it queued is committed."""
        try:
            if defn.is_async:
                value = await defn.fn(*args, **kwargs)
            else:
                assert self._threads is not None
                value = await self.loop.run_in_executor(self._threads, self._run_sync_body, ctx, defn, args, kwargs)
        except Exception:
            # A checkpoint refused (cancelled, or owned elsewhere now) outranks the body's own error.
            await ctx.settle_all()
            raise
        await ctx.settle_all(launch=False)  # the deferred ones share the outcome's commit (_finish)
        return value

    async def _finish(self, run: _Run, status: str, output: str | None, value: Any) -> tuple[str, Any]:
        ctx = run.ctx
        error = dump_error(value) if status == "ERROR" else None
        # The run's deferred checkpoints go first in the outcome's own commit.
        steps = ctx.take_deferred()
        finish = self._store.workflow_finish(ctx.workflow_id, self.executor_id, status, output, error, steps=steps)
        try:
            # Awaited directly (not gathered) so the write is queued in this loop iteration and can share
            # the commit of an insert queued just before it.
            result = await finish
        except Exception as exc:
            if run.insert is not None and run.insert.done() and run.insert.exception() is not None:
                return ("ERROR", run.insert.exception())
            log.error(
                "perdure: could not record the outcome of workflow %s (%s); it stays PENDING and will be recovered",
                ctx.workflow_id,
                exc,
            )
            return ("ERROR", exc)
        if result == "ok":
            return (status, value)
        if result == "cancelled":
            return ("CANCELLED", None)
        log.warning(
            "perdure: outcome of workflow %s not written (%s); another executor owns it", ctx.workflow_id, result
        )
        return ("LOST", None)

    def _run_sync_body(
        self, ctx: _context.WorkflowContext, defn: WorkflowDef, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        token = _context.bind(ctx)
        try:
            return defn.fn(*args, **kwargs)
        finally:
            _context.unbind(token)

    async def _expire(self, workflow_id: str) -> None:
        try:
            ids = await self._store.workflow_cancel(workflow_id)
        except Exception as exc:
            log.error("perdure: could not cancel timed-out workflow %s: %s", workflow_id, exc)
            return
        for wid in ids:
            run = self._running.get(wid)
            if run is not None:
                run.ctx.cancel("timed out")

    # -- outcomes ----------------------------------------------------------------------------------------
    async def _result(self, workflow_id: str, timeout: float | None) -> Any:
        return await self._on_loop(self._result_here(workflow_id, timeout))

    async def _result_here(self, workflow_id: str, timeout: float | None) -> Any:
        run = self._running.get(workflow_id)
        if run is not None:
            try:
                async with asyncio.timeout(timeout):
                    status, value = await asyncio.shield(run.done)
            except TimeoutError:
                raise TimeoutError(f"workflow {workflow_id!r} did not finish within {timeout}s") from None
            if status == "SUCCESS":
                return value
            if status == "ERROR":
                raise value
            if status == "CANCELLED":
                # A resume may have made it runnable again while this run was stopping: ask the row.
                rec = await self._wait_terminal(workflow_id, timeout)
                if rec.status == WorkflowStatus.CANCELLED:
                    raise WorkflowCancelled(workflow_id, run.ctx.cancel_reason or "cancelled")
                return decode_outcome(rec)
        return decode_outcome(await self._wait_terminal(workflow_id, timeout))

    def _notify_changed(self, workflow_id: str) -> None:
        self._store.notifier.fire([workflow_key(workflow_id)])

    # -- management --------------------------------------------------------------------------------------
    async def cancel(self, workflow_id: str) -> None:
        """Cancel a workflow and its children: CANCELLED at once; the body stops at its next durable step."""
        await self._on_loop(self._cancel_here(workflow_id))

    async def _cancel_here(self, workflow_id: str) -> None:
        for wid in await self._store.workflow_cancel(workflow_id):
            run = self._running.get(wid)
            if run is not None:
                run.ctx.cancel("cancelled")
            self._notify_changed(wid)

    async def resume(self, workflow_id: str) -> WorkflowHandle:
        """Continue a CANCELLED, ERROR or RETRIES_EXCEEDED workflow from its last completed step."""
        return await self._on_loop(self._resume_here(workflow_id))

    async def _resume_here(self, workflow_id: str) -> WorkflowHandle:
        existing = await self._store.workflow_get(workflow_id)
        if existing is None:
            raise WorkflowNotFound(workflow_id)
        defn = registered_workflows().get(existing.name)
        if existing.status not in RESUMABLE_STATUSES:
            if existing.status in ("PENDING", "ENQUEUED", "DELAYED"):
                return WorkflowHandle(workflow_id, self)
            raise ConfigurationError(
                f"workflow {workflow_id!r} is {existing.status}; only CANCELLED, ERROR or RETRIES_EXCEEDED "
                "workflows can be resumed (fork() re-runs a finished one)"
            )
        for child_id in await cancelled_with(self._store, existing):
            await self._resume_here(child_id)  # cancelled along with it: continues along with it
        queue_name = resume_queue(existing)  # a queued workflow goes back to its queue, whose limits hold
        if defn is None or queue_name is not None:
            queue_name = queue_name or INTERNAL_QUEUE
            record = await self._store.workflow_resume(workflow_id, executor_id=None, queue_name=queue_name)
            self._wake_queue(queue_name)
            return WorkflowHandle(record.workflow_id, self)
        record = await self._store.workflow_resume(workflow_id, executor_id=self.executor_id, queue_name=None)
        if record.status == WorkflowStatus.PENDING and record.executor_id == self.executor_id:
            await self._dispatch_stored(defn, record)
        return WorkflowHandle(workflow_id, self)

    async def fork(self, workflow_id: str, from_step: int, *, new_workflow_id: str | None = None) -> WorkflowHandle:
        """A new workflow that reuses the checkpoints of positions < `from_step` and runs from there."""
        return await self._on_loop(self._fork_here(workflow_id, from_step, new_workflow_id))

    async def _fork_here(self, workflow_id: str, from_step: int, new_workflow_id: str | None) -> WorkflowHandle:
        if not isinstance(from_step, int) or from_step < 0:
            raise ConfigurationError(f"from_step must be a non-negative integer, got {from_step!r}")
        source = await self._store.workflow_get(workflow_id)
        if source is None:
            raise WorkflowNotFound(workflow_id)
        new_id = _check_workflow_id(new_workflow_id) if new_workflow_id is not None else uuid.uuid4().hex
        defn = registered_workflows().get(source.name)
        if defn is None:
            record = await self._store.workflow_fork(
                workflow_id,
                new_id,
                from_step,
                executor_id=None,
                queue_name=INTERNAL_QUEUE,
                app_version=self.app_version,
            )
            self._wake_queue()
        else:
            record = await self._store.workflow_fork(
                workflow_id,
                new_id,
                from_step,
                executor_id=self.executor_id,
                queue_name=None,
                app_version=self.app_version,
            )
            await self._dispatch_stored(defn, record)
        return WorkflowHandle(record.workflow_id, self)

    def cancel_sync(self, workflow_id: str) -> None:
        self.call_blocking(self.cancel(workflow_id))

    def resume_sync(self, workflow_id: str) -> WorkflowHandle:
        return self.call_blocking(self.resume(workflow_id))

    def fork_sync(self, workflow_id: str, from_step: int, *, new_workflow_id: str | None = None) -> WorkflowHandle:
        return self.call_blocking(self.fork(workflow_id, from_step, new_workflow_id=new_workflow_id))

    # -- recovery and takeover ---------------------------------------------------------------------------
    async def _dispatch_stored(self, defn: WorkflowDef, record: WorkflowRecord) -> None:
        """Run a workflow from its stored inputs and checkpoints (recovery, resume, fork, queue)."""
        old = self._running.get(record.workflow_id)
        if old is not None:
            # Resumed (or re-queued) while an earlier run of it is still here: a cancelled one still
            # stopping (a sync body stops only at its next durable operation), or one whose writes are
            # now refused. Once it is gone, run it from the checkpoints if it is still ours and PENDING.
            wid = record.workflow_id
            old.done.add_done_callback(lambda _: self.loop.create_task(self._dispatch_after_stop(defn, wid)))
            return
        try:
            args, kwargs = defn.codec.load_args(record.inputs or "{}")
        except Exception as exc:
            log.error("perdure: cannot load the inputs of workflow %s: %s", record.workflow_id, exc)
            await self._store.workflow_finish(record.workflow_id, self.executor_id, "ERROR", None, dump_error(exc))
            return
        steps = await self._store.step_list(record.workflow_id)
        self._dispatch(defn, record, args, kwargs, recorded={s.step_id: s for s in steps})

    async def _dispatch_after_stop(self, defn: WorkflowDef, workflow_id: str) -> None:
        if self._closing or not self._launched:
            return  # shutting down: recovery takes it from here
        try:
            record = await self._store.workflow_get(workflow_id)
            if (
                record is not None
                and record.status == WorkflowStatus.PENDING
                and record.executor_id == self.executor_id
                and workflow_id not in self._running
            ):
                await self._dispatch_stored(defn, record)
        except Exception as exc:  # pragma: no cover - recovery picks it up after a restart
            log.error("perdure: could not restart resumed workflow %s: %s", workflow_id, exc)

    async def _register_executor(self) -> None:
        for rec in await self._store.executor_list():
            if rec.executor_id == self.executor_id and _executors.is_live_other(rec, self.lease_ms):
                raise ConfigurationError(
                    f"executor id {self.executor_id!r} is in use by a live process (pid {rec.pid} on "
                    f"{rec.hostname}); give each process its own executor_id"
                )
        await self._store.executor_register(_executors.this_executor(self.executor_id, self.app_version))

    async def _recover(self, *, include_self: bool) -> int:
        """Claim and resume PENDING workflows of dead executors (and of our own previous life)."""
        owners = await self._store.workflow_active_executors()
        if not owners:
            return 0
        executors = {e.executor_id: e for e in await self._store.executor_list()}
        now = now_ms()
        dead: list[str] = []
        for owner in owners:
            if owner == self.executor_id:
                if include_self:
                    dead.append(owner)
                continue
            rec = executors.get(owner)
            if rec is None or _executors.is_dead(rec, self.lease_ms, now):
                dead.append(owner)
        if not dead:
            return 0
        registry = registered_workflows()
        await self._report_unknown(dead, registry)
        claimed = await self._store.workflow_claim(
            ClaimRequest(
                executor_id=self.executor_id,
                from_executors=tuple(dead),
                names=tuple(registry),
                app_version=self.app_version,
                any_version=self.app_version is None,
            )
        )
        requeue: list[str] = []
        for record in claimed:
            defn = registry[record.name]
            limit = defn.max_recovery_attempts or self.max_recovery_attempts
            if record.recovery_attempts > limit:
                log.error(
                    "perdure: workflow %s (%s) was recovered %d times without finishing; marking it RETRIES_EXCEEDED",
                    record.workflow_id,
                    record.name,
                    record.recovery_attempts - 1,
                )
                err = dump_error(RuntimeError(f"recovered {record.recovery_attempts - 1} times without finishing"))
                await self._store.workflow_set_status(record.workflow_id, WorkflowStatus.RETRIES_EXCEEDED, error=err)
                self._notify_changed(record.workflow_id)
                continue
            if resume_queue(record) is not None:
                requeue.append(record.workflow_id)  # back through its queue, so the queue's limits hold
                continue
            log.info("perdure: recovering workflow %s (%s) from %s", record.workflow_id, record.name, dead)
            await self._dispatch_stored(defn, record)
        if requeue:
            log.info("perdure: %d queued workflows of %s go back on their queues", len(requeue), dead)
            await self._store.queue_requeue(requeue, self.executor_id)
        for owner in dead:
            if (
                owner != self.executor_id
                and owner in executors
                and owner not in await self._store.workflow_active_executors()
            ):
                await self._store.executor_remove(owner)
        return len(claimed)

    async def _report_unknown(self, dead: list[str], registry: dict[str, WorkflowDef]) -> None:
        """Say, once per workflow, that a dead executor left work whose code this process lacks."""
        for owner in dead:
            pending = await self._store.workflow_list(
                WorkflowFilter(status=(WorkflowStatus.PENDING.value,), executor_id=owner, limit=100)
            )
            for record in pending:
                if record.name in registry or record.workflow_id in self._unknown_reported:
                    continue
                self._unknown_reported.add(record.workflow_id)
                log.error(
                    "perdure: %s",
                    UnknownWorkflowError(
                        f"workflow {record.workflow_id!r} of dead executor {owner!r} runs {record.name!r}, which "
                        "is not registered in this process; it waits for an executor that has its code "
                        "(import the module that defines it before launch)"
                    ),
                )

    def _wake_queue(self, queue_name: str = INTERNAL_QUEUE) -> None:
        if self._queue_engine is not None:
            self._queue_engine.poke(queue_name)

    async def _maintain(self) -> None:
        """Heartbeat, takeover of dead executors, remote cancellations, internal queue."""
        assert self._queue_wakeup is not None
        last_heartbeat = now_ms()
        tick = min(self.maintenance_interval, self.lease_ms / 3000)
        # `asyncio.timeout`, not `wait_for`: on Python 3.11 wait_for can swallow the cancel that shutdown
        # sends when it races the timeout, and the loop would then run on; `_closing` ends it regardless.
        while not self._closing:
            try:
                async with asyncio.timeout(tick):
                    await self._queue_wakeup.wait()
            except TimeoutError:
                pass
            self._queue_wakeup.clear()
            try:
                now = now_ms()
                if now - last_heartbeat >= self.lease_ms / 3:
                    if not await self._store.executor_heartbeat(self.executor_id):
                        # We were silent past the lease and declared dead (our work was taken over and our
                        # row removed); come back as a live executor so new work is not taken from us.
                        log.warning("perdure: executor %s was presumed dead; registering again", self.executor_id)
                        await self._store.executor_register(
                            _executors.this_executor(self.executor_id, self.app_version)
                        )
                    last_heartbeat = now
                await self._recover(include_self=False)
                if self._running:
                    statuses = await self._store.workflow_statuses(list(self._running))
                    for wid, status in statuses.items():
                        run = self._running.get(wid)
                        if run is not None and status == WorkflowStatus.CANCELLED:
                            run.ctx.cancel("cancelled")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("perdure: background maintenance failed, will retry: %s", exc)
