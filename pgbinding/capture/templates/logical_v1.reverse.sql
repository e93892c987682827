-- Undoes logical_v1.sql for one table (the publication stays, possibly empty).
DO $do$
BEGIN
    IF EXISTS (SELECT FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                WHERE p.pubname = {publication}
                  AND r.prrelid = to_regclass(quote_ident({table_name}))) THEN
        EXECUTE format('ALTER PUBLICATION %I DROP TABLE %I', {publication}, {table_name});
    END IF;
END
$do$;

ALTER TABLE {table} REPLICA IDENTITY DEFAULT;
