-- pgbinding logical capture for one table, version 1. Released SQL: never edit in place.
-- {table} is a quoted identifier, {table_name} and {publication} string literals (psycopg.sql).
-- Statements are separated by blank lines.
--
-- The whole old row is logged for every UPDATE and DELETE (group transitions need it, and
-- unchanged TOASTed values of the new row are filled from it).
ALTER TABLE {table} REPLICA IDENTITY FULL;

-- The publication is made by the first table that joins it; from Postgres 18 on it publishes
-- stored generated columns too (to_jsonb(row) of the trigger backend has them).
DO $do$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = {publication}) THEN
        IF current_setting('server_version_num')::integer >= 180000 THEN
            EXECUTE format('CREATE PUBLICATION %I WITH (publish_generated_columns = stored)',
                           {publication});
        ELSE
            EXECUTE format('CREATE PUBLICATION %I', {publication});
        END IF;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                    WHERE p.pubname = {publication}
                      AND r.prrelid = to_regclass(quote_ident({table_name}))) THEN
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE %I', {publication}, {table_name});
    END IF;
END
$do$;
