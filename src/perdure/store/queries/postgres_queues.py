"""Named SQL for queues and schedules on PostgreSQL. `{s}` is the schema, filled in when the store is built.

Parameters are named (`%(q)s`, ...). Times of dequeues come from the database clock (`clock_timestamp()`),
so a rate limit holds across hosts whose clocks differ. "Ready" means ENQUEUED, or DELAYED with its time
come. The dequeue statements are built per shape of queue (which limits it has), once, and cached.
"""

from __future__ import annotations

from .sqlite import WORKFLOW_COLUMNS
from .sqlite_queues import SCHEDULE_COLUMNS

_W = ", ".join(WORKFLOW_COLUMNS)
_WP = ", ".join(f"w.{c}" for c in WORKFLOW_COLUMNS)
_INTEGER_COLUMNS = frozenset(
    {"recovery_attempts", "timeout_ms", "deadline_at", "priority", "delay_until", "created_at", "updated_at"}
    | {"started_at", "completed_at"}
)
_NOW = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
_T = "(SELECT t FROM clock)"
_READY = f"(status = 'ENQUEUED' OR (status = 'DELAYED' AND delay_until <= {_T}))"
_VERSION_OK = "(app_version IS NULL OR %(version)s::text IS NULL OR app_version = %(version)s::text)"
_RUNNING = "(SELECT count(*) FROM {s}.workflows WHERE queue_name = %(q)s AND status = 'PENDING')"
_RECENT = f"(SELECT count(*) FROM {{s}}.workflows WHERE queue_name = %(q)s AND started_at > {_T} - %(period)s::bigint)"

_VALUES = ", ".join(f"%({c})s" for c in WORKFLOW_COLUMNS)
_TYPED_VALUES = ", ".join(f"%({c})s::bigint" if c in _INTEGER_COLUMNS else f"%({c})s::text" for c in WORKFLOW_COLUMNS)

_TEMPLATES = dict(
    QUEUE_LOCK="SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
    # A dequeue first turns the queue's due DELAYED workflows ENQUEUED, then takes ENQUEUED ones in index order.
    FLIP_DUE=f"""
        UPDATE {{s}}.workflows SET status = 'ENQUEUED', updated_at = {_NOW}
        WHERE queue_name = %(q)s AND status = 'DELAYED' AND delay_until <= {_NOW}
    """,
    ENQUEUE_INSERT=f"INSERT INTO {{s}}.workflows ({_W}) VALUES ({_VALUES}) ON CONFLICT DO NOTHING",
    WORKFLOW_GET=f"SELECT {_W} FROM {{s}}.workflows WHERE workflow_id = %s",
    DEDUP_HOLDER="SELECT workflow_id FROM {s}.workflows WHERE queue_name = %s AND dedup_key = %s",
    DEBOUNCE_RELEASE="""
        UPDATE {s}.workflows SET debounce_key = NULL
        WHERE queue_name = %(queue_name)s AND debounce_key = %(debounce_key)s AND status NOT IN ('DELAYED', 'ENQUEUED')
    """,
    DEBOUNCE_UPSERT=f"""
        INSERT INTO {{s}}.workflows AS w ({_W}, debounce_key) VALUES ({_VALUES}, %(debounce_key)s)
        ON CONFLICT (queue_name, debounce_key) WHERE debounce_key IS NOT NULL DO UPDATE SET
            inputs = excluded.inputs, updated_at = excluded.updated_at, status = 'DELAYED',
            delay_until = LEAST(
                excluded.delay_until, coalesce(w.created_at + %(max_wait)s::bigint, excluded.delay_until)
            )
        RETURNING workflow_id
    """,
    REQUEUE="""
        UPDATE {s}.workflows SET status = 'ENQUEUED', executor_id = NULL, updated_at = %s
        WHERE workflow_id = ANY(%s) AND status = 'PENDING' AND executor_id = %s
        RETURNING workflow_id, queue_name
    """,
    STEPS_OF="""
        SELECT workflow_id, step_id, name, args_hash, output, error, child_id, attempts, started_at, completed_at
        FROM {s}.steps WHERE workflow_id = ANY(%s) ORDER BY workflow_id, step_id
    """,
    COUNTS=(
        "SELECT queue_name, status, count(*) AS n FROM {s}.workflows WHERE queue_name IS NOT NULL "
        "GROUP BY queue_name, status"
    ),
    QUEUE_UPSERT="""
        INSERT INTO {s}.queues (name, config, updated_at) VALUES (%s, %s, %s)
        ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at
    """,
    QUEUE_LIST="SELECT name, config, updated_at FROM {s}.queues ORDER BY name",
    SCHEDULE_UPSERT=f"""
        INSERT INTO {{s}}.schedules ({", ".join(SCHEDULE_COLUMNS)})
        VALUES ({", ".join(["%s"] * len(SCHEDULE_COLUMNS))})
        ON CONFLICT (name) DO UPDATE SET workflow_name = excluded.workflow_name, cron = excluded.cron,
            timezone = excluded.timezone, missed = excluded.missed, queue_name = excluded.queue_name,
            updated_at = excluded.updated_at
        RETURNING {", ".join(SCHEDULE_COLUMNS)}
    """,
    SCHEDULE_GET=f"SELECT {', '.join(SCHEDULE_COLUMNS)} FROM {{s}}.schedules WHERE name = %s",
    SCHEDULE_LIST=f"SELECT {', '.join(SCHEDULE_COLUMNS)} FROM {{s}}.schedules ORDER BY name",
    SCHEDULE_PAUSE="UPDATE {s}.schedules SET paused = %s, updated_at = %s WHERE name = %s",
    # The tick's workflow is inserted only while the schedule is not paused; its id is derived from the
    # schedule and the tick, so the processes that all fire it insert it once.
    SCHEDULE_FIRE_INSERT=f"""
        INSERT INTO {{s}}.workflows ({_W}) SELECT {_TYPED_VALUES}
        WHERE EXISTS (SELECT 1 FROM {{s}}.schedules WHERE name = %(schedule)s AND NOT paused)
        ON CONFLICT DO NOTHING
    """,
    SCHEDULE_TICK="""
        UPDATE {s}.schedules SET last_tick = GREATEST(coalesce(last_tick, 0), %(tick)s), updated_at = %(t)s
        WHERE name = %(schedule)s AND NOT paused
    """,
)


def build(schema: str) -> dict[str, str]:
    return {name: sql.replace("{s}", schema) for name, sql in _TEMPLATES.items()}


def _mine(names: bool, *, take: bool = False) -> str:
    """The queue's ready workflows; `take`: its ENQUEUED ones (a dequeue has made the due DELAYED ENQUEUED)."""
    ready = "status = 'ENQUEUED'" if take else _READY
    clause = f"queue_name = %(q)s AND {ready} AND {_VERSION_OK}"
    return clause + (" AND name = ANY(%(names)s)" if names else "")


def dequeue_sql(schema: str, *, concurrency: bool, rate: bool, partitioned: bool, names: bool) -> str:
    """One statement: pick within the budget, make PENDING and ours, return the rows in queue order."""
    claim_set = f"""
        UPDATE {{s}}.workflows w SET status = 'PENDING', executor_id = %(executor)s, started_at = c.t,
            updated_at = c.t, debounce_key = NULL,
            deadline_at = CASE WHEN w.timeout_ms IS NULL THEN w.deadline_at ELSE c.t + w.timeout_ms END
        FROM picked p, clock c
        WHERE w.workflow_id = p.workflow_id AND w.status = 'ENQUEUED'
        RETURNING {_WP}, p.ord AS ord_
    """
    if not partitioned:
        terms = ["%(limit)s::bigint"]
        if concurrency:
            terms.append(f"%(conc)s::bigint - {_RUNNING}")
        if rate:
            terms.append(f"%(rate)s::bigint - {_RECENT}")
        sql = f"""
            WITH clock AS (SELECT {_NOW} AS t),
            picked AS (
                SELECT workflow_id, seq AS ord FROM {{s}}.workflows WHERE {_mine(names, take=True)}
                ORDER BY priority, seq
                LIMIT GREATEST(0, LEAST({", ".join(terms)}))
                FOR UPDATE SKIP LOCKED
            ),
            claimed AS ({claim_set})
            SELECT {_W} FROM claimed ORDER BY priority, ord_
        """
        return sql.replace("{s}", schema)
    # Partitioned (always under the queue's advisory lock): the k-th ready workflow of each partition ranks
    # k; a partition gets at most its own budget; among equal ranks the least recently served partition
    # goes first, so every partition takes its turn.
    sql = f"""
        WITH clock AS (SELECT {_NOW} AS t),
        ready AS (
            SELECT workflow_id, coalesce(partition_key, '') AS pk, priority, seq,
                row_number() OVER (PARTITION BY coalesce(partition_key, '') ORDER BY priority, seq) AS rk
            FROM {{s}}.workflows WHERE {_mine(names, take=True)}
        ),
        running AS (
            SELECT coalesce(partition_key, '') AS pk, count(*) AS n FROM {{s}}.workflows
            WHERE queue_name = %(q)s AND status = 'PENDING' GROUP BY 1
        ),
        recent AS (
            SELECT coalesce(partition_key, '') AS pk, count(*) AS n FROM {{s}}.workflows
            WHERE queue_name = %(q)s AND started_at > {_T} - %(period)s::bigint GROUP BY 1
        ),
        picked AS (
            SELECT r.workflow_id,
                row_number() OVER (ORDER BY r.rk, coalesce(qp.last_served, 0), r.priority, r.seq) AS ord
            FROM ready r
            LEFT JOIN running ru ON ru.pk = r.pk
            LEFT JOIN recent re ON re.pk = r.pk
            LEFT JOIN {{s}}.queue_partitions qp ON qp.queue_name = %(q)s AND qp.partition_key = r.pk
            WHERE (%(conc)s::bigint IS NULL OR r.rk <= %(conc)s::bigint - coalesce(ru.n, 0))
              AND (%(rate)s::bigint IS NULL OR r.rk <= %(rate)s::bigint - coalesce(re.n, 0))
            ORDER BY r.rk, coalesce(qp.last_served, 0), r.priority, r.seq
            LIMIT %(limit)s
        ),
        claimed AS ({claim_set}),
        served AS (
            INSERT INTO {{s}}.queue_partitions (queue_name, partition_key, last_served)
            SELECT %(q)s::text, pk,
                (SELECT coalesce(max(last_served), 0) FROM {{s}}.queue_partitions WHERE queue_name = %(q)s)
                + row_number() OVER (ORDER BY min(ord_))
            FROM (SELECT coalesce(partition_key, '') AS pk, ord_ FROM claimed) served_now GROUP BY pk
            ON CONFLICT (queue_name, partition_key) DO UPDATE SET last_served = excluded.last_served
        )
        SELECT {_W} FROM claimed ORDER BY ord_
    """
    return sql.replace("{s}", schema)


def info_sql(schema: str, *, rate: bool, names: bool) -> str:
    """What is left after a dequeue: a backlog, the next DELAYED time, when the rate window frees a slot."""
    oldest = (
        f"(SELECT min(started_at) FROM {{s}}.workflows WHERE queue_name = %(q)s "
        f"AND started_at > {_T} - %(period)s::bigint)"
        if rate
        else "NULL::bigint"
    )
    sql = f"""
        WITH clock AS (SELECT {_NOW} AS t)
        SELECT c.t AS now,
            EXISTS (SELECT 1 FROM {{s}}.workflows WHERE {_mine(names)}) AS backlog,
            (SELECT min(delay_until) FROM {{s}}.workflows
             WHERE queue_name = %(q)s AND status = 'DELAYED' AND delay_until > c.t) AS next_due,
            {oldest} AS oldest_recent
        FROM clock c
    """
    return sql.replace("{s}", schema)


def peek_sql(schema: str, *, concurrency: bool, rate: bool, names: bool) -> str:
    """Read only: is there anything this process could dequeue now (within the budget)? When to look again?"""
    room = ["TRUE"]
    if concurrency:
        room.append(f"{_RUNNING} < %(conc)s::bigint")
    if rate:
        room.append(f"{_RECENT} < %(rate)s::bigint")
    oldest = (
        "(SELECT min(started_at) FROM {s}.workflows WHERE queue_name = %(q)s "
        "AND started_at > c.t - %(period)s::bigint) + %(period)s::bigint - c.t"
        if rate
        else "NULL::bigint"
    )
    sql = f"""
        WITH clock AS (SELECT {_NOW} AS t)
        SELECT EXISTS (SELECT 1 FROM {{s}}.workflows WHERE {_mine(names)}) AS backlog,
            ({" AND ".join(room)}) AS room,
            (SELECT min(delay_until) FROM {{s}}.workflows
             WHERE queue_name = %(q)s AND status = 'DELAYED' AND delay_until > c.t) - c.t AS due_in,
            {oldest} AS rate_free_in
        FROM clock c
    """
    return sql.replace("{s}", schema)


def wake_sql(schema: str, *, concurrency: bool, rate: bool, names: bool) -> str:
    """After a dequeue limited by this process's capacity: if budget and work remain, wake the others."""
    cond = f"EXISTS (SELECT 1 FROM {{s}}.workflows WHERE {_mine(names)})"
    if concurrency:
        cond += f" AND {_RUNNING} < %(conc)s::bigint"
    if rate:
        cond += f" AND {_RECENT} < %(rate)s::bigint"
    sql = f"""
        WITH clock AS (SELECT {_NOW} AS t)
        SELECT pg_notify(%(channel)s, %(key)s) FROM clock WHERE {cond}
    """
    return sql.replace("{s}", schema)
