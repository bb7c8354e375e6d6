-- Per-run counts of what an http job's load did (into.mode, into.delete, into.lineage):
-- rows inserted, updated and deleted, carried by finish in a new last argument
-- (p_loads: {inserted, updated, deleted}); deleted rows also count in run_totals.deleted.
-- finish replaces 0011's (chains: p_after), which is dropped: a state is finished by one
-- signature only.
ALTER TABLE schedsync.runs ADD COLUMN items_inserted bigint NOT NULL DEFAULT 0,
    ADD COLUMN items_updated bigint NOT NULL DEFAULT 0, ADD COLUMN items_deleted bigint NOT NULL DEFAULT 0;
DROP FUNCTION schedsync.finish(bigint, text, text, float8, bigint, int, int, bigint, bigint, int, text,
                               float8, text, text, text, int, float8, boolean, boolean, boolean,
                               float8, text, float8, float8, int, text[]);
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

UPDATE schedsync.meta SET version = 13;
