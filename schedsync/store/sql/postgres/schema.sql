-- The PostgreSQL state's schema as it is now, in one place, for reading: what replaying
-- the numbered migrations beside it (0001_init.sql ...) yields on an empty database.
-- tests/test_postgres_schema.py checks that the two agree. A state is created and
-- upgraded by the migrations only; a change is a new numbered file plus its edit here.
--
-- Everything lives in the schedsync schema, so the state can share a database with
-- synced data (public). Times are POSIX seconds (float8), from the server's clock
-- (schedsync.now()) unless the caller passes one. Every function runs with a fixed
-- search_path: its body names schedsync's objects in full.

CREATE SCHEMA IF NOT EXISTS schedsync;
CREATE TABLE schedsync.meta (version int NOT NULL);
INSERT INTO schedsync.meta VALUES (15);  -- the migrations applied

CREATE TABLE schedsync.runs (
    id bigserial PRIMARY KEY, job text NOT NULL, status text NOT NULL, reason text,
    trigger text NOT NULL, started_at float8 NOT NULL, finished_at float8,
    duration_ms bigint, attempts int NOT NULL DEFAULT 0, requests int NOT NULL DEFAULT 0,
    items_processed bigint NOT NULL DEFAULT 0, items_failed bigint NOT NULL DEFAULT 0,
    exit_code int, error text, retry_at float8, host text NOT NULL, pid int NOT NULL,
    token bigint, output text, slot float8, retry_of bigint, retry_number int NOT NULL DEFAULT 0,
    params text, parent bigint, items_inserted bigint NOT NULL DEFAULT 0,
    items_updated bigint NOT NULL DEFAULT 0, items_deleted bigint NOT NULL DEFAULT 0);
CREATE INDEX runs_by_job ON schedsync.runs (job, id);
CREATE INDEX runs_by_job_status ON schedsync.runs (job, status, started_at);
CREATE INDEX runs_running ON schedsync.runs (job) WHERE status = 'running';
CREATE TABLE schedsync.jobs (name text PRIMARY KEY, first_seen float8 NOT NULL,
                             paused boolean NOT NULL DEFAULT false, paused_at float8,
                             adhoc text);
CREATE TABLE schedsync.buckets (name text PRIMARY KEY, tokens float8 NOT NULL, updated float8 NOT NULL,
                                blocked_until float8);
CREATE TABLE schedsync.breakers (name text PRIMARY KEY, state text NOT NULL, failures int NOT NULL,
                                 opened_at float8, opens_until float8,
                                 leases float8[] NOT NULL DEFAULT '{}');
CREATE TABLE schedsync.breaker_events (id bigserial PRIMARY KEY, name text NOT NULL, at float8 NOT NULL,
                                       old text NOT NULL, new text NOT NULL, reason text);
CREATE INDEX breaker_events_by_name ON schedsync.breaker_events (name, id);
CREATE TABLE schedsync.notifications (id bigserial PRIMARY KEY, job text NOT NULL, event text NOT NULL,
                                      target text NOT NULL, at float8 NOT NULL, ok boolean NOT NULL,
                                      detail text, run_id bigint);
CREATE INDEX notifications_by_job ON schedsync.notifications (job, id);
-- The audit log: every write through serve's API or dashboard, bounded per job.
CREATE TABLE schedsync.audit (id bigserial PRIMARY KEY, at float8 NOT NULL, action text NOT NULL, job text,
                              who text NOT NULL, client text NOT NULL, breaker text, run_id bigint,
                              item_id bigint, params text, reason text);
CREATE INDEX audit_by_job ON schedsync.audit (job, id);
CREATE INDEX audit_by_breaker ON schedsync.audit (breaker, id) WHERE breaker IS NOT NULL;
-- Leases (job overlap and run liveness): expires_at on the server's clock, renewed by the holder.
-- stop: a newer run's request that the holder stop its job (overlap: replace).
CREATE TABLE schedsync.leases (name text PRIMARY KEY, token bigint NOT NULL, run_id bigint,
                               host text NOT NULL, pid int NOT NULL, expires_at float8 NOT NULL,
                               stop text);
CREATE INDEX leases_by_token ON schedsync.leases (token);
-- Each host's clock against the server's (host minus server, seconds), noted by admit.
CREATE TABLE schedsync.hosts (host text PRIMARY KEY, skew float8 NOT NULL, seen_at float8 NOT NULL);
CREATE TABLE schedsync.alert_marks (job text NOT NULL, event text NOT NULL, mark float8 NOT NULL,
                                    PRIMARY KEY (job, event));
-- The slot ledger: one row per scheduled slot or queued work item of a job; a cron slot
-- is claimed once, whichever host or tick gets there first.
CREATE TABLE schedsync.slots (id bigserial PRIMARY KEY, job text NOT NULL, slot float8, kind text NOT NULL,
                              state text NOT NULL, due_at float8 NOT NULL, run_id bigint, reason text,
                              retry_of bigint, retry_number int NOT NULL DEFAULT 0,
                              claimed_at float8, claimed_by text, params text, parent bigint);
-- An `after` item (a chain's) names the upstream run whose end queued it: parent.
CREATE UNIQUE INDEX slots_once ON schedsync.slots (job, coalesce(slot, -1), kind, coalesce(retry_of, 0),
                                                   retry_number, coalesce(parent, 0)) WHERE kind <> 'api';
-- One waiting (queued or claimed) api item per job and params: a second trigger finds it.
CREATE UNIQUE INDEX slots_api_waiting ON schedsync.slots (job, coalesce(params, ''))
    WHERE kind = 'api' AND state IN ('queued', 'claimed');
CREATE INDEX slots_by_job ON schedsync.slots (job, slot);
CREATE INDEX slots_open ON schedsync.slots (due_at) WHERE state IN ('queued', 'claimed');
CREATE TABLE schedsync.slot_marks (job text PRIMARY KEY, key text NOT NULL, until float8, next_at float8);
CREATE TABLE schedsync.slot_counts (job text NOT NULL, state text NOT NULL, n bigint NOT NULL,
                                    PRIMARY KEY (job, state));
CREATE TABLE schedsync.ticks (host text PRIMARY KEY, at float8 NOT NULL, error text);

-- Counters that only grow, bumped in the same transaction as the run's row.
CREATE TABLE schedsync.run_counts (job text NOT NULL, status text NOT NULL, runs bigint NOT NULL,
                                   requests bigint NOT NULL, PRIMARY KEY (job, status));
-- Durations (a histogram's sum, count and buckets), items and retries of finished runs
-- (not skipped, not crashed), bumped by finish in the same transaction.
CREATE TABLE schedsync.run_totals (job text PRIMARY KEY, runs bigint NOT NULL, seconds float8 NOT NULL,
                                   processed bigint NOT NULL, failed bigint NOT NULL,
                                   deleted bigint NOT NULL, retries bigint NOT NULL);
CREATE TABLE schedsync.run_buckets (job text NOT NULL, le float8 NOT NULL, runs bigint NOT NULL,
                                    PRIMARY KEY (job, le));
-- Where an http job's interrupted sync resumes (a page's next, no secret), saved after
-- every stored page; and each job's freshness watermark (max over runs, POSIX seconds).
CREATE TABLE schedsync.resume_points (job text PRIMARY KEY, point text, saved_at float8 NOT NULL,
                                      run_id bigint, began_at float8, done_run bigint,
                                      done_began float8);
CREATE TABLE schedsync.watermarks (job text PRIMARY KEY, value float8 NOT NULL, noted_at float8 NOT NULL);

CREATE FUNCTION schedsync.now() RETURNS float8 LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$ SELECT extract(epoch FROM clock_timestamp())::float8 $$;

-- Token buckets (core.budgets), all or none, rows locked in name order (no deadlock
-- between spenders). A stored time later than now is clamped (never trusted); a
-- Retry-After pause (blocked_until) keeps the tokens and is dropped once passed or
-- when further ahead than a day (or one period, if longer): a clock that stepped back.
-- NULL: granted; else when every bucket will have enough ('Infinity': never).
CREATE FUNCTION schedsync.spend(p_names text[], p_caps float8[], p_pers float8[], p_cost float8,
                                p_now float8) RETURNS float8 LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t float8;
    b record; i int; cap float8; per float8; tk float8; blocked float8; tb float8;
    ready float8; at float8; denied boolean := false;
    names text[] := '{}'; new_tokens float8[] := '{}'; new_blocked float8[] := '{}';
    clamped float8[] := '{}'; was float8[] := '{}'; times float8[] := '{}';
BEGIN
    IF p_cost <= 0 OR coalesce(cardinality(p_names), 0) = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO schedsync.buckets (name, tokens, updated)
        SELECT n, c, coalesce(p_now, schedsync.now()) FROM unnest(p_names, p_caps) AS u(n, c) ORDER BY n
        ON CONFLICT (name) DO NOTHING;
    PERFORM 1 FROM schedsync.buckets WHERE name = ANY (p_names) ORDER BY name FOR UPDATE;
    -- The server's clock read once the rows are ours: never older than the last spender's.
    t := coalesce(p_now, schedsync.now());
    FOR b IN SELECT name, buckets.tokens, updated, blocked_until FROM schedsync.buckets
             WHERE name = ANY (p_names) ORDER BY name LOOP
        i := array_position(p_names, b.name);
        cap := p_caps[i]; per := p_pers[i];
        -- On the server's clock a stored time under a second ahead is an earlier spender's
        -- (a clock read a hair before ours): kept, so updated never moves backwards.
        -- Further ahead it is a clock that stepped back: clamped, never trusted.
        tb := CASE WHEN p_now IS NULL AND b.updated > t AND b.updated < t + 1.0 THEN b.updated ELSE t END;
        tk := least(cap, b.tokens + (tb - least(b.updated, tb)) * cap / per);
        blocked := b.blocked_until;
        IF blocked IS NOT NULL AND (blocked <= tb OR blocked > tb + greatest(per, 86400.0)) THEN
            blocked := NULL;
        END IF;
        clamped := clamped || tk; was := was || b.updated; times := times || tb;
        IF p_cost > cap THEN
            denied := true; ready := 'Infinity';
        ELSIF blocked IS NULL AND tk + 1e-9 >= p_cost THEN
            tk := greatest(0.0, tk - p_cost);
        ELSE
            denied := true;
            at := tb + greatest(0.0, p_cost - tk) * per / cap;
            IF blocked IS NOT NULL THEN at := greatest(at, blocked); END IF;
            ready := greatest(coalesce(ready, tb), at);
        END IF;
        names := names || b.name; new_tokens := new_tokens || tk; new_blocked := new_blocked || blocked;
    END LOOP;
    IF denied THEN
        -- a time from a clock that ran ahead is kept clamped, even on a denial
        UPDATE schedsync.buckets SET tokens = u.tk0, updated = u.tb, blocked_until = u.bl
            FROM unnest(names, clamped, new_blocked, was, times) AS u(n, tk0, bl, w, tb)
            WHERE buckets.name = u.n AND u.w > u.tb;
        RETURN ready;
    END IF;
    UPDATE schedsync.buckets SET tokens = u.tk, updated = u.tb, blocked_until = u.bl
        FROM unnest(names, new_tokens, new_blocked, times) AS u(n, tk, bl, tb) WHERE buckets.name = u.n;
    RETURN NULL;
END $$;

-- An upstream's Retry-After (core.budgets.block_until): pause, keeping the tokens;
-- a longer pause already there stands; one beyond a day (or a longer period) is cut to it.
CREATE FUNCTION schedsync.block(p_names text[], p_caps float8[], p_pers float8[], p_until float8,
                                p_now float8) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t float8;
    b record; i int; cap float8; per float8; tk float8; blocked float8; until float8; tb float8;
BEGIN
    INSERT INTO schedsync.buckets (name, tokens, updated)
        SELECT n, coalesce(c, 0), coalesce(p_now, schedsync.now()) FROM unnest(p_names, p_caps) AS u(n, c)
        ORDER BY n ON CONFLICT (name) DO NOTHING;
    PERFORM 1 FROM schedsync.buckets WHERE name = ANY (p_names) ORDER BY name FOR UPDATE;
    t := coalesce(p_now, schedsync.now());  -- once the rows are ours, as in spend
    FOR b IN SELECT name, buckets.tokens, updated, blocked_until FROM schedsync.buckets
             WHERE name = ANY (p_names) ORDER BY name LOOP
        i := array_position(p_names, b.name);
        cap := coalesce(p_caps[i], 'Infinity'); per := coalesce(p_pers[i], 'Infinity');
        tb := CASE WHEN p_now IS NULL AND b.updated > t AND b.updated < t + 1.0 THEN b.updated ELSE t END;
        tk := CASE WHEN p_caps[i] IS NULL THEN b.tokens
                       ELSE least(cap, b.tokens + (tb - least(b.updated, tb)) * cap / per) END;
        blocked := b.blocked_until;
        IF blocked IS NOT NULL AND (blocked <= tb OR blocked > tb + greatest(per, 86400.0)) THEN
            blocked := NULL;
        END IF;
        until := least(p_until, tb + greatest(per, 86400.0));
        IF blocked IS NOT NULL THEN until := greatest(until, blocked); END IF;
        UPDATE schedsync.buckets SET tokens = tk, updated = tb,
            blocked_until = CASE WHEN until > tb THEN until END WHERE buckets.name = b.name;
    END LOOP;
END $$;

-- A finished run fed to its breaker (core.breaker.record). Returns the transition, if any.
CREATE FUNCTION schedsync.feed_breaker(p_name text, p_failures int, p_reset float8, p_now float8,
                                       p_ok boolean, p_trial boolean, p_why text,
                                       OUT old text, OUT new text, OUT failures int,
                                       OUT opened_at float8, OUT opens_until float8)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b record; before text;
BEGIN
    IF NOT p_ok THEN
        INSERT INTO schedsync.breakers (name, state, failures) VALUES (p_name, 'closed', 0)
            ON CONFLICT (name) DO NOTHING;
    END IF;
    SELECT * INTO b FROM schedsync.breakers WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;  -- closed and never stored: a success changes nothing
    END IF;
    before := CASE WHEN b.state = 'open' AND b.opens_until IS NOT NULL AND p_now >= b.opens_until
                   THEN 'half-open' ELSE b.state END;
    IF p_ok THEN
        IF b.state <> 'closed' OR b.failures <> 0 OR b.opened_at IS NOT NULL
           OR b.opens_until IS NOT NULL OR cardinality(b.leases) > 0 THEN
            UPDATE schedsync.breakers SET state = 'closed', failures = 0, opened_at = NULL,
                opens_until = NULL, leases = '{}' WHERE name = p_name;
        END IF;
        failures := 0;
        IF before <> 'closed' THEN old := before; new := 'closed'; END IF;
    ELSIF p_trial OR before = 'half-open' OR (before = 'closed' AND b.failures + 1 >= p_failures) THEN
        failures := b.failures + 1; opened_at := p_now; opens_until := p_now + p_reset;
        UPDATE schedsync.breakers SET state = 'open', failures = feed_breaker.failures,
            opened_at = p_now, opens_until = p_now + p_reset, leases = '{}' WHERE name = p_name;
        IF before <> 'open' THEN old := before; new := 'open'; END IF;
    ELSE
        failures := b.failures + 1; opened_at := b.opened_at; opens_until := b.opens_until;
        UPDATE schedsync.breakers SET failures = feed_breaker.failures WHERE name = p_name;
    END IF;
    IF old IS NOT NULL THEN
        INSERT INTO schedsync.breaker_events (name, at, old, new, reason)
            VALUES (p_name, p_now, old, new, p_why);
    END IF;
END $$;

-- The newest success (or partial) of a job, started before p_before if given: one
-- backward index seek per status (an IN list would read every run of the job).
CREATE FUNCTION schedsync.last_success(p_job text, p_before float8) RETURNS float8
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT greatest(
        (SELECT started_at FROM schedsync.runs WHERE job = p_job AND status = 'success'
             AND (p_before IS NULL OR started_at < p_before) ORDER BY started_at DESC LIMIT 1),
        (SELECT started_at FROM schedsync.runs WHERE job = p_job AND status = 'partial'
             AND (p_before IS NULL OR started_at < p_before) ORDER BY started_at DESC LIMIT 1))
$$;

-- Retention for one job, at most p_limit rows per class; the newest success is kept.
-- The ledger goes with the runs; the newest cron slot stays (a clock that steps back
-- must still find it), as does work still queued.
CREATE FUNCTION schedsync.prune(p_job text, p_now float8, p_keep_success float8,
                                p_keep_failed float8, p_limit int) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    removed int := 0; n int; newest float8;
BEGIN
    IF p_keep_success IS NOT NULL THEN
        newest := schedsync.last_success(p_job, NULL);
        DELETE FROM schedsync.runs WHERE id IN (
            SELECT id FROM schedsync.runs WHERE job = p_job
                AND status IN ('success', 'partial', 'skipped') AND started_at < p_now - p_keep_success
                AND NOT (newest IS NOT NULL AND status IN ('success', 'partial') AND started_at = newest)
            LIMIT p_limit);
        GET DIAGNOSTICS n = ROW_COUNT; removed := removed + n;
        DELETE FROM schedsync.slots WHERE id IN (
            SELECT id FROM schedsync.slots WHERE job = p_job
                AND coalesce(slot, due_at) < p_now - p_keep_success AND state NOT IN ('queued', 'claimed')
                AND id IS DISTINCT FROM (SELECT id FROM schedsync.slots WHERE job = p_job AND kind = 'cron'
                                         ORDER BY slot DESC LIMIT 1)
            LIMIT p_limit);
    END IF;
    IF p_keep_failed IS NOT NULL THEN
        DELETE FROM schedsync.runs WHERE id IN (
            SELECT id FROM schedsync.runs WHERE job = p_job
                AND status IN ('failed', 'timeout', 'crashed') AND started_at < p_now - p_keep_failed
            LIMIT p_limit);
        GET DIAGNOSTICS n = ROW_COUNT; removed := removed + n;
    END IF;
    RETURN removed;
END $$;

-- A finished (or skipped) run counted in run_counts, in the caller's transaction.
CREATE FUNCTION schedsync.tally(p_job text, p_status text, p_requests bigint) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO schedsync.run_counts AS c (job, status, runs, requests)
        VALUES (p_job, p_status, 1, coalesce(p_requests, 0))
        ON CONFLICT (job, status) DO UPDATE SET runs = c.runs + 1, requests = c.requests + excluded.requests
$$;

-- A finished run (not skipped) counted in run_totals and run_buckets, in the caller's transaction.
CREATE FUNCTION schedsync.tally_run(p_job text, p_seconds float8, p_attempts int, p_items bigint,
                                    p_failed_items bigint) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO schedsync.run_totals AS c (job, runs, seconds, processed, failed, deleted, retries)
        VALUES (p_job, 1, coalesce(p_seconds, 0), coalesce(p_items, 0), coalesce(p_failed_items, 0), 0,
                greatest(coalesce(p_attempts, 0) - 1, 0))
        ON CONFLICT (job) DO UPDATE SET runs = c.runs + 1, seconds = c.seconds + excluded.seconds,
            processed = c.processed + excluded.processed, failed = c.failed + excluded.failed,
            retries = c.retries + excluded.retries;
    INSERT INTO schedsync.run_buckets AS b (job, le, runs)
        SELECT p_job, min(le), 1 FROM unnest(ARRAY[0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]::float8[]) AS le
        WHERE le >= coalesce(p_seconds, 0) HAVING min(le) IS NOT NULL
        ON CONFLICT (job, le) DO UPDATE SET runs = b.runs + 1
$$;

-- One run's admission, in one transaction: seen, paused, breaker (a half-open trial
-- lease claimed once cluster-wide), the ledger's claim (a cron slot, or the work item
-- the tick claimed), budgets, then the running row and its lease. Nothing is changed
-- when the run is not admitted (a claim is undone when a budget denies). The host's
-- clock against the server's is noted on the way (status names a host off by > 5 s).
CREATE FUNCTION schedsync.admit(
    p_job text, p_trigger text, p_breaker text, p_half_open int, p_lease float8,
    p_budgets text[], p_caps float8[], p_pers float8[], p_cost float8, p_now float8,
    p_slot float8, p_host text, p_pid int, p_token bigint, p_item bigint,
    p_held text, p_run_lease float8, p_host_time float8, p_params text,
    OUT run_id bigint, OUT started_at float8, OUT trial boolean, OUT reason text,
    OUT retry_at float8, OUT other_host text, OUT slot float8, OUT retry_of bigint,
    OUT retry_number int, OUT taken text, OUT taken_run bigint, OUT later boolean,
    OUT other_run bigint, OUT lease text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t float8 := coalesce(p_now, schedsync.now());
    paused boolean; b record; live float8[]; ready float8;
    fresh bigint; held bigint; h_id bigint; h_state text; h_reason text; h_by text; h_run bigint;
BEGIN
    started_at := t; trial := false; slot := p_slot; retry_number := 0; later := false;
    -- Written only when the offset moved by half a second or is five minutes old, so
    -- admissions on one host do not queue on its row.
    IF p_host_time IS NOT NULL THEN
        UPDATE schedsync.hosts SET skew = p_host_time - t, seen_at = t
            WHERE host = p_host AND (abs(skew - (p_host_time - t)) > 0.5 OR seen_at < t - 300);
        IF NOT FOUND THEN
            INSERT INTO schedsync.hosts (host, skew, seen_at) VALUES (p_host, p_host_time - t, t)
                ON CONFLICT (host) DO NOTHING;
        END IF;
    END IF;
    SELECT jobs.paused INTO paused FROM schedsync.jobs WHERE name = p_job;
    IF NOT FOUND THEN
        INSERT INTO schedsync.jobs (name, first_seen) VALUES (p_job, t) ON CONFLICT (name) DO NOTHING;
        paused := false;
    END IF;
    IF paused THEN
        reason := 'paused'; RETURN;
    END IF;
    SELECT * INTO b FROM schedsync.breakers WHERE name = p_breaker FOR UPDATE;
    IF FOUND AND b.state = 'open' THEN
        IF b.opens_until IS NULL OR t < b.opens_until THEN
            reason := 'breaker_open'; retry_at := b.opens_until; RETURN;
        END IF;
        live := ARRAY(SELECT x FROM unnest(b.leases) AS x WHERE x > t);
        IF cardinality(live) >= p_half_open THEN
            reason := 'breaker_open'; retry_at := (SELECT min(x) FROM unnest(live) AS x); RETURN;
        END IF;
        trial := true;
    END IF;
    IF p_item IS NOT NULL THEN
        SELECT s.state, s.run_id, s.slot, s.retry_of, s.retry_number
            INTO h_state, taken_run, slot, retry_of, retry_number
            FROM schedsync.slots s WHERE s.id = p_item FOR UPDATE;
        IF h_state IS NULL OR h_state NOT IN ('claimed', 'queued') THEN
            reason := 'already_ran'; taken := coalesce(h_state, 'gone'); trial := false; RETURN;
        END IF;
        held := p_item; taken_run := NULL; h_state := NULL;
    ELSIF p_slot IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM schedsync.slots s WHERE s.job = p_job AND s.kind = 'cron'
                   AND s.slot > p_slot AND s.state = 'ran') THEN
            reason := 'already_ran'; later := true; trial := false; RETURN;
        END IF;
        INSERT INTO schedsync.slots (job, slot, kind, state, due_at, claimed_at, claimed_by)
            VALUES (p_job, p_slot, 'cron', 'ran', p_slot, t, p_host || ':' || p_pid)
            ON CONFLICT DO NOTHING RETURNING id INTO fresh;
        IF fresh IS NULL THEN
            SELECT s.id, s.state, s.reason, s.claimed_by, s.run_id INTO h_id, h_state, h_reason, h_by, h_run
                FROM schedsync.slots s WHERE s.job = p_job AND s.slot = p_slot AND s.kind = 'cron'
                AND s.retry_of IS NULL AND s.retry_number = 0 FOR UPDATE;
            IF h_state IS NULL OR h_state NOT IN ('skipped', 'missed') THEN
                reason := 'already_ran'; other_host := h_by; other_run := h_run; trial := false; RETURN;
            END IF;
            UPDATE schedsync.slots SET state = 'ran', claimed_at = t, claimed_by = p_host || ':' || p_pid
                WHERE id = h_id;
            held := h_id;
        ELSE
            held := fresh;
        END IF;
    END IF;
    IF p_cost > 0 AND coalesce(cardinality(p_budgets), 0) > 0 THEN
        ready := schedsync.spend(p_budgets, p_caps, p_pers, p_cost, p_now);
        IF ready IS NOT NULL THEN
            IF fresh IS NOT NULL THEN
                DELETE FROM schedsync.slots WHERE id = fresh;
            ELSIF h_id IS NOT NULL THEN
                UPDATE schedsync.slots SET state = h_state, reason = h_reason, claimed_by = h_by
                    WHERE id = h_id;
            END IF;
            reason := 'rate_limited'; retry_at := ready; trial := false; RETURN;
        END IF;
    END IF;
    IF trial THEN
        UPDATE schedsync.breakers SET leases = live || (t + p_lease) WHERE name = p_breaker;
    END IF;
    INSERT INTO schedsync.runs (job, status, trigger, started_at, host, pid, token, slot, retry_of,
                                retry_number, params)
        VALUES (p_job, 'running', p_trigger, t, p_host, p_pid, p_token, admit.slot, admit.retry_of,
                admit.retry_number, p_params) RETURNING id INTO run_id;
    IF held IS NOT NULL THEN
        UPDATE schedsync.slots SET state = 'ran', run_id = admit.run_id, reason = NULL WHERE id = held;
    END IF;
    -- The run lives while a lease of its holder names it: the job's lease this process
    -- holds, else a lease of its own (overlap: allow), renewed with the others.
    IF p_held IS NOT NULL THEN
        UPDATE schedsync.leases l SET run_id = admit.run_id
            WHERE l.name = p_held AND l.token = p_token RETURNING l.name INTO lease;
    END IF;
    IF lease IS NULL THEN
        lease := 'run:' || run_id;
        INSERT INTO schedsync.leases (name, token, run_id, host, pid, expires_at)
            VALUES (lease, p_token, run_id, p_host, p_pid, schedsync.now() + p_run_lease);
    END IF;
END $$;

-- A chain's items: one per downstream job of the run p_id, due p_now; a run started
-- from an item takes its parent when admit marks the item ran.
CREATE FUNCTION schedsync.item_parent() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE schedsync.runs SET parent = NEW.parent WHERE id = NEW.run_id AND parent IS NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER slots_item_parent AFTER UPDATE OF run_id ON schedsync.slots
    FOR EACH ROW WHEN (NEW.parent IS NOT NULL AND NEW.run_id IS NOT NULL)
    EXECUTE FUNCTION schedsync.item_parent();

CREATE FUNCTION schedsync.chain(p_id bigint, p_after text[], p_now float8) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO schedsync.slots (job, kind, state, due_at, parent)
        SELECT j, 'after', 'queued', p_now, p_id FROM unnest(p_after) AS j ORDER BY j
        ON CONFLICT DO NOTHING
$$;

-- One run's end, in one transaction: the record, the chains' `after` items it calls
-- for (p_after), the breaker (or the trial lease handed back), retention, and the run's
-- own lease dropped.
CREATE FUNCTION schedsync.finish(
    p_id bigint, p_status text, p_reason text, p_finished float8, p_duration bigint,
    p_attempts int, p_requests int, p_items bigint, p_failed_items bigint, p_exit int,
    p_error text, p_retry_at float8, p_output text,
    p_job text, p_breaker text, p_failures int, p_reset float8, p_evidence boolean,
    p_ok boolean, p_trial boolean, p_lease_end float8, p_why text,
    p_keep_success float8, p_keep_failed float8, p_prune int, p_after text[], p_loads bigint[],
    OUT old text, OUT new text, OUT failures int, OUT opened_at float8, OUT opens_until float8)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t float8 := coalesce(p_finished, schedsync.now());
    f record; v_ms bigint; v_retry int;
BEGIN
    UPDATE schedsync.runs SET status = p_status, reason = p_reason, finished_at = t,
        duration_ms = coalesce(p_duration, ((t - started_at) * 1000)::bigint),
        attempts = p_attempts, requests = p_requests, items_processed = p_items,
        items_failed = p_failed_items, exit_code = p_exit, error = p_error, retry_at = p_retry_at,
        output = p_output, items_inserted = coalesce(p_loads[1], 0),
        items_updated = coalesce(p_loads[2], 0), items_deleted = coalesce(p_loads[3], 0)
        WHERE id = p_id RETURNING duration_ms, retry_number INTO v_ms, v_retry;
    IF FOUND THEN
        PERFORM schedsync.tally(p_job, p_status, p_requests);
        IF p_status <> 'skipped' THEN
            -- a retry later counts as one more retry (attempts after the first, plus it)
            PERFORM schedsync.tally_run(p_job, v_ms / 1000.0,
                                        greatest(coalesce(p_attempts, 0), 1) + (coalesce(v_retry, 0) > 0)::int,
                                        p_items, p_failed_items);
            UPDATE schedsync.run_totals SET deleted = deleted + p_loads[3]
                WHERE job = p_job AND coalesce(p_loads[3], 0) > 0;
        END IF;
        IF coalesce(cardinality(p_after), 0) > 0 THEN
            PERFORM schedsync.chain(p_id, p_after, t);
        END IF;
    END IF;
    IF p_evidence THEN
        f := schedsync.feed_breaker(p_breaker, p_failures, p_reset, t, p_ok, p_trial, p_why);
        old := f.old; new := f.new; failures := f.failures;
        opened_at := f.opened_at; opens_until := f.opens_until;
    ELSIF p_trial THEN
        UPDATE schedsync.breakers SET leases = array_remove(leases, p_lease_end)
            WHERE name = p_breaker AND p_lease_end = ANY (leases);
    END IF;
    PERFORM schedsync.prune(p_job, t, p_keep_success, p_keep_failed, p_prune);
    DELETE FROM schedsync.leases WHERE name = 'run:' || p_id;
END $$;

-- A running row whose owner is gone: crashed once, by whichever reader gets here first.
CREATE FUNCTION schedsync.crash(
    p_id bigint, p_now float8, p_error text, p_breaker text, p_failures int, p_reset float8,
    p_evidence boolean, p_why text, p_after text[],
    OUT done boolean, OUT old text, OUT new text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t float8 := coalesce(p_now, schedsync.now());
    f record; v_job text; v_requests int;
BEGIN
    UPDATE schedsync.runs SET status = 'crashed', finished_at = t,
        duration_ms = ((t - started_at) * 1000)::bigint, error = p_error
        WHERE id = p_id AND status = 'running' RETURNING job, requests INTO v_job, v_requests;
    done := FOUND;
    IF done THEN
        PERFORM schedsync.tally(v_job, 'crashed', v_requests);
        IF coalesce(cardinality(p_after), 0) > 0 THEN
            PERFORM schedsync.chain(p_id, p_after, t);
        END IF;
    END IF;
    IF done AND p_evidence AND p_breaker IS NOT NULL THEN
        f := schedsync.feed_breaker(p_breaker, p_failures, p_reset, t, false, false, p_why);
        old := f.old; new := f.new;
    END IF;
END $$;

-- A run that was not admitted, on the ledger: its work item skipped (cron) or queued
-- again (other kinds); else its cron slot skipped, unless the slot ran or is taken.
CREATE FUNCTION schedsync.skip_slot(p_job text, p_slot float8, p_item bigint, p_reason text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_item IS NOT NULL THEN
        UPDATE schedsync.slots SET state = CASE kind WHEN 'cron' THEN 'skipped' ELSE 'queued' END,
            reason = p_reason, claimed_at = NULL, claimed_by = NULL
            WHERE id = p_item AND state IN ('claimed', 'queued');
    ELSIF p_slot IS NOT NULL AND p_reason IS DISTINCT FROM 'already_ran' THEN
        UPDATE schedsync.slots SET state = 'skipped', reason = p_reason
            WHERE job = p_job AND slot = p_slot AND kind = 'cron' AND retry_of IS NULL
            AND retry_number = 0 AND state IN ('skipped', 'missed');
        IF NOT FOUND THEN
            INSERT INTO schedsync.slots (job, slot, kind, state, due_at, reason)
                VALUES (p_job, p_slot, 'cron', 'skipped', p_slot, p_reason) ON CONFLICT DO NOTHING;
        END IF;
    END IF;
END $$;

-- Due work claimed once cluster-wide: stale claims (their run never started) go back
-- to the queue, then the oldest due queued items of p_jobs, at most p_per_job per job,
-- each row locked with SKIP LOCKED (a concurrent tick takes other rows, never these).
CREATE FUNCTION schedsync.claim_due(p_jobs text[], p_limit int, p_claimer text, p_now float8,
                                    p_per_job int, p_stale float8) RETURNS SETOF schedsync.slots
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t float8 := coalesce(p_now, schedsync.now());
    c record; got schedsync.slots; n int := 0; taken text[] := '{}';
BEGIN
    UPDATE schedsync.slots SET state = 'queued', claimed_at = NULL, claimed_by = NULL
        WHERE state = 'claimed' AND claimed_at < t - p_stale;
    IF p_limit <= 0 THEN
        RETURN;
    END IF;
    -- A job whose item is being started, or whose run is going (a lease names it),
    -- gets nothing more now: its next item would only be skipped by the job's lock.
    FOR c IN SELECT q.id, q.job FROM (SELECT s.id, s.job, s.due_at, row_number() OVER (PARTITION BY s.job
                                              ORDER BY s.due_at, s.id) AS nth
                                      FROM schedsync.slots s WHERE s.state = 'queued' AND s.due_at <= t
                                      AND s.job = ANY (p_jobs)) q
             WHERE q.nth <= p_per_job
             AND NOT EXISTS (SELECT 1 FROM schedsync.slots b WHERE b.job = q.job AND b.state = 'claimed')
             AND NOT EXISTS (SELECT 1 FROM schedsync.runs r WHERE r.job = q.job AND r.status = 'running'
                             AND EXISTS (SELECT 1 FROM schedsync.leases l WHERE l.run_id = r.id
                                         AND l.expires_at > t))
             ORDER BY q.due_at, q.id LOOP
        CONTINUE WHEN (SELECT count(*) FROM unnest(taken) AS x WHERE x = c.job) >= p_per_job;
        -- One claimer per job at a time (till commit); then, seeing what it committed, no
        -- second item of a job is claimed while one is being started.
        IF NOT c.job = ANY (taken) THEN
            CONTINUE WHEN NOT pg_try_advisory_xact_lock(hashtextextended('schedsync:queue:' || c.job, 0));
            CONTINUE WHEN EXISTS (SELECT 1 FROM schedsync.slots b WHERE b.job = c.job AND b.state = 'claimed');
        END IF;
        PERFORM 1 FROM schedsync.slots WHERE id = c.id AND state = 'queued' FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        UPDATE schedsync.slots SET state = 'claimed', claimed_at = t, claimed_by = p_claimer
            WHERE id = c.id RETURNING * INTO got;
        RETURN NEXT got;
        taken := taken || c.job; n := n + 1;
        EXIT WHEN n >= p_limit;
    END LOOP;
END $$;

-- Slots accounted for as p_state (missed, found by the tick) unless already in the ledger;
-- missed ones counted in slot_counts. Returns how many were added.
CREATE FUNCTION schedsync.record_slots(p_job text, p_slots float8[], p_state text, p_reason text)
RETURNS int LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    INSERT INTO schedsync.slots (job, slot, kind, state, due_at, reason)
        SELECT p_job, s, 'cron', p_state, s, p_reason FROM unnest(p_slots) AS s ORDER BY s
        ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 AND p_state = 'missed' THEN
        INSERT INTO schedsync.slot_counts AS c (job, state, n) VALUES (p_job, p_state, n)
            ON CONFLICT (job, state) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    RETURN n;
END $$;

-- A tick's first step, one round trip: noted, due work claimed, and the jobs whose
-- slots need a look (no mark, another key, or next_at come): rows with what = 'item'
-- (a claimed item) or 'look' (job, until, first_seen).
CREATE FUNCTION schedsync.begin_tick(p_host text, p_claimer text, p_jobs text[], p_keys text[],
                                     p_limit int, p_now float8, p_stale float8)
RETURNS TABLE (what text, id bigint, job text, slot float8, kind text, state text, due_at float8,
               run_id bigint, reason text, retry_of bigint, retry_number int, claimed_at float8,
               claimed_by text, until float8, first_seen float8)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t float8 := coalesce(p_now, schedsync.now());
BEGIN
    INSERT INTO schedsync.ticks AS k (host, at, error) VALUES (p_host, t, NULL)
        ON CONFLICT (host) DO UPDATE SET at = excluded.at, error = NULL;
    RETURN QUERY SELECT 'item', c.id, c.job, c.slot, c.kind, c.state, c.due_at, c.run_id, c.reason,
        c.retry_of, c.retry_number, c.claimed_at, c.claimed_by, NULL::float8, NULL::float8
        FROM schedsync.claim_due(p_jobs, p_limit, p_claimer, t, 1, p_stale) AS c;
    RETURN QUERY SELECT 'look', NULL::bigint, u.j, NULL::float8, NULL, NULL, NULL::float8, NULL::bigint,
        NULL, NULL::bigint, NULL::int, NULL::float8, NULL,
        CASE WHEN m.key = u.k THEN m.until END, (SELECT jb.first_seen FROM schedsync.jobs jb WHERE jb.name = u.j)
        FROM unnest(p_jobs, p_keys) AS u(j, k) LEFT JOIN schedsync.slot_marks m ON m.job = u.j
        WHERE m.job IS NULL OR m.key <> u.k OR m.next_at IS NULL OR m.next_at <= t;
END $$;

-- A tick's second step for the jobs it looked at: missed slots recorded (p_missed_jobs
-- names each of p_missed's job), marks stored (until never moves back), and each
-- p_claims slot (a run_by: tick job's current slot; NULL for none) claimed as a cron
-- item unless it is in the ledger or a later slot of the job ran. Returns the claims.
CREATE FUNCTION schedsync.settle_slots(p_jobs text[], p_keys text[], p_untils float8[],
                                       p_next_ats float8[], p_claims float8[], p_missed_jobs text[],
                                       p_missed float8[], p_claimer text, p_now float8)
RETURNS SETOF schedsync.slots
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t float8 := coalesce(p_now, schedsync.now());
    m record; got schedsync.slots;
BEGIN
    FOR m IN SELECT x.j, array_agg(x.s ORDER BY x.s) AS ss FROM unnest(p_missed_jobs, p_missed) AS x(j, s)
             GROUP BY x.j ORDER BY x.j LOOP
        PERFORM schedsync.record_slots(m.j, m.ss, 'missed', NULL);
    END LOOP;
    INSERT INTO schedsync.slot_marks AS k (job, key, until, next_at)
        SELECT j, k, u, n FROM unnest(p_jobs, p_keys, p_untils, p_next_ats) AS x(j, k, u, n) ORDER BY j
        ON CONFLICT (job) DO UPDATE SET key = excluded.key, next_at = excluded.next_at,
            until = CASE WHEN k.until IS NULL OR excluded.until > k.until THEN excluded.until ELSE k.until END;
    FOR m IN SELECT x.j, x.c FROM unnest(p_jobs, p_claims) AS x(j, c) WHERE x.c IS NOT NULL LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM schedsync.slots s WHERE s.job = m.j AND s.kind = 'cron'
                              AND (s.slot = m.c OR s.slot > m.c AND s.state = 'ran'));
        got := NULL;
        INSERT INTO schedsync.slots AS s (job, slot, kind, state, due_at, claimed_at, claimed_by)
            VALUES (m.j, m.c, 'cron', 'claimed', m.c, t, p_claimer) ON CONFLICT DO NOTHING RETURNING * INTO got;
        IF got.id IS NOT NULL THEN
            RETURN NEXT got;
        END IF;
    END LOOP;
END $$;
