"""The PostgreSQL backend's schema (SQL files, loaded here) and its ownership check.

Everything lives in the ``schedsync`` schema, so the state can share a database
with synced data (``public``). Times are POSIX seconds (``float8``), taken from
the server's clock (``schedsync.now()`` is ``clock_timestamp()``) unless the
caller passes one. Each step of a run is one function call, so a cron tick costs
a handful of round trips: ``admit`` (seen, paused, breaker, slot, budgets, the
``running`` row and its lease) and ``finish`` (the end, the breaker, the trial
lease, retention, the run's own lease dropped).

Leases (``schedsync.leases``): a run is alive while a lease naming it has not
expired by the server's clock; a job's overlap lease is a row named after the job
(``store.postgres.Leases``). Only migrations take an advisory lock (transaction-level,
``MIGRATION_LOCK``), so one host applies them.

The schema is SQL files, shipped in the package: ``sql/postgres/schema.sql`` is the
current schema in one place, for reading, and ``sql/postgres/NNNN_*.sql`` the
migrations that build it. Append a migration, never edit one: each ends by setting
``schedsync.meta.version`` to its number, and a state whose version is higher than
the number of files was written by a newer schedsync and is refused.
"""

import os

MIGRATION_LOCK = 1935893363  # 'sch'+'s' as an int4: the migrations' transaction lock

SQL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sql", "postgres")


class Migrations:
    """The numbered files in ``sql/postgres/`` (``0001_init.sql`` ...), as a sequence of
    their SQL. Listed once per process (one ``listdir``: the version check of every tick
    needs only their count); a file is read only when a migration applies it."""

    def __init__(self, folder: str):
        self.folder = folder
        self.names = sorted(n for n in os.listdir(folder) if n[:4].isdigit() and n.endswith(".sql"))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._read(n) for n in self.names[index]]
        return self._read(self.names[index])

    def __iter__(self):
        return iter(self[:])

    def _read(self, name: str) -> str:
        with open(os.path.join(self.folder, name), encoding="utf-8") as f:
            return f.read()


MIGRATIONS = Migrations(SQL)  # append a file, never edit one

# Before schedsync reads or calls anything in the ``schedsync`` schema: the schema, and
# every function and relation in it, must be owned by the connecting role or by a role
# it is a member of (``pg_auth_members``, not ``pg_has_role``, which says yes to a
# superuser for every role). Otherwise another role with CREATE on the database
# could run its code with our privileges (its own ``schedsync.now()``, an overload
# that wins a call, a view or a row-level policy on a table we read). Catalogs only,
# so nothing of the schema's runs; a statement of its own, sent before the one that
# reads the schema in the same round trip (a statement is planned only once the one
# before it succeeded, and planning alone can run an IMMUTABLE function). No ``%``
# (psycopg2 formats it). Raises FOREIGN with "<kind> <name> is owned by role <owner>".
FOREIGN = "SSF01"
TRUST_CHECK = r"""
DO $trust$
DECLARE
    me oid := pg_catalog.to_regrole(pg_catalog.quote_ident(current_user));
    ns oid := pg_catalog.to_regnamespace('schedsync');
    mine oid[];
    o record;
BEGIN
    FOR o IN SELECT 0 AS pos, 'schema' AS kind, 'schedsync' AS name, nspowner AS owner
            FROM pg_catalog.pg_namespace WHERE oid = ns AND nspowner <> me
        UNION ALL SELECT 1, 'function', oid::pg_catalog.regprocedure::text, proowner
            FROM pg_catalog.pg_proc WHERE pronamespace = ns AND proowner <> me
        UNION ALL SELECT 2, 'relation', oid::pg_catalog.regclass::text, relowner
            FROM pg_catalog.pg_class WHERE relnamespace = ns AND relowner <> me
        ORDER BY 1
    LOOP
        IF mine IS NULL THEN  -- only when something is not our own: the roles we are in
            WITH RECURSIVE m(r) AS (SELECT me UNION SELECT a.roleid FROM pg_catalog.pg_auth_members a
                                    JOIN m ON a.member = m.r)
            SELECT array_agg(r) INTO mine FROM m;
        END IF;
        IF NOT o.owner = ANY (mine) THEN
            RAISE EXCEPTION USING ERRCODE = 'SSF01', MESSAGE =
                o.kind || ' ' || o.name || ' is owned by role ' || pg_catalog.pg_get_userbyid(o.owner);
        END IF;
    END LOOP;
END $trust$"""
