-- perdure system database, version 1 (SQLite)
CREATE TABLE workflows (
    workflow_id       TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    status            TEXT NOT NULL,
    inputs            TEXT,
    output            TEXT,
    error             TEXT,
    serializer        TEXT NOT NULL DEFAULT 'json',
    executor_id       TEXT,
    app_version       TEXT,
    parent_id         TEXT,
    forked_from       TEXT,
    recovery_attempts INTEGER NOT NULL DEFAULT 0,
    timeout_ms        INTEGER,
    deadline_at       INTEGER,
    queue_name        TEXT,
    dedup_key         TEXT,
    priority          INTEGER NOT NULL DEFAULT 0,
    partition_key     TEXT,
    delay_until       INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    started_at        INTEGER,
    completed_at      INTEGER
);
CREATE INDEX workflows_created ON workflows (created_at);
CREATE INDEX workflows_active ON workflows (status, executor_id) WHERE status IN ('PENDING', 'ENQUEUED', 'DELAYED');
CREATE INDEX workflows_queue ON workflows (queue_name, status, priority, created_at) WHERE queue_name IS NOT NULL;
CREATE INDEX workflows_parent ON workflows (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX workflows_completed ON workflows (completed_at) WHERE completed_at IS NOT NULL;
CREATE UNIQUE INDEX workflows_dedup ON workflows (queue_name, dedup_key) WHERE dedup_key IS NOT NULL;

CREATE TABLE steps (
    workflow_id  TEXT NOT NULL REFERENCES workflows (workflow_id) ON DELETE CASCADE,
    step_id      INTEGER NOT NULL,
    name         TEXT NOT NULL,
    args_hash    TEXT,
    output       TEXT,
    error        TEXT,
    child_id     TEXT,
    attempts     INTEGER NOT NULL DEFAULT 1,
    started_at   INTEGER,
    completed_at INTEGER,
    PRIMARY KEY (workflow_id, step_id)
) WITHOUT ROWID;

CREATE TABLE executors (
    executor_id  TEXT PRIMARY KEY,
    host_key     TEXT NOT NULL,
    hostname     TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    pid_started  TEXT,
    app_version  TEXT,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
