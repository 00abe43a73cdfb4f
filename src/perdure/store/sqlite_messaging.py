"""Messages, events and streams on SQLite: the `Store` messaging methods, mixed into `SQLiteStore`.

Each write is one op of the group committer (so it shares the transaction of concurrent checkpoints), run
atomically: its effect and the checkpoint that records it commit together or not at all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ..errors import WorkflowNotFound
from .base import GuardOutcome, StepRecord, now_ms
from .notify import Notifier, event_key, message_key, stream_key
from .queries import sqlite as q
from .queries import sqlite_messaging as mq

T = TypeVar("T")


def _stored_step(conn: sqlite3.Connection, workflow_id: str, step_id: int) -> StepRecord | None:
    row = conn.execute(mq.STEP_GET, (workflow_id, step_id)).fetchone()
    return None if row is None else StepRecord(**dict(row))


def _refusal(conn: sqlite3.Connection, workflow_id: str, executor_id: str) -> GuardOutcome:
    from .sqlite import _why_not

    why = _why_not(conn, workflow_id, executor_id)
    return "conflict" if why == "ok" else why


class SQLiteMessaging:
    """The messaging half of `SQLiteStore`."""

    if TYPE_CHECKING:
        notifier: Notifier

        async def _write(self, fn: Callable[[sqlite3.Connection], T], *, atomic: bool = False) -> T: ...

        def _read_one(self, sql: str, params: Iterable[Any]) -> sqlite3.Row | None: ...

        def _read_all(self, sql: str, params: Iterable[Any]) -> list[sqlite3.Row]: ...

    # -- messages --------------------------------------------------------------------------------------
    async def message_send(self, destination_id: str, topic: str, value: str, message_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            if conn.execute(mq.WORKFLOW_EXISTS, (destination_id,)).fetchone() is None:
                raise WorkflowNotFound(destination_id)
            cur = conn.execute(mq.MESSAGE_INSERT, (message_id, destination_id, topic, value, now_ms()))
            return cur.rowcount == 1

        sent = await self._write(op)
        self.notifier.fire([message_key(destination_id)])
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
        wf = checkpoint.workflow_id

        def op(conn: sqlite3.Connection) -> StepRecord | GuardOutcome:
            if conn.execute(mq.OWNED, {"wf": wf, "executor": executor_id}).fetchone() is None:
                return _refusal(conn, wf, executor_id)
            record = checkpoint
            if conn.execute(mq.WORKFLOW_EXISTS, (destination_id,)).fetchone() is None:
                record = replace(checkpoint, output=None, error=missing_error)
            elif _stored_step(conn, wf, checkpoint.step_id) is None:
                conn.execute(mq.MESSAGE_INSERT, (message_id, destination_id, topic, value, now_ms()))
            conn.execute(q.STEP_INSERT_GUARDED, q.step_guarded_values(record, executor_id))
            stored = _stored_step(conn, wf, checkpoint.step_id)
            assert stored is not None
            return stored

        outcome = await self._write(op, atomic=True)
        self.notifier.fire([message_key(destination_id)])
        return outcome

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
        def op(conn: sqlite3.Connection) -> StepRecord | GuardOutcome | None:
            if conn.execute(mq.OWNED, {"wf": workflow_id, "executor": executor_id}).fetchone() is None:
                return _refusal(conn, workflow_id, executor_id)
            stored = _stored_step(conn, workflow_id, result.step_id)
            if stored is not None and (stored.completed_at is not None or stored.name != result.name):
                return stored  # a retried write: the message was consumed by the first one
            t = now_ms()
            message = conn.execute(mq.MESSAGE_OLDEST, (workflow_id, topic)).fetchone()
            if message is not None:
                conn.execute(mq.MESSAGE_CONSUME, (t, result.step_id, message["seq"]))
                record = replace(result, output=message["value"], completed_at=t)
            elif final:
                record = replace(result, completed_at=t)
            elif stored is None and wait is not None:
                conn.execute(q.STEP_INSERT_GUARDED, q.step_guarded_values(wait, executor_id))
                return wait
            else:
                return stored
            if stored is None:
                conn.execute(q.STEP_INSERT_GUARDED, q.step_guarded_values(record, executor_id))
            else:
                conn.execute(mq.STEP_COMPLETE, (record.output, t, workflow_id, record.step_id, record.name))
                record = replace(record, started_at=stored.started_at)
            return record

        outcome: StepRecord | GuardOutcome | None = await self._write(op, atomic=True)
        return outcome

    async def step_complete(self, record: StepRecord, executor_id: str) -> GuardOutcome:
        wf = record.workflow_id

        def op(conn: sqlite3.Connection) -> GuardOutcome:
            if conn.execute(mq.OWNED, {"wf": wf, "executor": executor_id}).fetchone() is None:
                return _refusal(conn, wf, executor_id)
            t = record.completed_at or now_ms()
            conn.execute(mq.STEP_COMPLETE, (record.output, t, wf, record.step_id, record.name))
            stored = _stored_step(conn, wf, record.step_id)
            return "ok" if stored is not None and stored.name == record.name else "conflict"

        outcome: GuardOutcome = await self._write(op, atomic=True)
        return outcome

    async def message_available(self, workflow_id: str, topic: str) -> bool:
        return self._read_one(mq.MESSAGE_AVAILABLE, (workflow_id, topic)) is not None

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

        def op(conn: sqlite3.Connection) -> GuardOutcome:
            conn.execute(mq.EVENT_INSERT, params)
            if conn.execute(mq.EVENT_WRITTEN, (workflow_id, step_id, sub)).fetchone() is None:
                return _refusal(conn, workflow_id, executor_id)
            if checkpoint is not None:
                conn.execute(q.STEP_INSERT_GUARDED, q.step_guarded_values(checkpoint, executor_id))
            return "ok"

        outcome: GuardOutcome = await self._write(op, atomic=True)
        self.notifier.fire([event_key(workflow_id, key)])
        return outcome

    async def event_get(self, workflow_id: str, key: str) -> str | None:
        row = self._read_one(mq.EVENT_GET, (workflow_id, key))
        return None if row is None else str(row[0])

    async def event_get_all(self, workflow_id: str) -> dict[str, str]:
        return {r[0]: r[1] for r in self._read_all(mq.EVENT_GET_ALL, (workflow_id,))}

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
        params = {
            "wf": workflow_id,
            "key": key,
            "value": value,
            "step_id": step_id,
            "sub": sub,
            "t": now_ms(),
            "executor": executor_id,
        }

        def op(conn: sqlite3.Connection) -> GuardOutcome | Literal["closed"]:
            conn.execute(mq.STREAM_INSERT, params)
            if conn.execute(mq.STREAM_WRITTEN, (workflow_id, step_id, sub)).fetchone() is None:
                if conn.execute(mq.STREAM_CLOSED, (workflow_id, key)).fetchone() is None:
                    return _refusal(conn, workflow_id, executor_id)
                if value is not None:
                    return "closed"
                # Closing a closed stream changes nothing, but the operation is still checkpointed.
                if conn.execute(mq.OWNED, params).fetchone() is None:
                    return _refusal(conn, workflow_id, executor_id)
            if checkpoint is not None:
                conn.execute(q.STEP_INSERT_GUARDED, q.step_guarded_values(checkpoint, executor_id))
            return "ok"

        outcome: GuardOutcome | Literal["closed"] = await self._write(op, atomic=True)
        self.notifier.fire([stream_key(workflow_id, key)])
        return outcome

    async def stream_read(self, workflow_id: str, key: str, offset: int, limit: int) -> list[tuple[int, str | None]]:
        return [(int(r[0]), r[1]) for r in self._read_all(mq.STREAM_READ, (workflow_id, key, offset, limit))]

    # -- wake-ups and fork -----------------------------------------------------------------------------
    async def notify_keys(self, keys: list[str]) -> None:
        # Other processes on SQLite poll; waiters of this process are woken here.
        self.notifier.fire(keys)

    def _fork_messaging(self, conn: sqlite3.Connection, source_id: str, new_id: str, from_step: int) -> None:
        """Inside the fork's transaction: copy events and stream values written before `from_step`."""
        conn.execute(mq.FORK_EVENTS, (new_id, source_id, from_step))
        conn.execute(mq.FORK_STREAMS, (new_id, source_id, from_step))
