"""Queues and schedules on PostgreSQL: the `Store` queue methods, mixed into `PostgresStore`.

A dequeue is one op of the pipelined group commit (no round trip of its own). Plain queues dequeue with
`SELECT ... FOR UPDATE SKIP LOCKED`, so processes take disjoint rows without waiting for each other. A
queue with a shared budget (global concurrency, rate limit, partitions) first takes a transaction-level
advisory lock of its own, so two processes never count the same free slot; the count and the claim then
see every dequeue committed before. A trigger (migration 0003) NOTIFYs `queue:<name>` whenever a row
becomes ENQUEUED or DELAYED, so idle workers everywhere wake within milliseconds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .base import StepRecord, WorkflowRecord, now_ms
from .notify import Notifier
from .queries import postgres_queues as pq
from .queries.sqlite import WORKFLOW_COLUMNS
from .queries.sqlite_queues import SCHEDULE_COLUMNS
from .queue_types import DequeueRequest, DequeueResult, EnqueueOutcome, QueuePeek, QueueRecord, ScheduleRecord

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.AsyncConnection[dict[str, Any]]
    Final = Callable[[], Awaitable[Any]]


def _queue_key(name: str) -> str:
    return f"queue:{name}"


def _record_params(record: WorkflowRecord) -> dict[str, Any]:
    return {c: getattr(record, c) for c in WORKFLOW_COLUMNS}


class PostgresQueues:
    """The queue half of `PostgresStore`."""

    if TYPE_CHECKING:
        notifier: Notifier
        schema: str
        channel: str

        async def _write(self, fn: Callable[[Conn], Awaitable[Final]]) -> Any: ...

        async def _read_all(self, sql: str, params: Any) -> list[dict[str, Any]]: ...

        async def _read_one(self, sql: str, params: Any) -> dict[str, Any] | None: ...

    _qq_cache: dict[str, str] | None = None
    _shapes: dict[tuple[Any, ...], str] | None = None

    @property
    def _qq(self) -> dict[str, str]:
        if self._qq_cache is None:
            self._qq_cache = pq.build(self.schema)
        return self._qq_cache

    def _shape(self, kind: str, **flags: bool) -> str:
        if self._shapes is None:
            self._shapes = {}
        key = (kind, *sorted(flags.items()))
        sql = self._shapes.get(key)
        if sql is None:
            builders: dict[str, Callable[..., str]] = {
                "dequeue": pq.dequeue_sql,
                "info": pq.info_sql,
                "peek": pq.peek_sql,
                "wake": pq.wake_sql,
            }
            sql = self._shapes[key] = builders[kind](self.schema, **flags)
        return sql

    # -- enqueue ---------------------------------------------------------------------------------------
    async def queue_enqueue(self, record: WorkflowRecord) -> EnqueueOutcome:
        assert record.queue_name is not None
        params = _record_params(record)
        qq = self._qq

        async def op(conn: Conn) -> Final:
            ins = await conn.execute(qq["ENQUEUE_INSERT"], params)
            got = await conn.execute(qq["WORKFLOW_GET"], (record.workflow_id,))
            holder = (
                await conn.execute(qq["DEDUP_HOLDER"], (record.queue_name, record.dedup_key))
                if record.dedup_key is not None
                else None
            )

            async def done() -> EnqueueOutcome:
                if ins.rowcount == 1:
                    return EnqueueOutcome(True)
                row = await got.fetchone()
                if row is not None:
                    return EnqueueOutcome(False, existing=WorkflowRecord(**row))
                held = await holder.fetchone() if holder is not None else None
                # None of them: the holder finished between the statements; the caller tries again.
                return EnqueueOutcome(False, duplicate_of=held["workflow_id"] if held else None)

            return done

        outcome: EnqueueOutcome = await self._write(op)
        if outcome.inserted:
            self.notifier.fire([_queue_key(record.queue_name)])
        return outcome

    async def queue_debounce(
        self, record: WorkflowRecord, debounce_key: str, max_wait_ms: int | None
    ) -> tuple[str, bool]:
        assert record.queue_name is not None
        params = _record_params(record)
        params["debounce_key"] = debounce_key
        params["max_wait"] = max_wait_ms
        qq = self._qq

        async def op(conn: Conn) -> Final:
            await conn.execute(qq["DEBOUNCE_RELEASE"], params)
            cur = await conn.execute(qq["DEBOUNCE_UPSERT"], params)

            async def done() -> tuple[str, bool]:
                row = await cur.fetchone()
                assert row is not None
                return str(row["workflow_id"]), row["workflow_id"] == record.workflow_id

            return done

        result: tuple[str, bool] = await self._write(op)
        self.notifier.fire([_queue_key(record.queue_name)])
        return result

    # -- dequeue ---------------------------------------------------------------------------------------
    def _dequeue_params(self, request: DequeueRequest) -> dict[str, Any]:
        return {
            "q": request.queue_name,
            "executor": request.executor_id,
            "limit": request.limit,
            "version": request.app_version,
            "names": list(request.names) if request.names is not None else None,
            "conc": request.concurrency,
            "rate": request.rate_limit,
            "period": request.rate_period_ms or 0,
            "channel": self.channel,
            "key": _queue_key(request.queue_name),
        }

    async def queue_dequeue(self, request: DequeueRequest) -> DequeueResult:
        params = self._dequeue_params(request)
        names = request.names is not None
        conc = request.concurrency is not None
        rate = request.rate_limit is not None
        claim_sql = self._shape("dequeue", concurrency=conc, rate=rate, partitioned=request.partitioned, names=names)
        info_sql = self._shape("info", rate=rate, names=names)
        wake = request.wake_others and not request.partitioned and (conc or rate)
        wake_sql = self._shape("wake", concurrency=conc, rate=rate, names=names) if wake else ""
        lock_key = f"perdure-queue:{self.schema}:{request.queue_name}"
        qq = self._qq

        async def op(conn: Conn) -> Final:
            if request.budgeted:
                await conn.execute(qq["QUEUE_LOCK"], (lock_key,))
            await conn.execute(qq["FLIP_DUE"], params)
            claim = await conn.execute(claim_sql, params)
            info = await conn.execute(info_sql, params)
            if wake:
                await conn.execute(wake_sql, params)

            async def done() -> DequeueResult:
                records = [WorkflowRecord(**r) for r in await claim.fetchall()]
                row = await info.fetchone()
                assert row is not None
                oldest = row["oldest_recent"]
                free_at = oldest + request.rate_period_ms if oldest is not None and request.rate_period_ms else None
                return DequeueResult(records, bool(row["backlog"]), row["next_due"], free_at, int(row["now"]))

            return done

        result: DequeueResult = await self._write(op)
        return result

    async def queue_peek(self, request: DequeueRequest) -> QueuePeek:
        params = self._dequeue_params(request)
        budget = not request.partitioned
        sql = self._shape(
            "peek",
            concurrency=budget and request.concurrency is not None,
            rate=budget and request.rate_limit is not None,
            names=request.names is not None,
        )
        row = await self._read_one(sql, params)
        if row is None:
            return QueuePeek(False, False)
        return QueuePeek(
            bool(row["backlog"]),
            bool(row["backlog"]) and row["room"] is not False,
            int(row["due_in"]) if row["due_in"] is not None else None,
            int(row["rate_free_in"]) if row["rate_free_in"] is not None else None,
        )

    async def queue_requeue(self, workflow_ids: list[str], executor_id: str) -> list[str]:
        if not workflow_ids:
            return []
        sql = self._qq["REQUEUE"]

        async def op(conn: Conn) -> Final:
            cur = await conn.execute(sql, (now_ms(), list(workflow_ids), executor_id))

            async def done() -> list[tuple[str, str | None]]:
                return [(r["workflow_id"], r["queue_name"]) for r in await cur.fetchall()]

            return done

        moved: list[tuple[str, str | None]] = await self._write(op)
        self.notifier.fire({_queue_key(q) for _, q in moved if q is not None})
        return [wid for wid, _ in moved]

    async def queue_steps(self, workflow_ids: list[str]) -> dict[str, list[StepRecord]]:
        out: dict[str, list[StepRecord]] = {}
        if workflow_ids:
            for row in await self._read_all(self._qq["STEPS_OF"], (list(workflow_ids),)):
                out.setdefault(row["workflow_id"], []).append(StepRecord(**row))
        return out

    # -- management ------------------------------------------------------------------------------------
    async def queue_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for row in await self._read_all(self._qq["COUNTS"], ()):
            out.setdefault(row["queue_name"], {})[row["status"]] = int(row["n"])
        return out

    async def queue_register(self, queues: list[tuple[str, str]]) -> None:
        if not queues:
            return
        t = now_ms()
        sql = self._qq["QUEUE_UPSERT"]

        async def op(conn: Conn) -> Final:
            for name, config in sorted(queues):
                await conn.execute(sql, (name, config, t))
            return _none

        await self._write(op)

    async def queue_registry(self) -> list[QueueRecord]:
        return [QueueRecord(**r) for r in await self._read_all(self._qq["QUEUE_LIST"], ())]

    # -- schedules -------------------------------------------------------------------------------------
    async def schedule_register(self, records: list[ScheduleRecord]) -> list[ScheduleRecord]:
        if not records:
            return []
        sql = self._qq["SCHEDULE_UPSERT"]

        async def op(conn: Conn) -> Final:
            curs = [
                await conn.execute(sql, tuple(getattr(r, c) for c in SCHEDULE_COLUMNS))
                for r in sorted(records, key=lambda r: r.name)
            ]

            async def done() -> list[ScheduleRecord]:
                out = []
                for cur in curs:
                    row = await cur.fetchone()
                    assert row is not None
                    out.append(ScheduleRecord(**row))
                return out

            return done

        result: list[ScheduleRecord] = await self._write(op)
        return result

    async def schedule_get(self, name: str) -> ScheduleRecord | None:
        row = await self._read_one(self._qq["SCHEDULE_GET"], (name,))
        return None if row is None else ScheduleRecord(**row)

    async def schedule_list(self) -> list[ScheduleRecord]:
        return [ScheduleRecord(**r) for r in await self._read_all(self._qq["SCHEDULE_LIST"], ())]

    async def schedule_set_paused(self, name: str, paused: bool) -> bool:
        sql = self._qq["SCHEDULE_PAUSE"]

        async def op(conn: Conn) -> Final:
            cur = await conn.execute(sql, (paused, now_ms(), name))

            async def done() -> int:
                return cur.rowcount

            return done

        return bool(await self._write(op) == 1)

    async def schedule_fire(self, name: str, tick: int, record: WorkflowRecord) -> bool:
        params = _record_params(record)
        params.update(schedule=name, tick=tick, t=now_ms())
        qq = self._qq

        async def op(conn: Conn) -> Final:
            ins = await conn.execute(qq["SCHEDULE_FIRE_INSERT"], params)
            await conn.execute(qq["SCHEDULE_TICK"], params)

            async def done() -> bool:
                return ins.rowcount == 1

            return done

        inserted: bool = await self._write(op)
        if inserted and record.queue_name is not None:
            self.notifier.fire([_queue_key(record.queue_name)])
        return inserted


async def _none() -> None:
    return None
