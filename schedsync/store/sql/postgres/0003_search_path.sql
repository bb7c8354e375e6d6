-- Every function runs with a fixed search_path, whatever the caller's: its body names
-- schedsync's objects in full, and no schema a caller can create in (public, a
-- schema named after the role) can shadow a built-in with an operator or a function.
ALTER FUNCTION schedsync.now SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION schedsync.spend SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION schedsync.block SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION schedsync.feed_breaker SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION schedsync.last_success SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION schedsync.prune SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION schedsync.admit SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION schedsync.finish SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION schedsync.crash SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION schedsync.tally SET search_path = pg_catalog, pg_temp;

UPDATE schedsync.meta SET version = 3;
