-- pgbinding capture triggers for one table, version 2. Released SQL: never edit in place.
-- {table} and {pk} are filled in with psycopg.sql (quoted identifier, string literal).
CREATE TRIGGER pgbinding_insert_v2 AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS pgbinding_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgbinding_capture_v2({pk});
CREATE TRIGGER pgbinding_update_v2 AFTER UPDATE ON {table}
    REFERENCING OLD TABLE AS pgbinding_old NEW TABLE AS pgbinding_new
    FOR EACH STATEMENT EXECUTE FUNCTION pgbinding_capture_v2({pk});
CREATE TRIGGER pgbinding_delete_v2 AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS pgbinding_old
    FOR EACH STATEMENT EXECUTE FUNCTION pgbinding_capture_v2({pk});
CREATE TRIGGER pgbinding_truncate_v2 AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION pgbinding_capture_v2({pk});
