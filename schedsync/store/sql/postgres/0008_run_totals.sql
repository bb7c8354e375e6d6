-- What a dashboard needs beside run_counts, only growing too (retention never lowers
-- them): per job, the durations of finished runs that were neither skipped nor crashed
-- (sum, count, and a count per histogram bucket: the smallest bound of
-- core.models.DURATION_BUCKETS that holds it, none over 1 h), items processed, failed
-- and deleted, and retries inside runs (attempts - 1). Seeded from the runs already
-- recorded; bumped by finish (its 0002 body plus tally_run, in the same transaction).
CREATE TABLE schedsync.run_totals (job text PRIMARY KEY, runs bigint NOT NULL, seconds float8 NOT NULL,
                                   processed bigint NOT NULL, failed bigint NOT NULL,
                                   deleted bigint NOT NULL, retries bigint NOT NULL);
CREATE TABLE schedsync.run_buckets (job text NOT NULL, le float8 NOT NULL, runs bigint NOT NULL,
                                    PRIMARY KEY (job, le));
INSERT INTO schedsync.run_totals (job, runs, seconds, processed, failed, deleted, retries)
    SELECT job, count(*), coalesce(sum(duration_ms), 0) / 1000.0, coalesce(sum(items_processed), 0),
           coalesce(sum(items_failed), 0), 0, coalesce(sum(greatest(attempts - 1, 0)), 0)
    FROM schedsync.runs WHERE status NOT IN ('running', 'skipped', 'crashed') GROUP BY job;
INSERT INTO schedsync.run_buckets (job, le, runs)
    SELECT job, le, count(*) FROM (
        SELECT job, (SELECT min(b) FROM unnest(ARRAY[0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]::float8[]) AS b
                     WHERE b >= coalesce(duration_ms, 0) / 1000.0) AS le
        FROM schedsync.runs WHERE status NOT IN ('running', 'skipped', 'crashed')) AS r
    WHERE le IS NOT NULL GROUP BY job, le;
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
CREATE OR REPLACE FUNCTION schedsync.finish(
    p_id bigint, p_status text, p_reason text, p_finished float8, p_duration bigint,
    p_attempts int, p_requests int, p_items bigint, p_failed_items bigint, p_exit int,
    p_error text, p_retry_at float8, p_output text,
    p_job text, p_breaker text, p_failures int, p_reset float8, p_evidence boolean,
    p_ok boolean, p_trial boolean, p_lease_end float8, p_why text,
    p_keep_success float8, p_keep_failed float8, p_prune int,
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
        output = p_output WHERE id = p_id RETURNING duration_ms, retry_number INTO v_ms, v_retry;
    IF FOUND THEN
        PERFORM schedsync.tally(p_job, p_status, p_requests);
        IF p_status <> 'skipped' THEN
            -- a retry later counts as one more retry (attempts after the first, plus it)
            PERFORM schedsync.tally_run(p_job, v_ms / 1000.0,
                                        greatest(coalesce(p_attempts, 0), 1) + (coalesce(v_retry, 0) > 0)::int,
                                        p_items, p_failed_items);
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

UPDATE schedsync.meta SET version = 8;
