-- perdure system database, version 2 (SQLite): messages, events, streams
--
-- Every row a workflow writes here names the position (`step_id`) of the operation that wrote it, and
-- `sub`: 0 for an operation of the workflow body, n >= 1 for the n-th write made inside the step at that
-- position (a retried step writes the same numbers again, so nothing is duplicated). Fork copies the rows
-- of positions before the fork point.

-- Messages sent to a workflow. `seq` orders them (FIFO per topic); `message_id` makes a send idempotent.
-- The default topic is stored as ''. A consumed message keeps its row, marked with the consuming position.
CREATE TABLE messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id     TEXT NOT NULL UNIQUE,
    destination_id TEXT NOT NULL REFERENCES workflows (workflow_id) ON DELETE CASCADE,
    topic          TEXT NOT NULL,
    value          TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    consumed_at    INTEGER,
    consumed_step  INTEGER
);
CREATE INDEX messages_waiting ON messages (destination_id, topic, seq) WHERE consumed_at IS NULL;
CREATE INDEX messages_destination ON messages (destination_id);

-- Every value an event took; the latest (highest seq) per key is the event's value. A step that runs
-- again replaces the values it wrote before (same step_id and sub) instead of adding rows.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL REFERENCES workflows (workflow_id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    step_id     INTEGER NOT NULL,
    sub         INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX events_writer ON events (workflow_id, step_id, sub);
CREATE INDEX events_key ON events (workflow_id, key, seq);

-- Durable streams: values at offsets 0, 1, 2, ... per (workflow, key); a row with a NULL value closes it.
CREATE TABLE streams (
    workflow_id TEXT NOT NULL REFERENCES workflows (workflow_id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    "offset"    INTEGER NOT NULL,
    value       TEXT,
    step_id     INTEGER NOT NULL,
    sub         INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, key, "offset")
) WITHOUT ROWID;
CREATE UNIQUE INDEX streams_writer ON streams (workflow_id, step_id, sub);
