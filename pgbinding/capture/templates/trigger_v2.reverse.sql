-- Undoes trigger_v2.sql for one table.
DROP TRIGGER IF EXISTS pgbinding_insert_v2 ON {table};
DROP TRIGGER IF EXISTS pgbinding_update_v2 ON {table};
DROP TRIGGER IF EXISTS pgbinding_delete_v2 ON {table};
DROP TRIGGER IF EXISTS pgbinding_truncate_v2 ON {table};
