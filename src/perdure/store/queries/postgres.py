"""Named SQL for the PostgreSQL store. `{s}` is the schema, filled in once when the store is built."""

from __future__ import annotations

from types import SimpleNamespace

from .sqlite import EXECUTOR_COLUMNS, STEP_COLUMNS, WORKFLOW_COLUMNS

_W = ", ".join(WORKFLOW_COLUMNS)
_S = ", ".join(STEP_COLUMNS)
_E = ", ".join(EXECUTOR_COLUMNS)
_TERMINAL = "('SUCCESS', 'ERROR', 'CANCELLED', 'RETRIES_EXCEEDED')"
_RESUMABLE = "('CANCELLED', 'ERROR', 'RETRIES_EXCEEDED')"

_FINISH = """
    UPDATE {s}.workflows SET status = %(status)s, output = %(output)s, error = %(error)s,
        completed_at = %(t)s, updated_at = %(t)s, dedup_key = NULL
    WHERE workflow_id = %(id)s AND executor_id = %(executor)s AND (status = 'PENDING' OR status = %(status)s)
"""
_STEPS_AGREE = """
    AND NOT EXISTS (
        SELECT 1 FROM {s}.steps st
        JOIN unnest(%(step_ids)s::bigint[], %(step_names)s::text[]) AS w(step_id, name) ON st.step_id = w.step_id
        WHERE st.workflow_id = %(id)s AND st.name <> w.name
    )
"""


def _notifying(update: str) -> str:
    """`update`, and a NOTIFY only if it updated a watched run: one statement."""
    return (
        f"WITH finished AS ({update} RETURNING watched) "
        "SELECT CASE WHEN watched THEN pg_notify(%(channel)s, %(key)s) END FROM finished"
    )


_TEMPLATES = dict(
    SCHEMA_CREATE="CREATE SCHEMA IF NOT EXISTS {s}",
    MIGRATION_LOCK="SELECT pg_advisory_xact_lock(hashtext('perdure-migrate:' || %s))",
    SCHEMA_VERSION_CREATE=(
        "CREATE TABLE IF NOT EXISTS {s}.schema_version (version INTEGER NOT NULL, applied_at BIGINT NOT NULL)"
    ),
    SCHEMA_VERSION_GET="SELECT max(version) FROM {s}.schema_version",
    SCHEMA_VERSION_SET="INSERT INTO {s}.schema_version (version, applied_at) VALUES (%s, %s)",
    NOTIFY="SELECT pg_notify(%s, %s)",
    WORKFLOW_GET=f"SELECT {_W} FROM {{s}}.workflows WHERE workflow_id = %s",
    WORKFLOW_SELECT=f"SELECT {_W} FROM {{s}}.workflows",
    WORKFLOW_EXISTS="SELECT 1 FROM {s}.workflows WHERE workflow_id = %s",
    WORKFLOW_OWNER="SELECT status, executor_id FROM {s}.workflows WHERE workflow_id = %s",
    WORKFLOW_INSERT=(
        f"INSERT INTO {{s}}.workflows ({_W}) VALUES ({', '.join(['%s'] * len(WORKFLOW_COLUMNS))}) "
        "ON CONFLICT (workflow_id) DO NOTHING"
    ),
    WORKFLOW_FINISH=_FINISH,
    # The run's last checkpoints were inserted just before, in the same transaction: no outcome over a
    # position that held another operation already (the insert left that one in place).
    WORKFLOW_FINISH_STEPS=_FINISH + _STEPS_AGREE,
    # Only a watched run (someone in some process waits for it: WORKFLOW_WATCH) is announced. The row lock
    # orders a watch and a finish: either the finish sees the flag, or the watcher's re-check sees the end.
    WORKFLOW_FINISH_NOTIFY=_notifying(_FINISH),
    WORKFLOW_FINISH_STEPS_NOTIFY=_notifying(_FINISH + _STEPS_AGREE),
    WORKFLOW_WATCH=f"""
        UPDATE {{s}}.workflows SET watched = true
        WHERE workflow_id = %s AND NOT watched AND status NOT IN {_TERMINAL}
    """,
    WORKFLOW_CANCEL_ONE=f"""
        UPDATE {{s}}.workflows SET status = 'CANCELLED', updated_at = %(t)s, completed_at = %(t)s, dedup_key = NULL
        WHERE workflow_id = %(id)s AND status NOT IN {_TERMINAL} RETURNING workflow_id
    """,
    WORKFLOW_CANCEL_TREE=f"""
        WITH RECURSIVE tree(id) AS (
            SELECT %(id)s::text UNION SELECT w.workflow_id FROM {{s}}.workflows w JOIN tree ON w.parent_id = tree.id
        )
        UPDATE {{s}}.workflows SET status = 'CANCELLED', updated_at = %(t)s, completed_at = %(t)s, dedup_key = NULL
        WHERE workflow_id IN (SELECT id FROM tree) AND status NOT IN {_TERMINAL} RETURNING workflow_id
    """,
    WORKFLOW_RESUME=f"""
        UPDATE {{s}}.workflows SET status = %(status)s, executor_id = %(executor)s, queue_name = %(queue)s,
            recovery_attempts = 0,
            deadline_at = CASE WHEN timeout_ms IS NULL THEN NULL ELSE %(t)s + timeout_ms END,
            output = NULL, error = NULL, completed_at = NULL, updated_at = %(t)s
        WHERE workflow_id = %(id)s AND status IN {_RESUMABLE}
        RETURNING {_W}
    """,
    WORKFLOW_FORK="""
        INSERT INTO {s}.workflows (workflow_id, name, status, inputs, serializer, executor_id, app_version,
            forked_from, timeout_ms, deadline_at, queue_name, created_at, updated_at, started_at)
        SELECT %(new)s, name, %(status)s, inputs, serializer, %(executor)s, coalesce(%(version)s, app_version),
            workflow_id, timeout_ms, CASE WHEN timeout_ms IS NULL THEN NULL ELSE %(t)s + timeout_ms END,
            %(queue)s, %(t)s, %(t)s, %(t)s
        FROM {s}.workflows WHERE workflow_id = %(source)s
        ON CONFLICT (workflow_id) DO NOTHING
        RETURNING workflow_id
    """,
    WORKFLOW_SET_STATUS="""
        UPDATE {s}.workflows SET status = %s, error = coalesce(%s, error), updated_at = %s, completed_at = %s
        WHERE workflow_id = %s
    """,
    WORKFLOW_DELETE=f"DELETE FROM {{s}}.workflows WHERE workflow_id = ANY(%s) AND status IN {_TERMINAL}",
    WORKFLOW_GC=f"DELETE FROM {{s}}.workflows WHERE status IN {_TERMINAL} AND completed_at < %s",
    WORKFLOW_CLAIM=f"""
        UPDATE {{s}}.workflows SET executor_id = %(executor)s, recovery_attempts = recovery_attempts + 1,
            updated_at = %(t)s
        WHERE workflow_id IN (
            SELECT workflow_id FROM {{s}}.workflows
            WHERE status = 'PENDING' AND executor_id = ANY(%(from)s) AND name = ANY(%(names)s)
              AND (%(any_version)s OR app_version IS NOT DISTINCT FROM %(version)s OR app_version IS NULL)
            ORDER BY created_at LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        )
        RETURNING {_W}
    """,
    WORKFLOW_ACTIVE_EXECUTORS=(
        "SELECT DISTINCT executor_id FROM {s}.workflows WHERE status = 'PENDING' AND executor_id IS NOT NULL"
    ),
    WORKFLOW_STATUSES="SELECT workflow_id, status FROM {s}.workflows WHERE workflow_id = ANY(%s)",
    # The row lock makes the ownership check hold until commit: a takeover waits, or we see its result.
    STEP_INSERT_GUARDED=f"""
        INSERT INTO {{s}}.steps ({_S})
        SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s
        WHERE EXISTS (
            SELECT 1 FROM {{s}}.workflows WHERE workflow_id = %s AND status = 'PENDING' AND executor_id = %s
            FOR SHARE
        )
        ON CONFLICT (workflow_id, step_id) DO NOTHING
    """,
    STEP_NAME="SELECT name FROM {s}.steps WHERE workflow_id = %s AND step_id = %s",
    STEP_LIST=f"SELECT {_S} FROM {{s}}.steps WHERE workflow_id = %s ORDER BY step_id",
    STEP_COPY=f"""
        INSERT INTO {{s}}.steps ({_S})
        SELECT %s, {", ".join(STEP_COLUMNS[1:])} FROM {{s}}.steps WHERE workflow_id = %s AND step_id < %s
    """,
    STEP_DELETE_LAST_ERROR="""
        DELETE FROM {s}.steps WHERE workflow_id = %(id)s AND error IS NOT NULL
          AND step_id = (SELECT max(step_id) FROM {s}.steps WHERE workflow_id = %(id)s)
    """,
    EXECUTOR_UPSERT=f"""
        INSERT INTO {{s}}.executors ({_E}) VALUES ({", ".join(["%s"] * len(EXECUTOR_COLUMNS))})
        ON CONFLICT (executor_id) DO UPDATE SET host_key = excluded.host_key, hostname = excluded.hostname,
            pid = excluded.pid, pid_started = excluded.pid_started, app_version = excluded.app_version,
            started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at
    """,
    EXECUTOR_HEARTBEAT="UPDATE {s}.executors SET heartbeat_at = %s WHERE executor_id = %s",
    EXECUTOR_LIST=f"SELECT {_E} FROM {{s}}.executors ORDER BY started_at",
    EXECUTOR_DELETE="DELETE FROM {s}.executors WHERE executor_id = %s",
)


def build(schema: str) -> SimpleNamespace:
    """The queries with `schema` filled in (already validated as a plain identifier)."""
    return SimpleNamespace(**{name: sql.replace("{s}", schema) for name, sql in _TEMPLATES.items()})
