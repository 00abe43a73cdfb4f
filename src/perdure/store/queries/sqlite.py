"""Named SQL for the SQLite store. `{...}` slots are filled only with placeholders or status constants."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..base import StepRecord

WORKFLOW_COLUMNS = (
    "workflow_id", "name", "status", "inputs", "output", "error", "serializer", "executor_id",
    "app_version", "parent_id", "forked_from", "recovery_attempts", "timeout_ms", "deadline_at",
    "queue_name", "dedup_key", "priority", "partition_key", "delay_until", "created_at", "updated_at",
    "started_at", "completed_at",
)  # fmt: skip

EXECUTOR_COLUMNS = (
    "executor_id", "host_key", "hostname", "pid", "pid_started", "app_version", "started_at", "heartbeat_at",
)  # fmt: skip

SCHEMA_VERSION_CREATE = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at INTEGER NOT NULL)
"""
SCHEMA_VERSION_GET = "SELECT max(version) FROM schema_version"
SCHEMA_VERSION_SET = "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)"

WORKFLOW_SELECT = f"SELECT {', '.join(WORKFLOW_COLUMNS)} FROM workflows"
WORKFLOW_GET = WORKFLOW_SELECT + " WHERE workflow_id = ?"
WORKFLOW_EXISTS = "SELECT 1 FROM workflows WHERE workflow_id = ?"
WORKFLOW_OWNER = "SELECT status, executor_id FROM workflows WHERE workflow_id = ?"
WORKFLOW_INSERT = (
    f"INSERT INTO workflows ({', '.join(WORKFLOW_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(WORKFLOW_COLUMNS))}) ON CONFLICT (workflow_id) DO NOTHING"
)
WORKFLOW_FINISH = """
UPDATE workflows SET status = ?1, output = ?2, error = ?3, completed_at = ?4, updated_at = ?5, dedup_key = NULL
WHERE workflow_id = ?6 AND executor_id = ?7 AND (status = 'PENDING' OR status = ?1)
"""
_CANCEL_SET = """
UPDATE workflows SET status = 'CANCELLED', updated_at = ?2, completed_at = ?3, dedup_key = NULL
"""
WORKFLOW_CANCEL_ONE = (
    _CANCEL_SET + " WHERE workflow_id = ?1 AND status NOT IN "
    "('SUCCESS', 'ERROR', 'CANCELLED', 'RETRIES_EXCEEDED') RETURNING workflow_id"
)
WORKFLOW_CANCEL_TREE = (
    "WITH RECURSIVE tree(id) AS (SELECT ?1 UNION SELECT w.workflow_id FROM workflows w JOIN tree "
    "ON w.parent_id = tree.id) " + _CANCEL_SET + " WHERE workflow_id IN (SELECT id FROM tree) AND status NOT IN "
    "('SUCCESS', 'ERROR', 'CANCELLED', 'RETRIES_EXCEEDED') RETURNING workflow_id"
)
WORKFLOW_RESUME = f"""
UPDATE workflows SET status = ?, executor_id = ?, queue_name = ?, recovery_attempts = 0,
    deadline_at = CASE WHEN timeout_ms IS NULL THEN NULL ELSE ? + timeout_ms END,
    output = NULL, error = NULL, completed_at = NULL, updated_at = ?
WHERE workflow_id = ? AND status IN ({{resumable}})
RETURNING {", ".join(WORKFLOW_COLUMNS)}
"""
WORKFLOW_FORK = """
INSERT INTO workflows (workflow_id, name, status, inputs, serializer, executor_id, app_version, forked_from,
    timeout_ms, deadline_at, queue_name, created_at, updated_at, started_at)
SELECT ?1, name, ?2, inputs, serializer, ?3, coalesce(?4, app_version), workflow_id,
    timeout_ms, CASE WHEN timeout_ms IS NULL THEN NULL ELSE ?6 + timeout_ms END, ?5, ?6, ?7, ?8
FROM workflows WHERE workflow_id = ?9
ON CONFLICT (workflow_id) DO NOTHING
"""
WORKFLOW_SET_STATUS = """
UPDATE workflows SET status = ?, error = coalesce(?, error), updated_at = ?, completed_at = ?
WHERE workflow_id = ?
"""
WORKFLOW_DELETE = "DELETE FROM workflows WHERE workflow_id IN ({ids}) AND status IN ({terminal})"
WORKFLOW_GC = "DELETE FROM workflows WHERE status IN ({terminal}) AND completed_at < ?"
WORKFLOW_CLAIM = f"""
UPDATE workflows SET executor_id = ?, recovery_attempts = recovery_attempts + 1, updated_at = ?
WHERE workflow_id IN (
    SELECT workflow_id FROM workflows
    WHERE status = 'PENDING' AND executor_id IN ({{executors}}) AND name IN ({{names}})
      AND (? = 1 OR app_version IS ? OR app_version IS NULL)
    ORDER BY created_at LIMIT ?
)
RETURNING {", ".join(WORKFLOW_COLUMNS)}
"""
WORKFLOW_ACTIVE_EXECUTORS = (
    "SELECT DISTINCT executor_id FROM workflows WHERE status = 'PENDING' AND executor_id IS NOT NULL"
)
WORKFLOW_STATUSES = "SELECT workflow_id, status FROM workflows WHERE workflow_id IN ({ids})"

STEP_COLUMNS = (
    "workflow_id", "step_id", "name", "args_hash", "output", "error", "child_id", "attempts",
    "started_at", "completed_at",
)  # fmt: skip
STEP_INSERT_GUARDED = f"""
INSERT INTO steps ({", ".join(STEP_COLUMNS)})
SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
WHERE EXISTS (SELECT 1 FROM workflows WHERE workflow_id = ? AND status = 'PENDING' AND executor_id = ?)
ON CONFLICT (workflow_id, step_id) DO NOTHING
"""


def step_guarded_values(record: StepRecord, executor_id: str) -> tuple[Any, ...]:
    """The parameters of STEP_INSERT_GUARDED (the same order in both backends' query)."""
    return (
        record.workflow_id,
        record.step_id,
        record.name,
        record.args_hash,
        record.output,
        record.error,
        record.child_id,
        record.attempts,
        record.started_at,
        record.completed_at,
        record.workflow_id,
        executor_id,
    )


STEP_NAME = "SELECT name FROM steps WHERE workflow_id = ? AND step_id = ?"
STEP_LIST = f"SELECT {', '.join(STEP_COLUMNS)} FROM steps WHERE workflow_id = ? ORDER BY step_id"
STEP_COPY = f"""
INSERT INTO steps ({", ".join(STEP_COLUMNS)})
SELECT ?, {", ".join(STEP_COLUMNS[1:])} FROM steps WHERE workflow_id = ? AND step_id < ?
"""
STEP_DELETE_LAST_ERROR = """
DELETE FROM steps WHERE workflow_id = ? AND error IS NOT NULL
  AND step_id = (SELECT max(step_id) FROM steps WHERE workflow_id = ?)
"""

EXECUTOR_UPSERT = f"""
INSERT INTO executors ({", ".join(EXECUTOR_COLUMNS)}) VALUES ({", ".join("?" * len(EXECUTOR_COLUMNS))})
ON CONFLICT (executor_id) DO UPDATE SET host_key = excluded.host_key, hostname = excluded.hostname,
    pid = excluded.pid, pid_started = excluded.pid_started, app_version = excluded.app_version,
    started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at
"""
EXECUTOR_HEARTBEAT = "UPDATE executors SET heartbeat_at = ? WHERE executor_id = ?"
EXECUTOR_LIST = f"SELECT {', '.join(EXECUTOR_COLUMNS)} FROM executors ORDER BY started_at"
EXECUTOR_DELETE = "DELETE FROM executors WHERE executor_id = ?"
