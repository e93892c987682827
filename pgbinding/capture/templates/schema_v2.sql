-- pgbinding change capture, schema version 2, applied on top of version 1.
-- Released SQL: never edit in place. A change is a new file (schema_v3.sql) and a new migration.
--
-- What version 2 adds:
--
-- * Leases on pgbinding_listener. One listener per name is the leader; it renews
--   lease_until while it makes progress. A standby takes over when the lease has run out or
--   the leader's backend (leader_pid) is gone, so a stalled leader (SIGSTOP, a channel layer
--   that hangs) loses the lead within a bounded time. Position saves are fenced on the
--   leader's id, so a leader that wakes up after losing the lead cannot overwrite the new
--   leader's position.
-- * pgbinding_capture_v2(): the capture function with its own settings. to_jsonb() renders
--   values with the writing session's TimeZone, IntervalStyle, bytea_output and
--   extra_float_digits, and the function found pgbinding_change through the writer's
--   search_path; version 2 pins all of them, so what is logged never depends on who wrote it.

ALTER TABLE pgbinding_listener
    ADD COLUMN leader text,
    ADD COLUMN leader_pid integer,
    ADD COLUMN lease_until timestamptz;

-- One function serves every bound table. TG_ARGV[0] is the primary-key column.
-- Statement-level: a bulk UPDATE of 10,000 rows is one set-based INSERT, not 10,000 calls.
CREATE FUNCTION pgbinding_capture_v2() RETURNS trigger
LANGUAGE plpgsql
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres'
SET bytea_output = 'hex'
SET extra_float_digits = 1
AS $body$
DECLARE
    pk_col text := TG_ARGV[0];
    captured bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pgbinding_change (table_name, op, pk, old, new)
        SELECT TG_TABLE_NAME, 'I', n.j ->> pk_col, NULL, n.j
        FROM (SELECT to_jsonb(t) AS j FROM pgbinding_new t) n;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Pair old and new rows by key; a row whose key changed is a delete plus an insert.
        -- A row that did not change at all is not logged. OFFSET 0 keeps the planner from
        -- repeating to_jsonb() in the join key, the filter and every output column.
        INSERT INTO pgbinding_change (table_name, op, pk, old, new)
        SELECT TG_TABLE_NAME,
               CASE WHEN o.j IS NULL THEN 'I' WHEN n.j IS NULL THEN 'D' ELSE 'U' END,
               coalesce(n.j ->> pk_col, o.j ->> pk_col), o.j, n.j
        FROM (SELECT j, j -> pk_col AS k
                FROM (SELECT to_jsonb(t) AS j FROM pgbinding_old t OFFSET 0) x) o
        FULL JOIN (SELECT j, j -> pk_col AS k
                FROM (SELECT to_jsonb(t) AS j FROM pgbinding_new t OFFSET 0) x) n
          ON o.k = n.k
        WHERE o.j IS DISTINCT FROM n.j;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pgbinding_change (table_name, op, pk, old, new)
        SELECT TG_TABLE_NAME, 'D', o.j ->> pk_col, o.j, NULL
        FROM (SELECT to_jsonb(t) AS j FROM pgbinding_old t) o;
    ELSE -- TRUNCATE
        INSERT INTO pgbinding_change (table_name, op, pk, old, new)
        VALUES (TG_TABLE_NAME, 'T', NULL, NULL, NULL);
    END IF;
    GET DIAGNOSTICS captured = ROW_COUNT;
    IF captured > 0 AND (SELECT sleeping FROM pgbinding_state) THEN
        -- Constant payload: Postgres folds duplicates, so one wake-up per transaction at most.
        PERFORM pg_notify('pgbinding', '');
    END IF;
    RETURN NULL;
END
$body$;

-- The function finds pgbinding's tables in the schema they were created in (this migration's
-- current schema), whatever the writer's search_path; pg_temp last, so a temporary table
-- cannot stand in for them. format(%I) quotes the schema name.
DO $do$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION pgbinding_capture_v2() SET search_path = pg_catalog, %I, pg_temp',
        current_schema()
    );
END
$do$;
