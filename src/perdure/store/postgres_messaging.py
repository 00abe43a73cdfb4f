"""Messages, events and streams on PostgreSQL: the `Store` messaging methods, mixed into `PostgresStore`.

Each write is one op of the pipelined group commit: its statements are queued without waiting for answers
(the effect, the checkpoint that records it, then a read of the outcome) and decided after the commit.
Waiters in other processes are woken by `pg_notify` sent in the same transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from ..errors import WorkflowNotFound
from .base import TERMINAL_STATUSES, GuardOutcome, StepRecord, now_ms
from .notify import Notifier, event_key, message_key, stream_key
from .queries import postgres_messaging as queries
from .queries.sqlite import STEP_COLUMNS

Conn = psycopg.AsyncConnection[dict[str, Any]]
Final = Callable[[], Awaitable[Any]]


def _guard(row: dict[str, Any] | None, executor_id: str) -> GuardOutcome:
    """Why a guarded write did not apply, from the workflow's status and owner read in its transaction."""
    if row is None or row["wf_status"] is None:
        return "missing"
    status = row["wf_status"]
    if status == "CANCELLED":
        return "cancelled"
    if status in TERMINAL_STATUSES:
        return "finished"
    if status != "PENDING" or row["wf_executor"] != executor_id:
        return "not_owner"
    return "ok"


def _step_from(row: dict[str, Any]) -> StepRecord | None:
    if row.get("step_id") is None:
        return None
    return StepRecord(**{c: row[c] for c in STEP_COLUMNS})


def _step_params(record: StepRecord) -> dict[str, Any]:
    return {
        "wf": record.workflow_id,
        "step_id": record.step_id,
        "name": record.name,
        "args_hash": record.args_hash,
        "output": record.output,
        "error": record.error,
        "attempts": record.attempts,
        "started_at": record.started_at,
        "completed_at": record.completed_at,
    }


class PostgresMessaging:
    """The messaging half of `PostgresStore`."""

    if TYPE_CHECKING:
        schema: str
        notifier: Notifier

        async def _write(self, fn: Callable[[Conn], Awaitable[Final]]) -> Any: ...

        async def _read_all(self, sql: str, params: Any) -> list[dict[str, Any]]: ...

        async def _read_one(self, sql: str, params: Any) -> dict[str, Any] | None: ...

        async def _notify(self, conn: Conn, keys: list[str]) -> None: ...

    @functools.cached_property
    def mq(self) -> SimpleNamespace:
        """The messaging queries for this store's schema."""
        return queries.build(self.schema)

    # -- messages --------------------------------------------------------------------------------------
    async def message_send(self, destination_id: str, topic: str, value: str, message_id: str) -> bool:
        params = {"id": message_id, "dest": destination_id, "topic": topic, "value": value, "t": now_ms()}
        keys = [message_key(destination_id)]

        async def op(conn: Conn) -> Final:
            ins = await conn.execute(self.mq.MESSAGE_INSERT, params)
            found = await conn.execute(self.mq.WORKFLOW_EXISTS, params)
            await self._notify(conn, keys)

            async def done() -> bool:
                row = await found.fetchone()
                if row is None or not row["found"]:
                    raise WorkflowNotFound(destination_id)
                return ins.rowcount == 1

            return done

        sent: bool = await self._write(op)
        self.notifier.fire(keys)
        return sent

    async def message_send_step(
        self,
        destination_id: str,
        topic: str,
        value: str,
        message_id: str,
        checkpoint: StepRecord,
        executor_id: str,
        missing_error: str,
    ) -> StepRecord | GuardOutcome:
        params = _step_params(checkpoint)
        params.update(id=message_id, dest=destination_id, topic=topic, value=value, t=now_ms(), executor=executor_id)
        params["missing"] = missing_error
        keys = [message_key(destination_id)]

        async def op(conn: Conn) -> Final:
            await conn.execute(self.mq.MESSAGE_INSERT_STEP, params)
            await conn.execute(self.mq.STEP_INSERT_SEND, params)
            outcome = await conn.execute(self.mq.STEP_WITH_OWNER, params)
            await self._notify(conn, keys)

            async def done() -> StepRecord | GuardOutcome:
                row = await outcome.fetchone()
                stored = None if row is None else _step_from(row)
                if stored is not None:
                    return stored
                why = _guard(row, executor_id)
                return "conflict" if why == "ok" else why

            return done

        result: StepRecord | GuardOutcome = await self._write(op)
        self.notifier.fire(keys)
        return result

    async def message_receive(
        self,
        workflow_id: str,
        topic: str,
        executor_id: str,
        result: StepRecord,
        *,
        wait: StepRecord | None = None,
        final: bool = False,
    ) -> StepRecord | GuardOutcome | None:
        t = now_ms()
        params = _step_params(replace(result, completed_at=t))
        params.update(topic=topic, executor=executor_id)

        async def op(conn: Conn) -> Final:
            await conn.execute(self.mq.MESSAGE_CONSUME, params)
            if final:
                await conn.execute(self.mq.STEP_FINISH, params)
            elif wait is not None:
                wparams = _step_params(wait)
                wparams["executor"] = executor_id
                await conn.execute(self.mq.STEP_INSERT, wparams)
            outcome = await conn.execute(self.mq.STEP_WITH_OWNER, params)

            async def done() -> StepRecord | GuardOutcome | None:
                row = await outcome.fetchone()
                stored = None if row is None else _step_from(row)
                if stored is not None:
                    return stored
                why = _guard(row, executor_id)
                return None if why == "ok" else why

            return done

        received: StepRecord | GuardOutcome | None = await self._write(op)
        return received

    async def step_complete(self, record: StepRecord, executor_id: str) -> GuardOutcome:
        params = _step_params(replace(record, completed_at=record.completed_at or now_ms()))
        params["executor"] = executor_id

        async def op(conn: Conn) -> Final:
            await conn.execute(self.mq.STEP_COMPLETE, params)
            outcome = await conn.execute(self.mq.STEP_WITH_OWNER, params)

            async def done() -> GuardOutcome:
                row = await outcome.fetchone()
                stored = None if row is None else _step_from(row)
                if stored is not None and stored.name == record.name and stored.completed_at is not None:
                    return "ok"
                why = _guard(row, executor_id)
                return "conflict" if why == "ok" else why

            return done

        result: GuardOutcome = await self._write(op)
        return result

    async def message_available(self, workflow_id: str, topic: str) -> bool:
        return await self._read_one(self.mq.MESSAGE_AVAILABLE, (workflow_id, topic)) is not None

    # -- events ----------------------------------------------------------------------------------------
    async def event_set(
        self,
        workflow_id: str,
        key: str,
        value: str,
        *,
        step_id: int,
        sub: int,
        executor_id: str,
        checkpoint: StepRecord | None = None,
    ) -> GuardOutcome:
        params = {
            "wf": workflow_id,
            "key": key,
            "value": value,
            "step_id": step_id,
            "sub": sub,
            "t": now_ms(),
            "executor": executor_id,
        }
        keys = [event_key(workflow_id, key)]

        async def op(conn: Conn) -> Final:
            await conn.execute(self.mq.EVENT_INSERT, params)
            if checkpoint is not None:
                cparams = _step_params(checkpoint)
                cparams["executor"] = executor_id
                await conn.execute(self.mq.STEP_INSERT, cparams)
            outcome = await conn.execute(self.mq.EVENT_OUTCOME, params)
            await self._notify(conn, keys)

            async def done() -> GuardOutcome:
                row = await outcome.fetchone()
                if row is not None and row["written"]:
                    return "ok"
                why = _guard(row, executor_id)
                return "conflict" if why == "ok" else why

            return done

        result: GuardOutcome = await self._write(op)
        self.notifier.fire(keys)
        return result

    async def event_get(self, workflow_id: str, key: str) -> str | None:
        row = await self._read_one(self.mq.EVENT_GET, (workflow_id, key))
        return None if row is None else str(row["value"])

    async def event_get_all(self, workflow_id: str) -> dict[str, str]:
        return {r["key"]: r["value"] for r in await self._read_all(self.mq.EVENT_GET_ALL, (workflow_id,))}

    # -- streams ---------------------------------------------------------------------------------------
    async def stream_write(
        self,
        workflow_id: str,
        key: str,
        value: str | None,
        *,
        step_id: int,
        sub: int,
        executor_id: str,
        checkpoint: StepRecord | None = None,
    ) -> GuardOutcome | Literal["closed"]:
        params: dict[str, Any] = {
            "wf": workflow_id,
            "key": key,
            "value": value,
            "step_id": step_id,
            "sub": sub,
            "t": now_ms(),
            "executor": executor_id,
            "closing": value is None,
        }
        keys = [stream_key(workflow_id, key)]

        async def op(conn: Conn) -> Final:
            await conn.execute(self.mq.STREAM_INSERT, params)
            if checkpoint is not None:
                cparams = _step_params(checkpoint)
                cparams.update(params)
                cparams["cp_step_id"] = checkpoint.step_id
                cparams["output"] = checkpoint.output
                cparams["name"] = checkpoint.name
                await conn.execute(self.mq.STEP_INSERT_STREAM, cparams)
            outcome = await conn.execute(self.mq.STREAM_OUTCOME, params)
            await self._notify(conn, keys)

            async def done() -> GuardOutcome | Literal["closed"]:
                row = await outcome.fetchone()
                why = _guard(row, executor_id)
                if row is not None and row["written"]:
                    return "ok"
                if row is not None and row["closed"]:
                    if value is not None:
                        return "closed"
                    if why == "ok":
                        return "ok"
                return "conflict" if why == "ok" else why

            return done

        result: GuardOutcome | Literal["closed"] = await self._write(op)
        self.notifier.fire(keys)
        return result

    async def stream_read(self, workflow_id: str, key: str, offset: int, limit: int) -> list[tuple[int, str | None]]:
        rows = await self._read_all(self.mq.STREAM_READ, (workflow_id, key, offset, limit))
        return [(int(r["offset"]), r["value"]) for r in rows]

    # -- wake-ups and fork -----------------------------------------------------------------------------
    async def notify_keys(self, keys: list[str]) -> None:
        async def op(conn: Conn) -> Final:
            await self._notify(conn, keys)
            return _nothing

        await self._write(op)
        self.notifier.fire(keys)

    async def _fork_messaging(self, conn: Conn, source_id: str, new_id: str, from_step: int) -> None:
        """Inside the fork's transaction: copy events and stream values written before `from_step`."""
        await conn.execute(self.mq.FORK_EVENTS, (new_id, source_id, from_step))
        await conn.execute(self.mq.FORK_STREAMS, (new_id, source_id, from_step))


async def _nothing() -> None:
    return None
