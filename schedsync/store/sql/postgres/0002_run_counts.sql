-- Counters that only grow (Prometheus rate() needs them to survive retention
-- pruning), seeded from the runs already recorded, and bumped in the same
-- transaction as the run's row: by finish and crash (replaced here, their
-- bodies as in 0001 plus tally) and by the skip insert (record_skip). And the
-- settings of jobs `schedsync exec` ran without a registry entry (jobs.adhoc).
CREATE TABLE schedsync.run_counts (job text NOT NULL, status text NOT NULL, runs bigint NOT NULL,
                                   requests bigint NOT NULL, PRIMARY KEY (job, status));
INSERT INTO schedsync.run_counts (job, status, runs, requests)
    SELECT job, status, count(*), coalesce(sum(requests), 0) FROM schedsync.runs
    WHERE status <> 'running' GROUP BY job, status;
ALTER TABLE schedsync.jobs ADD COLUMN adhoc text;

CREATE FUNCTION schedsync.tally(p_job text, p_status text, p_requests bigint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO schedsync.run_counts AS c (job, status, runs, requests)
        VALUES (p_job, p_status, 1, coalesce(p_requests, 0))
        ON CONFLICT (job, status) DO UPDATE SET runs = c.runs + 1, requests = c.requests + excluded.requests
$$;

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
    PERFORM pg_advisory_unlock(1935893363, (p_id % 2147483647)::int);
END $$;

CREATE OR REPLACE FUNCTION schedsync.crash(
    p_id bigint, p_now float8, p_error text, p_breaker text, p_failures int, p_reset float8,
    p_evidence boolean, p_why text,
    OUT done boolean, OUT old text, OUT new text)
LANGUAGE plpgsql AS $$
DECLARE
    t float8 := coalesce(p_now, schedsync.now());
    f record; v_job text;
BEGIN
    UPDATE schedsync.runs SET status = 'crashed', finished_at = t,
        duration_ms = ((t - started_at) * 1000)::bigint, error = p_error
        WHERE id = p_id AND status = 'running' RETURNING job INTO v_job;
    done := FOUND;
    IF done THEN
        PERFORM schedsync.tally(v_job, 'crashed', 0);
    END IF;
    IF done AND p_evidence AND p_breaker IS NOT NULL THEN
        f := schedsync.feed_breaker(p_breaker, p_failures, p_reset, t, false, false, p_why);
        old := f.old; new := f.new;
    END IF;
END $$;

UPDATE schedsync.meta SET version = 2;
