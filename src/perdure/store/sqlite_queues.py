"""Queues and schedules on SQLite: the `Store` queue methods, mixed into `SQLiteStore`.

A dequeue is one op of the group committer, so it runs inside `BEGIN IMMEDIATE`: every process's dequeues
of the file are serialized, and a queue's budget (concurrency, rate limit) is counted and spent in the same
transaction. Other processes learn of new work by polling (SQLite cannot notify them); this process's
workers are woken after the commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from .base import StepRecord, WorkflowRecord, now_ms
from .notify import Notifier
from .queries import sqlite_queues as qq
from .queries.sqlite import WORKFLOW_COLUMNS
from .queue_types import DequeueRequest, DequeueResult, EnqueueOutcome, QueuePeek, QueueRecord, ScheduleRecord

T = TypeVar("T")


def _queue_key(name: str) -> str:
    return f"queue:{name}"


def _names_clause(names: tuple[str, ...] | None, params: dict[str, Any]) -> str:
    if names is None:
        return ""
    if not names:
        return "AND 0"
    slots = []
    for i, name in enumerate(names):
        params[f"name{i}"] = name
        slots.append(f":name{i}")
    return f"AND name IN ({', '.join(slots)})"


def _record_params(record: WorkflowRecord, debounce_key: str | None) -> dict[str, Any]:
    params = {c: getattr(record, c) for c in WORKFLOW_COLUMNS}
    params["debounce_key"] = debounce_key
    return params


def _schedule(row: sqlite3.Row) -> ScheduleRecord:
    values = dict(row)
    values["paused"] = bool(values["paused"])
    return ScheduleRecord(**values)


class SQLiteQueues:
    """The queue half of `SQLiteStore`."""

    if TYPE_CHECKING:
        notifier: Notifier

        async def _write(self, fn: Callable[[sqlite3.Connection], T], *, atomic: bool = False) -> T: ...

        def _read_one(self, sql: str, params: Iterable[Any]) -> sqlite3.Row | None: ...

        def _read_all(self, sql: str, params: Iterable[Any]) -> list[sqlite3.Row]: ...

        _reader: sqlite3.Connection | None

    def _read_named(self, sql: str, params: dict[str, Any]) -> sqlite3.Row | None:
        assert self._reader is not None, "store is not open"
        row: sqlite3.Row | None = self._reader.execute(sql, params).fetchone()
        return row

    # -- enqueue ---------------------------------------------------------------------------------------
    async def queue_enqueue(self, record: WorkflowRecord) -> EnqueueOutcome:
        assert record.queue_name is not None
        params = _record_params(record, None)

        def op(conn: sqlite3.Connection) -> EnqueueOutcome:
            if conn.execute(qq.ENQUEUE_INSERT, params).rowcount == 1:
                return EnqueueOutcome(True)
            row = conn.execute(qq.WORKFLOW_GET, (record.workflow_id,)).fetchone()
            if row is not None:
                return EnqueueOutcome(False, existing=WorkflowRecord(**dict(row)))
            holder = conn.execute(qq.DEDUP_HOLDER, (record.queue_name, record.dedup_key)).fetchone()
            if holder is None:  # pragma: no cover - the insert conflicted on something that is gone
                raise RuntimeError(f"enqueue of {record.workflow_id!r} conflicted and nothing holds the conflict")
            return EnqueueOutcome(False, duplicate_of=holder[0])

        outcome = await self._write(op)
        if outcome.inserted:
            self.notifier.fire([_queue_key(record.queue_name)])
        return outcome

    async def queue_debounce(
        self, record: WorkflowRecord, debounce_key: str, max_wait_ms: int | None
    ) -> tuple[str, bool]:
        assert record.queue_name is not None
        params = _record_params(record, debounce_key)
        params["max_wait"] = max_wait_ms

        def op(conn: sqlite3.Connection) -> tuple[str, bool]:
            conn.execute(qq.DEBOUNCE_RELEASE, params)
            row = conn.execute(qq.DEBOUNCE_UPSERT, params).fetchone()
            return str(row[0]), row[0] == record.workflow_id

        result: tuple[str, bool] = await self._write(op, atomic=True)
        self.notifier.fire([_queue_key(record.queue_name)])
        return result

    # -- dequeue ---------------------------------------------------------------------------------------
    async def queue_dequeue(self, request: DequeueRequest) -> DequeueResult:
        def op(conn: sqlite3.Connection) -> DequeueResult:
            t = now_ms()
            params: dict[str, Any] = {
                "q": request.queue_name,
                "t": t,
                "version": request.app_version,
                "executor": request.executor_id,
            }
            names = _names_clause(request.names, params)
            budget = request.limit
            oldest_recent: int | None = None
            if request.rate_limit is not None and request.rate_period_ms is not None:
                params["since"] = t - request.rate_period_ms
            else:
                params["since"] = t  # nothing started after now: no rate window
            if not request.partitioned:
                if request.concurrency is not None:
                    running = conn.execute(qq.COUNT_RUNNING, params).fetchone()[0]
                    budget = min(budget, request.concurrency - running)
                if request.rate_limit is not None:
                    recent = conn.execute(qq.COUNT_RECENT, params).fetchone()[0]
                    budget = min(budget, request.rate_limit - recent)
            records: list[WorkflowRecord] = []
            if budget > 0:
                conn.execute(qq.FLIP_DUE, params)
                params["n"] = budget
                partitions: list[str] = []
                if request.partitioned:
                    params["conc"] = request.concurrency
                    params["rate"] = request.rate_limit
                    picked = conn.execute(qq.PICK_PARTITIONED.format(names=names), params).fetchall()
                    ids = [r[0] for r in picked]
                    partitions = list(dict.fromkeys(r[1] for r in picked))  # in the order they were served
                else:
                    ids = [r[0] for r in conn.execute(qq.PICK.format(names=names), params).fetchall()]
                if ids:
                    slots = []
                    for i, wid in enumerate(ids):
                        params[f"id{i}"] = wid
                        slots.append(f":id{i}")
                    rows = conn.execute(qq.CLAIM.format(ids=", ".join(slots)), params).fetchall()
                    order = {wid: i for i, wid in enumerate(ids)}
                    records = sorted((WorkflowRecord(**dict(r)) for r in rows), key=lambda r: order[r.workflow_id])
                for pk in partitions:
                    conn.execute(qq.PARTITION_SERVED, {"q": request.queue_name, "pk": pk})
            if request.rate_limit is not None:
                oldest_recent = conn.execute(qq.COUNT_RECENT, params).fetchone()[1]
            backlog = bool(conn.execute(qq.BACKLOG.format(names=names), params).fetchone()[0])
            next_due = conn.execute(qq.NEXT_DUE, params).fetchone()[0]
            rate_free_at = None
            if oldest_recent is not None and request.rate_period_ms is not None:
                rate_free_at = oldest_recent + request.rate_period_ms
            return DequeueResult(records, backlog, next_due, rate_free_at, t)

        result: DequeueResult = await self._write(op, atomic=True)
        return result

    async def queue_peek(self, request: DequeueRequest) -> QueuePeek:
        t = now_ms()
        params: dict[str, Any] = {"q": request.queue_name, "t": t, "version": request.app_version}
        names = _names_clause(request.names, params)
        row = self._read_named(qq.BACKLOG.format(names=names), params)
        backlog = ready = bool(row and row[0])
        rate_free_in = None
        if ready and not request.partitioned:
            if request.concurrency is not None:
                running = self._read_named(qq.COUNT_RUNNING, params)
                ready = running is not None and running[0] < request.concurrency
            if ready and request.rate_limit is not None and request.rate_period_ms is not None:
                params["since"] = t - request.rate_period_ms
                recent = self._read_named(qq.COUNT_RECENT, params)
                ready = recent is not None and recent[0] < request.rate_limit
                if recent is not None and recent[1] is not None:
                    rate_free_in = recent[1] + request.rate_period_ms - t
        due = self._read_named(qq.NEXT_DUE, params)
        due_in = due[0] - t if due and due[0] is not None else None
        return QueuePeek(backlog, ready, due_in, rate_free_in)

    async def queue_requeue(self, workflow_ids: list[str], executor_id: str) -> list[str]:
        if not workflow_ids:
            return []

        def op(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            sql = qq.REQUEUE.format(ids=",".join("?" * len(workflow_ids)))
            return [(r[0], r[1]) for r in conn.execute(sql, (now_ms(), *workflow_ids, executor_id)).fetchall()]

        moved = await self._write(op)
        self.notifier.fire({_queue_key(q) for _, q in moved if q is not None})
        return [wid for wid, _ in moved]

    async def queue_steps(self, workflow_ids: list[str]) -> dict[str, list[StepRecord]]:
        out: dict[str, list[StepRecord]] = {}
        for i in range(0, len(workflow_ids), 500):
            chunk = workflow_ids[i : i + 500]
            for row in self._read_all(qq.STEPS_OF.format(ids=",".join("?" * len(chunk))), chunk):
                out.setdefault(row[0], []).append(StepRecord(**dict(row)))
        return out

    # -- management ------------------------------------------------------------------------------------
    async def queue_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for row in self._read_all(qq.COUNTS, ()):
            out.setdefault(row[0], {})[row[1]] = int(row[2])
        return out

    async def queue_register(self, queues: list[tuple[str, str]]) -> None:
        if not queues:
            return
        t = now_ms()
        await self._write(lambda conn: conn.executemany(qq.QUEUE_UPSERT, [(n, c, t) for n, c in queues]))

    async def queue_registry(self) -> list[QueueRecord]:
        return [QueueRecord(**dict(r)) for r in self._read_all(qq.QUEUE_LIST, ())]

    # -- schedules -------------------------------------------------------------------------------------
    async def schedule_register(self, records: list[ScheduleRecord]) -> list[ScheduleRecord]:
        if not records:
            return []

        def op(conn: sqlite3.Connection) -> list[ScheduleRecord]:
            out = []
            for r in records:
                conn.execute(qq.SCHEDULE_UPSERT, tuple(getattr(r, c) for c in qq.SCHEDULE_COLUMNS))
                out.append(_schedule(conn.execute(qq.SCHEDULE_GET, (r.name,)).fetchone()))
            return out

        result: list[ScheduleRecord] = await self._write(op, atomic=True)
        return result

    async def schedule_get(self, name: str) -> ScheduleRecord | None:
        row = self._read_one(qq.SCHEDULE_GET, (name,))
        return None if row is None else _schedule(row)

    async def schedule_list(self) -> list[ScheduleRecord]:
        return [_schedule(r) for r in self._read_all(qq.SCHEDULE_LIST, ())]

    async def schedule_set_paused(self, name: str, paused: bool) -> bool:
        count: int = await self._write(
            lambda conn: conn.execute(qq.SCHEDULE_PAUSE, (1 if paused else 0, now_ms(), name)).rowcount
        )
        return count == 1

    async def schedule_fire(self, name: str, tick: int, record: WorkflowRecord) -> bool:
        params = _record_params(record, None)

        def op(conn: sqlite3.Connection) -> bool:
            if conn.execute(qq.SCHEDULE_TICK, (tick, now_ms(), name)).rowcount != 1:
                return False  # paused (or removed)
            return bool(conn.execute(qq.ENQUEUE_INSERT, params).rowcount == 1)

        inserted: bool = await self._write(op, atomic=True)
        if inserted and record.queue_name is not None:
            self.notifier.fire([_queue_key(record.queue_name)])
        return inserted
