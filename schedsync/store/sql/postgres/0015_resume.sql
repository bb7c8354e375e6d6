-- Issue 19: where an http job's interrupted sync resumes (point: the next page, JSON
-- holding no secret; began_at: the start of the run that fetched its page 1; done_run:
-- the run that completed a resumed sync, point then NULL), saved after every stored page
-- (one statement), and each job's freshness watermark (the newest value of its
-- fresh.field stored, POSIX seconds), kept as the maximum over runs.
CREATE TABLE schedsync.resume_points (job text PRIMARY KEY, point text, saved_at float8 NOT NULL,
                                      run_id bigint, began_at float8, done_run bigint,
                                      done_began float8);
CREATE TABLE schedsync.watermarks (job text PRIMARY KEY, value float8 NOT NULL, noted_at float8 NOT NULL);

UPDATE schedsync.meta SET version = 15;
