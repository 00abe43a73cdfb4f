"""Queue and schedule management: `list_queues`, a queue's workflows, schedules, and `Client.enqueue`.

Mixed into `Perdure` (`QueueAdmin`) and `Client` (`ClientQueues`, which can enqueue by workflow name
without the code).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from ._management import WorkflowHandle
from .errors import (
    ConfigurationError,
)
from .serialization import dump_untyped_args
from .store.base import INTERNAL_QUEUE, Store, WorkflowFilter, WorkflowStatus
from .store.queue_types import ScheduleRecord
from .workflows import WorkflowInfo, registered_workflows, workflow_def_of

if TYPE_CHECKING:
    pass

from .queues import EnqueueOptions, OnDuplicate, Queue, declared_queues, submit

T = TypeVar("T")


# -- management --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue: its settings (as declared in code) and how many of its workflows are in each status."""

    name: str
    counts: dict[str, int]
    """Workflows per status (every status is present, 0 included)."""
    concurrency: int | None = None
    worker_concurrency: int | None = None
    rate_limit: tuple[int, float] | None = None
    priority: bool = False
    partitioned: bool = False
    declared: bool = False
    """False when no runtime has declared it (settings unknown): work put there by a Client, say."""

    @property
    def enqueued(self) -> int:
        return self.counts.get("ENQUEUED", 0) + self.counts.get("DELAYED", 0)

    @property
    def running(self) -> int:
        return self.counts.get("PENDING", 0)


def _queue_info(name: str, counts: dict[str, int], settings: dict[str, Any] | None) -> QueueInfo:
    full = {s.value: counts.get(s.value, 0) for s in WorkflowStatus}
    if settings is None:
        return QueueInfo(name, full)
    rate = settings.get("rate_limit")
    return QueueInfo(
        name,
        full,
        concurrency=settings.get("concurrency"),
        worker_concurrency=settings.get("worker_concurrency"),
        rate_limit=(int(rate[0]), float(rate[1])) if rate else None,
        priority=bool(settings.get("priority")),
        partitioned=bool(settings.get("partitioned")),
        declared=True,
    )


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    name: str
    workflow_name: str
    cron: str
    timezone: str
    missed: str
    queue_name: str | None
    paused: bool
    last_tick: datetime | None
    """The latest tick fired."""
    next_tick: datetime | None
    """The next tick (None while paused)."""


def _schedule_info(r: ScheduleRecord) -> ScheduleInfo:
    from .schedules import next_tick

    last = datetime.fromtimestamp(r.last_tick / 1000, tz=UTC) if r.last_tick is not None else None
    nxt = None if r.paused else next_tick(r.cron, r.timezone)
    return ScheduleInfo(r.name, r.workflow_name, r.cron, r.timezone, r.missed, r.queue_name, r.paused, last, nxt)


def _queue_name(queue: Queue | str) -> str:
    name = queue.name if isinstance(queue, Queue) else queue
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a queue or queue name is needed, got {queue!r}")
    return name


class QueueAdmin:
    """Queue and schedule management, on `Perdure` and on `Client`."""

    if TYPE_CHECKING:

        @property
        def store(self) -> Store: ...

        async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T: ...

        def _blocking(self, coro: Coroutine[Any, Any, T]) -> T: ...

    async def list_queues(self, *, include_internal: bool = False) -> list[QueueInfo]:
        """Every queue that is declared or holds workflows, with its settings and counts per status."""

        async def go() -> list[QueueInfo]:
            counts = await self.store.queue_counts()
            settings: dict[str, dict[str, Any] | None] = {}
            for rec in await self.store.queue_registry():
                try:
                    settings[rec.name] = json.loads(rec.config)
                except ValueError:
                    settings[rec.name] = None
            for q in declared_queues().values():
                settings[q.name] = q.settings
            names = sorted(set(counts) | set(settings))
            return [
                _queue_info(n, counts.get(n, {}), settings.get(n))
                for n in names
                if include_internal or n != INTERNAL_QUEUE
            ]

        return await self._on_loop(go())

    async def list_queue_workflows(
        self,
        queue: Queue | str,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        limit: int | None = 100,
        offset: int = 0,
    ) -> list[WorkflowInfo]:
        """A queue's workflows, oldest first; by default the ones not finished (ENQUEUED, DELAYED, PENDING)."""
        name = _queue_name(queue)
        if status is None:
            statuses: tuple[str, ...] = ("ENQUEUED", "DELAYED", "PENDING")
        elif isinstance(status, str):
            statuses = (WorkflowStatus(status).value,)
        else:
            statuses = tuple(WorkflowStatus(s).value for s in status)
        flt = WorkflowFilter(status=statuses, queue_name=name, limit=limit, offset=offset, newest_first=False)
        records = await self._on_loop(self.store.workflow_list(flt))
        return [WorkflowInfo.from_record(r) for r in records]

    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule a runtime has registered, with its state (paused or not, last and next tick)."""
        return [_schedule_info(r) for r in await self._on_loop(self.store.schedule_list())]

    async def pause_schedule(self, name: str) -> None:
        """Stop firing the schedule's ticks, in every process, until `resume_schedule`."""
        if not await self._on_loop(self.store.schedule_set_paused(name, True)):
            raise ConfigurationError(f"no schedule named {name!r}")

    async def resume_schedule(self, name: str) -> None:
        """Fire the schedule's ticks again from the next one (ticks that passed while paused are skipped)."""
        if not await self._on_loop(self.store.schedule_set_paused(name, False)):
            raise ConfigurationError(f"no schedule named {name!r}")

    async def trigger_schedule(self, name: str) -> WorkflowHandle:
        """Run the schedule's workflow now, once, with the current time as its scheduled time (even if paused)."""

        async def go() -> WorkflowHandle:
            from .schedules import declared_schedules, zone

            row = await self.store.schedule_get(name)
            if row is None:
                raise ConfigurationError(f"no schedule named {name!r}")
            when = datetime.now(zone(row.timezone))
            local = declared_schedules().get(name)
            defn = local.workflow if local is not None else registered_workflows().get(row.workflow_name)
            if defn is not None and defn.name == row.workflow_name:
                inputs, serializer = defn.codec.dump_args((when,), {}), defn.codec.serializer
            else:
                inputs, serializer = dump_untyped_args((when,), {}), "json"
            wid = f"sched:{name}:manual:{uuid.uuid4().hex[:12]}"
            record = EnqueueOptions().record(
                workflow_id=wid,
                name=row.workflow_name,
                inputs=inputs,
                serializer=serializer,
                queue_name=row.queue_name or INTERNAL_QUEUE,
                app_version=None,
                parent_id=None,
            )
            return await submit(self.store, self, record, "raise")

        return await self._on_loop(go())

    def list_queues_sync(self, *, include_internal: bool = False) -> list[QueueInfo]:
        return self._blocking(self.list_queues(include_internal=include_internal))

    def list_queue_workflows_sync(
        self,
        queue: Queue | str,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        limit: int | None = 100,
        offset: int = 0,
    ) -> list[WorkflowInfo]:
        return self._blocking(self.list_queue_workflows(queue, status=status, limit=limit, offset=offset))

    def list_schedules_sync(self) -> list[ScheduleInfo]:
        return self._blocking(self.list_schedules())

    def pause_schedule_sync(self, name: str) -> None:
        self._blocking(self.pause_schedule(name))

    def resume_schedule_sync(self, name: str) -> None:
        self._blocking(self.resume_schedule(name))

    def trigger_schedule_sync(self, name: str) -> WorkflowHandle:
        return self._blocking(self.trigger_schedule(name))


class ClientQueues(QueueAdmin):
    """`Client.enqueue`: put work on a queue from a process that may not have the workflow's code."""

    async def enqueue(
        self,
        queue: Queue | str,
        workflow: str | Callable[..., Any],
        *args: Any,
        workflow_id: str | None = None,
        dedup_key: str | None = None,
        priority: int | None = None,
        partition_key: str | None = None,
        delay: float | timedelta | None = None,
        timeout: float | timedelta | None = None,
        on_duplicate: OnDuplicate = "raise",
        app_version: str | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle:
        """Enqueue a run of the workflow registered as `workflow` (a name, or the function itself) on `queue`.

        By name, the arguments are stored as JSON and checked against the function only when a worker
        dequeues the run; a name no worker knows fails that run with `UnknownWorkflowError` (the queue goes
        on). Options as in `Queue.enqueue`; `app_version`: only workers of that version take it.
        """
        name = _queue_name(queue)
        local = queue if isinstance(queue, Queue) else declared_queues().get(name)
        option_args: dict[str, Any] = dict(
            workflow_id=workflow_id,
            dedup_key=dedup_key,
            priority=priority,
            partition_key=partition_key,
            delay=delay,
            timeout=timeout,
            on_duplicate=on_duplicate,
        )
        opts = local._options(**option_args) if local is not None else EnqueueOptions.check(**option_args)
        if callable(workflow):
            defn = workflow_def_of(workflow)
            workflow_name, inputs, serializer = defn.name, defn.codec.dump_args(args, kwargs), defn.codec.serializer
        elif isinstance(workflow, str) and workflow:
            workflow_name, inputs, serializer = workflow, dump_untyped_args(args, kwargs), "json"
        else:
            raise ConfigurationError(f"workflow must be a workflow name or function, got {workflow!r}")
        record = opts.record(
            workflow_id=opts.workflow_id or uuid.uuid4().hex,
            name=workflow_name,
            inputs=inputs,
            serializer=serializer,
            queue_name=name,
            app_version=app_version,
            parent_id=None,
        )
        return await self._on_loop(submit(self.store, self, record, opts.on_duplicate))

    def enqueue_sync(
        self,
        queue: Queue | str,
        workflow: str | Callable[..., Any],
        *args: Any,
        workflow_id: str | None = None,
        dedup_key: str | None = None,
        priority: int | None = None,
        partition_key: str | None = None,
        delay: float | timedelta | None = None,
        timeout: float | timedelta | None = None,
        on_duplicate: OnDuplicate = "raise",
        app_version: str | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle:
        return self._blocking(
            self.enqueue(
                queue,
                workflow,
                *args,
                workflow_id=workflow_id,
                dedup_key=dedup_key,
                priority=priority,
                partition_key=partition_key,
                delay=delay,
                timeout=timeout,
                on_duplicate=on_duplicate,
                app_version=app_version,
                **kwargs,
            )
        )
