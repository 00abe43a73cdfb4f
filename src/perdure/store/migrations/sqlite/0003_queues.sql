-- perdure system database, version 3 (SQLite): queues with flow control, debouncing, cron schedules
--
-- A debounced workflow waits DELAYED under its debounce key; the key is released when a worker takes it,
-- so the next call starts a new run.
ALTER TABLE workflows ADD COLUMN debounce_key TEXT;
CREATE UNIQUE INDEX workflows_debounce ON workflows (queue_name, debounce_key) WHERE debounce_key IS NOT NULL;
-- Dequeue times: rate limits count the dequeues of a rolling window.
CREATE INDEX workflows_queue_started ON workflows (queue_name, started_at) WHERE queue_name IS NOT NULL;
-- Queue order: priority, then insertion (rowid); a recovered or resumed workflow keeps its place.
CREATE INDEX workflows_queue_order ON workflows (queue_name, status, priority) WHERE queue_name IS NOT NULL;
CREATE INDEX workflows_queue_delayed ON workflows (queue_name, delay_until) WHERE status = 'DELAYED';

-- Queues as declared in code by the runtimes that serve them (settings as JSON), for management.
CREATE TABLE queues (
    name       TEXT PRIMARY KEY,
    config     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Partitioned queues: the turn (a counter per queue) at which each partition was last served, so partitions
-- take turns.
CREATE TABLE queue_partitions (
    queue_name    TEXT NOT NULL,
    partition_key TEXT NOT NULL,
    last_served   INTEGER NOT NULL,
    PRIMARY KEY (queue_name, partition_key)
) WITHOUT ROWID;

-- Cron schedules. `last_tick` is the latest tick fired (its workflow id is derived from name + tick time,
-- so a tick fired by several processes runs once); `paused` is shared by every process.
CREATE TABLE schedules (
    name          TEXT PRIMARY KEY,
    workflow_name TEXT NOT NULL,
    cron          TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    missed        TEXT NOT NULL,
    queue_name    TEXT,
    paused        INTEGER NOT NULL DEFAULT 0,
    last_tick     INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
