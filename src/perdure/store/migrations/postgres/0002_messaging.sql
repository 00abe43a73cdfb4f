-- perdure system database, version 2 (PostgreSQL; {schema} is the configured schema): messages, events, streams
--
-- Every row a workflow writes here names the position (`step_id`) of the operation that wrote it, and
-- `sub`: 0 for an operation of the workflow body, n >= 1 for the n-th write made inside the step at that
-- position (a retried step writes the same numbers again, so nothing is duplicated). Fork copies the rows
-- of positions before the fork point.

-- Messages sent to a workflow. `seq` orders them (FIFO per topic); `message_id` makes a send idempotent.
-- The default topic is stored as ''. A consumed message keeps its row, marked with the consuming position.
CREATE TABLE {schema}.messages (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id     TEXT NOT NULL UNIQUE,
    destination_id TEXT NOT NULL REFERENCES {schema}.workflows (workflow_id) ON DELETE CASCADE,
    topic          TEXT NOT NULL,
    value          TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    consumed_at    BIGINT,
    consumed_step  BIGINT
);
CREATE INDEX messages_waiting ON {schema}.messages (destination_id, topic, seq) WHERE consumed_at IS NULL;
CREATE INDEX messages_destination ON {schema}.messages (destination_id);

-- Every value an event took; the latest (highest seq) per key is the event's value. A step that runs
-- again replaces the values it wrote before (same step_id and sub) instead of adding rows.
CREATE TABLE {schema}.events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id TEXT NOT NULL REFERENCES {schema}.workflows (workflow_id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    step_id     BIGINT NOT NULL,
    sub         BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX events_writer ON {schema}.events (workflow_id, step_id, sub);
CREATE INDEX events_key ON {schema}.events (workflow_id, key, seq);

-- Durable streams: values at offsets 0, 1, 2, ... per (workflow, key); a row with a NULL value closes it.
CREATE TABLE {schema}.streams (
    workflow_id TEXT NOT NULL REFERENCES {schema}.workflows (workflow_id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    "offset"    BIGINT NOT NULL,
    value       TEXT,
    step_id     BIGINT NOT NULL,
    sub         BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, key, "offset")
);
CREATE UNIQUE INDEX streams_writer ON {schema}.streams (workflow_id, step_id, sub);
