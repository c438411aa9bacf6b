-- Every runtime query reproq runs, one named block each (`-- name: <name>`), loaded by
-- reproq_cli.db.queries. Parameters use psycopg's %(name)s / %s placeholders.
--
-- A row looked up by result_id has its status tested in the "C" collation (`status =
-- 'RUNNING' COLLATE "C"`): the same test for these ASCII words, but no plan can then prove
-- that a partial index (READY-only, RUNNING-only, active-only) applies. Statistics taken
-- while the table held no such rows (they last until the next ANALYZE), or a RUNNING-only
-- index full of the dead entries fast turnover leaves (which no statistics count), made
-- plans read a whole partial index instead of probing the primary key.

-- name: ping
-- The cheapest round trip: health checks and connection tests.
SELECT 1 AS ok;

-- name: server_version
SELECT current_setting('server_version') AS version, current_database() AS database;

-- name: schema_columns
-- Live columns of the reproq tables in the current schema (for `reproq migrate --check`),
-- in information_schema's terms but from the catalog: information_schema.columns leaves out
-- the tables the role has no privilege on, which then read as missing.
SELECT c.relname AS table_name, a.attname AS column_name,
       format_type(a.atttypid, NULL) AS data_type,
       CASE WHEN a.attnotnull THEN 'NO' ELSE 'YES' END AS is_nullable,
       pg_get_expr(d.adbin, d.adrelid) AS column_default,
       CASE WHEN a.attidentity <> '' THEN 'YES' ELSE 'NO' END AS is_identity,
       -- Each privilege on its own: has_table_privilege with a list is true when any one is
       -- held, and a read-only role passed, then failed every poll.
       ARRAY(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p
             WHERE NOT has_table_privilege(c.oid, p)) AS lacks
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace = current_schema()::regnamespace
  AND c.relkind IN ('r', 'p')
  AND c.relname = ANY(%(tables)s)
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum;

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
-- Which of the expected functions and task_runs triggers exist, and whether the task_path
-- check constraint and parent_id's ON DELETE SET NULL foreign key do.
SELECT
    ARRAY(
        SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.proname = ANY(%(functions)s) AND n.nspname = current_schema()
    ) AS functions,
    ARRAY(
        SELECT tg.tgname::text FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE tg.tgname = ANY(%(triggers)s) AND c.relname = 'task_runs'
          AND n.nspname = current_schema()
    ) AS triggers,
    EXISTS (
        SELECT 1 FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE co.conname = %(constraint)s AND c.relname = 'task_runs'
          AND n.nspname = current_schema()
    ) AS has_constraint,
    -- parent_id's foreign key sets NULL on delete (confdeltype 'n'), as prune needs.
    EXISTS (
        SELECT 1 FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = ANY (co.conkey)
        WHERE co.contype = 'f' AND co.confdeltype = 'n' AND a.attname = 'parent_id'
          AND c.relname = 'task_runs' AND n.nspname = current_schema()
    ) AS parent_fk_sets_null;

-- name: schema_global_rate_limit
SELECT key FROM rate_limits WHERE key = 'global';

-- name: drop_notify_ready
-- Undo sql/migrations/0002_notify_ready.sql (Django's reverse migration); CASCADE takes the
-- trigger that calls the function with it.
DROP FUNCTION IF EXISTS reproq_notify_ready() CASCADE;

-- name: migration_try_lock
-- Session advisory lock that serializes `reproq migrate` runs (key: reproq_cli.db.schema).
SELECT pg_try_advisory_lock(%(key)s) AS locked;

-- name: migration_unlock
SELECT pg_advisory_unlock(%(key)s) AS unlocked;

-- ---------------------------------------------------------------------------------------------
-- Worker: claim, lease, completion (go-worker.md §4, §6)
-- ---------------------------------------------------------------------------------------------

-- name: fragment_claim_lease
-- The SET list that turns a claimed row RUNNING under this worker's lease, shared by
-- claim_task and claim_batch (their UPDATE task_runs t).
-- Params: lease_seconds, worker_id.
SET status = 'RUNNING',
    started_at = COALESCE(t.started_at, now()),
    last_attempted_at = now(),
    attempts = t.attempts + 1,
    leased_until = now() + make_interval(secs => %(lease_seconds)s),
    leased_by = %(worker_id)s,
    worker_ids = COALESCE(t.worker_ids, '[]'::jsonb) || jsonb_build_array(%(worker_id)s::text),
    updated_at = now();

-- name: fragment_claim_returning
-- What a claim returns: the columns of reproq_cli.models.ClaimedTask. The two timestamps are
-- only reported (metrics) and are kept within what Python can hold: a row enqueued at
-- -infinity, or a lease past the year 9999, could not be read back after the claim committed,
-- and every task claimed with it was left RUNNING.
RETURNING t.result_id, t.queue_name, t.priority, t.spec_json::text AS spec_text, t.spec_hash,
          LEAST(GREATEST(t.enqueued_at, '0001-01-03Z'), '9999-12-29Z') AS enqueued_at,
          t.attempts, t.max_attempts, t.timeout_seconds, t.lock_key,
          t.concurrency_key, t.concurrency_limit,
          LEAST(GREATEST(t.leased_until, '0001-01-03Z'), '9999-12-29Z') AS leased_until,
          t.task_path, t.workflow_id;

-- name: fragment_claim_heads
-- The claimable candidates of one queue, shared by claim_task and claim_batch (included as
-- the first items of their WITH RECURSIVE list; it ends with a comma).
-- Params: queue, heads (how many per priority level).
levels AS (
    -- The distinct priorities of the queue's READY rows, highest first, by walking
    -- idx_task_runs_claim: one index probe per level instead of sorting the whole backlog,
    -- so a claim costs the same with a million READY rows as with ten.
    (SELECT t.priority FROM task_runs t
     WHERE t.status = 'READY' AND t.queue_name = %(queue)s
     ORDER BY t.priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT t.priority FROM task_runs t
            WHERE t.status = 'READY' AND t.queue_name = %(queue)s AND t.priority < l.priority
            ORDER BY t.priority DESC LIMIT 1)
    FROM levels l
    WHERE l.priority IS NOT NULL
),
heads AS (
    -- Per priority level, the oldest claimable rows: due (run_after passed), queue not
    -- paused, lock_key not held by a RUNNING row, concurrency_key below the row's limit.
    -- Aging adds age/aging to the priority, which grows with age, so the best row of the
    -- whole queue is always among these heads. %(heads)s per level leaves room for rows
    -- that concurrent claimers hold (and for a batch).
    -- The RUNNING rows of a key are read in the order of that key's own index
    -- (idx_task_runs_lock_key, idx_task_runs_concurrency_active). Under statistics that count
    -- no active row, the planner otherwise read them through idx_task_runs_spec_unique, every
    -- active row of it, and once per head for a concurrency key: 6 s a claim with 50,000
    -- READY rows. With sorting disabled (worker_session), only the key's index gives the order.
    SELECT h.result_id
    FROM levels l
    CROSS JOIN LATERAL (
        SELECT t.result_id
        FROM task_runs t
        WHERE t.status = 'READY'
          AND t.queue_name = %(queue)s
          AND t.priority = l.priority
          AND COALESCE(t.run_after, '-infinity'::timestamptz) <= now()
          AND (
              t.lock_key IS NULL
              OR NOT t.lock_key = ANY (
                  SELECT r.lock_key FROM task_runs r
                  WHERE r.status = 'RUNNING' AND r.lock_key IS NOT NULL
                  ORDER BY r.lock_key
              )
          )
          AND (
              t.concurrency_key IS NULL OR t.concurrency_key = ''
              OR COALESCE(t.concurrency_limit, 0) <= 0
              OR (
                  SELECT count(*) FROM (
                      SELECT 1 FROM task_runs r
                      WHERE r.status = 'RUNNING' AND r.concurrency_key = t.concurrency_key
                      ORDER BY r.leased_until
                  ) running
              ) < t.concurrency_limit
          )
        ORDER BY t.enqueued_at
        LIMIT %(heads)s
    ) h
    WHERE l.priority IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM reproq_queue_controls qc WHERE qc.queue_name = %(queue)s AND qc.paused
      )
),

-- name: claim_task
-- Lease the next task of one queue in one statement. Runs inside a transaction: when the row
-- has a lock_key or concurrency_key the caller re-checks those rules under advisory locks
-- before committing (claim_key_lock, claim_key_recheck), closing the race two concurrent
-- claimers would otherwise have.
-- Params: queue, heads, aging (seconds per +1 priority; <= 0 disables aging), lease_seconds,
-- worker_id.
WITH RECURSIVE
-- include: fragment_claim_heads
candidate AS (
    -- Highest score first, then oldest; rows another claimer has locked are skipped, never
    -- waited for, and a row claimed since our snapshot fails the status re-check. The heads
    -- are looked up by primary key (an array, so the planner cannot pick a hash join over
    -- the whole table).
    SELECT t.result_id, t.task_path
    FROM task_runs t
    WHERE t.result_id = ANY (ARRAY(SELECT h.result_id FROM heads h))
      AND t.status = 'READY' COLLATE "C"
    ORDER BY
        t.priority + CASE
            WHEN %(aging)s::float8 > 0
            THEN GREATEST(extract(epoch FROM now() - t.enqueued_at)::numeric, 0)
                 / %(aging)s::float8::numeric
            ELSE 0
        END DESC,
        t.enqueued_at ASC
    LIMIT 1
    FOR UPDATE OF t SKIP LOCKED
),
limit_choice AS (
    -- The most specific limit row that EXISTS (task: > queue: > global) decides, and it
    -- limits only when active (rate > 0 and burst > 0): an inactive task: row shadows an
    -- active queue: or global row, as in the Go worker.
    SELECT rl.key
    FROM rate_limits rl, candidate c
    WHERE rl.key = COALESCE(
              (SELECT k.key FROM rate_limits k WHERE k.key = 'task:' || c.task_path),
              (SELECT k.key FROM rate_limits k WHERE k.key = 'queue:' || %(queue)s),
              (SELECT k.key FROM rate_limits k WHERE k.key = 'global')
          )
      AND rl.tokens_per_second > 0
      AND rl.burst_size > 0
),
updated_limit AS (
    -- Token bucket: refill by elapsed time (capped at burst), take one token if one is there.
    -- Concurrent claimers wait on this row and re-check, so tokens are never overdrawn.
    UPDATE rate_limits rl
    SET current_tokens = LEAST(
            rl.burst_size::float8,
            rl.current_tokens::float8
                + extract(epoch FROM now() - rl.last_refilled_at)::float8 * rl.tokens_per_second
        ) - 1,
        last_refilled_at = now()
    FROM limit_choice lc
    WHERE rl.key = lc.key
      AND LEAST(
            rl.burst_size::float8,
            rl.current_tokens::float8
                + extract(epoch FROM now() - rl.last_refilled_at)::float8 * rl.tokens_per_second
          ) >= 1
    RETURNING rl.key
),
target AS (
    -- The candidate runs if no limit applies or its token was taken.
    SELECT c.result_id FROM candidate c
    WHERE NOT EXISTS (SELECT 1 FROM limit_choice) OR EXISTS (SELECT 1 FROM updated_limit)
)
UPDATE task_runs t
-- include: fragment_claim_lease
FROM target
WHERE t.result_id = target.result_id
-- include: fragment_claim_returning
;

-- name: claim_batch
-- Lease up to %(n)s tasks of one queue in one autocommit statement, in claim order, but only
-- "plain" ones: no lock_key, no concurrency limit and no active rate limit. Claiming stops
-- at the first row that is not plain (claim_task takes that one, with its rechecks and its
-- token), so the batch never jumps ahead of it and never weakens its rules.
-- When nothing was claimed but a head is not plain, one row of NULLs with blocked = true says
-- so: only then does the worker try claim_task, so an empty queue costs one statement a poll.
-- Params: queue, heads (n + 64), aging, n, lease_seconds, worker_id.
WITH RECURSIVE
-- include: fragment_claim_heads
ranked AS (
    -- The heads in claim order, each marked plain or not. The rate limit that applies is the
    -- most specific existing row (task: > queue: > global), as in claim_task.
    SELECT t.result_id,
           row_number() OVER (
               ORDER BY
                   t.priority + CASE
                       WHEN %(aging)s::float8 > 0
                       THEN GREATEST(extract(epoch FROM now() - t.enqueued_at)::numeric, 0)
                            / %(aging)s::float8::numeric
                       ELSE 0
                   END DESC,
                   t.enqueued_at ASC
           ) AS position,
           t.lock_key IS NULL
           AND (t.concurrency_key IS NULL OR t.concurrency_key = ''
                OR COALESCE(t.concurrency_limit, 0) <= 0)
           -- With no active limit at all (the usual case) the three lookups per head are
           -- skipped: the EXISTS runs once per statement, and AND stops at false.
           AND NOT (
               EXISTS (SELECT 1 FROM rate_limits a
                       WHERE a.tokens_per_second > 0 AND a.burst_size > 0)
               AND COALESCE(
                   (SELECT k.tokens_per_second > 0 AND k.burst_size > 0
                    FROM rate_limits k WHERE k.key = 'task:' || t.task_path),
                   (SELECT k.tokens_per_second > 0 AND k.burst_size > 0
                    FROM rate_limits k WHERE k.key = 'queue:' || %(queue)s),
                   (SELECT k.tokens_per_second > 0 AND k.burst_size > 0
                    FROM rate_limits k WHERE k.key = 'global'),
                   false
               )
           ) AS plain
    FROM task_runs t
    WHERE t.result_id = ANY (ARRAY(SELECT h.result_id FROM heads h))
),
chosen AS (
    -- The plain rows before the first row that is not plain.
    SELECT r.result_id, r.position
    FROM ranked r
    WHERE r.position < COALESCE((SELECT min(x.position) FROM ranked x WHERE NOT x.plain), 2147483647)
),
locked AS (
    -- The first n of them that no other transaction holds: a row another claimer (or any
    -- writer) has locked is passed over for the next one, as a one-row claim's SKIP LOCKED
    -- does; taking n before locking left a worker with nothing while the head was locked.
    -- One claimed since our snapshot fails the status re-check.
    SELECT t.result_id
    FROM unnest(ARRAY(SELECT c.result_id FROM chosen c ORDER BY c.position))
         WITH ORDINALITY AS o (result_id, position)
    JOIN task_runs t ON t.result_id = o.result_id
    WHERE t.status = 'READY' COLLATE "C"
    ORDER BY o.position
    LIMIT %(n)s
    FOR UPDATE OF t SKIP LOCKED
),
claimed AS (
    UPDATE task_runs t
    -- include: fragment_claim_lease
    FROM locked
    WHERE t.result_id = locked.result_id
    -- include: fragment_claim_returning
)
SELECT c.*, false AS blocked FROM claimed c
UNION ALL
-- The outer join to nothing gives one row of NULLs typed like claimed's columns.
SELECT c.*, true FROM (VALUES (1)) AS one (x) LEFT JOIN claimed c ON false
WHERE NOT EXISTS (SELECT 1 FROM claimed)
  AND EXISTS (SELECT 1 FROM ranked r WHERE NOT r.plain);

-- name: worker_session
-- Session settings for the worker's connections, set before their first statement:
-- - plan_cache_mode: the worker runs a handful of statements thousands of times, and
--   planning them anew for each execution costs more than running them;
-- - jit: once the statistics count thousands of READY rows, the planner's estimate for a claim
--   passes jit_above_cost, and on a server built with LLVM every claim then compiled itself
--   first: ~90 ms alone and ~1 s in a busy worker, for a statement that runs in ~1 ms. A
--   plan keeps the JIT decision it was made with, so this has to precede the first claim;
-- - enable_sort: a claim walks the queue's priorities and heads in the order of
--   idx_task_runs_claim. Statistics taken while no row was READY (a long history, then a
--   burst of under a tenth of it, which autovacuum does not re-analyze for) made the plan
--   read every active row through idx_task_runs_spec_unique and sort them, three times a
--   claim: 184 ms a claim with 50,000 READY rows against 1.6 ms. With sorting disabled the
--   planner takes the ordered index; a sort nothing else can replace (the claim's ranking)
--   still runs. The lookups of a key's RUNNING rows rely on this too (fragment_claim_heads).
SELECT set_config('plan_cache_mode', 'force_generic_plan', false),
       set_config('jit', 'off', false),
       set_config('enable_sort', 'off', false);

-- name: claim_key_lock
-- Serializes claimers of one lock_key or concurrency_key until their transaction ends.
SELECT pg_advisory_xact_lock(hashtextextended(%(name)s, 0));

-- name: claim_key_recheck
-- Run after claim_key_lock, with a fresh snapshot that sees every claim committed before the
-- lock was granted: is the lock_key held by another RUNNING row, and how many RUNNING rows
-- (this one included) share the concurrency_key? The ORDER BYs pick the keys' own indexes, as
-- in fragment_claim_heads.
SELECT
    %(lock_key)s::text = ANY (
        SELECT r.lock_key FROM task_runs r
        WHERE r.status = 'RUNNING' AND r.lock_key IS NOT NULL AND r.result_id <> %(result_id)s
        ORDER BY r.lock_key
    ) AS lock_taken,
    (
        SELECT count(*) FROM (
            SELECT 1 FROM task_runs r
            WHERE r.status = 'RUNNING' AND r.concurrency_key = %(concurrency_key)s
            ORDER BY r.leased_until
        ) running
    ) AS running_with_key;

-- name: listen_ready
-- The worker's wake-up channel (sql/migrations/0002_notify_ready.sql); payload: queue name.
LISTEN reproq_ready;

-- name: heartbeat
-- Extend this worker's lease; fenced. Returns whether cancellation was requested.
UPDATE task_runs
SET leased_until = now() + make_interval(secs => %(lease_seconds)s), updated_at = now()
WHERE result_id = %(result_id)s AND leased_by = %(worker_id)s AND status = 'RUNNING' COLLATE "C"
RETURNING cancel_requested;

-- name: fragment_success_done
-- The success of each row of `input` (result_id, return_json, logs_uri) whose lease this
-- worker holds, and the chain children each success releases; shared by complete_success and
-- complete_success_batch (the items after their `input`; it ends with a comma). Fenced: only
-- the lease holder completes a RUNNING row, and every other change hangs off that row ("done").
-- A chain child waits for its one parent, so several parents in one batch never release the
-- same child twice. Params: worker_id.
done AS (
    UPDATE task_runs t
    SET status = 'SUCCESSFUL',
        finished_at = now(),
        return_json = i.return_json::jsonb,
        last_error = NULL,
        failed_at = NULL,
        leased_until = NULL,
        leased_by = NULL,
        logs_uri = COALESCE(i.logs_uri, t.logs_uri),
        updated_at = now()
    FROM input i
    WHERE t.result_id = i.result_id AND t.leased_by = %(worker_id)s
      AND t.status = 'RUNNING' COLLATE "C"
    RETURNING t.result_id, t.workflow_id
),
children AS (
    -- The parents as an array: the WAITING-only index on parent_id is then probed with it,
    -- where a join let the plan read that whole index when statistics counted few children.
    UPDATE task_runs c
    SET wait_count = c.wait_count - 1,
        status = CASE WHEN c.wait_count - 1 <= 0 THEN 'READY' ELSE 'WAITING' END,
        updated_at = now()
    WHERE c.parent_id = ANY (ARRAY(SELECT d.result_id FROM done d)) AND c.status = 'WAITING'
    RETURNING c.result_id
),

-- name: complete_success
-- Everything a success changes, in one statement (one round trip): the row and its chain
-- children (fragment_success_done), and its workflow:
--   callback_done: the chord callback's own success ends its workflow;
--   member: a member's success is counted (unlike the Go worker, also in workflows without a
--     callback: IS DISTINCT FROM) and, with the last member, the workflow waits for its
--     callback, which `callback` releases. The two workflow updates match disjoint rows.
-- Params: result_id, return_json, logs_uri, worker_id.
WITH input AS (
    SELECT %(result_id)s::bigint AS result_id, %(return_json)s::text AS return_json,
           %(logs_uri)s::text AS logs_uri
),
-- include: fragment_success_done
callback_done AS (
    UPDATE workflow_runs w
    SET status = 'SUCCESSFUL', updated_at = now()
    FROM done
    WHERE w.workflow_id = done.workflow_id AND w.callback_result_id = done.result_id
    RETURNING w.workflow_id
),
member AS (
    UPDATE workflow_runs w
    SET success_count = w.success_count + 1,
        status = CASE
            WHEN w.success_count + 1 >= w.expected_count AND w.failure_count = 0
            THEN 'WAITING_CALLBACK'
            ELSE w.status
        END,
        updated_at = now()
    FROM done
    WHERE w.workflow_id = done.workflow_id
      AND w.status <> 'FAILED'
      AND w.callback_result_id IS DISTINCT FROM done.result_id
    RETURNING w.callback_result_id, w.status, w.success_count, w.expected_count, w.failure_count
),
callback AS (
    UPDATE task_runs t
    SET status = 'READY', wait_count = 0, updated_at = now()
    FROM member m
    WHERE t.result_id = m.callback_result_id
      AND m.status = 'WAITING_CALLBACK'
      AND m.failure_count = 0
      AND m.success_count >= m.expected_count
      AND t.status = 'WAITING' COLLATE "C"
    RETURNING t.result_id
)
SELECT result_id, workflow_id FROM done;

-- name: complete_success_batch
-- The successes of several tasks that belong to no workflow, in one statement: the arrays
-- are parallel, one element per task. A statement per task cost PostgreSQL ~40 us more a
-- task (and the worker ~25 us) than one for the batch. Workflow members go through
-- complete_success: two members of one workflow in a single UPDATE ... FROM would count as one.
-- Returns the result_id of each task written; a missing one lost its lease.
-- Params: result_ids, return_jsons, logs_uris, worker_id.
WITH input AS (
    SELECT *
    FROM unnest(%(result_ids)s::bigint[], %(return_jsons)s::text[], %(logs_uris)s::text[])
        AS i (result_id, return_json, logs_uri)
),
-- include: fragment_success_done
written AS (SELECT result_id FROM done)
SELECT result_id FROM written;

-- name: complete_failure
-- Record a failed attempt; fenced. retry: back to READY after delay seconds; else FAILED.
-- refund gives the attempt back (a worker shutdown is not the task's fault).
UPDATE task_runs
SET status = CASE WHEN %(retry)s THEN 'READY' ELSE 'FAILED' END,
    finished_at = CASE WHEN %(retry)s THEN NULL ELSE now() END,
    run_after = CASE WHEN %(retry)s THEN now() + make_interval(secs => %(delay)s) ELSE NULL END,
    last_error = CASE WHEN %(retry)s THEN NULL ELSE %(summary)s END,
    failed_at = CASE WHEN %(retry)s THEN NULL ELSE now() END,
    errors_json = errors_json || jsonb_build_array(%(error)s::jsonb),
    attempts = attempts - %(refund)s,
    leased_until = NULL,
    leased_by = NULL,
    logs_uri = COALESCE(%(logs_uri)s, logs_uri),
    updated_at = now()
WHERE result_id = %(result_id)s AND leased_by = %(worker_id)s AND status = 'RUNNING' COLLATE "C"
RETURNING workflow_id;

-- name: workflow_member_failed
-- A terminally failed task fails its workflow: a member fails the workflow (failure_count
-- counts the first failure) and the WAITING/READY callback with kind workflow_failed; the
-- callback's own failure marks the workflow FAILED. Returns the callbacks failed here.
WITH member AS (
    UPDATE workflow_runs
    SET failure_count = failure_count + 1, status = 'FAILED', updated_at = now()
    WHERE workflow_id = %(workflow_id)s
      AND status <> 'FAILED'
      AND callback_result_id IS DISTINCT FROM %(result_id)s
    RETURNING callback_result_id
),
callback_failed AS (
    UPDATE workflow_runs
    SET status = 'FAILED', updated_at = now()
    WHERE workflow_id = %(workflow_id)s AND callback_result_id = %(result_id)s
    RETURNING workflow_id
)
UPDATE task_runs t
SET status = 'FAILED',
    finished_at = now(),
    errors_json = t.errors_json || jsonb_build_array(jsonb_build_object(
        'kind', 'workflow_failed',
        'message', 'Workflow failed due to task failure',
        'failed_result_id', %(result_id)s::bigint,
        'at',
-- include: fragment_error_at
    )),
    last_error = 'workflow_failed: Workflow failed due to task failure',
    failed_at = now(),
    run_after = NULL,
    wait_count = 0,
    updated_at = now()
FROM member m
WHERE t.result_id = m.callback_result_id AND t.status IN ('WAITING', 'READY')
RETURNING t.result_id;

-- name: fail_chain_descendants
-- WAITING chain descendants of terminally failed tasks can never run: fail them with kind
-- parent_failed instead of leaving them waiting forever.
WITH RECURSIVE descendants AS (
    SELECT t.result_id FROM task_runs t
    WHERE t.parent_id = ANY(%(roots)s::bigint[]) AND t.status = 'WAITING'
    UNION
    SELECT t.result_id FROM task_runs t
    JOIN descendants d ON t.parent_id = d.result_id
    WHERE t.status = 'WAITING'
)
UPDATE task_runs t
SET status = 'FAILED',
    finished_at = now(),
    failed_at = now(),
    run_after = NULL,
    wait_count = 0,
    last_error = 'parent_failed: Parent task failed',
    errors_json = t.errors_json || jsonb_build_array(jsonb_build_object(
        'kind', 'parent_failed',
        'message', 'Parent task failed',
        'failed_result_id', t.parent_id,
        'at',
-- include: fragment_error_at
    )),
    updated_at = now()
FROM descendants d
WHERE t.result_id = d.result_id
RETURNING t.result_id;

-- name: reclaim_expired
-- RUNNING rows whose lease ran out (worker crashed or lost the database): back to READY while
-- attempts remain, else FAILED. Returns the rows and whether they failed terminally.
WITH expired AS (
    -- In the order of idx_task_runs_lock_key, whose entries are the RUNNING rows (NULL keys
    -- included): under statistics that count no active row, the planner otherwise read every
    -- active row, the READY backlog too, through idx_task_runs_spec_unique (worker_session).
    SELECT result_id FROM task_runs
    WHERE status = 'RUNNING' AND leased_until < now()
    ORDER BY lock_key
    FOR UPDATE SKIP LOCKED
)
UPDATE task_runs t
SET status = CASE WHEN t.attempts < COALESCE(t.max_attempts, %(max_attempts_default)s)
                  THEN 'READY' ELSE 'FAILED' END,
    finished_at = CASE WHEN t.attempts < COALESCE(t.max_attempts, %(max_attempts_default)s)
                       THEN NULL ELSE now() END,
    last_error = CASE WHEN t.attempts < COALESCE(t.max_attempts, %(max_attempts_default)s)
                      THEN NULL ELSE 'lease_expiry: Worker heartbeat lost or process crashed' END,
    failed_at = CASE WHEN t.attempts < COALESCE(t.max_attempts, %(max_attempts_default)s)
                     THEN NULL ELSE now() END,
    errors_json = t.errors_json || jsonb_build_array(jsonb_build_object(
        'kind', 'lease_expiry',
        'message', 'Worker heartbeat lost or process crashed',
        'worker_id', t.leased_by,
        'attempt', t.attempts,
        'at',
-- include: fragment_error_at
    )),
    leased_until = NULL,
    leased_by = NULL,
    updated_at = now()
FROM expired e
WHERE t.result_id = e.result_id
RETURNING t.result_id, t.status, t.workflow_id;

-- name: register_worker
INSERT INTO reproq_workers (worker_id, hostname, concurrency, queues, version, started_at,
                            last_seen_at)
VALUES (%(worker_id)s, %(hostname)s, %(concurrency)s, %(queues)s::jsonb, %(version)s, now(),
        now())
ON CONFLICT (worker_id) DO UPDATE
SET hostname = EXCLUDED.hostname,
    concurrency = EXCLUDED.concurrency,
    queues = EXCLUDED.queues,
    version = EXCLUDED.version,
    last_seen_at = now();

-- name: worker_seen
UPDATE reproq_workers SET last_seen_at = now() WHERE worker_id = %(worker_id)s;

-- name: unregister_worker
DELETE FROM reproq_workers WHERE worker_id = %(worker_id)s;

-- ---------------------------------------------------------------------------------------------
-- Operator commands (go-worker.md §1.3-1.7, §10)
-- ---------------------------------------------------------------------------------------------

-- name: request_cancel
-- Only RUNNING rows: the owning worker sees the flag at its next heartbeat.
UPDATE task_runs SET cancel_requested = TRUE, updated_at = now()
WHERE result_id = %(result_id)s AND status = 'RUNNING' COLLATE "C"
RETURNING result_id;

-- name: task_logs_uri
SELECT result_id, logs_uri FROM task_runs WHERE result_id = %(result_id)s;

-- name: rate_limit_set
-- A reset fills the bucket (go-worker.md §10.4).
INSERT INTO rate_limits (key, tokens_per_second, burst_size, current_tokens, last_refilled_at)
VALUES (%(key)s, %(rate)s, %(burst)s, %(burst)s, now())
ON CONFLICT (key) DO UPDATE
SET tokens_per_second = EXCLUDED.tokens_per_second,
    burst_size = EXCLUDED.burst_size,
    current_tokens = EXCLUDED.current_tokens,
    last_refilled_at = EXCLUDED.last_refilled_at;

-- name: rate_limit_list
SELECT key, tokens_per_second, burst_size, current_tokens, last_refilled_at
FROM rate_limits ORDER BY key;

-- name: rate_limit_delete
DELETE FROM rate_limits WHERE key = %(key)s;

-- name: replay_by_id
-- A new READY row copying what defines the task; everything else takes its default
-- (go-worker.md §10.1). The partial unique index refuses it while the spec is active.
INSERT INTO task_runs (backend_alias, queue_name, priority, spec_json, spec_hash, max_attempts,
                       timeout_seconds, lock_key, concurrency_key, concurrency_limit, status)
SELECT backend_alias, queue_name, priority, spec_json, spec_hash, max_attempts, timeout_seconds,
       lock_key, concurrency_key, concurrency_limit, 'READY'
FROM task_runs WHERE result_id = %(result_id)s
RETURNING result_id, spec_hash;

-- name: latest_by_spec_hash
-- The source row for replay by hash: the newest row with that spec_hash, any status.
SELECT result_id FROM task_runs WHERE spec_hash = %(spec_hash)s
ORDER BY result_id DESC LIMIT 1;

-- name: active_by_spec_hash
SELECT result_id, status FROM task_runs
WHERE spec_hash = %(spec_hash)s AND status IN ('READY', 'RUNNING')
ORDER BY result_id LIMIT 1;

-- name: task_spec_hash
SELECT spec_hash FROM task_runs WHERE result_id = %(result_id)s;

-- name: prune_expired_count
SELECT count(*) AS n FROM (
    SELECT result_id FROM task_runs
    WHERE expires_at IS NOT NULL AND expires_at <= now() AND status <> 'RUNNING'
    ORDER BY expires_at
    LIMIT %(limit)s
) t;

-- name: prune_expired
-- Expired rows in any status but RUNNING; with a limit, the earliest expiries first.
DELETE FROM task_runs WHERE result_id IN (
    SELECT result_id FROM task_runs
    WHERE expires_at IS NOT NULL AND expires_at <= now() AND status <> 'RUNNING'
    ORDER BY expires_at
    LIMIT %(limit)s
);

-- name: triage_list
SELECT result_id, queue_name, COALESCE(task_path, spec_json ->> 'task_path') AS task_path,
       attempts, max_attempts, failed_at, last_error
FROM task_runs
WHERE status = 'FAILED' AND (%(queue)s::text IS NULL OR queue_name = %(queue)s::text)
ORDER BY failed_at DESC NULLS LAST, finished_at DESC NULLS LAST, result_id DESC
LIMIT %(limit)s;

-- name: triage_inspect
SELECT result_id, queue_name, COALESCE(task_path, spec_json ->> 'task_path') AS task_path,
       status, attempts, max_attempts, failed_at, last_error, spec_json::text AS spec_text,
       errors_json::text AS errors_text
FROM task_runs WHERE result_id = %(result_id)s AND status = 'FAILED';

-- name: triage_retry
-- FAILED rows back to READY now, attempts reset; history (errors_json, worker_ids, logs_uri)
-- and workflow linkage kept (go-worker.md §10.2). %(all)s retries every FAILED row.
-- Unlike the Go worker's, a row that waits on another task that has not succeeded (a chain
-- child, a chord's callback) is left FAILED: READY, it would run before what it waits for.
UPDATE task_runs t
SET status = 'READY', run_after = now(), attempts = 0, started_at = NULL,
    last_attempted_at = NULL, finished_at = NULL, return_json = NULL, last_error = NULL,
    failed_at = NULL, leased_until = NULL, leased_by = NULL, cancel_requested = FALSE,
    updated_at = now()
WHERE t.status = 'FAILED' AND (%(all)s OR t.result_id = %(result_id)s)
-- include: fragment_retry_unblocked
;

-- name: triage_retry_blocked
-- The FAILED rows triage_retry leaves alone because they wait on a task that has not succeeded.
SELECT t.result_id FROM task_runs t
WHERE t.status = 'FAILED' AND (%(all)s OR t.result_id = %(result_id)s)
  AND NOT (TRUE
-- include: fragment_retry_unblocked
  )
ORDER BY t.result_id;

-- name: fragment_retry_unblocked
-- Conditions (each starting with AND) that a FAILED row t waits on nothing unfinished.
  AND NOT EXISTS (
      SELECT 1 FROM task_runs p WHERE p.result_id = t.parent_id AND p.status <> 'SUCCESSFUL'
  )
  AND NOT EXISTS (
      SELECT 1 FROM workflow_runs w
      JOIN task_runs m ON m.workflow_id = w.workflow_id AND m.result_id <> t.result_id
      WHERE w.callback_result_id = t.result_id AND m.status <> 'SUCCESSFUL'
  )

-- name: queue_set_paused
INSERT INTO reproq_queue_controls (queue_name, paused, paused_at, reason, created_at, updated_at)
VALUES (%(queue)s, %(paused)s, CASE WHEN %(paused)s THEN now() END, %(reason)s, now(), now())
ON CONFLICT (queue_name) DO UPDATE
SET paused = EXCLUDED.paused, paused_at = EXCLUDED.paused_at, reason = EXCLUDED.reason,
    updated_at = now();

-- name: queue_list
-- Every queue that has tasks or a control row, with its counts.
SELECT q.queue_name,
       COALESCE(c.paused, FALSE) AS paused,
       c.reason,
       c.paused_at,
       (SELECT count(*) FROM task_runs t WHERE t.queue_name = q.queue_name AND t.status = 'READY')
           AS ready,
       (SELECT count(*) FROM task_runs t WHERE t.queue_name = q.queue_name AND t.status = 'RUNNING')
           AS running
FROM (SELECT DISTINCT queue_name FROM task_runs
      UNION SELECT queue_name FROM reproq_queue_controls) q
LEFT JOIN reproq_queue_controls c ON c.queue_name = q.queue_name
ORDER BY q.queue_name;

-- ---------------------------------------------------------------------------------------------
-- Beat (go-worker.md §7)
-- ---------------------------------------------------------------------------------------------

-- name: beat_try_leader
-- Session advisory lock: one beat per database runs passes; the others wait to take over.
SELECT pg_try_advisory_lock(%(key)s) AS leader;

-- name: beat_due
-- Due, enabled schedules, locked so a concurrent pass skips them.
SELECT name, cron_expr, task_path, payload_json::text AS payload_text, queue_name, priority,
       max_attempts, concurrency_key, concurrency_limit, next_run_at
FROM periodic_tasks
WHERE enabled = TRUE AND next_run_at <= now()
FOR UPDATE SKIP LOCKED;

-- name: beat_enqueue
-- Insert the run unless a row with the same spec_hash is READY or RUNNING.
INSERT INTO task_runs (backend_alias, queue_name, priority, run_after, spec_json, spec_hash,
                       task_path, status, enqueued_at, attempts, max_attempts, timeout_seconds,
                       concurrency_key, concurrency_limit, wait_count, worker_ids, errors_json,
                       cancel_requested, created_at, updated_at)
SELECT 'default', %(queue)s, %(priority)s, %(run_after)s, %(spec)s::jsonb, %(spec_hash)s,
       %(task_path)s, 'READY', now(), 0, %(max_attempts)s, 900, %(concurrency_key)s,
       %(concurrency_limit)s, 0, '[]'::jsonb, '[]'::jsonb, FALSE, now(), now()
WHERE NOT EXISTS (
    SELECT 1 FROM task_runs WHERE spec_hash = %(spec_hash)s AND status IN ('READY', 'RUNNING')
)
RETURNING result_id;

-- name: beat_advance
UPDATE periodic_tasks
SET last_run_at = next_run_at, next_run_at = %(next_run_at)s, updated_at = now()
WHERE name = %(name)s;

-- ---------------------------------------------------------------------------------------------
-- stats and top
-- ---------------------------------------------------------------------------------------------

-- name: stats_by_queue_status
SELECT queue_name, status, count(*) AS n FROM task_runs GROUP BY queue_name, status
ORDER BY queue_name, status;

-- name: stats_workers
-- alive = seen in the last two minutes
SELECT worker_id, hostname, concurrency, queues, version, started_at, last_seen_at,
       last_seen_at >= now() - interval '2 minutes' AS alive
FROM reproq_workers ORDER BY worker_id;

-- name: stats_periodic
SELECT name, cron_expr, task_path, queue_name, enabled, last_run_at, next_run_at
FROM periodic_tasks ORDER BY next_run_at, name;

-- name: stats_top_failing
SELECT COALESCE(task_path, spec_json ->> 'task_path') AS task_path, count(*) AS failed
FROM task_runs WHERE status = 'FAILED'
GROUP BY 1 ORDER BY failed DESC, task_path LIMIT %(limit)s;

-- name: stats_recent_rates
-- Finished in the last minute, per queue: throughput and failure rate for `reproq top`.
SELECT queue_name,
       count(*) FILTER (WHERE status = 'SUCCESSFUL') AS succeeded,
       count(*) FILTER (WHERE status = 'FAILED') AS failed
FROM task_runs
WHERE finished_at >= now() - interval '1 minute'
GROUP BY queue_name;


-- ---------------------------------------------------------------------------------------------
-- metrics collector (go-worker.md §8.2): one block per group so a failure is reported per group
-- ---------------------------------------------------------------------------------------------

-- name: local_statement_timeout
-- Bounds the statements of the current transaction only (the pool's connections are shared).
SELECT set_config('statement_timeout', %(timeout)s, true);

-- name: session_statement_timeout
-- Bounds every statement of a connection that only completions use (SuccessConnection).
SELECT set_config('statement_timeout', %(timeout)s, false);

-- name: metrics_queue
-- Backlog counts READY and both waiting states; WAITING_CALLBACK only appears in Go databases.
SELECT count(*) FILTER (WHERE status IN ('READY', 'WAITING', 'WAITING_CALLBACK')) AS depth,
       count(*) FILTER (WHERE status = 'RUNNING') AS running
FROM task_runs
WHERE status IN ('READY', 'WAITING', 'WAITING_CALLBACK', 'RUNNING');

-- name: metrics_workers
SELECT count(*) AS workers, COALESCE(sum(concurrency), 0)::bigint AS concurrency
FROM reproq_workers;

-- name: metrics_queue_controls
SELECT count(*) FILTER (WHERE paused) AS paused FROM reproq_queue_controls;

-- name: metrics_concurrency_blocked
-- READY rows that cannot be claimed now because their key is already at its limit.
-- The READY rows are counted per key and limit first, then each key's RUNNING rows are
-- counted (up to the limit) through the key's own index. Joining every READY row to the
-- RUNNING counts instead let statistics taken while no row was READY or RUNNING pick a nested
-- loop that aggregated the RUNNING rows again for each READY row: 13 s a scrape with 50,000
-- READY rows and 1,000 RUNNING, against 47 ms this way (33 ms either way once analyzed).
WITH ready AS (
    SELECT concurrency_key, concurrency_limit, count(*) AS n
    FROM task_runs
    WHERE status = 'READY' AND concurrency_limit > 0 AND concurrency_key IS NOT NULL
    GROUP BY concurrency_key, concurrency_limit
)
SELECT COALESCE(sum(g.n), 0)::bigint AS blocked
FROM ready g
WHERE (
    SELECT count(*) FROM (
        SELECT 1 FROM task_runs r
        WHERE r.status = 'RUNNING' AND r.concurrency_key = g.concurrency_key
        ORDER BY r.leased_until
        LIMIT g.concurrency_limit
    ) AS running
) >= g.concurrency_limit;

-- ---------------------------------------------------------------------------------------------
-- reproq_django: enqueue (ReproqBackend on PostgreSQL)
-- ---------------------------------------------------------------------------------------------

-- name: django_enqueue_one
-- ReproqBackend.enqueue: one task. A spec that already has an active (READY or RUNNING) row
-- is not inserted (dedupe, idx_task_runs_spec_unique) and no row comes back; the caller then
-- reads that row with django_active_task. ON CONFLICT instead of a unique violation: no error,
-- so no savepoint inside a caller's transaction. The columns not named take server defaults.
INSERT INTO task_runs (
    backend_alias, queue_name, priority, run_after, spec_json, spec_hash, task_path, status,
    enqueued_at, max_attempts, timeout_seconds, lock_key, concurrency_key, concurrency_limit,
    expires_at, created_at, updated_at
)
VALUES (
    %(backend_alias)s, %(queue_name)s, %(priority)s, %(run_after)s, %(spec_json)s::jsonb,
    %(spec_hash)s, %(task_path)s, %(status)s, %(enqueued_at)s, %(max_attempts)s,
    %(timeout_seconds)s, %(lock_key)s, %(concurrency_key)s, %(concurrency_limit)s,
    %(expires_at)s, %(created_at)s, %(updated_at)s
)
ON CONFLICT (spec_hash) WHERE status IN ('READY', 'RUNNING') DO NOTHING
RETURNING result_id;

-- name: django_active_task
-- The active row with this spec_hash, every column the model reads.
SELECT t.result_id, t.backend_alias, t.queue_name, t.priority, t.run_after, t.spec_json,
       t.spec_hash, t.task_path, t.status, t.enqueued_at, t.started_at, t.last_attempted_at,
       t.finished_at, t.attempts, t.max_attempts, t.timeout_seconds, t.lock_key,
       t.concurrency_key, t.concurrency_limit, t.worker_ids, t.return_json, t.errors_json,
       t.metadata_json, t.last_error, t.failed_at, t.leased_until, t.leased_by, t.logs_uri,
       t.artifacts_uri, t.expires_at, t.parent_id, t.workflow_id, t.wait_count, t.created_at,
       t.updated_at, t.cancel_requested
FROM task_runs t
WHERE t.spec_hash = %(spec_hash)s AND t.status IN ('READY', 'RUNNING')
ORDER BY t.result_id
LIMIT 1;

-- name: django_enqueue
-- ReproqBackend.bulk_enqueue: any number of tasks in one statement, one round trip.
-- %(rows)s is a JSON array, one object per task with the columns named in `input`; the other
-- columns take their server defaults. The caller sends each spec_hash once.
-- Returns one row per input row: new_id when it was inserted; otherwise the active row that
-- has its spec_hash (every column, as the model reads them); both NULL when a concurrent
-- enqueue committed that spec after this statement's snapshot (the caller runs it again).
WITH input AS (
    SELECT *
    FROM jsonb_to_recordset(%(rows)s::jsonb) AS r (
        backend_alias text, queue_name text, priority integer, run_after timestamptz,
        spec_json jsonb, spec_hash character(64), task_path text, status text,
        enqueued_at timestamptz, max_attempts integer, timeout_seconds integer,
        lock_key text, concurrency_key text, concurrency_limit integer,
        expires_at timestamptz, created_at timestamptz, updated_at timestamptz
    )
),
inserted AS (
    -- Dedupe invariant (idx_task_runs_spec_unique): at most one READY or RUNNING row per
    -- spec_hash. A spec that already has one is skipped here, without an error, so the
    -- statement needs no savepoint inside a caller's transaction.
    INSERT INTO task_runs (
        backend_alias, queue_name, priority, run_after, spec_json, spec_hash, task_path, status,
        enqueued_at, max_attempts, timeout_seconds, lock_key, concurrency_key,
        concurrency_limit, expires_at, created_at, updated_at
    )
    SELECT backend_alias, queue_name, priority, run_after, spec_json, spec_hash, task_path,
           status, enqueued_at, max_attempts, timeout_seconds, lock_key, concurrency_key,
           concurrency_limit, expires_at, created_at, updated_at
    FROM input
    ON CONFLICT (spec_hash) WHERE status IN ('READY', 'RUNNING') DO NOTHING
    RETURNING result_id, spec_hash
)
SELECT i.spec_hash AS input_hash, n.result_id AS new_id, a.*
FROM input i
LEFT JOIN inserted n ON n.spec_hash = i.spec_hash
LEFT JOIN LATERAL (
    -- The active row that made the insert skip (visible to this statement's snapshot).
    SELECT t.result_id, t.backend_alias, t.queue_name, t.priority, t.run_after, t.spec_json,
           t.spec_hash, t.task_path, t.status, t.enqueued_at, t.started_at,
           t.last_attempted_at, t.finished_at, t.attempts, t.max_attempts, t.timeout_seconds,
           t.lock_key, t.concurrency_key, t.concurrency_limit, t.worker_ids, t.return_json,
           t.errors_json, t.metadata_json, t.last_error, t.failed_at, t.leased_until,
           t.leased_by, t.logs_uri, t.artifacts_uri, t.expires_at, t.parent_id, t.workflow_id,
           t.wait_count, t.created_at, t.updated_at, t.cancel_requested
    FROM task_runs t
    WHERE n.result_id IS NULL
      AND t.spec_hash = i.spec_hash
      AND t.status IN ('READY', 'RUNNING')
    ORDER BY t.result_id
    LIMIT 1
) a ON true;

-- ===========================================================================================
-- reproq torture / reproq verify (docs/reliability.md)
-- ===========================================================================================

-- name: torture_create_executions
-- Torture's side table, not part of the product schema: one row per execution of a torture
-- task body, written by the task itself (reproq_cli.db.torture_executor) on the database's
-- clock, so overlaps are judged on one clock. finished_at stays NULL when the process died.
CREATE TABLE IF NOT EXISTS reproq_torture_executions (
    id bigserial PRIMARY KEY,
    result_id bigint NOT NULL,
    attempt integer NOT NULL,
    worker_id text NOT NULL DEFAULT '',
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz NULL,
    outcome text NULL
);

-- name: torture_index_executions
CREATE INDEX IF NOT EXISTS reproq_torture_executions_result_idx
    ON reproq_torture_executions (result_id);

-- name: torture_execution_start
INSERT INTO reproq_torture_executions (result_id, attempt, worker_id, pid)
VALUES (%(result_id)s, %(attempt)s, %(worker_id)s, %(pid)s)
RETURNING id;

-- name: torture_execution_end
UPDATE reproq_torture_executions
SET finished_at = clock_timestamp(), outcome = %(outcome)s
WHERE id = %(id)s;

-- name: torture_insert_task
-- One planned torture task. metadata_json.torture carries the run, the expected final status
-- and, for delayed tasks, not_before (the original run_after; retries move run_after).
INSERT INTO task_runs (
    queue_name, priority, run_after, spec_json, spec_hash, task_path, status, max_attempts,
    timeout_seconds, lock_key, concurrency_key, concurrency_limit, parent_id, wait_count,
    workflow_id, metadata_json
)
SELECT %(queue_name)s, %(priority)s, r.run_after, %(spec_json)s::jsonb, %(spec_hash)s,
       %(task_path)s, %(status)s, %(max_attempts)s, %(timeout_seconds)s, %(lock_key)s,
       %(concurrency_key)s, %(concurrency_limit)s, %(parent_id)s, %(wait_count)s,
       %(workflow_id)s::uuid,
       jsonb_build_object('torture', %(meta)s::jsonb || CASE
           WHEN r.run_after IS NULL THEN '{}'::jsonb
           ELSE jsonb_build_object('not_before', r.run_after) END)
FROM (SELECT CASE WHEN %(delay)s::float8 > 0
                  THEN now() + make_interval(secs => %(delay)s::float8) END AS run_after) r
RETURNING result_id;

-- name: torture_insert_workflow
INSERT INTO workflow_runs (workflow_id, expected_count, callback_result_id)
VALUES (%(workflow_id)s::uuid, %(expected_count)s, %(callback_result_id)s);

-- name: torture_progress
-- Status counts of one torture run's tasks.
SELECT status, count(*) AS n
FROM task_runs
WHERE metadata_json -> 'torture' ->> 'run' = %(run)s
GROUP BY status;

-- name: torture_pick_row
-- A random non-terminal row of the run for the row-lock chaos, RUNNING ones first, each row
-- at most once (a row locked again and again would starve its reclaim forever: that is a
-- different experiment).
SELECT result_id FROM task_runs
WHERE metadata_json -> 'torture' ->> 'run' = %(run)s AND status IN ('READY', 'RUNNING')
  AND NOT (result_id = ANY(%(exclude)s::bigint[]))
ORDER BY status DESC, random()
LIMIT 1;

-- name: torture_lock_row
-- Chaos: take a row lock another session holds until its transaction ends.
SELECT result_id FROM task_runs WHERE result_id = %(result_id)s FOR UPDATE;

-- name: torture_execution_count
SELECT count(*) AS n,
       count(*) FILTER (WHERE finished_at IS NULL) AS unfinished
FROM reproq_torture_executions;

-- name: verify_has_executions
SELECT to_regclass('reproq_torture_executions') IS NOT NULL AS present;

-- name: verify_running_without_lease
-- Invariant: a RUNNING row has a live lease (holder and an expiry in the future).
SELECT result_id, leased_by, leased_until
FROM task_runs
WHERE status = 'RUNNING'
  AND (leased_by IS NULL OR leased_until IS NULL OR leased_until < now())
ORDER BY result_id;

-- name: verify_pending_reasons
-- Every row with the reason it is where it is; reason NULL = stranded (no documented reason).
-- RUNNING rows are "running" here whatever their lease: verify_running_without_lease judges it.
WITH classified AS (
    SELECT t.result_id,
           CASE
               WHEN t.status IN ('SUCCESSFUL', 'FAILED', 'CANCELLED') THEN 'terminal'
               WHEN t.status = 'RUNNING' THEN 'running'
               WHEN t.status = 'READY' AND t.run_after > now() THEN 'scheduled'
               WHEN t.status = 'READY' AND EXISTS (
                   SELECT 1 FROM reproq_queue_controls q
                   WHERE q.queue_name = t.queue_name AND q.paused
               ) THEN 'queue_paused'
               WHEN t.status = 'READY' THEN 'claimable'
               WHEN t.status = 'WAITING' AND p.status IN ('READY', 'RUNNING', 'WAITING')
                   THEN 'waiting_for_parent'
               WHEN t.status = 'WAITING' AND t.parent_id IS NULL AND w.status = 'RUNNING'
                   THEN 'waiting_for_chord'
           END AS reason
    FROM task_runs t
    LEFT JOIN task_runs p ON p.result_id = t.parent_id
    LEFT JOIN workflow_runs w ON w.callback_result_id = t.result_id
)
SELECT reason, count(*) AS n, (array_agg(result_id ORDER BY result_id))[1:5] AS examples
FROM classified
GROUP BY reason
ORDER BY reason NULLS FIRST;

-- name: verify_attempts_over_max
-- Invariant: attempts <= max_attempts.
SELECT result_id, attempts, max_attempts
FROM task_runs
WHERE attempts > max_attempts
ORDER BY result_id;

-- name: verify_errors_vs_attempts
-- Invariant: every finished attempt that did not succeed left one error object. Not counted:
-- worker_shutdown (the attempt is given back) and workflow_failed/parent_failed (recorded on
-- rows that never ran). A SUCCESSFUL or RUNNING row has one attempt without an error.
-- `reproq triage retry` resets attempts but keeps the history, so in general only "fewer
-- errors than attempts" is a violation; torture rows (never triaged) must match exactly.
WITH counted AS (
    SELECT t.result_id, t.status, t.attempts,
           t.metadata_json ? 'torture' AS exact,
           (SELECT count(*)
            FROM jsonb_array_elements(
                CASE WHEN jsonb_typeof(t.errors_json) = 'array'
                     THEN t.errors_json ELSE '[]'::jsonb END) e
            WHERE COALESCE(e ->> 'kind', '')
                  NOT IN ('worker_shutdown', 'workflow_failed', 'parent_failed')
           ) AS attempt_errors,
           t.attempts - CASE WHEN t.status IN ('SUCCESSFUL', 'RUNNING') THEN 1 ELSE 0 END
               AS expected
    FROM task_runs t
)
SELECT result_id, status, attempts, attempt_errors, expected
FROM counted
WHERE attempt_errors < expected OR (exact AND attempt_errors <> expected)
ORDER BY result_id;

-- name: verify_chains
-- Invariant: a chain child runs only after its parent succeeded, is released when it did, and
-- fails without running when the parent failed for good.
SELECT c.result_id, c.status, c.attempts, p.result_id AS parent_id, p.status AS parent_status
FROM task_runs c
JOIN task_runs p ON p.result_id = c.parent_id
WHERE (p.status = 'FAILED' AND (c.status <> 'FAILED' OR c.attempts > 0))
   OR (c.status IN ('READY', 'RUNNING', 'SUCCESSFUL') AND p.status <> 'SUCCESSFUL')
   OR (p.status = 'SUCCESSFUL' AND c.status = 'WAITING')
ORDER BY c.result_id;

-- name: verify_chords
-- Invariant: a chord's counts match its members, its callback is released exactly when every
-- member succeeded, and fails without running when a member failed for good.
WITH members AS (
    SELECT w.workflow_id, w.status, w.expected_count, w.success_count, w.callback_result_id,
           count(t.result_id) FILTER (WHERE t.status = 'SUCCESSFUL') AS ok,
           count(t.result_id) FILTER (WHERE t.status = 'FAILED') AS failed
    FROM workflow_runs w
    LEFT JOIN task_runs t
        ON t.workflow_id = w.workflow_id AND t.result_id IS DISTINCT FROM w.callback_result_id
    GROUP BY w.workflow_id
),
judged AS (
    SELECT m.workflow_id, m.callback_result_id, cb.status AS callback_status,
           CASE
               -- A FAILED workflow stops counting, so only then may the count lag behind.
               WHEN m.success_count > m.ok OR (m.status <> 'FAILED' AND m.success_count <> m.ok)
                   THEN format('success_count %%s but %%s members succeeded', m.success_count, m.ok)
               WHEN m.failed > 0 AND m.status <> 'FAILED'
                   THEN format('a member failed but the workflow is %%s', m.status)
               WHEN m.failed > 0 AND (cb.status <> 'FAILED' OR cb.attempts > 0)
                   THEN format('a member failed but the callback is %%s after %%s attempts',
                               cb.status, cb.attempts)
               WHEN cb.status IN ('READY', 'RUNNING', 'SUCCESSFUL') AND m.ok < m.expected_count
                   THEN 'callback released before every member succeeded'
               WHEN cb.status = 'WAITING' AND m.failed = 0 AND m.ok >= m.expected_count
                   THEN 'every member succeeded but the callback still waits'
               WHEN cb.status = 'SUCCESSFUL' AND m.status <> 'SUCCESSFUL'
                   THEN format('callback succeeded but the workflow is %%s', m.status)
           END AS problem
    FROM members m
    LEFT JOIN task_runs cb ON cb.result_id = m.callback_result_id
)
SELECT workflow_id, callback_result_id, callback_status, problem
FROM judged
WHERE problem IS NOT NULL
ORDER BY workflow_id;

-- name: verify_executions_summary
SELECT count(*) AS executions,
       count(*) FILTER (WHERE finished_at IS NULL) AS unfinished,
       count(DISTINCT result_id) AS tasks
FROM reproq_torture_executions;

-- name: verify_task_overlap
-- Invariant: no task ran twice at the same time (executions of one result_id, by start time,
-- each begins after every earlier one ended). Executions that never finished are not judged.
WITH ordered AS (
    SELECT result_id, id, started_at,
           max(finished_at) OVER (
               PARTITION BY result_id ORDER BY started_at, id
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS earlier_end
    FROM reproq_torture_executions
    WHERE finished_at IS NOT NULL
)
SELECT result_id, started_at, earlier_end
FROM ordered
WHERE earlier_end > started_at
ORDER BY result_id;

-- name: verify_lock_key_overlap
-- Invariant: executions of tasks sharing a lock_key never overlap.
WITH ordered AS (
    SELECT t.lock_key, x.result_id, x.id, x.started_at,
           max(x.finished_at) OVER (
               PARTITION BY t.lock_key ORDER BY x.started_at, x.id
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS earlier_end
    FROM reproq_torture_executions x
    JOIN task_runs t ON t.result_id = x.result_id
    WHERE t.lock_key IS NOT NULL AND x.finished_at IS NOT NULL
)
SELECT lock_key, result_id, started_at, earlier_end
FROM ordered
WHERE earlier_end > started_at
ORDER BY lock_key, started_at;

-- name: verify_concurrency_peaks
-- Invariant: at no instant did more executions of one concurrency_key run than its limit.
-- A sweep over start (+1) and end (-1) events; an end sorts before a start at the same instant.
WITH runs AS (
    SELECT t.concurrency_key, t.concurrency_limit, x.started_at, x.finished_at
    FROM reproq_torture_executions x
    JOIN task_runs t ON t.result_id = x.result_id
    WHERE t.concurrency_key IS NOT NULL AND t.concurrency_limit > 0
      AND x.finished_at IS NOT NULL
),
events AS (
    SELECT concurrency_key, concurrency_limit, started_at AS at, 1 AS delta FROM runs
    UNION ALL
    SELECT concurrency_key, concurrency_limit, finished_at, -1 FROM runs
),
swept AS (
    SELECT concurrency_key, concurrency_limit,
           sum(delta) OVER (
               PARTITION BY concurrency_key ORDER BY at, delta ROWS UNBOUNDED PRECEDING
           ) AS running
    FROM events
)
SELECT concurrency_key, max(running) AS peak, min(concurrency_limit) AS "limit"
FROM swept
GROUP BY concurrency_key
ORDER BY concurrency_key;

-- name: verify_workflow_order
-- Invariant: a chain child started after its parent's executions ended, a chord callback
-- after every member's.
WITH first_start AS (
    SELECT result_id, min(started_at) AS started FROM reproq_torture_executions GROUP BY result_id
),
last_end AS (
    SELECT result_id, max(COALESCE(finished_at, started_at)) AS ended
    FROM reproq_torture_executions GROUP BY result_id
)
SELECT 'chain' AS kind, c.result_id, c.parent_id AS before_id, f.started, l.ended
FROM task_runs c
JOIN first_start f ON f.result_id = c.result_id
JOIN last_end l ON l.result_id = c.parent_id
WHERE f.started < l.ended
UNION ALL
SELECT 'chord', w.callback_result_id, m.result_id, f.started, l.ended
FROM workflow_runs w
JOIN first_start f ON f.result_id = w.callback_result_id
JOIN task_runs m ON m.workflow_id = w.workflow_id AND m.result_id <> w.callback_result_id
JOIN last_end l ON l.result_id = m.result_id
WHERE f.started < l.ended
ORDER BY 2;

-- name: verify_torture_expected
-- Torture rows: the final status the plan expects (metadata_json.torture.expect), and a
-- delayed task's first execution not before its original run_after.
SELECT t.result_id, t.status, t.metadata_json -> 'torture' ->> 'expect' AS expected,
       t.metadata_json -> 'torture' ->> 'kind' AS kind, x.first_start,
       t.metadata_json -> 'torture' ->> 'not_before' AS not_before
FROM task_runs t
LEFT JOIN LATERAL (
    SELECT min(started_at) AS first_start FROM reproq_torture_executions e
    WHERE e.result_id = t.result_id
) x ON true
WHERE t.metadata_json ? 'torture'
  AND (t.status <> t.metadata_json -> 'torture' ->> 'expect'
       OR x.first_start < (t.metadata_json -> 'torture' ->> 'not_before')::timestamptz)
ORDER BY t.result_id;

-- name: verify_torture_count
SELECT count(*) AS n FROM task_runs WHERE metadata_json ? 'torture';

-- name: fragment_error_at
-- An error object's time as the worker writes its own (core.policy.timestamp): UTC, RFC 3339,
-- the fraction's trailing zeros cut, "Z". now() itself would go into JSON as "+00:00".
regexp_replace(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '\.?0+$', '')
    || 'Z'
