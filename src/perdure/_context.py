"""The execution context of one running workflow: positions, replay, checkpoints, cancellation.

Every durable operation (step, child workflow, sleep, message, recorded value) takes the next position.
If the recorded run has an entry at that position, the operation replays it (after checking that it is the
same operation); otherwise it runs and checkpoints its outcome before the workflow continues.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from .errors import NonDeterminismError, NotLaunchedError, OwnershipLost, WorkflowCancelled
from .store.base import StepRecord, now_ms

if TYPE_CHECKING:
    from .runtime import Perdure

T = TypeVar("T")

_current: contextvars.ContextVar[WorkflowContext | None] = contextvars.ContextVar("perdure_workflow", default=None)


def current() -> WorkflowContext | None:
    return _current.get()


def require(what: str) -> WorkflowContext:
    ctx = _current.get()
    if ctx is None:
        raise NotLaunchedError(f"{what} can only be called inside a perdure workflow")
    return ctx


class WorkflowContext:
    """State of one workflow run in this process."""

    def __init__(
        self,
        runtime: Perdure,
        workflow_id: str,
        name: str,
        *,
        recorded: dict[int, StepRecord],
        deadline_at: int | None,
        is_sync: bool,
    ) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.executor_id = runtime.executor_id
        self.workflow_id = workflow_id
        self.name = name
        self.recorded = recorded
        self.deadline_at = deadline_at
        self.is_sync = is_sync
        self.loop: asyncio.AbstractEventLoop = runtime.loop
        self.position = 0
        self.cancel_reason: str | None = None
        self.task: asyncio.Task[Any] | None = None
        self.wakeup = threading.Event()  # interrupts a sync workflow's durable sleep on cancel
        # Per-run state of integrations (e.g. how many agent runs started at a position); dies with the run.
        self.scratch: dict[str, Any] = {}
        # Async steps currently running, so a cancel can interrupt them.
        self.inflight: set[asyncio.Task[Any]] = set()
        # Checkpoints queued by record_soon(), numbered in order, whose commit later operations await.
        self.unsettled: list[tuple[int, asyncio.Future[None]]] = []
        # Checkpoints queued by record_soon() whose write has not started (a store whose commits run on the
        # loop thread): written when the run's next durable operation starts, or with its outcome.
        self.deferred: list[tuple[int, StepRecord]] = []
        self._queued = 0
        # Set when a checkpoint written in the background was refused because another executor owns the
        # run now: the run was interrupted, and ends LOST.
        self.lost: OwnershipLost | None = None

    # -- positions and replay ----------------------------------------------------------------------------
    def take_position(self) -> tuple[int, StepRecord | None]:
        self.raise_if_cancelled()
        pos = self.position
        self.position += 1
        return pos, self.recorded.get(pos)

    async def next_position(self) -> tuple[int, StepRecord | None]:
        """`take_position()` for an async durable operation: the position is taken at once (positions
        follow the order of calls), then the checkpoints queued before it are awaited (`settle`)."""
        taken = self.take_position()
        if self.unsettled or self.deferred:
            await self.settle()
        return taken

    def peek_recorded(self) -> StepRecord | None:
        return self.recorded.get(self.position)

    def check_replay(self, pos: int, rec: StepRecord, name: str, args_hash: str | None) -> None:
        if rec.name != name:
            raise NonDeterminismError(self.workflow_id, pos, recorded=f"{rec.name!r}", current=f"{name!r}")
        if rec.args_hash != args_hash:
            raise NonDeterminismError(
                self.workflow_id,
                pos,
                recorded=f"{rec.name!r}",
                current=f"{name!r}",
                detail="same step, different arguments",
            )

    async def record(self, record: StepRecord) -> None:
        self._apply(await self.store.step_record(record, self.executor_id), record)

    def _apply(self, outcome: str, record: StepRecord) -> None:
        if outcome == "ok":
            self.recorded[record.step_id] = record
            return
        self.refused(outcome, record.step_id)

    def record_soon(self, record: StepRecord) -> None:
        """Queue a checkpoint without waiting for its commit; the run's later operations wait for it.

        For integration steps (`durable_call`), whose results go on to code that only prepares the next
        step (pydantic-ai's agent graph). No later step, message, sleep, child or outcome of this run
        starts before the commit (`settle`), so a step that another step followed never runs again after
        a crash, as with `record`. Where a commit waits off the loop (`Store.commits_off_loop`), the
        write starts now and its round trip overlaps that work. Where it runs on the loop thread
        (SQLite), it would only block the loop now instead of later: it waits for the next operation,
        and a run's last checkpoint shares the commit of its outcome (`take_deferred`).
        """
        serial = self._queued
        self._queued += 1
        if self.store.commits_off_loop:
            self._launch(serial, record)
        else:
            self.deferred.append((serial, record))

    def _launch(self, serial: int, record: StepRecord) -> None:
        self.unsettled.append((serial, self._write_in_background(record)))

    def _write_in_background(self, record: StepRecord) -> asyncio.Task[None]:
        task = self.loop.create_task(self._record_in_background(record))
        task.add_done_callback(_observed)  # its failure is raised by settle(), or moot if the run ended
        return task

    def _launch_deferred(self) -> None:
        # Launched together, in one loop turn: their writes share a commit.
        deferred, self.deferred = self.deferred, []
        for serial, record in deferred:
            self._launch(serial, record)

    async def _write_deferred(self) -> None:
        """Write the one deferred checkpoint from here, as `record` would: on a store that commits on the
        loop thread, without the task and the loop turns of a launch. A refusal is raised here, and to
        every operation of the run that waits for it (they find it in `unsettled`)."""
        ((serial, record),) = self.deferred
        self.deferred = []
        written: asyncio.Future[None] = self.loop.create_future()
        written.add_done_callback(_observed)
        self.unsettled.append((serial, written))
        try:
            self._apply(await self.store.step_record(record, self.executor_id), record)
        except asyncio.CancelledError:
            # The caller was cancelled (a timeout, say), not the write: the store may still commit it.
            # Write it again in the background (the same record: idempotent), so the run's later
            # operations, and those waiting for it now, get its real outcome, not the cancellation.
            task = self._write_in_background(record)
            task.add_done_callback(functools.partial(_pass_on, to=written))
            self.unsettled = [(n, task if f is written else f) for n, f in self.unsettled]
            raise
        except BaseException as exc:
            written.set_exception(exc)
            raise
        written.set_result(None)
        self.unsettled = [entry for entry in self.unsettled if entry[1] is not written]

    def take_deferred(self) -> list[StepRecord]:
        """The checkpoints not written yet, for the outcome to write them in its own commit (first)."""
        deferred, self.deferred = self.deferred, []
        return [record for _, record in deferred]

    async def _record_in_background(self, record: StepRecord) -> None:
        outcome = await self.store.step_record(record, self.executor_id)
        # Refused while the run went on: stop what it runs now, as a refusal at the step would have,
        # unless a cancel or an earlier refusal already stopped it (its cleanup must not be cut short).
        stopping = self.cancel_reason is not None or self.lost is not None
        try:
            self._apply(outcome, record)
        except OwnershipLost as exc:
            self.lost = self.lost or exc
            raise
        finally:
            if outcome != "ok" and not stopping:
                self._interrupt()

    async def settle_quietly(self) -> None:
        """Write the checkpoints still queued and wait for them, whatever their outcome (the run ended
        otherwise, or the process is shutting down: what is written need not run again on recovery)."""
        self._launch_deferred()
        while self.unsettled:
            _, task = self.unsettled.pop(0)
            if not task.done():
                await asyncio.wait([task])

    async def settle(self, *, launch: bool = True) -> None:
        """Wait until every checkpoint queued by record_soon() before this call is committed; raise the
        first that failed.

        Called after taking a position and before acting on it, so positions follow the order of calls.
        Checkpoints queued while it waits belong to operations running alongside (parallel tool calls),
        not before, so it does not wait for those. `launch=False`: leave the deferred ones unwritten.
        """
        horizon = self._queued  # before any wait: what is queued while this waits is not "before"
        if launch and self.deferred:  # (only ever on a store that commits on the loop thread)
            if len(self.deferred) == 1:
                await self._write_deferred()
            else:
                self._launch_deferred()
        if not self.unsettled:
            return
        while True:
            task = next((t for n, t in self.unsettled if n < horizon), None)
            if task is None:
                return
            if not task.done():
                # Shielded: a cancelled workflow must not cancel a write that may be committing already.
                await asyncio.shield(task)
            task.result()  # a failed checkpoint stays queued, so every later operation of the run raises it
            self.unsettled = [entry for entry in self.unsettled if entry[1] is not task]

    async def settle_all(self, *, launch: bool = True) -> None:
        """Wait until no checkpoint of the run is left uncommitted (before its outcome is written).

        `launch=False`: except the deferred ones, which the outcome then writes (`take_deferred`)."""
        while self.unsettled or (launch and self.deferred):
            await self.settle(launch=launch)

    def refused(self, outcome: str, position: int) -> NoReturn:
        """Raise for a write of this run the store refused: cancelled, or owned by another executor now."""
        if outcome == "cancelled":
            self.cancel_reason = self.cancel_reason or "cancelled"
            raise WorkflowCancelled(self.workflow_id, self.cancel_reason)
        raise OwnershipLost(
            f"workflow {self.workflow_id!r}: the operation at position {position} was refused ({outcome}); "
            "another executor owns it now"
        )

    def step_record(
        self,
        pos: int,
        name: str,
        *,
        args_hash: str | None = None,
        output: str | None = None,
        error: str | None = None,
        child_id: str | None = None,
        attempts: int = 1,
        started_at: int | None = None,
    ) -> StepRecord:
        return StepRecord(
            workflow_id=self.workflow_id,
            step_id=pos,
            name=name,
            args_hash=args_hash,
            output=output,
            error=error,
            child_id=child_id,
            attempts=attempts,
            started_at=started_at if started_at is not None else now_ms(),
            completed_at=now_ms(),
        )

    # -- cancellation ------------------------------------------------------------------------------------
    def raise_if_cancelled(self) -> None:
        if self.cancel_reason is not None:
            raise WorkflowCancelled(self.workflow_id, self.cancel_reason)

    def cancel(self, reason: str) -> None:
        """Called on the loop thread: stop the body at its next durable operation, or now if async."""
        if self.cancel_reason is not None:
            return
        self.cancel_reason = reason
        self._interrupt()

    def _interrupt(self) -> None:
        self.wakeup.set()
        for task in list(self.inflight):
            task.cancel()
        if not self.is_sync and self.task is not None:
            self.task.cancel()

    # -- threads -----------------------------------------------------------------------------------------
    def on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run an engine coroutine from a sync workflow's thread and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


def _pass_on(done: asyncio.Future[None], *, to: asyncio.Future[None]) -> None:
    if to.done():
        return
    if done.cancelled():
        to.cancel()
    elif (exc := done.exception()) is not None:
        to.set_exception(exc)
    else:
        to.set_result(None)


def _observed(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


class StepScope:
    """Marks code running inside a step body: nested durable operations are not positions of the workflow.

    Inside a step, steps just run, and a workflow called there runs as a child with the id
    `{workflow_id}-{position}.{n}`, so a step that runs again after a crash finds its children again.
    """

    __slots__ = ("attempt", "children", "ctx", "position", "tries", "writes")

    def __init__(self, ctx: WorkflowContext, position: int, tries: list[int] | None = None) -> None:
        self.ctx = ctx
        self.position = position
        self.children = 0
        self.tries = tries
        self.attempt = 1
        self.writes = 0

    def next_write(self) -> int:
        """Number (1, 2, ...) of the next message, event or stream write of this attempt of the step body.

        Numbers restart with each attempt, so a retried attempt rewrites its values instead of adding them.
        """
        attempt = self.tries[0] if self.tries else 1
        if attempt != self.attempt:
            self.attempt = attempt
            self.writes = 0
        self.writes += 1
        return self.writes

    def next_child_id(self) -> str:
        self.children += 1
        return f"{self.ctx.workflow_id}-{self.position}.{self.children}"


_step_scope: contextvars.ContextVar[StepScope | None] = contextvars.ContextVar("perdure_step", default=None)


def step_scope() -> StepScope | None:
    return _step_scope.get()


def in_durable_code() -> bool:
    """Inside a workflow's body or one of its steps (where the workflow context is hidden)."""
    return _current.get() is not None or _step_scope.get() is not None


class in_step:
    """`with in_step(ctx, pos):` around a step body."""

    __slots__ = ("_scope", "_tokens")

    def __init__(self, ctx: WorkflowContext, position: int, tries: list[int] | None = None) -> None:
        self._scope = StepScope(ctx, position, tries)
        self._tokens: tuple[Any, Any] | None = None

    def __enter__(self) -> StepScope:
        self._tokens = (_current.set(None), _step_scope.set(self._scope))
        return self._scope

    def __exit__(self, *exc: object) -> None:
        assert self._tokens is not None
        _current.reset(self._tokens[0])
        _step_scope.reset(self._tokens[1])


def bind(ctx: WorkflowContext) -> contextvars.Token[WorkflowContext | None]:
    return _current.set(ctx)


def unbind(token: contextvars.Token[WorkflowContext | None]) -> None:
    _current.reset(token)
