-- reproq baseline schema: the tables, columns, defaults, indexes, trigger and constraint of the
-- Go worker's migrations/000001_baseline.up.sql (go-worker.md §3.2), so the Go worker,
-- reproq-django and reproq can share one database.
--
-- Rules for every migration file in this folder:
--   * idempotent: it runs against an empty database, one created by the Go baseline or by
--     reproq-django's migrate-worker, and again on every `reproq migrate`;
--   * statements are run one at a time in autocommit mode (CREATE INDEX CONCURRENTLY cannot
--     run in a transaction), separated by a semicolon at the end of a line;
--   * append-only: a released file never changes; later changes go into a new numbered file.

-- pgcrypto is optional: the Go baseline creates it, nothing here depends on it, and some
-- servers (the embedded one) do not ship it.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pgcrypto;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'pgcrypto not created (%); reproq does not need it', SQLERRM;
        END;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS task_runs (
    result_id bigserial PRIMARY KEY,
    backend_alias text NOT NULL DEFAULT 'default',
    queue_name text NOT NULL DEFAULT 'default',
    priority integer NOT NULL DEFAULT 0,
    run_after timestamptz NULL,
    spec_json jsonb NOT NULL,
    spec_hash char(64) NOT NULL,
    task_path text NULL,
    status text NOT NULL DEFAULT 'READY',
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz NULL,
    last_attempted_at timestamptz NULL,
    finished_at timestamptz NULL,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 3,
    timeout_seconds integer NOT NULL DEFAULT 900,
    lock_key text NULL,
    concurrency_key text NULL,
    concurrency_limit integer NOT NULL DEFAULT 0,
    worker_ids jsonb NOT NULL DEFAULT '[]'::jsonb,
    return_json jsonb NULL,
    errors_json jsonb NOT NULL DEFAULT '[]'::jsonb,
    metadata_json jsonb NOT NULL DEFAULT '{}'::jsonb,
    last_error text NULL,
    failed_at timestamptz NULL,
    leased_until timestamptz NULL,
    leased_by text NULL,
    logs_uri text NULL,
    artifacts_uri text NULL,
    expires_at timestamptz NULL,
    parent_id bigint NULL REFERENCES task_runs (result_id) ON DELETE SET NULL,
    workflow_id uuid NULL,
    wait_count integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    cancel_requested boolean NOT NULL DEFAULT false
);

-- Databases created by older reproq-django releases (Django-managed tables) lack some
-- columns and every server-side default; bring them to the baseline without touching data.
DO $$
BEGIN
    IF (SELECT count(*) FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'task_runs'
          AND column_name IN (
              'backend_alias', 'queue_name', 'priority', 'run_after', 'task_path', 'status',
              'enqueued_at', 'started_at', 'last_attempted_at', 'finished_at', 'attempts',
              'max_attempts', 'timeout_seconds', 'lock_key', 'concurrency_key',
              'concurrency_limit', 'worker_ids', 'return_json', 'errors_json', 'metadata_json',
              'last_error', 'failed_at', 'leased_until', 'leased_by', 'logs_uri', 'artifacts_uri',
              'expires_at', 'parent_id', 'workflow_id', 'wait_count', 'created_at', 'updated_at',
              'cancel_requested'
          )) < 33 THEN
        ALTER TABLE task_runs
            ADD COLUMN IF NOT EXISTS backend_alias text NOT NULL DEFAULT 'default',
            ADD COLUMN IF NOT EXISTS queue_name text NOT NULL DEFAULT 'default',
            ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS run_after timestamptz NULL,
            ADD COLUMN IF NOT EXISTS task_path text NULL,
            ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'READY',
            ADD COLUMN IF NOT EXISTS enqueued_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN IF NOT EXISTS started_at timestamptz NULL,
            ADD COLUMN IF NOT EXISTS last_attempted_at timestamptz NULL,
            ADD COLUMN IF NOT EXISTS finished_at timestamptz NULL,
            ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS max_attempts integer NOT NULL DEFAULT 3,
            ADD COLUMN IF NOT EXISTS timeout_seconds integer NOT NULL DEFAULT 900,
            ADD COLUMN IF NOT EXISTS lock_key text NULL,
            ADD COLUMN IF NOT EXISTS concurrency_key text NULL,
            ADD COLUMN IF NOT EXISTS concurrency_limit integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS worker_ids jsonb NOT NULL DEFAULT '[]'::jsonb,
            ADD COLUMN IF NOT EXISTS return_json jsonb NULL,
            ADD COLUMN IF NOT EXISTS errors_json jsonb NOT NULL DEFAULT '[]'::jsonb,
            ADD COLUMN IF NOT EXISTS metadata_json jsonb NOT NULL DEFAULT '{}'::jsonb,
            ADD COLUMN IF NOT EXISTS last_error text NULL,
            ADD COLUMN IF NOT EXISTS failed_at timestamptz NULL,
            ADD COLUMN IF NOT EXISTS leased_until timestamptz NULL,
            ADD COLUMN IF NOT EXISTS leased_by text NULL,
            ADD COLUMN IF NOT EXISTS logs_uri text NULL,
            ADD COLUMN IF NOT EXISTS artifacts_uri text NULL,
            ADD COLUMN IF NOT EXISTS expires_at timestamptz NULL,
            ADD COLUMN IF NOT EXISTS parent_id bigint NULL REFERENCES task_runs (result_id) ON DELETE SET NULL,
            ADD COLUMN IF NOT EXISTS workflow_id uuid NULL,
            ADD COLUMN IF NOT EXISTS wait_count integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN IF NOT EXISTS cancel_requested boolean NOT NULL DEFAULT false;
    END IF;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'task_runs'
          AND column_default IS NULL
          AND column_name IN (
              'backend_alias', 'queue_name', 'priority', 'status', 'enqueued_at', 'attempts',
              'max_attempts', 'timeout_seconds', 'concurrency_limit', 'worker_ids', 'errors_json',
              'metadata_json', 'wait_count', 'created_at', 'updated_at', 'cancel_requested'
          )) THEN
        ALTER TABLE task_runs
            ALTER COLUMN backend_alias SET DEFAULT 'default',
            ALTER COLUMN queue_name SET DEFAULT 'default',
            ALTER COLUMN priority SET DEFAULT 0,
            ALTER COLUMN status SET DEFAULT 'READY',
            ALTER COLUMN enqueued_at SET DEFAULT now(),
            ALTER COLUMN attempts SET DEFAULT 0,
            ALTER COLUMN max_attempts SET DEFAULT 3,
            ALTER COLUMN timeout_seconds SET DEFAULT 900,
            ALTER COLUMN concurrency_limit SET DEFAULT 0,
            ALTER COLUMN worker_ids SET DEFAULT '[]'::jsonb,
            ALTER COLUMN errors_json SET DEFAULT '[]'::jsonb,
            ALTER COLUMN metadata_json SET DEFAULT '{}'::jsonb,
            ALTER COLUMN wait_count SET DEFAULT 0,
            ALTER COLUMN created_at SET DEFAULT now(),
            ALTER COLUMN updated_at SET DEFAULT now(),
            ALTER COLUMN cancel_requested SET DEFAULT false;
    END IF;
END
$$;

-- Rows written before task_path existed get it from their spec; rows whose spec has none are
-- left alone (the NOT VALID constraint below does not re-check them).
UPDATE task_runs
SET task_path = spec_json ->> 'task_path'
WHERE (task_path IS NULL OR task_path = '')
  AND COALESCE(spec_json ->> 'task_path', '') <> '';

CREATE OR REPLACE FUNCTION reproq_task_path_from_spec() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.task_path IS NULL OR NEW.task_path = '' THEN
        NEW.task_path := NEW.spec_json ->> 'task_path';
    END IF;
    RETURN NEW;
END;
$$;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgname = 'trg_task_runs_task_path' AND tgrelid = 'task_runs'::regclass
    ) THEN
        CREATE TRIGGER trg_task_runs_task_path
            BEFORE INSERT OR UPDATE OF spec_json, task_path ON task_runs
            FOR EACH ROW EXECUTE FUNCTION reproq_task_path_from_spec();
    END IF;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'task_runs_task_path_not_empty' AND conrelid = 'task_runs'::regclass
    ) THEN
        ALTER TABLE task_runs
            ADD CONSTRAINT task_runs_task_path_not_empty
            CHECK (task_path IS NOT NULL AND task_path <> '') NOT VALID;
    END IF;
END
$$;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_task_runs_claim
    ON task_runs (queue_name, status, priority DESC, enqueued_at ASC)
    WHERE status = 'READY';

-- Dedupe invariant: at most one active (READY or RUNNING) row per spec_hash.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_task_runs_spec_unique
    ON task_runs (spec_hash)
    WHERE status IN ('READY', 'RUNNING');

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_task_runs_lock_key
    ON task_runs (lock_key)
    WHERE status = 'RUNNING';

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_task_runs_concurrency_active
    ON task_runs (concurrency_key, leased_until)
    WHERE status = 'RUNNING' AND concurrency_key IS NOT NULL;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_task_runs_parent_id
    ON task_runs (parent_id)
    WHERE status = 'WAITING';

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_task_runs_workflow_id
    ON task_runs (workflow_id);

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_task_runs_failed_at
    ON task_runs (failed_at)
    WHERE status = 'FAILED';

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_task_runs_task_path
    ON task_runs (task_path);

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_task_runs_claim_due
    ON task_runs (queue_name, COALESCE(run_after, '-infinity'::timestamptz), priority DESC, enqueued_at ASC)
    WHERE status = 'READY';

CREATE TABLE IF NOT EXISTS periodic_tasks (
    name text PRIMARY KEY,
    cron_expr text NOT NULL,
    task_path text NOT NULL,
    payload_json jsonb NOT NULL DEFAULT '{}'::jsonb,
    queue_name text NOT NULL DEFAULT 'default',
    priority integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 3,
    concurrency_key text NULL,
    concurrency_limit integer NOT NULL DEFAULT 0,
    last_run_at timestamptz NULL,
    next_run_at timestamptz NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF (SELECT count(*) FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'periodic_tasks'
          AND column_name IN (
              'payload_json', 'queue_name', 'priority', 'max_attempts', 'concurrency_key',
              'concurrency_limit', 'last_run_at', 'enabled', 'created_at', 'updated_at'
          )) < 10 THEN
        ALTER TABLE periodic_tasks
            ADD COLUMN IF NOT EXISTS payload_json jsonb NOT NULL DEFAULT '{}'::jsonb,
            ADD COLUMN IF NOT EXISTS queue_name text NOT NULL DEFAULT 'default',
            ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS max_attempts integer NOT NULL DEFAULT 3,
            ADD COLUMN IF NOT EXISTS concurrency_key text NULL,
            ADD COLUMN IF NOT EXISTS concurrency_limit integer NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS last_run_at timestamptz NULL,
            ADD COLUMN IF NOT EXISTS enabled boolean NOT NULL DEFAULT true,
            ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
    END IF;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'periodic_tasks'
          AND column_default IS NULL
          AND column_name IN (
              'payload_json', 'queue_name', 'priority', 'max_attempts', 'concurrency_limit',
              'enabled', 'created_at', 'updated_at'
          )) THEN
        ALTER TABLE periodic_tasks
            ALTER COLUMN payload_json SET DEFAULT '{}'::jsonb,
            ALTER COLUMN queue_name SET DEFAULT 'default',
            ALTER COLUMN priority SET DEFAULT 0,
            ALTER COLUMN max_attempts SET DEFAULT 3,
            ALTER COLUMN concurrency_limit SET DEFAULT 0,
            ALTER COLUMN enabled SET DEFAULT true,
            ALTER COLUMN created_at SET DEFAULT now(),
            ALTER COLUMN updated_at SET DEFAULT now();
    END IF;
END
$$;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_periodic_tasks_next_run
    ON periodic_tasks (next_run_at)
    WHERE enabled;

CREATE TABLE IF NOT EXISTS reproq_queue_controls (
    queue_name text PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false,
    paused_at timestamptz NULL,
    reason text NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'reproq_queue_controls'
          AND column_default IS NULL
          AND column_name IN (
              'paused', 'created_at', 'updated_at'
          )) THEN
        ALTER TABLE reproq_queue_controls
            ALTER COLUMN paused SET DEFAULT false,
            ALTER COLUMN created_at SET DEFAULT now(),
            ALTER COLUMN updated_at SET DEFAULT now();
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS reproq_workers (
    worker_id text PRIMARY KEY,
    hostname text NULL,
    concurrency integer NULL,
    queues jsonb NOT NULL DEFAULT '[]'::jsonb,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    version text NULL
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'reproq_workers'
          AND column_default IS NULL
          AND column_name IN (
              'queues', 'started_at', 'last_seen_at'
          )) THEN
        ALTER TABLE reproq_workers
            ALTER COLUMN queues SET DEFAULT '[]'::jsonb,
            ALTER COLUMN started_at SET DEFAULT now(),
            ALTER COLUMN last_seen_at SET DEFAULT now();
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS rate_limits (
    key text PRIMARY KEY,
    tokens_per_second real NOT NULL,
    burst_size integer NOT NULL,
    current_tokens real NOT NULL,
    last_refilled_at timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'rate_limits'
          AND column_default IS NULL
          AND column_name IN (
              'last_refilled_at'
          )) THEN
        ALTER TABLE rate_limits
            ALTER COLUMN last_refilled_at SET DEFAULT now();
    END IF;
END
$$;

-- Global limiting starts disabled (rate 0). An operator's own global row is kept.
INSERT INTO rate_limits (key, tokens_per_second, burst_size, current_tokens, last_refilled_at)
VALUES ('global', 0, 1, 0, now())
ON CONFLICT (key) DO NOTHING;

CREATE TABLE IF NOT EXISTS workflow_runs (
    workflow_id uuid PRIMARY KEY,
    expected_count integer NOT NULL,
    success_count integer NOT NULL DEFAULT 0,
    failure_count integer NOT NULL DEFAULT 0,
    callback_result_id bigint NULL,
    status text NOT NULL DEFAULT 'RUNNING',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'workflow_runs'
          AND column_default IS NULL
          AND column_name IN (
              'success_count', 'failure_count', 'status', 'created_at', 'updated_at'
          )) THEN
        ALTER TABLE workflow_runs
            ALTER COLUMN success_count SET DEFAULT 0,
            ALTER COLUMN failure_count SET DEFAULT 0,
            ALTER COLUMN status SET DEFAULT 'RUNNING',
            ALTER COLUMN created_at SET DEFAULT now(),
            ALTER COLUMN updated_at SET DEFAULT now();
    END IF;
END
$$;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_workflow_runs_callback
    ON workflow_runs (callback_result_id);
