-- Chains (`after:`): an `after` item and the run it starts name the upstream run whose
-- end queued them (parent). One item per downstream job and upstream run: the ledger's
-- identity takes parent in. finish and crash take the downstream jobs the run's outcome
-- calls for (p_after) and queue their items, due now, in the transaction that records
-- the run's end (0008's finish and 0004's crash bodies otherwise). A run started from an
-- item takes the item's parent when admit marks the item ran (a trigger, so admit, as
-- 0007 wrote it, stays as is). Replaced functions pin their search_path as in 0003.
ALTER TABLE schedsync.slots ADD COLUMN parent bigint;
ALTER TABLE schedsync.runs ADD COLUMN parent bigint;
DROP INDEX schedsync.slots_once;
CREATE UNIQUE INDEX slots_once ON schedsync.slots (job, coalesce(slot, -1), kind, coalesce(retry_of, 0),
                                                   retry_number, coalesce(parent, 0)) WHERE kind <> 'api';

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

DROP FUNCTION schedsync.finish(bigint, text, text, float8, bigint, int, int, bigint, bigint, int, text, float8,
                               text, text, text, int, float8, boolean, boolean, boolean, float8, text,
                               float8, float8, int);
CREATE FUNCTION schedsync.finish(
    p_id bigint, p_status text, p_reason text, p_finished float8, p_duration bigint,
    p_attempts int, p_requests int, p_items bigint, p_failed_items bigint, p_exit int,
    p_error text, p_retry_at float8, p_output text,
    p_job text, p_breaker text, p_failures int, p_reset float8, p_evidence boolean,
    p_ok boolean, p_trial boolean, p_lease_end float8, p_why text,
    p_keep_success float8, p_keep_failed float8, p_prune int, p_after text[],
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

DROP FUNCTION schedsync.crash(bigint, float8, text, text, int, float8, boolean, text);
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

UPDATE schedsync.meta SET version = 11;
