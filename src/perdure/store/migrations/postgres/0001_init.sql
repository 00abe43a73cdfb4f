-- perdure system database, version 1 (PostgreSQL; {schema} is the configured schema)
CREATE TABLE {schema}.workflows (
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
    recovery_attempts BIGINT NOT NULL DEFAULT 0,
    timeout_ms        BIGINT,
    deadline_at       BIGINT,
    queue_name        TEXT,
    dedup_key         TEXT,
    priority          BIGINT NOT NULL DEFAULT 0,
    partition_key     TEXT,
    delay_until       BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    started_at        BIGINT,
    completed_at      BIGINT
);
CREATE INDEX workflows_created ON {schema}.workflows (created_at);
CREATE INDEX workflows_active ON {schema}.workflows (status, executor_id) WHERE status IN ('PENDING', 'ENQUEUED', 'DELAYED');
CREATE INDEX workflows_queue ON {schema}.workflows (queue_name, status, priority, created_at) WHERE queue_name IS NOT NULL;
CREATE INDEX workflows_parent ON {schema}.workflows (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX workflows_completed ON {schema}.workflows (completed_at) WHERE completed_at IS NOT NULL;
CREATE UNIQUE INDEX workflows_dedup ON {schema}.workflows (queue_name, dedup_key) WHERE dedup_key IS NOT NULL;

CREATE TABLE {schema}.steps (
    workflow_id  TEXT NOT NULL REFERENCES {schema}.workflows (workflow_id) ON DELETE CASCADE,
    step_id      BIGINT NOT NULL,
    name         TEXT NOT NULL,
    args_hash    TEXT,
    output       TEXT,
    error        TEXT,
    child_id     TEXT,
    attempts     BIGINT NOT NULL DEFAULT 1,
    started_at   BIGINT,
    completed_at BIGINT,
    PRIMARY KEY (workflow_id, step_id)
);

CREATE TABLE {schema}.executors (
    executor_id  TEXT PRIMARY KEY,
    host_key     TEXT NOT NULL,
    hostname     TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    pid_started  TEXT,
    app_version  TEXT,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
