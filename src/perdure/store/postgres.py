"""PostgreSQL store: psycopg 3 with an async pool, pipelined group commit, LISTEN/NOTIFY wake-ups.

URL: `postgresql://user@host:port/db?schema=perdure&notify=on&pool_size=10&outage_limit=60`.
- `schema` (default `perdure`): the tables live there, beside the application's own.
- `notify=off`: no LISTEN connection (for PgBouncer in transaction mode); waiters poll instead.
- `outage_limit` (seconds, default 60): how long store calls keep retrying while the server is unreachable
  before they fail with `StoreUnavailable`.

A batch of concurrent writes runs as one pipelined transaction in one round trip: `BEGIN; ...; COMMIT`,
or, when every write in it is a single statement, just those statements up to the pipeline's Sync (one
implicit transaction; a lone one is a plain autocommit statement). Its futures resolve only after the
commit answered. Connection failures pause the batch and retry it
with backoff and jitter: every write is idempotent on retry (see the Store protocol), so a commit whose
answer was lost is safe to repeat.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..errors import (
    ConfigurationError,
    PerdureError,
    SchemaVersionError,
    StoreUnavailable,
    WorkflowConflictError,
    WorkflowNotFound,
)
from . import migrations
from ._batch import AsyncGroupCommitter, WriteOp
from .base import (
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
from .postgres_messaging import PostgresMessaging
from .postgres_queues import PostgresQueues
from .queries import postgres as queries
from .queries.sqlite import EXECUTOR_COLUMNS, WORKFLOW_COLUMNS, step_guarded_values

T = TypeVar("T")
Conn = psycopg.AsyncConnection[dict[str, Any]]
Final = Callable[[], Awaitable[Any]]

log = logging.getLogger("perdure.store")

MIGRATIONS = migrations.load("postgres")
LATEST_VERSION = MIGRATIONS[-1][0]
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_OPTIONS = {"schema", "notify", "pool_size", "outage_limit"}


def parse_postgres_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ConfigurationError(f"not a PostgreSQL URL: {url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OPTIONS}
    rest = [(k, v) for k, v in query if k not in _OPTIONS]
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), parts.fragment))
    schema = ours.get("schema", "perdure")
    if not _IDENT.match(schema):
        raise ConfigurationError(f"schema={schema!r}: use a plain lower-case identifier (letters, digits, _)")
    ours["schema"] = schema
    notify = ours.get("notify", "on").lower()
    if notify not in ("on", "off"):
        raise ConfigurationError(f"notify={notify!r}: expected on or off")
    ours["notify"] = notify
    return conninfo, ours


def _workflow(row: dict[str, Any] | None) -> WorkflowRecord | None:
    return None if row is None else WorkflowRecord(**row)


def _transient(exc: BaseException) -> bool:
    """A failure of the connection or server (worth retrying), not of the statement."""
    return isinstance(exc, psycopg.OperationalError | PoolTimeout)


class PostgresStore(PostgresMessaging, PostgresQueues):
    """`Store` on a PostgreSQL database shared by any number of processes and hosts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conninfo, options = parse_postgres_url(url)
        self.schema = options["schema"]
        self.channel = f"perdure_{self.schema}"
        self.notifies_other_processes = options["notify"] == "on"
        self.commits_off_loop = True
        try:
            self.pool_size = int(options.get("pool_size", "10"))
            self.outage_limit = float(options.get("outage_limit", "60"))
        except ValueError as exc:
            raise ConfigurationError(f"bad option in {url!r}: {exc}") from None
        self.q = queries.build(self.schema)
        self.stats = StoreStats()
        self.notifier = Notifier()
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._writer_conn: Conn | None = None
        self._writer_pid: int | None = None
        self._committer: AsyncGroupCommitter[Conn] = AsyncGroupCommitter(self._run_batch)

    # -- lifecycle -------------------------------------------------------------------------------------
    async def open(self) -> None:
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=False,
            name="perdure",
            # Waiting for a connection is bounded so an outage is noticed and retried by _retrying.
            timeout=max(0.5, min(5.0, self.outage_limit / 2)),
        )
        try:
            await pool.open(wait=True, timeout=10)
        except Exception as exc:
            await pool.close()
            raise ConfigurationError(f"cannot reach PostgreSQL at {_redact(self.conninfo)}: {exc}") from exc
        self._pool = pool
        try:
            await self._migrate()
        except BaseException:
            await pool.close()
            self._pool = None
            raise
        if self.notifies_other_processes:
            ready = asyncio.get_running_loop().create_future()
            self._listener = asyncio.create_task(self._listen(ready), name="perdure-listen")
            await ready

    async def _migrate(self) -> None:
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            # Several processes may launch at once on an empty database: one migrates, the others wait.
            await conn.execute(self.q.MIGRATION_LOCK, (self.schema,))
            await conn.execute(self.q.SCHEMA_CREATE)
            await conn.execute(self.q.SCHEMA_VERSION_CREATE)
            row = await (await conn.execute(self.q.SCHEMA_VERSION_GET)).fetchone()
            current = int(row["max"]) if row and row["max"] is not None else 0
            if current > LATEST_VERSION:
                raise SchemaVersionError(
                    f"schema {self.schema!r} has version {current}, newer than this perdure ({LATEST_VERSION}); "
                    "upgrade perdure instead of running an older one against it"
                )
            for version, sql in MIGRATIONS:
                if version > current:
                    for statement in migrations.split_sql(sql.replace("{schema}", self.schema)):
                        await conn.execute(statement)
                    await conn.execute(self.q.SCHEMA_VERSION_SET, (version, now_ms()))

    async def close(self) -> None:
        self._committer.fail_pending(PerdureError("the store was closed"))
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._writer_conn is not None:
            await self._writer_conn.close()
            self._writer_conn = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def schema_version(self) -> int:
        row = await self._read_one(self.q.SCHEMA_VERSION_GET, ())
        return int(row["max"]) if row and row["max"] is not None else 0

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        """One dedicated connection LISTENs for every waiter of this process; reconnects on failure."""
        delay = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {self.channel}")
                    if not ready.done():
                        ready.set_result(None)
                    else:
                        # Notifications sent while we were away are lost: wake every waiter to re-check.
                        self.notifier.fire_all()
                        log.warning("perdure: LISTEN connection restored")
                    delay = 0.1
                    async for note in conn.notifies():
                        if note.pid == self._writer_pid:
                            continue  # our own write: its waiters here were woken when it committed
                        self.stats.extra["notifications"] = self.stats.extra.get("notifications", 0) + 1
                        self.notifier.fire([note.payload])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not ready.done():
                    ready.set_exception(ConfigurationError(f"cannot LISTEN on PostgreSQL: {exc}"))
                    return
                log.warning("perdure: LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 5.0)

    # -- plumbing --------------------------------------------------------------------------------------
    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt`, riding out connection failures with backoff until the outage limit."""
        started = time.monotonic()
        delay = 0.05
        warned = False
        while True:
            try:
                result = await attempt()
            except Exception as exc:
                if not _transient(exc) or self._pool is None:
                    raise
                waited = time.monotonic() - started
                if waited > self.outage_limit:
                    raise StoreUnavailable(
                        f"PostgreSQL unreachable for {waited:.0f}s (outage_limit={self.outage_limit:g}s): {exc}"
                    ) from exc
                if not warned:
                    log.warning("perdure: database unreachable during %s (%s); pausing and retrying", what, exc)
                    warned = True
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 2.0)
                continue
            if warned:
                log.warning("perdure: database reachable again; %s continues", what)
            return result

    async def _run_batch(self, batch: list[WriteOp[Conn]]) -> None:
        try:
            results = await self._retrying("a checkpoint write", lambda: self._execute_batch(batch))
        except psycopg.Error as exc:
            if len(batch) == 1:
                raise self._translate(exc) from exc
            # One bad write must not fail its neighbours: run each alone.
            for op in batch:
                try:
                    await self._run_batch([op])
                except Exception as single:
                    if not op.future.done():
                        op.future.set_exception(single)
            return
        self.stats.commits += 1
        self.stats.batched_writes += len(batch)
        for op, value in zip(batch, results, strict=True):
            if not op.future.done():
                if isinstance(value, BaseException):
                    op.future.set_exception(value)
                else:
                    op.future.set_result(value)

    async def _writer(self) -> Conn:
        """The connection every write batch uses. One batch is in flight at a time, so one connection
        serves them all and no batch pays a pool checkout; after a failure it is opened again."""
        conn = self._writer_conn
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self.conninfo,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=max(1, int(min(5.0, self.outage_limit / 2))),
            )
            self._writer_conn = conn
            self._writer_pid = conn.info.backend_pid
        return conn

    async def _execute_batch(self, batch: list[WriteOp[Conn]]) -> list[Any]:
        assert self._pool is not None, "store is not open"
        conn = await self._writer()
        try:
            return await self._run_in_transaction(conn, batch)
        except psycopg.OperationalError:
            await conn.close()  # broken: the next attempt reconnects
            self._writer_conn = None
            raise

    async def _run_in_transaction(self, conn: Conn, batch: list[WriteOp[Conn]]) -> list[Any]:
        finals: list[Final | BaseException] = []

        async def run_ops() -> None:
            for op in batch:
                try:
                    finals.append(await op.fn(conn))
                except PerdureError as exc:  # a refusal decided by the op itself
                    finals.append(exc)

        try:
            if len(batch) == 1 and batch[0].single:
                await run_ops()  # one statement in autocommit mode: its own transaction, one round trip
            elif all(op.single for op in batch):
                # No result is read before the pipeline's single Sync, so the server runs every statement
                # up to it as one implicit transaction: all commit together or none does.
                async with conn.pipeline():
                    await run_ops()
            else:
                async with conn.pipeline():
                    await conn.execute("BEGIN")
                    await run_ops()
                    await conn.execute("COMMIT")
        except BaseException:
            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                try:
                    await conn.rollback()
                except Exception:
                    pass
            raise
        results: list[Any] = []
        for final in finals:
            if isinstance(final, BaseException):
                results.append(final)
            else:
                try:
                    results.append(await final())
                except PerdureError as exc:
                    results.append(exc)
        return results

    async def _write(self, fn: Callable[[Conn], Awaitable[Final]], *, single: bool = False, hold: float = 0.0) -> Any:
        """Queue `fn` for the next batch; `single`: it sends exactly one statement and reads nothing."""
        return await self._committer.submit(fn, single=single, hold=hold)

    def _translate(self, exc: psycopg.Error) -> Exception:
        return exc

    async def _read_all(self, sql: str, params: Any) -> list[dict[str, Any]]:
        async def attempt() -> list[dict[str, Any]]:
            assert self._pool is not None, "store is not open"
            async with self._pool.connection() as conn:
                return await (await conn.execute(sql, params)).fetchall()

        return await self._retrying("a read", attempt)

    async def _read_one(self, sql: str, params: Any) -> dict[str, Any] | None:
        rows = await self._read_all(sql, params)
        return rows[0] if rows else None

    async def _notify(self, conn: Conn, keys: list[str]) -> None:
        if self.notifies_other_processes:
            for key in keys:
                await conn.execute(self.q.NOTIFY, (self.channel, key))

    # -- workflows -------------------------------------------------------------------------------------
    async def workflow_insert(self, record: WorkflowRecord, *, hold: float = 0.0) -> InsertOutcome:
        values = tuple(getattr(record, f) for f in WORKFLOW_COLUMNS)

        async def op(conn: Conn) -> Final:
            ins = await conn.execute(self.q.WORKFLOW_INSERT, values)

            async def done() -> int:
                return ins.rowcount

            return done

        while True:
            if await self._write(op, single=True, hold=hold) == 1:
                return InsertOutcome(True, record)
            # Taken (rare: a retry, a duplicate start): read the run that holds the id. Only a deletion
            # between the two can make it vanish; then the insert is simply tried again.
            existing = await self.workflow_get(record.workflow_id)
            if existing is not None:
                return InsertOutcome(False, existing)

    async def workflow_get(self, workflow_id: str) -> WorkflowRecord | None:
        return _workflow(await self._read_one(self.q.WORKFLOW_GET, (workflow_id,)))

    async def workflow_list(self, flt: WorkflowFilter) -> list[WorkflowRecord]:
        where: list[str] = []
        params: list[Any] = []
        if flt.status:
            where.append("status = ANY(%s)")
            params.append(list(flt.status))
        for column, value in (
            ("name", flt.name),
            ("executor_id", flt.executor_id),
            ("app_version", flt.app_version),
            ("parent_id", flt.parent_id),
            ("queue_name", flt.queue_name),
        ):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        if flt.created_after is not None:
            where.append("created_at >= %s")
            params.append(flt.created_after)
        if flt.created_before is not None:
            where.append("created_at < %s")
            params.append(flt.created_before)
        if flt.workflow_ids:
            where.append("workflow_id = ANY(%s)")
            params.append(list(flt.workflow_ids))
        sql = self.q.WORKFLOW_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += (
            " ORDER BY created_at DESC, workflow_id DESC" if flt.newest_first else " ORDER BY created_at, workflow_id"
        )
        sql += " LIMIT %s OFFSET %s"
        params.extend([flt.limit, flt.offset])
        return [WorkflowRecord(**r) for r in await self._read_all(sql, params)]

    async def _why_not(self, workflow_id: str, executor_id: str) -> GuardOutcome:
        row = await self._read_one(self.q.WORKFLOW_OWNER, (workflow_id,))
        if row is None:
            return "missing"
        if row["status"] == "CANCELLED":
            return "cancelled"
        if row["status"] in ("SUCCESS", "ERROR", "RETRIES_EXCEEDED"):
            return "finished"
        if row["executor_id"] != executor_id or row["status"] != "PENDING":
            return "not_owner"
        return "ok"

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
        params: dict[str, Any] = {"status": status, "output": output, "error": error, "t": now_ms()}
        params["id"], params["executor"] = workflow_id, executor_id
        step_values = [step_guarded_values(record, executor_id) for record in steps]

        if steps:
            params["step_ids"] = [record.step_id for record in steps]
            params["step_names"] = [record.name for record in steps]
        if self.notifies_other_processes:
            params["channel"], params["key"] = self.channel, workflow_key(workflow_id)
            # One statement: the update, and a NOTIFY only if it updated.
            sql = self.q.WORKFLOW_FINISH_STEPS_NOTIFY if steps else self.q.WORKFLOW_FINISH_NOTIFY
        else:
            sql = self.q.WORKFLOW_FINISH_STEPS if steps else self.q.WORKFLOW_FINISH

        async def op(conn: Conn) -> Final:
            # The steps' guard is the outcome's: all pass (PENDING and ours) in this transaction, or none.
            for values in step_values:
                await conn.execute(self.q.STEP_INSERT_GUARDED, values)
            cur = await conn.execute(sql, params)

            async def done() -> int:
                return cur.rowcount

            return done

        # With steps, several statements write: one transaction (BEGIN ... COMMIT in the batch).
        rowcount = await self._write(op, single=not steps)
        self.notifier.fire([workflow_key(workflow_id)])
        if rowcount == 1:
            return "ok"
        why = await self._why_not(workflow_id, executor_id)
        if why == "ok":  # ours and running: not written because a position holds another operation
            return "conflict"
        return why

    async def workflow_watch(self, workflow_id: str) -> None:
        if self.notifies_other_processes:
            await self._rowcount(self.q.WORKFLOW_WATCH, (workflow_id,))

    async def workflow_cancel(self, workflow_id: str, *, with_children: bool = True) -> list[str]:
        async def op(conn: Conn) -> Final:
            exists = await (await conn.execute(self.q.WORKFLOW_EXISTS, (workflow_id,))).fetchone()
            if exists is None:
                raise WorkflowNotFound(workflow_id)
            sql = self.q.WORKFLOW_CANCEL_TREE if with_children else self.q.WORKFLOW_CANCEL_ONE
            ids = [
                r["workflow_id"] for r in await (await conn.execute(sql, {"id": workflow_id, "t": now_ms()})).fetchall()
            ]
            await self._notify(conn, [workflow_key(i) for i in ids])

            async def done() -> list[str]:
                return ids

            return done

        ids: list[str] = await self._write(op)
        self.notifier.fire(workflow_key(i) for i in ids)
        return ids

    async def workflow_resume(
        self, workflow_id: str, *, executor_id: str | None, queue_name: str | None
    ) -> WorkflowRecord:
        params = {
            "status": "PENDING" if executor_id is not None else "ENQUEUED",
            "executor": executor_id,
            "queue": queue_name,
            "t": now_ms(),
            "id": workflow_id,
        }

        async def op(conn: Conn) -> Final:
            row = await (await conn.execute(self.q.WORKFLOW_RESUME, params)).fetchone()
            if row is None:
                existing = await (await conn.execute(self.q.WORKFLOW_GET, (workflow_id,))).fetchone()
                if existing is None:
                    raise WorkflowNotFound(workflow_id)
                row = existing
            else:
                await conn.execute(self.q.STEP_DELETE_LAST_ERROR, {"id": workflow_id})
            record = _workflow(row)

            async def done() -> WorkflowRecord | None:
                return record

            return done

        result: WorkflowRecord = await self._write(op)
        return result

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
        params = {
            "new": new_id,
            "status": "PENDING" if executor_id is not None else "ENQUEUED",
            "executor": executor_id,
            "version": app_version,
            "queue": queue_name,
            "t": now_ms(),
            "source": source_id,
        }

        async def op(conn: Conn) -> Final:
            inserted = await (await conn.execute(self.q.WORKFLOW_FORK, params)).fetchone()
            if inserted is None:
                if await (await conn.execute(self.q.WORKFLOW_EXISTS, (source_id,))).fetchone() is None:
                    raise WorkflowNotFound(source_id)
                raise WorkflowConflictError(f"cannot fork to {new_id!r}: a workflow with that id exists")
            await conn.execute(self.q.STEP_COPY, (new_id, source_id, from_step))
            await self._fork_messaging(conn, source_id, new_id, from_step)
            got = await conn.execute(self.q.WORKFLOW_GET, (new_id,))

            async def done() -> WorkflowRecord:
                record = _workflow(await got.fetchone())
                assert record is not None
                return record

            return done

        result: WorkflowRecord = await self._write(op)
        return result

    async def workflow_set_status(self, workflow_id: str, status: str, *, error: str | None = None) -> None:
        t = now_ms()
        completed = t if status in ("SUCCESS", "ERROR", "CANCELLED", "RETRIES_EXCEEDED") else None

        async def op(conn: Conn) -> Final:
            await conn.execute(self.q.WORKFLOW_SET_STATUS, (status, error, t, completed, workflow_id))
            await self._notify(conn, [workflow_key(workflow_id)])
            return _none

        await self._write(op)
        self.notifier.fire([workflow_key(workflow_id)])

    async def workflow_delete(self, workflow_ids: list[str]) -> int:
        if not workflow_ids:
            return 0
        return await self._rowcount(self.q.WORKFLOW_DELETE, (list(workflow_ids),))

    async def workflow_gc(self, completed_before: int) -> int:
        return await self._rowcount(self.q.WORKFLOW_GC, (completed_before,))

    async def _rowcount(self, sql: str, params: Any) -> int:
        async def op(conn: Conn) -> Final:
            cur = await conn.execute(sql, params)

            async def done() -> int:
                return cur.rowcount

            return done

        result: int = await self._write(op, single=True)
        return result

    async def _returning(self, sql: str, params: Any) -> list[WorkflowRecord]:
        async def op(conn: Conn) -> Final:
            cur = await conn.execute(sql, params)

            async def done() -> list[WorkflowRecord]:
                return [WorkflowRecord(**r) for r in await cur.fetchall()]

            return done

        result: list[WorkflowRecord] = await self._write(op)
        return result

    async def workflow_claim(self, request: ClaimRequest) -> list[WorkflowRecord]:
        if not request.from_executors or not request.names:
            return []
        params = {
            "executor": request.executor_id,
            "t": now_ms(),
            "from": list(request.from_executors),
            "names": list(request.names),
            "any_version": request.any_version,
            "version": request.app_version,
            "limit": request.limit,
        }
        return await self._returning(self.q.WORKFLOW_CLAIM, params)

    async def workflow_active_executors(self) -> list[str]:
        return [r["executor_id"] for r in await self._read_all(self.q.WORKFLOW_ACTIVE_EXECUTORS, ())]

    async def workflow_statuses(self, workflow_ids: list[str]) -> dict[str, str]:
        if not workflow_ids:
            return {}
        rows = await self._read_all(self.q.WORKFLOW_STATUSES, (list(workflow_ids),))
        return {r["workflow_id"]: r["status"] for r in rows}

    # -- steps -----------------------------------------------------------------------------------------
    async def step_record(self, record: StepRecord, executor_id: str) -> GuardOutcome:
        values = step_guarded_values(record, executor_id)

        async def op(conn: Conn) -> Final:
            cur = await conn.execute(self.q.STEP_INSERT_GUARDED, values)

            async def done() -> int:
                return cur.rowcount

            return done

        if await self._write(op, single=True) == 1:
            return "ok"
        why = await self._why_not(record.workflow_id, executor_id)
        if why == "ok":
            # Ours and running, so the position was taken by us: a retried write after a lost answer.
            row = await self._read_one(self.q.STEP_NAME, (record.workflow_id, record.step_id))
            return "ok" if row is not None and row["name"] == record.name else "conflict"
        return why

    async def step_list(self, workflow_id: str) -> list[StepRecord]:
        return [StepRecord(**r) for r in await self._read_all(self.q.STEP_LIST, (workflow_id,))]

    # -- executors -------------------------------------------------------------------------------------
    async def executor_register(self, record: ExecutorRecord) -> None:
        values = tuple(getattr(record, f) for f in EXECUTOR_COLUMNS)
        await self._rowcount(self.q.EXECUTOR_UPSERT, values)

    async def executor_heartbeat(self, executor_id: str) -> bool:
        return await self._rowcount(self.q.EXECUTOR_HEARTBEAT, (now_ms(), executor_id)) == 1

    async def executor_list(self) -> list[ExecutorRecord]:
        return [ExecutorRecord(**r) for r in await self._read_all(self.q.EXECUTOR_LIST, ())]

    async def executor_remove(self, executor_id: str) -> None:
        await self._rowcount(self.q.EXECUTOR_DELETE, (executor_id,))


async def _none() -> None:
    return None


def _redact(conninfo: str) -> str:
    parts = urlsplit(conninfo)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return conninfo
