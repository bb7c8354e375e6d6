-- A crashed run keeps the requests it made: spend stores a running run's count as
-- it goes, and crash (its 0002 body, but tallying that count rather than 0) counts
-- them in run_counts. Replacing a function resets its settings: pinned again as in 0003.
CREATE OR REPLACE FUNCTION schedsync.crash(
    p_id bigint, p_now float8, p_error text, p_breaker text, p_failures int, p_reset float8,
    p_evidence boolean, p_why text,
    OUT done boolean, OUT old text, OUT new text)
LANGUAGE plpgsql AS $$
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
    END IF;
    IF done AND p_evidence AND p_breaker IS NOT NULL THEN
        f := schedsync.feed_breaker(p_breaker, p_failures, p_reset, t, false, false, p_why);
        old := f.old; new := f.new;
    END IF;
END $$;
ALTER FUNCTION schedsync.crash SET search_path = pg_catalog, pg_temp;

UPDATE schedsync.meta SET version = 4;
