-- bgq: the server-side functions of the PostgreSQL schema (the tables are in schema.sql beside
-- this file). The binary applies this file, in one transaction with search_path set to bgq's
-- schema, when it creates the schema and whenever `meta.functions` is older than the binary's
-- FUNCTIONS_REVISION (src/store/postgres/mod.rs): functions are code, upgraded in place without
-- touching a row. A revision only adds functions or replaces them compatibly, so that an older
-- bgq still running on another host during a rolling deploy keeps working with a newer one.

-- Advisory lock spaces (the first key of pg_advisory_lock(int, int)), one per use and schema,
-- so that two bgq schemas in one database, or the application's own locks, never collide.
CREATE OR REPLACE FUNCTION run_lock_space() RETURNS integer
    LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT
    AS $$ SELECT hashtext(current_schema() || '.runs') $$;
CREATE OR REPLACE FUNCTION group_lock_space() RETURNS integer
    LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT
    AS $$ SELECT hashtext(current_schema() || '.serial_groups') $$;
CREATE OR REPLACE FUNCTION callback_lock_space() RETURNS integer
    LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT
    AS $$ SELECT hashtext(current_schema() || '.callbacks') $$;
-- The channel of LISTEN/NOTIFY: the payload is the queue with a job to look at.
CREATE OR REPLACE FUNCTION wake_channel() RETURNS text
    LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT
    AS $$ SELECT current_schema() || '_wake' $$;

-- Whether run p_run's session still holds its lock (a session that ended released it), and how
-- long, by the server's clock, its heartbeat has been silent (milliseconds).
CREATE OR REPLACE FUNCTION run_session(p_run bigint, OUT held boolean, OUT silent_ms bigint)
    LANGUAGE sql STABLE SET search_path FROM CURRENT
    AS $$
    SELECT EXISTS (
               SELECT 1 FROM pg_locks l
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND l.classid = run_lock_space()::oid
                 AND l.objid = (p_run % 2147483648)::integer::oid),
           coalesce((SELECT (extract(epoch FROM clock_timestamp() - r.heartbeat_at) * 1000)::bigint
                     FROM runs r WHERE r.id = p_run), 0)
    $$;

-- Revision 4 added batch_id to what claim() and settle_and_claim() return: a function's result
-- type cannot be replaced in place. (A binary of schema version 5 refuses a version-6 schema,
-- so no older caller is left.)
DROP FUNCTION IF EXISTS settle_and_claim(bigint[], text[], bigint[], boolean[], integer[], bytea[],
    bigint[], boolean[], bigint[], integer[], text[], text[], bigint[], text[], integer[],
    integer[], integer[], text, bigint, bigint, integer, text[], integer[], integer[], text[]);
DROP FUNCTION IF EXISTS claim(text, bigint, bigint, integer, text[], integer[], integer[], text[]);

-- Claims up to p_limit due jobs of queue p_queue for run p_run at time p_now, in one round
-- trip: highest priority first, then oldest; within what p_left allows per callback of
-- p_callbacks (-1: no limit of this run) and, for callbacks with a `concurrency` of their own
-- (p_fleet_limit, -1: none), within that limit across every run of every host. A serial group
-- is held as queue::eligibility::group_hold says (see claim_sql in src/store/sqlite/mod.rs);
-- across hosts, a transaction-scoped lock per group keeps two claimers from taking jobs of one
-- group at once, and jobs_serial_running refuses what slips past a stale snapshot.
CREATE OR REPLACE FUNCTION claim(p_queue text, p_run bigint, p_now bigint, p_limit integer,
                      p_callbacks text[], p_left integer[], p_fleet_limit integer[],
                      p_blocking text[])
    RETURNS TABLE (id bigint, queue text, callback text, payload bytea, params_json text,
                   attempts integer, serial_group text, identifier text, notified boolean,
                   batch_id bigint)
    LANGUAGE plpgsql SET search_path FROM CURRENT
    AS $$
-- Written for few statements per claimed job (each costs the server an executor start): the
-- loops over the arrays are plain plpgsql, and only a job of a serial group pays for the
-- subtransaction that catches jobs_serial_running's refusal.
DECLARE
    v_left     integer[] := p_left;
    v_allowed  text[];
    v_skipped  bigint[] := '{}';
    v_id       bigint;
    v_callback text;
    v_group    text;
    v_index    integer;
    v_running  integer;
    v_claimed  integer := 0;
    v_count    integer := coalesce(cardinality(p_callbacks), 0);
    v_paused   text[];
BEGIN
    -- Paused callbacks (`bgq pause`; '' for every callback) claim nothing: one look at the
    -- tiny pauses table, in this statement's snapshot.
    SELECT coalesce(array_agg(p.callback), '{}') INTO v_paused FROM pauses p
        WHERE p.queue = '' OR p.queue = p_queue;
    IF '' = ANY (v_paused) THEN
        RETURN;
    END IF;
    -- Callbacks limited across the fleet: one claimer at a time counts and claims them, and
    -- it counts after the lock, so it sees every claim committed before. Locked in name order,
    -- against deadlocks between claimers.
    IF -1 < ANY (p_fleet_limit) THEN
        FOR v_index IN SELECT i FROM generate_subscripts(p_callbacks, 1) i
                       WHERE p_fleet_limit[i] >= 0 ORDER BY p_callbacks[i] LOOP
            PERFORM pg_advisory_xact_lock(callback_lock_space(), hashtext(p_callbacks[v_index]));
            SELECT count(*) INTO v_running FROM jobs j
                WHERE j.state = 'PROCESSING' AND j.callback = p_callbacks[v_index];
            v_left[v_index] := CASE WHEN v_left[v_index] < 0
                                    THEN greatest(p_fleet_limit[v_index] - v_running, 0)
                                    ELSE least(v_left[v_index],
                                               greatest(p_fleet_limit[v_index] - v_running, 0)) END;
        END LOOP;
    END IF;
    v_allowed := '{}';
    FOR v_index IN 1..v_count LOOP
        IF v_left[v_index] <> 0 AND NOT p_callbacks[v_index] = ANY (v_paused) THEN
            v_allowed := v_allowed || p_callbacks[v_index];
        END IF;
    END LOOP;
    WHILE v_claimed < p_limit AND cardinality(v_allowed) > 0 LOOP
        SELECT j.id, j.callback, j.serial_group INTO v_id, v_callback, v_group FROM jobs j
            WHERE j.queue = p_queue AND j.due AND j.blocked_by = 0
              AND j.callback = ANY (v_allowed) AND j.id <> ALL (v_skipped)
              -- CASE, so that the group's lock is tried only for the job its group lets
              -- start (the planner may evaluate ANDed conditions in any order).
              AND (j.serial_group IS NULL OR CASE
                   WHEN NOT EXISTS (
                       SELECT 1 FROM jobs o
                       WHERE o.serial_group = j.serial_group
                         AND o.state IN ('READY', 'PROCESSING', 'TEMPORARILY_FAILED', 'WAITING')
                         AND (o.id < j.id OR o.state = 'PROCESSING'))
                    AND NOT EXISTS (
                       SELECT 1 FROM jobs f
                       WHERE f.serial_group = j.serial_group AND f.state = 'PERMANENTLY_FAILED'
                         AND f.callback = ANY (p_blocking) AND f.id < j.id)
                   THEN pg_try_advisory_xact_lock(group_lock_space(), hashtext(j.serial_group))
                   ELSE false END)
            ORDER BY j.priority DESC, j.id
            LIMIT 1
            FOR UPDATE SKIP LOCKED;
        EXIT WHEN v_id IS NULL;
        IF v_group IS NULL THEN
            RETURN QUERY
            UPDATE jobs j SET before_claim_state = j.state, before_claim_started_at = j.started_at,
                    before_claim_changed_at = j.state_changed_at,
                    state = 'PROCESSING', due = false, attempts = j.attempts + 1,
                    started_at = p_now, state_changed_at = p_now, claimed_run = p_run,
                    cancel_requested = false
                WHERE j.id = v_id
                RETURNING j.id, j.queue, j.callback, j.payload, j.params_json::text, j.attempts,
                          j.serial_group, j.identifier, j.notified, j.batch_id;
        ELSE
            BEGIN
                RETURN QUERY
                UPDATE jobs j SET before_claim_state = j.state, before_claim_started_at = j.started_at,
                    before_claim_changed_at = j.state_changed_at,
                    state = 'PROCESSING', due = false, attempts = j.attempts + 1,
                        started_at = p_now, state_changed_at = p_now, claimed_run = p_run,
                        cancel_requested = false
                    WHERE j.id = v_id
                    RETURNING j.id, j.queue, j.callback, j.payload, j.params_json::text,
                              j.attempts, j.serial_group, j.identifier, j.notified, j.batch_id;
            EXCEPTION WHEN unique_violation THEN
                -- Another host's claim of this group committed after our snapshot: leave it.
                v_skipped := v_skipped || v_id;
                v_id := NULL;
                CONTINUE;
            END;
        END IF;
        v_claimed := v_claimed + 1;
        v_index := array_position(p_callbacks, v_callback);
        IF v_left[v_index] > 0 THEN
            v_left[v_index] := v_left[v_index] - 1;
            IF v_left[v_index] = 0 THEN
                v_allowed := array_remove(v_allowed, v_callback);
            END IF;
        END IF;
        v_id := NULL;
    END LOOP;
END
$$;

-- What publish() and publish_raw() share.
CREATE OR REPLACE FUNCTION store_job(p_callback text, p_payload bytea, p_params json, p_queue text,
                          p_serial_group text, p_identifier text, p_run_at timestamptz,
                          p_priority integer, p_is_unique boolean)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT
    AS $$
DECLARE
    v_now    bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    v_run_at bigint := coalesce((extract(epoch FROM p_run_at) * 1000)::bigint, v_now);
    v_queue  text := coalesce(p_queue, 'general');
    v_id     bigint;
BEGIN
    IF p_callback IS NULL OR p_callback = '' THEN
        RAISE EXCEPTION 'bgq.publish: callback must not be empty';
    END IF;
    IF p_payload IS NULL AND p_params IS NULL THEN
        RAISE EXCEPTION 'bgq.publish: parameters must not be NULL (give ''{}''::json for none)';
    END IF;
    IF p_is_unique AND p_identifier IS NULL THEN
        RAISE EXCEPTION 'bgq.publish: is_unique needs an identifier';
    END IF;
    IF p_serial_group IS NOT NULL THEN
        -- Ids of one group are handed out in commit order: see jobs_serial.
        PERFORM pg_advisory_xact_lock(group_lock_space(), hashtext(p_serial_group));
    END IF;
    IF p_is_unique THEN
        SELECT j.id INTO v_id FROM jobs j
            WHERE j.identifier = p_identifier AND j.queue = v_queue AND j.state <> 'FINISHED'
            ORDER BY j.id DESC LIMIT 1;
        IF v_id IS NOT NULL THEN
            RETURN v_id;
        END IF;
    END IF;
    INSERT INTO jobs (queue, callback, payload, params_json, serial_group, identifier,
                      created_at, run_at, state_changed_at, priority, is_unique, due)
        VALUES (v_queue, p_callback, p_payload, p_params, p_serial_group, p_identifier,
                v_now, greatest(v_run_at, v_now), v_now, p_priority, p_is_unique,
                v_run_at <= v_now)
        ON CONFLICT DO NOTHING
        RETURNING jobs.id INTO v_id;
    IF v_id IS NULL THEN
        -- A unique job another transaction stored first.
        SELECT j.id INTO v_id FROM jobs j
            WHERE j.identifier = p_identifier AND j.queue = v_queue AND j.state <> 'FINISHED'
            ORDER BY j.id DESC LIMIT 1;
        RETURN v_id;
    END IF;
    IF v_run_at <= v_now THEN
        PERFORM pg_notify(wake_channel(), v_queue);
    END IF;
    RETURN v_id;
END
$$;

-- Stores a job inside the caller's transaction, as `bgq publish` does (the callback is not
-- checked: a job of a callback the config lacks waits, as on SQLite), and returns its id.
-- p_params is json, not jsonb, so that the callback gets the keys in the order written.
-- With p_is_unique and an identifier, an unfinished job of that identifier in the queue is
-- returned instead of storing a new one.
CREATE OR REPLACE FUNCTION publish(callback text, params json, queue text DEFAULT NULL,
                        serial_group text DEFAULT NULL, identifier text DEFAULT NULL,
                        run_at timestamptz DEFAULT NULL, priority integer DEFAULT 0,
                        is_unique boolean DEFAULT false)
    RETURNS bigint
    LANGUAGE sql VOLATILE SET search_path FROM CURRENT
    AS $$ SELECT store_job(callback, NULL::bytea, params, queue, serial_group, identifier, run_at,
                           priority, is_unique) $$;

-- publish() for exact bytes: the callback gets `payload` on stdin unchanged, as with
-- `bgq publish --raw`.
CREATE OR REPLACE FUNCTION publish_raw(callback text, payload bytea, queue text DEFAULT NULL,
                            serial_group text DEFAULT NULL, identifier text DEFAULT NULL,
                            run_at timestamptz DEFAULT NULL, priority integer DEFAULT 0,
                            is_unique boolean DEFAULT false)
    RETURNS bigint
    LANGUAGE sql VOLATILE SET search_path FROM CURRENT
    AS $$ SELECT store_job(callback,
                           -- MessagePack's bin 32: the form bgq stores raw bytes in.
                           '\xc6'::bytea || int4send(length(payload)) || payload,
                           NULL::json, queue, serial_group, identifier, run_at, priority,
                           is_unique) $$;

-- Adds a run of job p_job to its history of attempts (table attempts) and deletes the rows older
-- than its newest p_keep (none kept when p_keep is 0): one probe of attempts_job past them, so
-- the cost of a run does not grow with the history.
CREATE OR REPLACE FUNCTION record_attempt(p_job bigint, p_attempt integer, p_run bigint,
                                          p_started_at bigint, p_ended_at bigint,
                                          p_outcome text, p_exit_code integer, p_signal integer,
                                          p_output bytea, p_keep integer)
    RETURNS void
    LANGUAGE plpgsql SET search_path FROM CURRENT
    AS $$
BEGIN
    IF p_keep <= 0 THEN
        RETURN;
    END IF;
    INSERT INTO attempts (job_id, attempt, run_id, started_at, ended_at, outcome, exit_code,
                          signal, output)
        VALUES (p_job, p_attempt, p_run, coalesce(p_started_at, p_ended_at), p_ended_at,
                p_outcome, p_exit_code, p_signal, p_output);
    DELETE FROM attempts a
        WHERE a.job_id = p_job AND a.id <= (SELECT o.id FROM attempts o WHERE o.job_id = p_job
                                            ORDER BY o.id DESC LIMIT 1 OFFSET p_keep);
END
$$;

-- Stores how runs of p_run ended (one element of each array per run) and returns, per run, its
-- job's queue and the outcome: 'stored'; 'cancelled' (asked to stop by `bgq cancel --kill`, it
-- ends CANCELLED); 'stale' (the claim p_fence_runs/p_attempts no longer holds the job: a late
-- completion changes nothing). The rules are the SQLite backend's `complete`. Each run that
-- is stored or cancelled adds a row to its job's history (record_attempt(): p_run_outcomes,
-- p_exit_codes, p_signals, keeping the newest p_history rows of each job), and counts in
-- run_totals.
CREATE OR REPLACE FUNCTION settle(p_ids bigint[], p_states text[], p_run_ats bigint[],
                                  p_due boolean[], p_uncount integer[], p_outputs bytea[],
                                  p_ended_at bigint[], p_notified boolean[],
                                  p_fence_runs bigint[], p_attempts integer[],
                                  p_notice_kinds text[], p_notice_reasons text[],
                                  p_created_by bigint[], p_run_outcomes text[],
                                  p_exit_codes integer[], p_signals integer[],
                                  p_history integer[])
    RETURNS TABLE (id bigint, outcome text, queue text)
    LANGUAGE plpgsql SET search_path FROM CURRENT
    AS $$
DECLARE
    v_index    integer;
    v_queue    text;
    v_callback text;
    v_started  bigint;
    v_freed    text[];
    -- Runs stored, for run_totals: counted in one statement at the end.
    v_queues   text[] := '{}';
    v_names    text[] := '{}';
    v_outcomes text[] := '{}';
BEGIN
    -- The batches of these jobs, locked in id order before any member changes: each outcome
    -- updates its batch's row (batch_member_changed()), and two runs settling members of two
    -- batches in opposite orders would otherwise deadlock. One probe of the primary key per
    -- job; nothing is locked for jobs of no batch.
    PERFORM 1 FROM batches b
        WHERE b.id IN (SELECT j.batch_id FROM jobs j
                       WHERE j.id = ANY (p_ids) AND j.batch_id IS NOT NULL)
        ORDER BY b.id FOR UPDATE;
    FOR v_index IN 1..coalesce(cardinality(p_ids), 0) LOOP
        v_queue := NULL;
        UPDATE jobs j SET state = p_states[v_index], run_at = p_run_ats[v_index],
                due = p_due[v_index], attempts = j.attempts - p_uncount[v_index],
                output = p_outputs[v_index],
                finished_at = CASE WHEN p_states[v_index] = 'FINISHED'
                                   THEN p_ended_at[v_index] END,
                notified = j.notified OR p_notified[v_index],
                state_changed_at = p_ended_at[v_index], cancel_requested = false
            WHERE j.id = p_ids[v_index] AND j.state = 'PROCESSING'
              AND j.claimed_run = p_fence_runs[v_index] AND j.attempts = p_attempts[v_index]
              AND (NOT j.cancel_requested OR p_states[v_index] = 'FINISHED')
            RETURNING j.queue, j.callback, j.started_at INTO v_queue, v_callback, v_started;
        IF v_queue IS NULL THEN
            UPDATE jobs j SET state = 'CANCELLED', due = false, cancel_requested = false,
                    output = p_outputs[v_index], state_changed_at = p_ended_at[v_index]
                WHERE j.id = p_ids[v_index] AND j.state = 'PROCESSING' AND j.cancel_requested
                  AND j.claimed_run = p_fence_runs[v_index] AND j.attempts = p_attempts[v_index]
                RETURNING j.queue, j.callback, j.started_at INTO v_queue, v_callback, v_started;
            IF v_queue IS NOT NULL THEN
                v_queues := v_queues || v_queue;
                v_names := v_names || v_callback;
                v_outcomes := v_outcomes || 'cancelled'::text;
                PERFORM record_attempt(p_ids[v_index], p_attempts[v_index],
                                       p_fence_runs[v_index], v_started, p_ended_at[v_index],
                                       'cancelled', p_exit_codes[v_index], p_signals[v_index],
                                       p_outputs[v_index], p_history[v_index]);
            END IF;
            id := p_ids[v_index];
            outcome := CASE WHEN v_queue IS NULL THEN 'stale' ELSE 'cancelled' END;
            queue := v_queue;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_queues := v_queues || v_queue;
        v_names := v_names || v_callback;
        v_outcomes := v_outcomes || lower(p_states[v_index]);
        PERFORM record_attempt(p_ids[v_index], p_attempts[v_index], p_fence_runs[v_index],
                               v_started, p_ended_at[v_index], p_run_outcomes[v_index],
                               p_exit_codes[v_index], p_signals[v_index], p_outputs[v_index],
                               p_history[v_index]);
        -- Most jobs have no dependents: one probe of dependencies_after decides.
        IF p_states[v_index] = 'FINISHED'
           AND EXISTS (SELECT 1 FROM dependencies d WHERE d.after_id = p_ids[v_index]) THEN
            -- Two parents of one job finishing at once on two hosts: each recount must see the
            -- other's commit, or both count the other as unfinished and the job waits forever.
            -- Locking the waiting jobs first (in id order, against deadlocks) makes the second
            -- recount start after the first committed.
            PERFORM 1 FROM jobs j
                WHERE j.id IN (SELECT d.job_id FROM dependencies d
                               WHERE d.after_id = p_ids[v_index])
                  AND j.blocked_by > 0
                ORDER BY j.id FOR UPDATE;
            -- Recount the unfinished parents of the waiting jobs (a parent that is gone was
            -- cleared having FINISHED, unless cleared_unfinished has it); those that reach 0 are
            -- due from now, not from when they were published. Driven by the indexes of
            -- dependencies, whatever the statistics say.
            WITH counted AS (
                SELECT d.job_id,
                       (SELECT count(*) FROM dependencies d2 LEFT JOIN jobs p ON p.id = d2.after_id
                        WHERE d2.job_id = d.job_id
                          AND (p.state <> 'FINISHED'
                               OR (p.id IS NULL AND EXISTS (
                                   SELECT 1 FROM cleared_unfinished c
                                   WHERE c.id = d2.after_id))))::integer
                           AS unfinished
                FROM dependencies d WHERE d.after_id = p_ids[v_index]
            ), recounted AS (
                UPDATE jobs j SET blocked_by = c.unfinished,
                        run_at = CASE WHEN c.unfinished = 0 AND NOT j.due AND j.state = 'READY'
                                       AND j.run_at < p_ended_at[v_index]
                                      THEN p_ended_at[v_index] ELSE j.run_at END
                    FROM counted c
                    WHERE j.id = c.job_id AND j.blocked_by > 0
                    RETURNING j.queue, c.unfinished
            )
            SELECT array_agg(DISTINCT r.queue) INTO v_freed FROM recounted r
                WHERE r.unfinished = 0;
            PERFORM pg_notify(wake_channel(), q) FROM unnest(v_freed) q;
        END IF;
        IF p_notice_kinds[v_index] IS NOT NULL THEN
            INSERT INTO notices (queue, job_id, kind, reason, output, created_at, created_by)
                VALUES (v_queue, p_ids[v_index], p_notice_kinds[v_index],
                        p_notice_reasons[v_index], p_outputs[v_index], p_ended_at[v_index],
                        p_created_by[v_index]);
        END IF;
        id := p_ids[v_index];
        outcome := 'stored';
        queue := v_queue;
        RETURN NEXT;
    END LOOP;
    -- Monotonic counters for `stats --prometheus`, in the transaction of the outcomes they
    -- count: one statement for the whole turn.
    IF cardinality(v_queues) > 0 THEN
        INSERT INTO run_totals AS t (queue, callback, outcome, total)
            SELECT r.q, r.c, r.o, count(*)
            FROM unnest(v_queues, v_names, v_outcomes) AS r (q, c, o)
            GROUP BY r.q, r.c, r.o
            -- By the constraint's name: the OUT columns of this function shadow column names.
            ON CONFLICT ON CONSTRAINT run_totals_pkey
            DO UPDATE SET total = t.total + excluded.total;
    END IF;
END
$$;

-- settle() and then claim(), in one statement: a `process` run's whole turn after callbacks
-- ended is one round trip (and one transaction, committed as the statement ends). Rows of kind
-- 'settled' carry settle()'s (id, outcome, queue); rows of kind 'claimed' claim()'s columns.
CREATE OR REPLACE FUNCTION settle_and_claim(p_ids bigint[], p_states text[], p_run_ats bigint[],
                                            p_due boolean[], p_uncount integer[],
                                            p_outputs bytea[], p_ended_at bigint[],
                                            p_notified boolean[], p_fence_runs bigint[],
                                            p_attempts integer[], p_notice_kinds text[],
                                            p_notice_reasons text[], p_created_by bigint[],
                                            p_run_outcomes text[], p_exit_codes integer[],
                                            p_signals integer[], p_history integer[],
                                            p_queue text, p_run bigint, p_now bigint,
                                            p_limit integer, p_callbacks text[],
                                            p_left integer[], p_fleet_limit integer[],
                                            p_blocking text[])
    RETURNS TABLE (kind text, id bigint, queue text, outcome text, callback text,
                   payload bytea, params_json text, attempts integer, serial_group text,
                   identifier text, notified boolean, batch_id bigint)
    LANGUAGE plpgsql SET search_path FROM CURRENT
    AS $$
BEGIN
    IF cardinality(p_ids) > 0 THEN
        RETURN QUERY
        SELECT 'settled'::text, s.id, s.queue, s.outcome, NULL::text, NULL::bytea, NULL::text,
               NULL::integer, NULL::text, NULL::text, NULL::boolean, NULL::bigint
            FROM settle(p_ids, p_states, p_run_ats, p_due, p_uncount, p_outputs, p_ended_at,
                        p_notified, p_fence_runs, p_attempts, p_notice_kinds, p_notice_reasons,
                        p_created_by, p_run_outcomes, p_exit_codes, p_signals, p_history) s;
    END IF;
    IF p_limit > 0 THEN
        RETURN QUERY
        SELECT 'claimed'::text, c.id, c.queue, NULL::text, c.callback, c.payload, c.params_json,
               c.attempts, c.serial_group, c.identifier, c.notified, c.batch_id
            FROM claim(p_queue, p_run, p_now, p_limit, p_callbacks, p_left, p_fleet_limit,
                       p_blocking) c;
    END IF;
END
$$;

-- The summary a completion job of batch p_batch gets on stdin (SPEC section 11): its counts per
-- final state, the members that did not FINISH (read once, through jobs_batch), and p_params.
CREATE OR REPLACE FUNCTION batch_summary(p_batch batches, p_params json, p_failed boolean)
    RETURNS json
    LANGUAGE sql STABLE SET search_path FROM CURRENT
    AS $$
    SELECT json_build_object(
        'batch', p_batch.id, 'description', p_batch.description,
        'counts', json_build_object('FINISHED', p_batch.finished,
                                    'PERMANENTLY_FAILED', p_batch.failed,
                                    'CANCELLED', p_batch.cancelled),
        'unfinished_ids', CASE WHEN p_failed THEN
            (SELECT coalesce(json_agg(m.id ORDER BY m.id), '[]'::json) FROM jobs m
             WHERE m.batch_id = p_batch.id AND m.state <> 'FINISHED')
            ELSE '[]'::json END,
        'params', p_params)
    $$;

-- Keeps a batch's counters as its members come and move into or out of a final state (the
-- triggers below fire for nothing else): one update of the batch's row, in the transaction of
-- the change, whichever path made it (an outcome, a cancel, a retry, a recovery).
CREATE OR REPLACE FUNCTION batch_member_changed() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT
    AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE batches b SET unfinished = b.unfinished + 1 WHERE b.id = NEW.batch_id;
        RETURN NULL;
    END IF;
    UPDATE batches b SET
        unfinished = b.unfinished
            + (NEW.state NOT IN ('FINISHED', 'PERMANENTLY_FAILED', 'CANCELLED'))::integer
            - (OLD.state NOT IN ('FINISHED', 'PERMANENTLY_FAILED', 'CANCELLED'))::integer,
        finished = b.finished + (NEW.state = 'FINISHED')::integer
            - (OLD.state = 'FINISHED')::integer,
        failed = b.failed + (NEW.state = 'PERMANENTLY_FAILED')::integer
            - (OLD.state = 'PERMANENTLY_FAILED')::integer,
        cancelled = b.cancelled + (NEW.state = 'CANCELLED')::integer
            - (OLD.state = 'CANCELLED')::integer,
        changed_at = NEW.state_changed_at
        WHERE b.id = NEW.batch_id;
    RETURN NULL;
END
$$;

-- Completes a sealed batch with no unfinished member (its last member ended, or it was sealed
-- so): publishes its completion jobs in the same transaction, once, as completed_at records.
-- The batch's row is locked by the update that fired it, so concurrent outcomes of its members
-- on other hosts wait, and see completed_at when they go on.
CREATE OR REPLACE FUNCTION batch_complete() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT
    AS $$
DECLARE
    v_complete bigint;
    v_success  bigint;
    v_failed   boolean := NEW.failed > 0 OR NEW.cancelled > 0;
BEGIN
    IF NEW.on_complete IS NOT NULL THEN
        INSERT INTO jobs (queue, callback, params_json, created_at, run_at, state_changed_at)
            VALUES (NEW.queue, NEW.on_complete, batch_summary(NEW, NEW.on_complete_params, v_failed),
                    NEW.changed_at, NEW.changed_at, NEW.changed_at)
            RETURNING jobs.id INTO v_complete;
    END IF;
    IF NEW.on_success IS NOT NULL AND NOT v_failed THEN
        INSERT INTO jobs (queue, callback, params_json, created_at, run_at, state_changed_at)
            VALUES (NEW.queue, NEW.on_success, batch_summary(NEW, NEW.on_success_params, false),
                    NEW.changed_at, NEW.changed_at, NEW.changed_at)
            RETURNING jobs.id INTO v_success;
    END IF;
    UPDATE batches b SET completed_at = NEW.changed_at, complete_job = v_complete,
            success_job = v_success
        WHERE b.id = NEW.id;
    IF v_complete IS NOT NULL OR v_success IS NOT NULL THEN
        PERFORM pg_notify(wake_channel(), NEW.queue);
    END IF;
    RETURN NULL;
END
$$;

-- Dropped and created again, in this file's transaction: CREATE OR REPLACE TRIGGER needs
-- PostgreSQL 14, and bgq supports 13.
DROP TRIGGER IF EXISTS jobs_batch_insert ON jobs;
CREATE TRIGGER jobs_batch_insert AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.batch_id IS NOT NULL)
    EXECUTE FUNCTION batch_member_changed();
DROP TRIGGER IF EXISTS jobs_batch_state ON jobs;
CREATE TRIGGER jobs_batch_state AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.batch_id IS NOT NULL AND NEW.state <> OLD.state
                       AND (NEW.state IN ('FINISHED', 'PERMANENTLY_FAILED', 'CANCELLED')
                            OR OLD.state IN ('FINISHED', 'PERMANENTLY_FAILED', 'CANCELLED')))
    EXECUTE FUNCTION batch_member_changed();
DROP TRIGGER IF EXISTS batches_complete ON batches;
CREATE TRIGGER batches_complete AFTER UPDATE OF unfinished, sealed_at ON batches
    FOR EACH ROW WHEN (NEW.unfinished = 0 AND NEW.sealed_at IS NOT NULL
                       AND NEW.completed_at IS NULL)
    EXECUTE FUNCTION batch_complete();

-- The kept job counts (job_counts and job_count_deltas in schema.sql). An insert counts its jobs
-- once per statement (a `publish --jsonl` chunk adds one row per callback); a change of state,
-- queue or callback adds its row's move. Deletes (only `clear` deletes jobs) count themselves in
-- their statement: a trigger would copy every deleted row into a transition table.
CREATE OR REPLACE FUNCTION count_inserted_jobs() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT
    AS $$
BEGIN
    INSERT INTO job_count_deltas (queue, callback, state, jobs)
    SELECT queue, callback, state, count(*) FROM inserted GROUP BY queue, callback, state;
    RETURN NULL;
END
$$;
CREATE OR REPLACE FUNCTION count_changed_job() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT
    AS $$
BEGIN
    INSERT INTO job_count_deltas (queue, callback, state, jobs)
    VALUES (OLD.queue, OLD.callback, OLD.state, -1), (NEW.queue, NEW.callback, NEW.state, 1);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS jobs_count_insert ON jobs;
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION count_inserted_jobs();
DROP TRIGGER IF EXISTS jobs_count_update ON jobs;
CREATE TRIGGER jobs_count_update AFTER UPDATE OF state, queue, callback ON jobs FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.queue IS DISTINCT FROM NEW.queue
          OR OLD.callback IS DISTINCT FROM NEW.callback)
    EXECUTE FUNCTION count_changed_job();

-- Folds the rows of job_count_deltas committed so far into job_counts, unless another
-- transaction is folding (then it returns at once: the reader sums what is left); how many
-- rows it folded. Deltas committed during the fold stay for the next one.
CREATE OR REPLACE FUNCTION fold_job_counts() RETURNS bigint
    LANGUAGE plpgsql SET search_path FROM CURRENT
    AS $$
DECLARE
    v_folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext(current_schema() || '.job_counts')) THEN
        RETURN 0;
    END IF;
    WITH gone AS (DELETE FROM job_count_deltas RETURNING queue, callback, state, jobs),
         summed AS (SELECT queue, callback, state, sum(jobs) AS jobs, count(*) AS folded
                    FROM gone GROUP BY queue, callback, state),
         stored AS (INSERT INTO job_counts (queue, callback, state, jobs)
                    SELECT queue, callback, state, jobs FROM summed
                    ON CONFLICT (queue, callback, state)
                    DO UPDATE SET jobs = job_counts.jobs + excluded.jobs)
    SELECT coalesce(sum(folded), 0) INTO v_folded FROM summed;
    RETURN v_folded;
END
$$;

-- Per queue, the jobs due by p_now and waiting to run: how many, the oldest and since when (for
-- `stats` and `status`). For each queue with kept counts, those in the claim path (due, so
-- READY, TEMPORARILY_FAILED or WAITING) from its range of jobs_ready, those waiting for the next
-- run from its range of jobs_schedule: the cost follows the due jobs, not the failed, finished
-- or future ones. Without JIT: the kept counts are small tables whose rows the planner may not
-- know yet, and a plan estimated large enough to compile cost 250 ms of compiling to read
-- 5,000 index entries.
CREATE OR REPLACE FUNCTION due_jobs(p_now bigint)
    RETURNS TABLE (o_queue text, o_oldest bigint, o_since bigint, o_due bigint)
    LANGUAGE sql STABLE SET search_path FROM CURRENT SET jit = off
    AS $$
    SELECT DISTINCT ON (q.queue) q.queue, due.id, due.run_at,
           count(*) OVER (PARTITION BY q.queue)
    FROM (SELECT queue FROM job_counts UNION SELECT queue FROM job_count_deltas) q
    CROSS JOIN LATERAL (
          SELECT r.id, r.run_at FROM jobs r
          WHERE r.queue = q.queue AND r.due AND r.blocked_by = 0 AND r.run_at <= p_now
          UNION ALL
          SELECT s.id, s.run_at FROM jobs s
          WHERE s.queue = q.queue AND NOT s.due AND s.blocked_by = 0
            AND s.state IN ('READY', 'TEMPORARILY_FAILED', 'WAITING') AND s.run_at <= p_now) due
    ORDER BY q.queue, due.run_at, due.id
    $$;
