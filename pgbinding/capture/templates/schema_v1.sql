-- pgbinding change capture, schema version 1.
-- Released SQL: never edit in place. A change is a new file (schema_v2.sql) and a new migration.
--
-- pgbinding_change   the change log: one row per captured row change, written by the
--                    statement-level triggers in trigger_v1.sql, read in id order by the listener.
-- pgbinding_listener where each listener has got to (its position and the ids it is still
--                    waiting for), so a restart resumes without loss.
-- pgbinding_state    one row: is the listener asleep? Triggers only NOTIFY while it is, because
--                    NOTIFY takes a global lock at commit that serializes writers (DESIGN §5).
--                    Also how far pruning has deleted the log (a resume from before that
--                    must reload instead).

CREATE TABLE pgbinding_change (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at timestamptz NOT NULL DEFAULT now(),
    table_name text NOT NULL,
    op "char" NOT NULL,
    pk text,
    old jsonb,
    new jsonb
);

CREATE TABLE pgbinding_listener (
    name text PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    pending jsonb NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgbinding_state (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    sleeping boolean NOT NULL DEFAULT true,
    pruned_through bigint NOT NULL DEFAULT 0
);
INSERT INTO pgbinding_state DEFAULT VALUES;

-- One function serves every bound table. TG_ARGV[0] is the primary-key column.
-- Statement-level: a bulk UPDATE of 10,000 rows is one set-based INSERT, not 10,000 calls.
CREATE FUNCTION pgbinding_capture_v1() RETURNS trigger
LANGUAGE plpgsql AS $body$
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
        -- repeating to_jsonb() in the join key, the filter and every output column (measured:
        -- about 40% off a 10,000-row UPDATE, bench/README.md).
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
