-- Triggers (issue 18): a run asked for by `schedsync trigger` (or serve) is an `api` item
-- of the slot ledger, with its params (JSON text, {NAME: value}); the run stores the
-- params it ran with. Any number of api items of a job may exist over time (the ledger's
-- once-per-slot index leaves them out), but only one queued or claimed item per job and
-- params: a second identical trigger finds the first (dedupe), atomically.
ALTER TABLE schedsync.slots ADD COLUMN params text;
ALTER TABLE schedsync.runs ADD COLUMN params text;
DROP INDEX schedsync.slots_once;
CREATE UNIQUE INDEX slots_once ON schedsync.slots (job, coalesce(slot, -1), kind, coalesce(retry_of, 0),
                                                   retry_number) WHERE kind <> 'api';
CREATE UNIQUE INDEX slots_api_waiting ON schedsync.slots (job, coalesce(params, ''))
    WHERE kind = 'api' AND state IN ('queued', 'claimed');

DROP FUNCTION schedsync.admit(text, text, text, int, float8, text[], float8[], float8[], float8, float8,
                              float8, text, int, bigint, bigint, text, float8, float8);

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

UPDATE schedsync.meta SET version = 9;
