-- task_runs.parent_id must clear itself when its parent row is deleted (go-worker.md §3.2,
-- §10.3: `prune` deletes parents whose children remain). Tables created by reproq-django's
-- own Django migration got Django's foreign key instead (DEFERRABLE, no ON DELETE action,
-- Django emulating SET NULL in Python), and 0001 keeps an existing column as it is: there a
-- prune of a parent failed on the constraint and deleted nothing.
-- The same rules as 0001 apply (idempotent, one statement at a time, append-only).

DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN
        SELECT con.conname
        FROM pg_constraint con
        JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey)
        WHERE con.conrelid = 'task_runs'::regclass AND con.contype = 'f'
          AND a.attname = 'parent_id' AND con.confdeltype <> 'n'
    LOOP
        EXECUTE format('ALTER TABLE task_runs DROP CONSTRAINT %I', fk.conname);
    END LOOP;
    IF NOT EXISTS (
        SELECT 1
        FROM pg_constraint con
        JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey)
        WHERE con.conrelid = 'task_runs'::regclass AND con.contype = 'f'
          AND a.attname = 'parent_id'
    ) THEN
        -- NOT VALID: the rows were checked by the key this replaces, and a full validation
        -- would hold the table's lock for a scan of it.
        ALTER TABLE task_runs ADD CONSTRAINT task_runs_parent_id_fkey
            FOREIGN KEY (parent_id) REFERENCES task_runs (result_id) ON DELETE SET NULL NOT VALID;
    END IF;
END
$$;
