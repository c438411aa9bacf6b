-- LISTEN/NOTIFY wake-ups: a task_runs row that becomes READY (inserted as READY, or updated
-- to READY from another status: a released chain/chord member, a retry, a reclaim, a replay)
-- sends NOTIFY on channel `reproq_ready` with its queue name as payload, so an idle `reproq
-- worker` claims it at once instead of at its next poll. Polling stays the fallback.
--
-- Additive only: the Go worker and reproq-django never LISTEN, so for them nothing changes.
-- The same rules as 0001 apply (idempotent, one statement at a time, append-only).

-- PostgreSQL delivers identical (channel, payload) notifications of one transaction once, so
-- a bulk insert of 10,000 rows into one queue wakes each listener once, not 10,000 times.
-- A payload must stay under 8000 bytes; a longer queue name (which no real queue has) sends
-- an empty payload, which listeners treat as "any queue", rather than failing the write.
CREATE OR REPLACE FUNCTION reproq_notify_ready() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.status = 'READY' THEN
        RETURN NULL;  -- already READY: a save that rewrote the same status
    END IF;
    IF octet_length(NEW.queue_name) < 8000 THEN
        PERFORM pg_notify('reproq_ready', NEW.queue_name);
    ELSE
        PERFORM pg_notify('reproq_ready', '');
    END IF;
    RETURN NULL;
END;
$$;

-- Row-level with a WHEN clause: PostgreSQL evaluates it in C before queueing the event, so the
-- writes that do not make a row READY (claims, heartbeats, completions) never call the
-- function. UPDATE OF status: only statements that assign the status column are looked at.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgname = 'trg_task_runs_notify_ready' AND tgrelid = 'task_runs'::regclass
    ) THEN
        CREATE TRIGGER trg_task_runs_notify_ready
            AFTER INSERT OR UPDATE OF status ON task_runs
            FOR EACH ROW WHEN (NEW.status = 'READY')
            EXECUTE FUNCTION reproq_notify_ready();
    END IF;
END
$$;
