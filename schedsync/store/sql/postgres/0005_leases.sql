-- Leases instead of session advisory locks: a run holds a row (its job's name, or
-- run:ID for overlap: allow) naming its holder, with expires_at on the server's clock,
-- renewed every second. A new holder takes it only once expired; a server restart or a
-- failover ends sessions but loses no lease. Liveness reads it, not pg_locks.
CREATE TABLE schedsync.leases (name text PRIMARY KEY, token bigint NOT NULL, run_id bigint,
                               host text NOT NULL, pid int NOT NULL, expires_at float8 NOT NULL);
CREATE INDEX leases_by_token ON schedsync.leases (token);
-- Each host's clock against the server's (host minus server, seconds), noted by admit.
CREATE TABLE schedsync.hosts (host text PRIMARY KEY, skew float8 NOT NULL, seen_at float8 NOT NULL);

-- Budgets on the server's clock, read once the buckets' rows are locked.
CREATE OR REPLACE FUNCTION schedsync.spend(p_names text[], p_caps float8[], p_pers float8[], p_cost float8,
                                p_now float8) RETURNS float8 LANGUAGE plpgsql AS $$
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

CREATE OR REPLACE FUNCTION schedsync.block(p_names text[], p_caps float8[], p_pers float8[], p_until float8,
                                p_now float8) RETURNS void LANGUAGE plpgsql AS $$
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

-- admit names the slot's winning run and attaches the run to its lease.
DROP FUNCTION schedsync.admit(text, text, text, int, float8, text[], float8[], float8[], float8, float8,
                              float8, text, int, bigint);
CREATE FUNCTION schedsync.admit(
    p_job text, p_trigger text, p_breaker text, p_half_open int, p_lease float8,
    p_budgets text[], p_caps float8[], p_pers float8[], p_cost float8, p_now float8,
    p_slot float8, p_host text, p_pid int, p_token bigint,
    p_held text, p_run_lease float8, p_host_time float8,
    OUT run_id bigint, OUT started_at float8, OUT trial boolean, OUT reason text,
    OUT retry_at float8, OUT other_host text, OUT other_run bigint, OUT lease text)
LANGUAGE plpgsql AS $$
DECLARE
    t float8 := coalesce(p_now, schedsync.now());
    paused boolean; b record; live float8[]; ready float8; claimed boolean := false;
BEGIN
    started_at := t; trial := false;
    -- This host's clock against the server's (status names a host off by more than 5 s):
    -- written only when it moved by half a second or is five minutes old, so admissions
    -- on one host do not queue on its row.
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
    IF p_slot IS NOT NULL THEN
        INSERT INTO schedsync.slots (job, slot, host, claimed_at) VALUES (p_job, p_slot, p_host, t)
            ON CONFLICT (job, slot) DO NOTHING;
        IF NOT FOUND THEN
            reason := 'already_ran';
            SELECT s.host, s.run_id INTO other_host, other_run FROM schedsync.slots s
                WHERE s.job = p_job AND s.slot = p_slot;
            trial := false; RETURN;
        END IF;
        claimed := true;
    END IF;
    IF p_cost > 0 AND coalesce(cardinality(p_budgets), 0) > 0 THEN
        ready := schedsync.spend(p_budgets, p_caps, p_pers, p_cost, p_now);
        IF ready IS NOT NULL THEN
            IF claimed THEN
                DELETE FROM schedsync.slots WHERE job = p_job AND slot = p_slot;
            END IF;
            reason := 'rate_limited'; retry_at := ready; trial := false; RETURN;
        END IF;
    END IF;
    IF trial THEN
        UPDATE schedsync.breakers SET leases = live || (t + p_lease) WHERE name = p_breaker;
    END IF;
    INSERT INTO schedsync.runs (job, status, trigger, started_at, host, pid, token, slot)
        VALUES (p_job, 'running', p_trigger, t, p_host, p_pid, p_token, p_slot) RETURNING id INTO run_id;
    IF claimed THEN
        UPDATE schedsync.slots SET run_id = admit.run_id WHERE job = p_job AND slot = p_slot;
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

-- finish drops the run's own lease (a job's lease is released by its holder).
CREATE OR REPLACE FUNCTION schedsync.finish(
    p_id bigint, p_status text, p_reason text, p_finished float8, p_duration bigint,
    p_attempts int, p_requests int, p_items bigint, p_failed_items bigint, p_exit int,
    p_error text, p_retry_at float8, p_output text,
    p_job text, p_breaker text, p_failures int, p_reset float8, p_evidence boolean,
    p_ok boolean, p_trial boolean, p_lease_end float8, p_why text,
    p_keep_success float8, p_keep_failed float8, p_prune int,
    OUT old text, OUT new text, OUT failures int, OUT opened_at float8, OUT opens_until float8)
LANGUAGE plpgsql AS $$
DECLARE
    t float8 := coalesce(p_finished, schedsync.now());
    f record;
BEGIN
    UPDATE schedsync.runs SET status = p_status, reason = p_reason, finished_at = t,
        duration_ms = coalesce(p_duration, ((t - started_at) * 1000)::bigint),
        attempts = p_attempts, requests = p_requests, items_processed = p_items,
        items_failed = p_failed_items, exit_code = p_exit, error = p_error, retry_at = p_retry_at,
        output = p_output WHERE id = p_id;
    IF FOUND THEN
        PERFORM schedsync.tally(p_job, p_status, p_requests);
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

ALTER FUNCTION schedsync.spend SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION schedsync.block SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION schedsync.admit SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION schedsync.finish SET search_path = pg_catalog, pg_temp;

UPDATE schedsync.meta SET version = 5;
