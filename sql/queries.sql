-- Every runtime query reproq runs, one named block each (`-- name: <name>`), loaded by
-- reproq_cli.db.queries. Parameters use psycopg's %(name)s / %s placeholders.

-- name: ping
-- The cheapest round trip: health checks and connection tests.
SELECT 1 AS ok;

-- name: server_version
SELECT current_setting('server_version') AS version, current_database() AS database;

-- name: schema_columns
-- Live columns of the reproq tables in the current schema (for `reproq migrate --check`).
SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity
FROM information_schema.columns
WHERE table_schema = current_schema()
  AND table_name = ANY(%(tables)s)
ORDER BY table_name, ordinal_position;

-- name: schema_indexes
-- Every index in the current schema with its validity and uniqueness.
SELECT c.relname AS index_name, t.relname AS table_name, i.indisvalid AS is_valid,
       i.indisunique AS is_unique
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema();

-- name: schema_invalid_indexes
-- reproq's indexes left INVALID by an interrupted CREATE INDEX CONCURRENTLY.
SELECT c.relname AS index_name
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema()
  AND NOT i.indisvalid
  AND c.relname ~ '^idx_(task_runs|periodic_tasks|workflow_runs)_';

-- name: schema_objects
-- Whether the trigger function, the trigger and the task_path check constraint exist.
SELECT
    EXISTS (
        SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.proname = %(function)s AND n.nspname = current_schema()
    ) AS has_function,
    EXISTS (
        SELECT 1 FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE tg.tgname = %(trigger)s AND c.relname = 'task_runs' AND n.nspname = current_schema()
    ) AS has_trigger,
    EXISTS (
        SELECT 1 FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE co.conname = %(constraint)s AND c.relname = 'task_runs'
          AND n.nspname = current_schema()
    ) AS has_constraint;

-- name: schema_global_rate_limit
SELECT key FROM rate_limits WHERE key = 'global';

-- name: migration_try_lock
-- Session advisory lock that serializes `reproq migrate` runs (key: reproq_cli.db.schema).
SELECT pg_try_advisory_lock(%(key)s) AS locked;

-- name: migration_unlock
SELECT pg_advisory_unlock(%(key)s) AS unlocked;
