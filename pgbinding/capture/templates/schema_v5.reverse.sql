-- Undoes schema_v5.sql.
DROP TRIGGER pgbinding_log_truncated ON pgbinding_change;
DROP FUNCTION pgbinding_log_truncated();
