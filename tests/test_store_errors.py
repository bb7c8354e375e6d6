"""Database errors are classified by SQLite's result code and PostgreSQL's SQLSTATE,
never by the words of their message: a path that holds "locked" or "full" is not a
locked or full state, and a server that speaks German is understood all the same.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import time

import pytest

from schedsync.core.errors import StateBusy, StateError
from schedsync.store import open_store
from schedsync.store.sqlite import (
    BUSY,
    CANTOPEN,
    CORRUPT,
    FULL,
    IOERR,
    LOCKED,
    NOTADB,
    PERM,
    READONLY,
    SQLiteStore,
    code_of_text,
    error_code,
)


def _error(action) -> sqlite3.Error:
    with pytest.raises(sqlite3.Error) as caught:
        action()
    return caught.value


def test_sqlite_errors_are_read_by_their_code_and_the_310_fallback_agrees(tmp_path):
    path = str(tmp_path / "state.db")
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("CREATE TABLE t (x)")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        locked = _error(lambda: other.execute("BEGIN IMMEDIATE"))
    finally:
        holder.execute("ROLLBACK")
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    readonly = _error(lambda: reader.execute("INSERT INTO t VALUES (1)"))
    (tmp_path / "notes.txt").write_text("these are my notes, not a database\n" * 100)
    notadb = _error(lambda: sqlite3.connect(str(tmp_path / "notes.txt")).execute("SELECT 1 FROM t"))
    expected = {BUSY: locked, READONLY: readonly, NOTADB: notadb}
    for code, exc in expected.items():
        assert error_code(exc) == code
        assert code_of_text(str(exc)) == code  # what Python 3.10 (no codes) reads instead
    # SQLite's own text for every code the fallback knows maps back to that code
    for code in (PERM, BUSY, LOCKED, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB):
        assert code_of_text(_errstr(code)) == (BUSY if code == LOCKED else code), _errstr(code)
    assert error_code(OSError(28, "No space left on device: '/full/locked/readonly'")) is None


def _errstr(code: int) -> str:
    # sqlite3_errstr(code), from the library sqlite3 uses: the text a 3.10 error carries
    import _sqlite3
    import ctypes

    lib = ctypes.CDLL(_sqlite3.__file__)
    lib.sqlite3_errstr.restype = ctypes.c_char_p
    return lib.sqlite3_errstr(code).decode()


def test_a_busy_optional_write_of_a_read_command_is_skipped_and_so_are_later_ones(tmp_path):
    path = str(tmp_path / "state.db")
    open_store(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    store = SQLiteStore(path, write=False)
    try:
        for _ in range(2):  # the second never asks SQLite: the store has turned read-only
            with pytest.raises(StateBusy):
                store.see_jobs(["a"])
            assert store.writable is False
    finally:
        holder.execute("ROLLBACK")
        store.close()


def test_a_path_that_names_locked_or_full_is_not_read_as_a_locked_or_full_state(project):
    project.write('jobs:\n  a: {command: ["touch", "ran"]}\n')
    for name in ("locked", "disk-full", "readonly"):
        (project.path / name).write_text("a file, where the state's folder should be\n")
        state = project.path / name / "schedsync.db"
        result = project.cli("run", "a", env={"SCHEDSYNC_STATE": str(state)})
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"error: state file {state} ") and result.stderr.count("\n") == 1
        assert result.stderr.endswith(" — check the file, or pass --state PATH\n"), result.stderr
        assert not (project.path / "ran").exists()


# --- PostgreSQL with German messages ----------------------------------------------------

@pytest.fixture(scope="module")
def german_server():
    """A throwaway server whose lc_messages is de_DE.UTF-8 (a locale built for it alone)."""
    from pgserver import PgServer, binaries

    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("the postgres extra is not installed")
    if not binaries() or not shutil.which("localedef"):
        pytest.skip("needs PostgreSQL and localedef")
    if not any(os.path.exists(f"/usr/share/locale/de/LC_MESSAGES/postgres-{v}.mo")
               for v in range(10, 30)):
        pytest.skip("PostgreSQL's German messages are not installed")
    locales = tempfile.mkdtemp(prefix="schedsync-locale-")  # under /tmp: the postgres user reads it
    os.chmod(locales, 0o755)
    server = PgServer()
    try:
        made = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", f"{locales}/de_DE.UTF-8"],
                              capture_output=True, text=True)
        if made.returncode not in (0, 1) or not os.path.exists(f"{locales}/de_DE.UTF-8"):  # 1: warnings
            pytest.skip(f"localedef could not build de_DE.UTF-8: {made.stderr.strip()[:200]}")
        server.start(env={"LOCPATH": locales})
        server.psql("postgres", "ALTER SYSTEM SET lc_messages = 'de_DE.UTF-8'")
        server.psql("postgres", "SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while server.psql("postgres", "SHOW lc_messages").strip() != "de_DE.UTF-8":
            assert time.monotonic() < deadline, "the server did not take lc_messages"
            time.sleep(0.1)
        yield server
    finally:
        server.stop()
        shutil.rmtree(locales, ignore_errors=True)


def test_a_german_server_is_classified_by_sqlstate(german_server):
    import psycopg2

    url = german_server.url(german_server.createdb())
    open_store(url).close()  # the state, created
    with psycopg2.connect(url) as probe, probe.cursor() as cur:  # the server really speaks German
        with pytest.raises(psycopg2.Error) as error:
            cur.execute("SELECT * FROM schedsync.nope")
        assert "existiert nicht" in str(error.value)

    # read_only_sql_transaction (25006)
    store = open_store(f"{url}&options=-c%20default_transaction_read_only%3Don")
    try:
        with pytest.raises(StateError) as error:
            store.set_paused("a", True)
        assert str(error.value).startswith(f"state database {store.label} is read-only")
    finally:
        store.close()

    # lock_not_available (55P03): a read command's optional write waits on no one
    holder = psycopg2.connect(url)
    try:
        holder.cursor().execute("LOCK TABLE schedsync.jobs IN EXCLUSIVE MODE")
        reader = open_store(url, write=False)
        try:
            with pytest.raises(StateBusy) as busy:
                reader.see_jobs(["a"])
            assert "another session holds a lock" in str(busy.value)
            assert reader.writable is False
        finally:
            reader.close()
    finally:
        holder.rollback()
        holder.close()
