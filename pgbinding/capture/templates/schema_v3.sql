-- pgbinding change capture, schema version 3, applied on top of version 2.
-- Released SQL: never edit in place. A change is a new file (schema_v4.sql) and a new migration.
--
-- What version 3 adds, for the logical-decoding capture backend (PGBINDING["CAPTURE"] =
-- "logical"; the trigger backend does not use either):
--
-- * pgbinding_slot: for each replication slot, the end LSN of the last transaction whose
--   changes the listener has written into pgbinding_change. It is updated in the same
--   transaction as those rows, and the slot is advanced only after that transaction commits,
--   so a listener that restarts skips what it had written (LSN <= confirmed_lsn) and loses
--   nothing that it had not.
-- * pgbinding_wait_wal(since, seconds, step): returns once WAL has been flushed past `since`
--   (or after `seconds`), looking every `step` seconds inside the server. The listener waits
--   for new changes with it (there is no NOTIFY without triggers): one statement per wait,
--   not one round trip per look.

CREATE TABLE pgbinding_slot (
    name text PRIMARY KEY,
    confirmed_lsn pg_lsn NOT NULL DEFAULT '0/0',
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION pgbinding_wait_wal(since pg_lsn, seconds float8, step float8) RETURNS pg_lsn
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    flushed pg_lsn;
    rounds integer := greatest(1, ceil(seconds / greatest(step, 0.0001)))::integer;
BEGIN
    FOR i IN 1..rounds LOOP
        flushed := pg_current_wal_flush_lsn();
        EXIT WHEN flushed > since;
        PERFORM pg_sleep(step);
    END LOOP;
    RETURN flushed;
END
$body$;
