-- The slot ledger (issue 17): one row per scheduled slot or queued work item of a job
-- (kind cron, catchup, backfill or retry; state queued, claimed, ran, skipped or
-- missed), replacing the once-per-slot claims (their rows become ran cron slots).
-- Runs record their retry chain; ticks, each job's mark (slots accounted for up to
-- until; nothing to look at before next_at) and missed slots counted are kept.
ALTER TABLE schedsync.slots RENAME TO old_slots;
ALTER INDEX schedsync.slots_pkey RENAME TO old_slots_pkey;
CREATE TABLE schedsync.slots (id bigserial PRIMARY KEY, job text NOT NULL, slot float8, kind text NOT NULL,
                              state text NOT NULL, due_at float8 NOT NULL, run_id bigint, reason text,
                              retry_of bigint, retry_number int NOT NULL DEFAULT 0,
                              claimed_at float8, claimed_by text);
CREATE UNIQUE INDEX slots_once ON schedsync.slots (job, coalesce(slot, -1), kind, coalesce(retry_of, 0),
                                                   retry_number);
CREATE INDEX slots_by_job ON schedsync.slots (job, slot);
CREATE INDEX slots_open ON schedsync.slots (due_at) WHERE state IN ('queued', 'claimed');
INSERT INTO schedsync.slots (job, slot, kind, state, due_at, run_id, claimed_at, claimed_by)
    SELECT job, slot, 'cron', 'ran', slot, run_id, claimed_at, host FROM schedsync.old_slots ORDER BY slot;
DROP TABLE schedsync.old_slots;
CREATE TABLE schedsync.slot_marks (job text PRIMARY KEY, key text NOT NULL, until float8, next_at float8);
CREATE TABLE schedsync.slot_counts (job text NOT NULL, state text NOT NULL, n bigint NOT NULL,
                                    PRIMARY KEY (job, state));
CREATE TABLE schedsync.ticks (host text PRIMARY KEY, at float8 NOT NULL, error text);
ALTER TABLE schedsync.runs ADD COLUMN retry_of bigint;
ALTER TABLE schedsync.runs ADD COLUMN retry_number int NOT NULL DEFAULT 0;

DROP FUNCTION schedsync.admit(text, text, text, int, float8, text[], float8[], float8[], float8, float8,
                              float8, text, int, bigint, text, float8, float8);

-- One run's admission, in one transaction: seen, paused, breaker (a half-open trial
-- lease claimed once cluster-wide), the ledger's claim (a cron slot, or the work item
-- the tick claimed), budgets, then the running row and its lease. Nothing is changed
-- when the run is not admitted (a claim is undone when a budget denies). The host's
-- clock against the server's is noted on the way (status names a host off by > 5 s).
CREATE FUNCTION schedsync.admit(
    p_job text, p_trigger text, p_breaker text, p_half_open int, p_lease float8,
    p_budgets text[], p_caps float8[], p_pers float8[], p_cost float8, p_now float8,
    p_slot float8, p_host text, p_pid int, p_token bigint, p_item bigint,
    p_held text, p_run_lease float8, p_host_time float8,
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
                                retry_number)
        VALUES (p_job, 'running', p_trigger, t, p_host, p_pid, p_token, admit.slot, admit.retry_of,
                admit.retry_number) RETURNING id INTO run_id;
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

-- Retention for one job, at most p_limit rows per class; the newest success is kept.
-- The ledger goes with the runs; the newest cron slot stays (a clock that steps back
-- must still find it), as does work still queued.
CREATE OR REPLACE FUNCTION schedsync.prune(p_job text, p_now float8, p_keep_success float8,
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

UPDATE schedsync.meta SET version = 7;
