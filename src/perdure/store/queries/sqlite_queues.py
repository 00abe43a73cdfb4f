"""Named SQL for queues and schedules on SQLite. `{...}` slots are filled only with placeholders.

Parameters are named (`:q`, `:t`, ...). "Ready" means ENQUEUED, or DELAYED with its time come.
"""

from .sqlite import WORKFLOW_COLUMNS

_W = ", ".join(WORKFLOW_COLUMNS)
_READY = "(status = 'ENQUEUED' OR (status = 'DELAYED' AND delay_until <= :t))"
_VERSION_OK = "(app_version IS NULL OR :version IS NULL OR app_version = :version)"
_MINE = f"queue_name = :q AND {_READY} AND {_VERSION_OK} {{names}}"
# A dequeue first turns the queue's due DELAYED workflows ENQUEUED, then takes ENQUEUED ones in index order.
_TAKE = f"queue_name = :q AND status = 'ENQUEUED' AND {_VERSION_OK} {{names}}"

ENQUEUE_INSERT = (
    f"INSERT INTO workflows ({_W}, debounce_key) "
    f"VALUES ({', '.join(':' + c for c in WORKFLOW_COLUMNS)}, :debounce_key) ON CONFLICT DO NOTHING"
)
WORKFLOW_GET = f"SELECT {_W} FROM workflows WHERE workflow_id = ?"
DEDUP_HOLDER = "SELECT workflow_id FROM workflows WHERE queue_name = ? AND dedup_key = ?"

DEBOUNCE_RELEASE = """
UPDATE workflows SET debounce_key = NULL
WHERE queue_name = :queue_name AND debounce_key = :debounce_key AND status NOT IN ('DELAYED', 'ENQUEUED')
"""
# A call within the period moves the pending run's time and replaces its arguments; `max_wait` (from the
# first call, the row's created_at) caps how far it moves.
DEBOUNCE_UPSERT = (
    ENQUEUE_INSERT.removesuffix("ON CONFLICT DO NOTHING")
    + """ON CONFLICT (queue_name, debounce_key) WHERE debounce_key IS NOT NULL DO UPDATE SET
    inputs = excluded.inputs, updated_at = excluded.updated_at, status = 'DELAYED',
    delay_until = min(excluded.delay_until, coalesce(workflows.created_at + :max_wait, excluded.delay_until))
RETURNING workflow_id"""
)

COUNT_RUNNING = "SELECT count(*) FROM workflows WHERE queue_name = :q AND status = 'PENDING'"
COUNT_RECENT = "SELECT count(*), min(started_at) FROM workflows WHERE queue_name = :q AND started_at > :since"

FLIP_DUE = """
UPDATE workflows SET status = 'ENQUEUED', updated_at = :t
WHERE queue_name = :q AND status = 'DELAYED' AND delay_until <= :t
"""
PICK = f"SELECT workflow_id FROM workflows WHERE {_TAKE} ORDER BY priority, rowid LIMIT :n"
# Partitioned: the k-th ready workflow of each partition ranks k; a partition gets at most its own budget;
# among equal ranks the least recently served partition goes first, so every partition takes its turn.
PICK_PARTITIONED = f"""
WITH ready AS (
    SELECT workflow_id, coalesce(partition_key, '') AS pk, priority, rowid AS seq,
        row_number() OVER (PARTITION BY coalesce(partition_key, '') ORDER BY priority, rowid) AS rk
    FROM workflows WHERE {_TAKE}
),
running AS (
    SELECT coalesce(partition_key, '') AS pk, count(*) AS n FROM workflows
    WHERE queue_name = :q AND status = 'PENDING' GROUP BY 1
),
recent AS (
    SELECT coalesce(partition_key, '') AS pk, count(*) AS n FROM workflows
    WHERE queue_name = :q AND started_at > :since GROUP BY 1
)
SELECT r.workflow_id, r.pk FROM ready r
LEFT JOIN running ru ON ru.pk = r.pk
LEFT JOIN recent re ON re.pk = r.pk
LEFT JOIN queue_partitions qp ON qp.queue_name = :q AND qp.partition_key = r.pk
WHERE (:conc IS NULL OR r.rk <= :conc - coalesce(ru.n, 0))
  AND (:rate IS NULL OR r.rk <= :rate - coalesce(re.n, 0))
ORDER BY r.rk, coalesce(qp.last_served, 0), r.priority, r.seq
LIMIT :n
"""
CLAIM = f"""
UPDATE workflows SET status = 'PENDING', executor_id = :executor, started_at = :t, updated_at = :t,
    deadline_at = CASE WHEN timeout_ms IS NULL THEN deadline_at ELSE :t + timeout_ms END, debounce_key = NULL
WHERE workflow_id IN ({{ids}}) AND status = 'ENQUEUED'
RETURNING {_W}
"""
PARTITION_SERVED = """
INSERT INTO queue_partitions (queue_name, partition_key, last_served)
VALUES (:q, :pk, (SELECT coalesce(max(last_served), 0) + 1 FROM queue_partitions WHERE queue_name = :q))
ON CONFLICT (queue_name, partition_key) DO UPDATE SET last_served = excluded.last_served
"""
BACKLOG = f"SELECT EXISTS (SELECT 1 FROM workflows WHERE {_MINE})"
NEXT_DUE = "SELECT min(delay_until) FROM workflows WHERE queue_name = :q AND status = 'DELAYED' AND delay_until > :t"

REQUEUE = """
UPDATE workflows SET status = 'ENQUEUED', executor_id = NULL, updated_at = ?
WHERE workflow_id IN ({ids}) AND status = 'PENDING' AND executor_id = ?
RETURNING workflow_id, queue_name
"""
STEPS_OF = """
SELECT workflow_id, step_id, name, args_hash, output, error, child_id, attempts, started_at, completed_at
FROM steps WHERE workflow_id IN ({ids}) ORDER BY workflow_id, step_id
"""
COUNTS = (
    "SELECT queue_name, status, count(*) AS n FROM workflows WHERE queue_name IS NOT NULL GROUP BY queue_name, status"
)
QUEUE_UPSERT = """
INSERT INTO queues (name, config, updated_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at
"""
QUEUE_LIST = "SELECT name, config, updated_at FROM queues ORDER BY name"

SCHEDULE_COLUMNS = (
    "name", "workflow_name", "cron", "timezone", "missed", "queue_name", "paused", "last_tick", "created_at",
    "updated_at",
)  # fmt: skip
_SC = ", ".join(SCHEDULE_COLUMNS)
SCHEDULE_UPSERT = f"""
INSERT INTO schedules ({_SC}) VALUES ({", ".join("?" * len(SCHEDULE_COLUMNS))})
ON CONFLICT (name) DO UPDATE SET workflow_name = excluded.workflow_name, cron = excluded.cron,
    timezone = excluded.timezone, missed = excluded.missed, queue_name = excluded.queue_name,
    updated_at = excluded.updated_at
"""
SCHEDULE_GET = f"SELECT {_SC} FROM schedules WHERE name = ?"
SCHEDULE_LIST = f"SELECT {_SC} FROM schedules ORDER BY name"
SCHEDULE_PAUSE = "UPDATE schedules SET paused = ?, updated_at = ? WHERE name = ?"
SCHEDULE_TICK = """
UPDATE schedules SET last_tick = max(coalesce(last_tick, 0), ?), updated_at = ? WHERE name = ? AND paused = 0
"""
