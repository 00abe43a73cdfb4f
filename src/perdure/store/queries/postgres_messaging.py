"""Named SQL for messages, events and streams on PostgreSQL. `{s}` is the schema, filled in by `build`."""

from __future__ import annotations

from types import SimpleNamespace

from .sqlite import STEP_COLUMNS

_S = ", ".join(STEP_COLUMNS)
_OWNED = (
    "SELECT 1 FROM {s}.workflows WHERE workflow_id = %(wf)s AND status = 'PENDING' AND executor_id = %(executor)s "
    "FOR SHARE"
)
# The state a write's outcome is decided from, read in the write's own transaction after its statements.
_OWNER = "w.status AS wf_status, w.executor_id AS wf_executor FROM (SELECT 1) AS one "
_OWNER_JOIN = "LEFT JOIN {s}.workflows w ON w.workflow_id = %(wf)s"

_TEMPLATES = dict(
    WORKFLOW_EXISTS="SELECT EXISTS (SELECT 1 FROM {s}.workflows WHERE workflow_id = %(dest)s) AS found",
    MESSAGE_INSERT="""
        INSERT INTO {s}.messages (message_id, destination_id, topic, value, created_at)
        SELECT %(id)s, %(dest)s, %(topic)s, %(value)s, %(t)s
        WHERE EXISTS (SELECT 1 FROM {s}.workflows WHERE workflow_id = %(dest)s)
        ON CONFLICT (message_id) DO NOTHING
    """,
    MESSAGE_INSERT_STEP=f"""
        INSERT INTO {{s}}.messages (message_id, destination_id, topic, value, created_at)
        SELECT %(id)s, %(dest)s, %(topic)s, %(value)s, %(t)s
        WHERE EXISTS (SELECT 1 FROM {{s}}.workflows WHERE workflow_id = %(dest)s)
          AND EXISTS ({_OWNED})
          AND NOT EXISTS (SELECT 1 FROM {{s}}.steps WHERE workflow_id = %(wf)s AND step_id = %(step_id)s)
        ON CONFLICT (message_id) DO NOTHING
    """,
    # A send's checkpoint: its output, or the error of a missing destination.
    STEP_INSERT_SEND=f"""
        INSERT INTO {{s}}.steps ({_S})
        SELECT %(wf)s, %(step_id)s, %(name)s, %(args_hash)s,
            CASE WHEN d.found THEN %(output)s END, CASE WHEN d.found THEN NULL ELSE %(missing)s END,
            NULL, %(attempts)s, %(started_at)s, %(completed_at)s
        FROM (SELECT EXISTS (SELECT 1 FROM {{s}}.workflows WHERE workflow_id = %(dest)s) AS found) AS d
        WHERE EXISTS ({_OWNED})
        ON CONFLICT (workflow_id, step_id) DO NOTHING
    """,
    STEP_INSERT=f"""
        INSERT INTO {{s}}.steps ({_S})
        SELECT %(wf)s, %(step_id)s, %(name)s, %(args_hash)s::text, %(output)s::text, %(error)s::text, NULL,
            %(attempts)s, %(started_at)s::bigint, %(completed_at)s::bigint
        WHERE EXISTS ({_OWNED})
        ON CONFLICT (workflow_id, step_id) DO NOTHING
    """,
    # Complete a waiting checkpoint (a recv that timed out), or record it completed at once.
    STEP_FINISH=f"""
        INSERT INTO {{s}}.steps AS st ({_S})
        SELECT %(wf)s, %(step_id)s, %(name)s, %(args_hash)s::text, %(output)s::text, NULL, NULL, 1,
            %(started_at)s::bigint, %(completed_at)s::bigint
        WHERE EXISTS ({_OWNED})
        ON CONFLICT (workflow_id, step_id) DO UPDATE SET output = excluded.output, completed_at = excluded.completed_at
        WHERE st.completed_at IS NULL AND st.name = excluded.name
    """,
    STEP_COMPLETE=f"""
        UPDATE {{s}}.steps SET output = %(output)s::text, completed_at = %(completed_at)s::bigint
        WHERE workflow_id = %(wf)s AND step_id = %(step_id)s AND name = %(name)s AND completed_at IS NULL
          AND EXISTS ({_OWNED})
    """,
    STEP_WITH_OWNER=(
        f"SELECT {', '.join('s.' + c for c in STEP_COLUMNS)}, " + _OWNER + _OWNER_JOIN + " "
        "LEFT JOIN {s}.steps s ON s.workflow_id = %(wf)s AND s.step_id = %(step_id)s"
    ),
    # Consume the oldest waiting message into the checkpoint (completing the recv's waiting checkpoint),
    # unless the position holds a completed one already (a retried write).
    MESSAGE_CONSUME=f"""
        WITH m AS (
            SELECT seq, value FROM {{s}}.messages
            WHERE destination_id = %(wf)s AND topic = %(topic)s AND consumed_at IS NULL
              AND EXISTS ({_OWNED})
              AND NOT EXISTS (
                SELECT 1 FROM {{s}}.steps WHERE workflow_id = %(wf)s AND step_id = %(step_id)s
                  AND (completed_at IS NOT NULL OR name <> %(name)s)
              )
            ORDER BY seq LIMIT 1
            FOR UPDATE
        ), c AS (
            UPDATE {{s}}.messages AS msg SET consumed_at = %(completed_at)s, consumed_step = %(step_id)s
            FROM m WHERE msg.seq = m.seq
            RETURNING m.value
        )
        INSERT INTO {{s}}.steps AS st ({_S})
        SELECT %(wf)s, %(step_id)s, %(name)s, %(args_hash)s::text, c.value, NULL, NULL, 1, %(started_at)s::bigint,
            %(completed_at)s::bigint
        FROM c
        ON CONFLICT (workflow_id, step_id) DO UPDATE SET output = excluded.output, completed_at = excluded.completed_at
        WHERE st.completed_at IS NULL AND st.name = excluded.name
    """,
    MESSAGE_AVAILABLE="""
        SELECT 1 FROM {s}.messages WHERE destination_id = %s AND topic = %s AND consumed_at IS NULL LIMIT 1
    """,
    EVENT_INSERT=f"""
        INSERT INTO {{s}}.events (workflow_id, key, value, step_id, sub, created_at)
        SELECT %(wf)s, %(key)s, %(value)s, %(step_id)s, %(sub)s, %(t)s WHERE EXISTS ({_OWNED})
        ON CONFLICT (workflow_id, step_id, sub) DO UPDATE SET value = excluded.value, created_at = excluded.created_at
    """,
    EVENT_OUTCOME=(
        "SELECT EXISTS (SELECT 1 FROM {s}.events WHERE workflow_id = %(wf)s AND step_id = %(step_id)s "
        "AND sub = %(sub)s) AS written, " + _OWNER + _OWNER_JOIN
    ),
    EVENT_GET="SELECT value FROM {s}.events WHERE workflow_id = %s AND key = %s ORDER BY seq DESC LIMIT 1",
    EVENT_GET_ALL="""
        SELECT DISTINCT ON (key) key, value FROM {s}.events WHERE workflow_id = %s ORDER BY key, seq DESC
    """,
    STREAM_INSERT=f"""
        INSERT INTO {{s}}.streams (workflow_id, key, "offset", value, step_id, sub, created_at)
        SELECT %(wf)s, %(key)s,
            coalesce((SELECT max("offset") FROM {{s}}.streams WHERE workflow_id = %(wf)s AND key = %(key)s), -1) + 1,
            %(value)s, %(step_id)s, %(sub)s, %(t)s
        WHERE EXISTS ({_OWNED})
          AND NOT EXISTS (SELECT 1 FROM {{s}}.streams WHERE workflow_id = %(wf)s AND key = %(key)s AND value IS NULL)
        ON CONFLICT (workflow_id, step_id, sub) DO NOTHING
    """,
    # A stream operation's checkpoint: after a write that landed, or a close of a closed stream.
    STEP_INSERT_STREAM=f"""
        INSERT INTO {{s}}.steps ({_S})
        SELECT %(wf)s, %(cp_step_id)s, %(name)s, %(args_hash)s, %(output)s, NULL, NULL, 1,
            %(started_at)s, %(completed_at)s
        WHERE EXISTS ({_OWNED})
          AND (EXISTS (SELECT 1 FROM {{s}}.streams WHERE workflow_id = %(wf)s AND step_id = %(step_id)s
                       AND sub = %(sub)s)
               OR (%(closing)s AND EXISTS (SELECT 1 FROM {{s}}.streams WHERE workflow_id = %(wf)s
                                           AND key = %(key)s AND value IS NULL)))
        ON CONFLICT (workflow_id, step_id) DO NOTHING
    """,
    STREAM_OUTCOME=(
        "SELECT EXISTS (SELECT 1 FROM {s}.streams WHERE workflow_id = %(wf)s AND step_id = %(step_id)s "
        "AND sub = %(sub)s) AS written, EXISTS (SELECT 1 FROM {s}.streams WHERE workflow_id = %(wf)s "
        "AND key = %(key)s AND value IS NULL) AS closed, " + _OWNER + _OWNER_JOIN
    ),
    STREAM_READ="""
        SELECT "offset", value FROM {s}.streams WHERE workflow_id = %s AND key = %s AND "offset" >= %s
        ORDER BY "offset" LIMIT %s
    """,
    FORK_EVENTS="""
        INSERT INTO {s}.events (workflow_id, key, value, step_id, sub, created_at)
        SELECT %s, key, value, step_id, sub, created_at FROM {s}.events
        WHERE workflow_id = %s AND step_id < %s ORDER BY seq
    """,
    FORK_STREAMS="""
        INSERT INTO {s}.streams (workflow_id, key, "offset", value, step_id, sub, created_at)
        SELECT %s, key, row_number() OVER (PARTITION BY key ORDER BY "offset") - 1, value, step_id, sub, created_at
        FROM {s}.streams WHERE workflow_id = %s AND step_id < %s
    """,
)


def build(schema: str) -> SimpleNamespace:
    """The queries with `schema` filled in (already validated as a plain identifier)."""
    return SimpleNamespace(**{name: sql.replace("{s}", schema) for name, sql in _TEMPLATES.items()})
