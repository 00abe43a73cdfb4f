"""What the runtime and the Client share: handles, outcome waiting, listing and inspecting workflows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from .errors import ConfigurationError, MaxRecoveryAttemptsExceeded, WorkflowCancelled, WorkflowNotFound
from .messaging import Messaging
from .serialization import load_error
from .store.base import Store, WorkflowFilter, WorkflowRecord, WorkflowStatus
from .store.notify import workflow_key
from .workflows import StepInfo, WorkflowInfo, registered_workflows

T = TypeVar("T")

SAFETY_RECHECK = 2.0
"""Seconds between re-checks while waiting on a store that notifies: a guard against a lost notification."""


def _ms(value: datetime | float | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigurationError(f"{what} must be timezone-aware (e.g. datetime.now(UTC))")
        return int(value.timestamp() * 1000)
    return int(float(value) * 1000)


async def cancelled_with(store: Store, rec: WorkflowRecord) -> list[str]:
    """Children that were cancelled by the same cancellation as `rec` (a cancel marks the whole tree at one time).

    Resuming `rec` resumes them too, so a parent cancelled while waiting for a child can continue.
    """
    if rec.status != WorkflowStatus.CANCELLED or rec.completed_at is None:
        return []
    children = await store.workflow_list(
        WorkflowFilter(status=(WorkflowStatus.CANCELLED.value,), parent_id=rec.workflow_id, limit=None)
    )
    return [c.workflow_id for c in children if c.completed_at == rec.completed_at]


def decode_outcome(rec: WorkflowRecord) -> Any:
    """The stored result of a finished workflow, or raise its stored outcome."""
    status = rec.status
    if status == WorkflowStatus.SUCCESS:
        defn = registered_workflows().get(rec.name)
        if defn is not None:
            return defn.codec.load_result(rec.output)
        if rec.serializer == "pickle":
            raise ConfigurationError(
                f"workflow {rec.workflow_id!r} stored a pickled result; only a process with its code loads it"
            )
        import json

        return None if rec.output is None else json.loads(rec.output)
    if status == WorkflowStatus.ERROR:
        raise load_error(rec.error or '{"type": "Exception", "message": "unknown error"}')
    if status == WorkflowStatus.CANCELLED:
        raise WorkflowCancelled(rec.workflow_id)
    if status == WorkflowStatus.RETRIES_EXCEEDED:
        raise MaxRecoveryAttemptsExceeded(rec.workflow_id, rec.recovery_attempts)
    raise AssertionError(f"not a terminal status: {status}")


class Manager(Messaging):
    """Management calls over a store. Subclasses say which loop the store lives on."""

    poll_interval: float = 0.1

    @property
    def store(self) -> Store:
        raise NotImplementedError

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return await coro

    def _blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        raise NotImplementedError

    # -- waiting ---------------------------------------------------------------------------------------
    async def _wait_terminal(self, workflow_id: str, timeout: float | None) -> WorkflowRecord:
        """Wait for a terminal row: subscribed before each check, so no wake-up falls in between.

        With a store that notifies other processes the wait relies on that, re-checking only as a guard
        against a lost notification; otherwise (SQLite across processes) it re-checks from 2 ms, doubling
        up to `poll_interval`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        notifies = self.store.notifies_other_processes
        delay = SAFETY_RECHECK if notifies else 0.002
        ceiling = SAFETY_RECHECK if notifies else self.poll_interval
        keys = [workflow_key(workflow_id)]
        notifier = self.store.notifier
        watched = not notifies  # without cross-process notifications there is nothing to ask for
        while True:
            woken = notifier.subscribe(keys)
            try:
                rec = await self.store.workflow_get(workflow_id)
                if rec is None:
                    raise WorkflowNotFound(workflow_id)
                if WorkflowStatus(rec.status).is_terminal:
                    return rec
                if not watched:
                    # Its finish may come from another process: ask for the notification, then look again.
                    await self.store.workflow_watch(workflow_id)
                    watched = True
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"workflow {workflow_id!r} did not finish within {timeout}s")
                wait = min(delay, ceiling)
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                try:
                    async with asyncio.timeout(wait):
                        await asyncio.shield(woken)
                except TimeoutError:
                    pass
            finally:
                notifier.unsubscribe(keys, woken)
            delay *= 2

    async def _result(self, workflow_id: str, timeout: float | None) -> Any:
        return decode_outcome(await self._wait_terminal(workflow_id, timeout))

    # -- inspection ------------------------------------------------------------------------------------
    async def list_workflows(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        executor_id: str | None = None,
        app_version: str | None = None,
        parent_id: str | None = None,
        queue_name: str | None = None,
        workflow_ids: Sequence[str] | None = None,
        limit: int | None = 100,
        offset: int = 0,
        order: Literal["newest", "oldest"] = "newest",
    ) -> list[WorkflowInfo]:
        """Workflows matching every filter given, newest first by default."""
        if status is None:
            statuses: tuple[str, ...] = ()
        elif isinstance(status, str):
            statuses = (WorkflowStatus(status).value,)
        else:
            statuses = tuple(WorkflowStatus(s).value for s in status)
        if order not in ("newest", "oldest"):
            raise ConfigurationError(f"order must be 'newest' or 'oldest', got {order!r}")
        if (limit is not None and limit < 0) or offset < 0:
            raise ConfigurationError("limit and offset must not be negative")
        flt = WorkflowFilter(
            status=statuses,
            name=name,
            created_after=_ms(created_after, "created_after"),
            created_before=_ms(created_before, "created_before"),
            executor_id=executor_id,
            app_version=app_version,
            parent_id=parent_id,
            queue_name=queue_name,
            workflow_ids=tuple(workflow_ids or ()),
            limit=limit,
            offset=offset,
            newest_first=order == "newest",
        )
        records = await self._on_loop(self.store.workflow_list(flt))
        return [WorkflowInfo.from_record(r) for r in records]

    async def get_workflow(self, workflow_id: str) -> WorkflowInfo:
        rec = await self._on_loop(self.store.workflow_get(workflow_id))
        if rec is None:
            raise WorkflowNotFound(workflow_id)
        return WorkflowInfo.from_record(rec)

    async def list_steps(self, workflow_id: str) -> list[StepInfo]:
        if await self._on_loop(self.store.workflow_get(workflow_id)) is None:
            raise WorkflowNotFound(workflow_id)
        return [StepInfo.from_record(r) for r in await self._on_loop(self.store.step_list(workflow_id))]

    async def delete_workflows(self, workflow_ids: Sequence[str]) -> int:
        """Delete finished workflows with their steps. PENDING and ENQUEUED ones are never deleted."""
        return await self._on_loop(self.store.workflow_delete(list(workflow_ids)))

    async def garbage_collect(self, older_than: timedelta | float) -> int:
        """Delete finished workflows completed more than `older_than` ago (seconds or a timedelta)."""
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else float(older_than)
        if seconds < 0:
            raise ConfigurationError("older_than must not be negative")
        cutoff = int((time.time() - seconds) * 1000)
        return await self._on_loop(self.store.workflow_gc(cutoff))

    def list_workflows_sync(self, **kwargs: Any) -> list[WorkflowInfo]:
        return self._blocking(self.list_workflows(**kwargs))

    def get_workflow_sync(self, workflow_id: str) -> WorkflowInfo:
        return self._blocking(self.get_workflow(workflow_id))

    def list_steps_sync(self, workflow_id: str) -> list[StepInfo]:
        return self._blocking(self.list_steps(workflow_id))

    def delete_workflows_sync(self, workflow_ids: Sequence[str]) -> int:
        return self._blocking(self.delete_workflows(workflow_ids))

    def garbage_collect_sync(self, older_than: timedelta | float) -> int:
        return self._blocking(self.garbage_collect(older_than))


class WorkflowHandle:
    """A started workflow: its id, its outcome and its status."""

    def __init__(self, workflow_id: str, owner: Manager) -> None:
        self.workflow_id = workflow_id
        self._owner = owner

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r})"

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the outcome: the return value, or the workflow's exception raised again."""
        return await self._owner._result(self.workflow_id, timeout)

    async def status(self) -> WorkflowInfo:
        return await self._owner.get_workflow(self.workflow_id)

    def result_sync(self, timeout: float | None = None) -> Any:
        return self._owner._blocking(self._owner._result(self.workflow_id, timeout))

    def status_sync(self) -> WorkflowInfo:
        return self._owner._blocking(self._owner.get_workflow(self.workflow_id))
