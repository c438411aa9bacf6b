-- The SQL function `manage.py reproq pg-cron` installs: pg_cron calls it once per schedule
-- (`SELECT reproq_enqueue_periodic_task('<name>')`) instead of running `reproq beat`.
-- It builds the periodic spec, hashes its jsonb text with the built-in sha256 (no pgcrypto
-- needed), inserts a READY run unless an identical one is active, and stamps last_run_at.
-- pg_cron owns the timing, so next_run_at is left alone.
CREATE OR REPLACE FUNCTION reproq_enqueue_periodic_task(task_name text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    pt periodic_tasks%ROWTYPE;
    task_args jsonb;
    task_kwargs jsonb;
    spec jsonb;
    digest text;
    new_id bigint;
BEGIN
    SELECT * INTO pt FROM periodic_tasks WHERE name = task_name AND enabled;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(pt.payload_json) = 'object'
       AND (pt.payload_json ? 'args' OR pt.payload_json ? 'kwargs') THEN
        task_args := COALESCE(pt.payload_json -> 'args', '[]'::jsonb);
        task_kwargs := COALESCE(pt.payload_json -> 'kwargs', '{}'::jsonb);
    ELSIF jsonb_typeof(pt.payload_json) = 'array' THEN
        task_args := pt.payload_json;
        task_kwargs := '{}'::jsonb;
    ELSE
        task_args := '[]'::jsonb;
        task_kwargs := COALESCE(pt.payload_json, '{}'::jsonb);
    END IF;
    spec := jsonb_build_object(
        'task_path', pt.task_path,
        'args', task_args,
        'kwargs', task_kwargs,
        'queue_name', COALESCE(NULLIF(pt.queue_name, ''), 'default'),
        'priority', pt.priority,
        'concurrency_key', pt.concurrency_key,
        'concurrency_limit', pt.concurrency_limit,
        'periodic_name', pt.name,
        'scheduled_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'exec', jsonb_build_object(
            'timeout_seconds', 900,
            'max_attempts', CASE WHEN pt.max_attempts > 0 THEN pt.max_attempts ELSE 3 END
        )
    );
    digest := encode(sha256(convert_to(spec::text, 'UTF8')), 'hex');
    INSERT INTO task_runs (backend_alias, queue_name, priority, run_after, spec_json, spec_hash,
                           task_path, status, max_attempts, timeout_seconds, concurrency_key,
                           concurrency_limit)
    SELECT 'default', spec ->> 'queue_name', pt.priority, now(), spec, digest, pt.task_path,
           'READY', (spec -> 'exec' ->> 'max_attempts')::int, 900, pt.concurrency_key,
           pt.concurrency_limit
    WHERE NOT EXISTS (
        SELECT 1 FROM task_runs WHERE spec_hash = digest AND status IN ('READY', 'RUNNING')
    )
    RETURNING result_id INTO new_id;
    UPDATE periodic_tasks SET last_run_at = now(), updated_at = now() WHERE name = task_name;
    RETURN new_id;
END;
$$;
