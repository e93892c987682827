-- pgbinding change capture, schema version 4, applied on top of version 3.
-- Released SQL: never edit in place. A change is a new file (schema_v5.sql) and a new migration.
--
-- What version 4 changes: the capture functions plan their statements once per session.
--
-- PL/pgSQL keeps each statement's plan per session. With Postgres' default plan_cache_mode
-- (auto) it plans the statement anew for every call whenever the generic plan it built looked
-- dearer than the custom plans before it. That happens to the capture INSERT after anything
-- invalidates the session's plans (an ANALYZE of pgbinding_change, which autovacuum runs often
-- on a busy log, a TRUNCATE) if the session's next write is a big statement: the generic plan
-- is then built and costed for thousands of rows. From then on every single-row write in that
-- session planned a join: three to four times the trigger's CPU per statement (bench
-- trigger_cpu, bench/analysis.md; tests/integration/test_capture_plans.py shows the plan). The
-- generic plan is a merge or hash join, which suits one row and 100,000 alike.
-- (plan_cache_mode exists since Postgres 12; pgbinding needs 13.)

ALTER FUNCTION pgbinding_capture_v1() SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION pgbinding_capture_v2() SET plan_cache_mode = force_generic_plan;
