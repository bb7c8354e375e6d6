"""The PostgreSQL schema as SQL files: ``schema.sql`` is what replaying the numbered
migrations yields, the files are numbered without a gap, and each sets the version
it is. Real server (``pg_server``), real ``pg_dump``."""

from __future__ import annotations

import os
import re
import subprocess

from schedsync.store import open_store
from schedsync.store.postgres_sql import MIGRATIONS, SQL


def schema_dump(pg_server, db: str) -> str:
    """``pg_dump --schema-only`` of the schedsync schema, without comments, SETs, blank
    lines and psql meta-commands (``\\restrict``, a random key per dump)."""
    out = subprocess.run([f"{pg_server.bin}/pg_dump", "--schema-only", "--no-owner", "-n", "schedsync",
                          "-h", pg_server.dir, "-U", "postgres", "-d", db],
                         capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines()
             if line.strip() and not line.startswith(("--", "SET ", "SELECT pg_catalog.set_config", "\\"))]
    return "\n".join(lines)


def test_replaying_the_migrations_yields_schema_sql(pg_server):
    replayed = pg_server.createdb()
    open_store(pg_server.url(replayed)).close()  # the store's own path: every migration, in order
    written = pg_server.createdb()
    with open(os.path.join(SQL, "schema.sql"), encoding="utf-8") as f:
        pg_server.psql(written, f.read())
    dumped = schema_dump(pg_server, replayed)
    assert "CREATE FUNCTION schedsync.admit(" in dumped and "CREATE TABLE schedsync.run_counts" in dumped
    assert dumped == schema_dump(pg_server, written)
    version = "SELECT version FROM schedsync.meta"
    assert pg_server.psql(replayed, version).strip() == pg_server.psql(written, version).strip() \
        == str(len(MIGRATIONS))


def test_the_migrations_are_numbered_in_order_and_each_sets_its_own_version():
    # Numbers are reserved per piece of work, so one merged before another may leave a
    # gap for a while: the version is the last file's number, and a state upgrades
    # through the files numbered above its version.
    names = MIGRATIONS.names
    numbers = [int(name[:4]) for name in names]
    assert len(names) >= 4 and numbers == sorted(set(numbers)) and len(MIGRATIONS) == numbers[-1]
    assert numbers[:4] == [1, 2, 3, 4]
    for number, name, sql in zip(numbers, names, MIGRATIONS, strict=True):
        assert re.fullmatch(rf"{number:04d}_[a-z0-9_]+\.sql", name), name
        assert re.findall(r"UPDATE schedsync\.meta SET version = (\d+);", sql) == [str(number)], name
    assert "schema.sql" not in names
    assert MIGRATIONS[4:] == [sql for number, sql in zip(numbers, MIGRATIONS, strict=True) if number > 4]


def test_a_migration_file_is_read_only_when_applied(tmp_path):
    from schedsync.store.postgres_sql import Migrations

    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0002_b.sql").write_text("SELECT 2;")
    (tmp_path / "schema.sql").write_text("-- not a migration")
    found = Migrations(str(tmp_path))
    (tmp_path / "0001_a.sql").unlink()  # counting needs no file's text
    assert len(found) == 2 and found[1:] == ["SELECT 2;"]
