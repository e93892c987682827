-- Undoes trigger_v1.sql for one table.
DROP TRIGGER IF EXISTS pgbinding_insert_v1 ON {table};
DROP TRIGGER IF EXISTS pgbinding_update_v1 ON {table};
DROP TRIGGER IF EXISTS pgbinding_delete_v1 ON {table};
DROP TRIGGER IF EXISTS pgbinding_truncate_v1 ON {table};
