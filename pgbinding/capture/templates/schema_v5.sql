-- pgbinding change capture, schema version 5, applied on top of version 4.
-- Released SQL: never edit in place. A change is a new file (schema_v6.sql) and a new migration.
--
-- What version 5 changes: a TRUNCATE of the change log counts as pruning it.
--
-- pgbinding_state.pruned_through says below which id the log no longer holds every change:
-- a client resuming from a position before it must reload (resync), and the logical capture
-- backend's asynchronous write numbers its rows on from greatest(max(id), pruned_through), so
-- that a crash that loses the write gives the rows the same ids again. Only the pruner moved it.
-- An operator's TRUNCATE pgbinding_change emptied the log without moving it: the logical
-- backend then numbered new changes from 1 again, below every listener's position, and they
-- were dropped as repeats; a client resuming from before the TRUNCATE was replayed nothing
-- instead of being told to reload. Now a trigger sets pruned_through to the last id the log's
-- sequence handed out (the asynchronous write moves the sequence past its own ids), in the
-- truncating transaction.

CREATE FUNCTION pgbinding_log_truncated() RETURNS trigger
LANGUAGE plpgsql
AS $body$
BEGIN
    UPDATE pgbinding_state
       SET pruned_through = greatest(pruned_through, coalesce(pg_sequence_last_value(
               pg_get_serial_sequence('pgbinding_change', 'id')::regclass), 0));
    RETURN NULL;
END
$body$;

-- Its tables in the schema they were created in, whatever the truncating session's
-- search_path (as the capture function, schema version 2).
DO $do$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION pgbinding_log_truncated() SET search_path = pg_catalog, %I, pg_temp',
        current_schema()
    );
END
$do$;

CREATE TRIGGER pgbinding_log_truncated AFTER TRUNCATE ON pgbinding_change
    FOR EACH STATEMENT EXECUTE FUNCTION pgbinding_log_truncated();
