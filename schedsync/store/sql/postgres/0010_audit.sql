-- The audit log (issue 18): every write through serve's API or dashboard, bounded per job.
CREATE TABLE schedsync.audit (id bigserial PRIMARY KEY, at float8 NOT NULL, action text NOT NULL, job text,
                              who text NOT NULL, client text NOT NULL, breaker text, run_id bigint,
                              item_id bigint, params text, reason text);
CREATE INDEX audit_by_job ON schedsync.audit (job, id);
CREATE INDEX audit_by_breaker ON schedsync.audit (breaker, id) WHERE breaker IS NOT NULL;

UPDATE schedsync.meta SET version = 10;
