"""SQLite store: stdlib `sqlite3`, WAL, `BEGIN IMMEDIATE` writes, group commit, safe for many processes.

Durability is set by `synchronous` (URL option `?synchronous=FULL|NORMAL`, default FULL):
- FULL: a write is fsynced before it is acknowledged; a committed step survives a power cut.
- NORMAL: WAL is fsynced at checkpoints only; a committed step survives a crash of the process (SIGKILL),
  but the last transactions before a power cut or OS crash may be lost (the file is never corrupted).

Writes run on the event loop thread, batched: a flush holds the write lock only while it executes and
commits. When another process holds the lock, the flush gives up at once and is retried with backoff, so
the loop never blocks behind another process.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigurationError, SchemaVersionError, WorkflowConflictError, WorkflowNotFound
from . import migrations
from ._batch import Busy, GroupCommitter, WriteOp
from .base import (
    RESUMABLE_STATUSES,
    TERMINAL_STATUSES,
    ClaimRequest,
    ExecutorRecord,
    GuardOutcome,
    InsertOutcome,
    StepRecord,
    StoreStats,
    WorkflowFilter,
    WorkflowRecord,
    now_ms,
)
from .notify import Notifier, workflow_key
from .queries import sqlite as q
from .sqlite_messaging import SQLiteMessaging
from .sqlite_queues import SQLiteQueues

T = TypeVar("T")

SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")


MIGRATIONS = migrations.load("sqlite")
LATEST_VERSION = MIGRATIONS[-1][0]


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"not a SQLite URL: {url!r}")
    # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them.
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.netloc:
        raise ConfigurationError(f"SQLite URL {url!r} has a host part; use sqlite:///path/to/file.sqlite")
    if not path or path == ":memory:":
        raise ConfigurationError(
            f"SQLite URL {url!r} names no file; perdure needs a file (sqlite:///perdure.sqlite) "
            "so that work survives the process"
        )
    options = {k.lower(): v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(options) - {"synchronous", "busy_timeout"}
    if unknown:
        raise ConfigurationError(f"unknown SQLite URL option(s) {sorted(unknown)} in {url!r}")
    sync = options.get("synchronous", "FULL").upper()
    if sync not in SYNCHRONOUS_LEVELS:
        raise ConfigurationError(f"synchronous={sync!r} in {url!r}: expected one of {SYNCHRONOUS_LEVELS}")
    options["synchronous"] = sync
    return path, options


def _workflow(row: sqlite3.Row | None) -> WorkflowRecord | None:
    return None if row is None else WorkflowRecord(**dict(row))


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


class SQLiteStore(SQLiteMessaging, SQLiteQueues):
    """`Store` on one SQLite file."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path, options = parse_sqlite_url(url)
        self.synchronous = options["synchronous"]
        self.busy_timeout_ms = int(options.get("busy_timeout", "10000"))
        self.stats = StoreStats()
        self.notifier = Notifier()
        self.notifies_other_processes = False
        self.commits_off_loop = False
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._committer: GroupCommitter[sqlite3.Connection] = GroupCommitter(self._run_batch)

    # -- lifecycle -------------------------------------------------------------------------------------
    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    async def open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ConfigurationError(f"cannot open SQLite database {self.path!r}: folder {directory!r} does not exist")
        try:
            await asyncio.to_thread(self._open_blocking)
        except sqlite3.DatabaseError as exc:
            raise ConfigurationError(f"cannot open SQLite database {self.path!r}: {exc}") from exc

    def _open_blocking(self) -> None:
        conn = self._connect(self.busy_timeout_ms)
        try:
            self._prepare_schema(conn)
        except BaseException:
            conn.close()
            raise
        # The writer never waits inside SQLite: a locked database is retried by the group committer.
        conn.execute("PRAGMA busy_timeout=0")
        self._writer = conn
        self._reader = self._connect(self.busy_timeout_ms)

    def _prepare_schema(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL and migrate, retrying while another process does the same on a fresh file.

        SQLite answers "database is locked" at once, without its busy handler, when two connections switch a
        new file to WAL together; both steps are idempotent, so they are retried until busy_timeout runs out.
        """
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        pause = 0.005
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise ConfigurationError(f"SQLite database {self.path!r} could not be switched to WAL (got {mode})")
                self._migrate(conn)
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() + pause > deadline:
                    raise
                self.stats.busy_retries += 1
                time.sleep(pause)
                pause = min(pause * 2, 0.2)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(q.SCHEMA_VERSION_CREATE)
            row = conn.execute(q.SCHEMA_VERSION_GET).fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current > LATEST_VERSION:
                raise SchemaVersionError(
                    f"database {self.path!r} has schema version {current}, newer than this perdure "
                    f"({LATEST_VERSION}); upgrade perdure instead of running an older one against it"
                )
            for version, sql in MIGRATIONS:
                if version > current:
                    for statement in migrations.split_sql(sql):
                        conn.execute(statement)
                    conn.execute(q.SCHEMA_VERSION_SET, (version, now_ms()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        from ..errors import PerdureError

        self._committer.fail_pending(PerdureError("the store was closed"))
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()
        self._writer = self._reader = None

    async def schema_version(self) -> int:
        row = self._read_one(q.SCHEMA_VERSION_GET, ())
        return int(row[0]) if row else 0

    # -- plumbing --------------------------------------------------------------------------------------
    def _run_batch(self, batch: list[WriteOp[sqlite3.Connection]]) -> None:
        conn = self._writer
        if conn is None:
            raise RuntimeError("store is closed")
        if len(batch) == 1 and batch[0].single:
            self._run_single(conn, batch[0])
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                self.stats.busy_retries += 1
                raise Busy() from exc
            raise
        results: list[tuple[bool, Any]] = []
        try:
            for op in batch:
                if op.atomic:
                    conn.execute("SAVEPOINT op")
                try:
                    results.append((True, op.fn(conn)))
                except Exception as exc:
                    if op.atomic:
                        conn.execute("ROLLBACK TO op")
                    results.append((False, exc))
                finally:
                    if op.atomic:
                        conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.stats.commits += 1
        self.stats.batched_writes += len(batch)
        for op, (ok, value) in zip(batch, results, strict=True):
            if op.future.done():
                continue
            if ok:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)

    def _run_single(self, conn: sqlite3.Connection, op: WriteOp[sqlite3.Connection]) -> None:
        """One op whose first statement is its only write: that statement is its own transaction.

        Saves the BEGIN and COMMIT statements on the hot path (a lone step checkpoint). A locked database
        fails the statement as a whole, so the op is retried like any batch.
        """
        try:
            value = op.fn(conn)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc) and not conn.in_transaction:
                self.stats.busy_retries += 1
                raise Busy() from exc
            if not op.future.done():
                op.future.set_exception(exc)
            return
        except Exception as exc:
            if not op.future.done():
                op.future.set_exception(exc)
            return
        self.stats.commits += 1
        self.stats.batched_writes += 1
        if not op.future.done():
            op.future.set_result(value)

    async def _write(
        self, fn: Callable[[sqlite3.Connection], T], *, atomic: bool = False, single: bool = False, hold: float = 0.0
    ) -> T:
        """Queue `fn` for the next batch; `single`: its first statement is its only write."""
        result: T = await self._committer.submit(fn, atomic=atomic, single=single, hold=hold)
        return result

    def _read_one(self, sql: str, params: Iterable[Any]) -> sqlite3.Row | None:
        assert self._reader is not None, "store is not open"
        row: sqlite3.Row | None = self._reader.execute(sql, tuple(params)).fetchone()
        return row

    def _read_all(self, sql: str, params: Iterable[Any]) -> list[sqlite3.Row]:
        assert self._reader is not None, "store is not open"
        return self._reader.execute(sql, tuple(params)).fetchall()

    # -- workflows -------------------------------------------------------------------------------------
    async def workflow_insert(self, record: WorkflowRecord, *, hold: float = 0.0) -> InsertOutcome:
        values = tuple(getattr(record, f) for f in q.WORKFLOW_COLUMNS)

        def op(conn: sqlite3.Connection) -> InsertOutcome:
            cur = conn.execute(q.WORKFLOW_INSERT, values)
            if cur.rowcount == 1:
                return InsertOutcome(True, record)
            existing = _workflow(conn.execute(q.WORKFLOW_GET, (record.workflow_id,)).fetchone())
            assert existing is not None
            return InsertOutcome(False, existing)

        return await self._write(op, single=True, hold=hold)

    async def workflow_get(self, workflow_id: str) -> WorkflowRecord | None:
        return _workflow(self._read_one(q.WORKFLOW_GET, (workflow_id,)))

    async def workflow_list(self, flt: WorkflowFilter) -> list[WorkflowRecord]:
        where: list[str] = []
        params: list[Any] = []
        if flt.status:
            where.append(f"status IN ({_placeholders(len(flt.status))})")
            params.extend(flt.status)
        for column, value in (
            ("name", flt.name),
            ("executor_id", flt.executor_id),
            ("app_version", flt.app_version),
            ("parent_id", flt.parent_id),
            ("queue_name", flt.queue_name),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if flt.created_after is not None:
            where.append("created_at >= ?")
            params.append(flt.created_after)
        if flt.created_before is not None:
            where.append("created_at < ?")
            params.append(flt.created_before)
        if flt.workflow_ids:
            where.append(f"workflow_id IN ({_placeholders(len(flt.workflow_ids))})")
            params.extend(flt.workflow_ids)
        sql = q.WORKFLOW_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += (
            " ORDER BY created_at DESC, workflow_id DESC" if flt.newest_first else " ORDER BY created_at, workflow_id"
        )
        sql += " LIMIT ? OFFSET ?"
        params.extend([flt.limit if flt.limit is not None else -1, flt.offset])
        return [WorkflowRecord(**dict(r)) for r in self._read_all(sql, params)]

    async def workflow_finish(
        self,
        workflow_id: str,
        executor_id: str,
        status: str,
        output: str | None,
        error: str | None,
        *,
        steps: Sequence[StepRecord] = (),
    ) -> GuardOutcome:
        step_values = [q.step_guarded_values(record, executor_id) for record in steps]

        def op(conn: sqlite3.Connection) -> GuardOutcome:
            # The steps' guard is the outcome's: all pass (PENDING and ours) in this transaction, or none.
            conflict = False
            for record, values in zip(steps, step_values, strict=True):
                if conn.execute(q.STEP_INSERT_GUARDED, values).rowcount != 1:
                    # Not inserted: refused (the outcome's guard answers), there already (a retried write),
                    # or its position holds another operation: then no outcome is written.
                    row = conn.execute(q.STEP_NAME, (record.workflow_id, record.step_id)).fetchone()
                    conflict = conflict or (row is not None and row[0] != record.name)
            if conflict:
                why = _why_not(conn, workflow_id, executor_id)
                return "conflict" if why == "ok" else why
            t = now_ms()
            cur = conn.execute(q.WORKFLOW_FINISH, (status, output, error, t, t, workflow_id, executor_id))
            if cur.rowcount != 1:
                return _why_not(conn, workflow_id, executor_id)
            return "ok"

        # With steps, several statements write: one transaction, rolled back whole if one fails.
        outcome = await self._write(op, single=not steps, atomic=bool(steps))
        self.notifier.fire([workflow_key(workflow_id)])
        return outcome

    async def workflow_watch(self, workflow_id: str) -> None:
        return None  # waiters in other processes poll SQLite: there is nobody to notify

    async def workflow_cancel(self, workflow_id: str, *, with_children: bool = True) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            if conn.execute(q.WORKFLOW_EXISTS, (workflow_id,)).fetchone() is None:
                raise WorkflowNotFound(workflow_id)
            t = now_ms()
            sql = q.WORKFLOW_CANCEL_TREE if with_children else q.WORKFLOW_CANCEL_ONE
            return [r[0] for r in conn.execute(sql, (workflow_id, t, t)).fetchall()]

        ids = await self._write(op)
        self.notifier.fire(workflow_key(i) for i in ids)
        return ids

    async def workflow_resume(
        self, workflow_id: str, *, executor_id: str | None, queue_name: str | None
    ) -> WorkflowRecord:
        def op(conn: sqlite3.Connection) -> WorkflowRecord:
            t = now_ms()
            status = "PENDING" if executor_id is not None else "ENQUEUED"
            row = conn.execute(
                q.WORKFLOW_RESUME.format(resumable=_in_list(RESUMABLE_STATUSES)),
                (status, executor_id, queue_name, t, t, workflow_id),
            ).fetchone()
            if row is None:
                existing = _workflow(conn.execute(q.WORKFLOW_GET, (workflow_id,)).fetchone())
                if existing is None:
                    raise WorkflowNotFound(workflow_id)
                return existing
            # The step that raised last is run again instead of replaying its error.
            conn.execute(q.STEP_DELETE_LAST_ERROR, (workflow_id, workflow_id))
            record = _workflow(row)
            assert record is not None
            return record

        return await self._write(op, atomic=True)

    async def workflow_fork(
        self,
        source_id: str,
        new_id: str,
        from_step: int,
        *,
        executor_id: str | None,
        queue_name: str | None,
        app_version: str | None,
    ) -> WorkflowRecord:
        def op(conn: sqlite3.Connection) -> WorkflowRecord:
            t = now_ms()
            status = "PENDING" if executor_id is not None else "ENQUEUED"
            cur = conn.execute(
                q.WORKFLOW_FORK,
                (new_id, status, executor_id, app_version, queue_name, t, t, t, source_id),
            )
            if cur.rowcount != 1:
                if conn.execute(q.WORKFLOW_EXISTS, (source_id,)).fetchone() is None:
                    raise WorkflowNotFound(source_id)
                raise WorkflowConflictError(f"cannot fork to {new_id!r}: a workflow with that id exists")
            conn.execute(q.STEP_COPY, (new_id, source_id, from_step))
            self._fork_messaging(conn, source_id, new_id, from_step)
            record = _workflow(conn.execute(q.WORKFLOW_GET, (new_id,)).fetchone())
            assert record is not None
            return record

        return await self._write(op, atomic=True)

    async def workflow_set_status(self, workflow_id: str, status: str, *, error: str | None = None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            t = now_ms()
            completed = t if status in TERMINAL_STATUSES else None
            conn.execute(q.WORKFLOW_SET_STATUS, (status, error, t, completed, workflow_id))

        await self._write(op)
        self.notifier.fire([workflow_key(workflow_id)])

    async def workflow_delete(self, workflow_ids: list[str]) -> int:
        if not workflow_ids:
            return 0

        def op(conn: sqlite3.Connection) -> int:
            sql = q.WORKFLOW_DELETE.format(ids=_placeholders(len(workflow_ids)), terminal=_in_list(TERMINAL_STATUSES))
            return conn.execute(sql, tuple(workflow_ids)).rowcount

        return await self._write(op)

    async def workflow_gc(self, completed_before: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            sql = q.WORKFLOW_GC.format(terminal=_in_list(TERMINAL_STATUSES))
            return conn.execute(sql, (completed_before,)).rowcount

        return await self._write(op)

    async def workflow_claim(self, request: ClaimRequest) -> list[WorkflowRecord]:
        if not request.from_executors or not request.names:
            return []

        def op(conn: sqlite3.Connection) -> list[WorkflowRecord]:
            sql = q.WORKFLOW_CLAIM.format(
                executors=_placeholders(len(request.from_executors)), names=_placeholders(len(request.names))
            )
            version_ok = 1 if request.any_version else 0
            params = (
                request.executor_id,
                now_ms(),
                *request.from_executors,
                *request.names,
                version_ok,
                request.app_version,
                request.limit,
            )
            return [WorkflowRecord(**dict(r)) for r in conn.execute(sql, params).fetchall()]

        return await self._write(op)

    async def workflow_statuses(self, workflow_ids: list[str]) -> dict[str, str]:
        if not workflow_ids:
            return {}
        sql = q.WORKFLOW_STATUSES.format(ids=_placeholders(len(workflow_ids)))
        return {r[0]: r[1] for r in self._read_all(sql, workflow_ids)}

    async def workflow_active_executors(self) -> list[str]:
        return [r[0] for r in self._read_all(q.WORKFLOW_ACTIVE_EXECUTORS, ())]

    # -- steps -----------------------------------------------------------------------------------------
    async def step_record(self, record: StepRecord, executor_id: str) -> GuardOutcome:
        values = q.step_guarded_values(record, executor_id)

        def op(conn: sqlite3.Connection) -> GuardOutcome:
            if conn.execute(q.STEP_INSERT_GUARDED, values).rowcount == 1:
                return "ok"
            why = _why_not(conn, record.workflow_id, executor_id)
            if why == "ok":
                # The workflow is ours and running, so the position was taken by this executor: a write
                # retried after a commit whose answer was lost is "ok" if it is the same operation.
                row = conn.execute(q.STEP_NAME, (record.workflow_id, record.step_id)).fetchone()
                return "ok" if row is not None and row[0] == record.name else "conflict"
            return why

        return await self._write(op, single=True)

    async def step_list(self, workflow_id: str) -> list[StepRecord]:
        return [StepRecord(**dict(r)) for r in self._read_all(q.STEP_LIST, (workflow_id,))]

    # -- executors -------------------------------------------------------------------------------------
    async def executor_register(self, record: ExecutorRecord) -> None:
        values = tuple(getattr(record, f) for f in q.EXECUTOR_COLUMNS)
        await self._write(lambda conn: conn.execute(q.EXECUTOR_UPSERT, values))

    async def executor_heartbeat(self, executor_id: str) -> bool:
        count: int = await self._write(
            lambda conn: conn.execute(q.EXECUTOR_HEARTBEAT, (now_ms(), executor_id)).rowcount
        )
        return count == 1

    async def executor_list(self) -> list[ExecutorRecord]:
        return [ExecutorRecord(**dict(r)) for r in self._read_all(q.EXECUTOR_LIST, ())]

    async def executor_remove(self, executor_id: str) -> None:
        await self._write(lambda conn: conn.execute(q.EXECUTOR_DELETE, (executor_id,)))


def _why_not(conn: sqlite3.Connection, workflow_id: str, executor_id: str) -> GuardOutcome:
    row = conn.execute(q.WORKFLOW_OWNER, (workflow_id,)).fetchone()
    if row is None:
        return "missing"
    status, owner = row
    if status == "CANCELLED":
        return "cancelled"
    if status in TERMINAL_STATUSES:
        return "finished"
    if owner != executor_id or status != "PENDING":
        return "not_owner"
    return "ok"


def _in_list(values: tuple[str, ...]) -> str:
    # Fixed internal constants only (status names), never user input.
    return ",".join(f"'{v}'" for v in values)
