-- Undoes schema_v1.sql. Every table trigger using pgbinding_capture_v1 must be gone first.
DROP FUNCTION IF EXISTS pgbinding_capture_v1();
DROP TABLE IF EXISTS pgbinding_state;
DROP TABLE IF EXISTS pgbinding_listener;
DROP TABLE IF EXISTS pgbinding_change;
