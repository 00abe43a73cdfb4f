-- perdure system database, version 4 (PostgreSQL): announce a finish only to those waiting for it
--
-- A process that waits for a workflow it does not run itself sets `watched` first; the finish sends its
-- NOTIFY only then. Runs nobody waits for elsewhere (most of them) finish without a notification.
ALTER TABLE {schema}.workflows ADD COLUMN watched BOOLEAN NOT NULL DEFAULT false;
