"""Named SQL for messages, events and streams on SQLite (tables of migration 0002)."""

from .sqlite import STEP_COLUMNS

_OWNED = "SELECT 1 FROM workflows WHERE workflow_id = :wf AND status = 'PENDING' AND executor_id = :executor"

WORKFLOW_EXISTS = "SELECT 1 FROM workflows WHERE workflow_id = ?"

MESSAGE_INSERT = """
INSERT INTO messages (message_id, destination_id, topic, value, created_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (message_id) DO NOTHING
"""
MESSAGE_OLDEST = """
SELECT seq, value FROM messages WHERE destination_id = ? AND topic = ? AND consumed_at IS NULL ORDER BY seq LIMIT 1
"""
MESSAGE_AVAILABLE = "SELECT 1 FROM messages WHERE destination_id = ? AND topic = ? AND consumed_at IS NULL LIMIT 1"
MESSAGE_CONSUME = "UPDATE messages SET consumed_at = ?, consumed_step = ? WHERE seq = ? AND consumed_at IS NULL"

OWNED = _OWNED
STEP_GET = f"SELECT {', '.join(STEP_COLUMNS)} FROM steps WHERE workflow_id = ? AND step_id = ?"
# A waiting checkpoint (a recv or get_event that has not returned yet) has no completed_at.
STEP_COMPLETE = """
UPDATE steps SET output = ?, completed_at = ? WHERE workflow_id = ? AND step_id = ? AND name = ?
  AND completed_at IS NULL
"""

EVENT_INSERT = f"""
INSERT INTO events (workflow_id, key, value, step_id, sub, created_at)
SELECT :wf, :key, :value, :step_id, :sub, :t WHERE EXISTS ({_OWNED})
ON CONFLICT (workflow_id, step_id, sub) DO UPDATE SET value = excluded.value, created_at = excluded.created_at
"""
EVENT_WRITTEN = "SELECT 1 FROM events WHERE workflow_id = ? AND step_id = ? AND sub = ?"
EVENT_GET = "SELECT value FROM events WHERE workflow_id = ? AND key = ? ORDER BY seq DESC LIMIT 1"
EVENT_GET_ALL = """
SELECT e.key, e.value FROM events e
WHERE e.workflow_id = ? AND e.seq = (SELECT max(seq) FROM events WHERE workflow_id = e.workflow_id AND key = e.key)
ORDER BY e.key
"""

STREAM_INSERT = f"""
INSERT INTO streams (workflow_id, key, "offset", value, step_id, sub, created_at)
SELECT :wf, :key, coalesce((SELECT max("offset") FROM streams WHERE workflow_id = :wf AND key = :key), -1) + 1,
    :value, :step_id, :sub, :t
WHERE EXISTS ({_OWNED})
  AND NOT EXISTS (SELECT 1 FROM streams WHERE workflow_id = :wf AND key = :key AND value IS NULL)
ON CONFLICT (workflow_id, step_id, sub) DO NOTHING
"""
STREAM_WRITTEN = "SELECT 1 FROM streams WHERE workflow_id = ? AND step_id = ? AND sub = ?"
STREAM_CLOSED = "SELECT 1 FROM streams WHERE workflow_id = ? AND key = ? AND value IS NULL"
STREAM_READ = """
SELECT "offset", value FROM streams WHERE workflow_id = ? AND key = ? AND "offset" >= ? ORDER BY "offset" LIMIT ?
"""

# Fork: the rows written at positions before the fork point, streams renumbered from 0 without gaps
# (steps that ran concurrently may have written out of position order).
FORK_EVENTS = """
INSERT INTO events (workflow_id, key, value, step_id, sub, created_at)
SELECT ?, key, value, step_id, sub, created_at FROM events WHERE workflow_id = ? AND step_id < ? ORDER BY seq
"""
FORK_STREAMS = """
INSERT INTO streams (workflow_id, key, "offset", value, step_id, sub, created_at)
SELECT ?, key, row_number() OVER (PARTITION BY key ORDER BY "offset") - 1, value, step_id, sub, created_at
FROM streams WHERE workflow_id = ? AND step_id < ?
"""
