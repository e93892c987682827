-- Undoes schema_v2.sql (the v2 triggers that use the function are removed first, by the
-- migrations that installed them).
DROP FUNCTION IF EXISTS pgbinding_capture_v2();
ALTER TABLE pgbinding_listener
    DROP COLUMN IF EXISTS leader,
    DROP COLUMN IF EXISTS leader_pid,
    DROP COLUMN IF EXISTS lease_until;
