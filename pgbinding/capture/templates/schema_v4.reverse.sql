-- Undoes schema_v4.sql.
ALTER FUNCTION pgbinding_capture_v2() RESET plan_cache_mode;
ALTER FUNCTION pgbinding_capture_v1() RESET plan_cache_mode;
