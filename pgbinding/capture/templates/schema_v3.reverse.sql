-- Undoes schema_v3.sql.
DROP FUNCTION IF EXISTS pgbinding_wait_wal(pg_lsn, float8, float8);
DROP TABLE IF EXISTS pgbinding_slot;
