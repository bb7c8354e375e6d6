"""The state file as a user meets it: messages that tell the truth, a foreign
database refused, and a state this user may read but not write still shown.

"Not writable" is real: commands run as root without any capability
(``setpriv --bounding-set=-all``), so file modes bind as for any other user.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

from schedsync.store import open_store

NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to drop every capability")

JOBS = """\
    budgets:
      up: 30/1h
    jobs:
      quests:
        command: ["sleep", "30"]
        schedule: "* * * * *"
        budget: up
        overlap: allow
      points:
        command: "true"
        schedule: "* * * * *"
"""


def unprivileged(project, *args, state=None):
    argv = NO_CAPS + project.argv(*args)
    env = dict(project.env)
    if state:
        env["SCHEDSYNC_STATE"] = str(state)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL, cwd=project.path)


def digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_missing_state_in_a_folder_that_is_not_writable_says_it_cannot_be_created(project):
    project.write(JOBS)
    folder = project.path / "locked"
    folder.mkdir(mode=0o555)
    result = unprivileged(project, "run", "--force-slot", "points", state=folder / "state.db")
    assert result.returncode == 1
    assert result.stderr == (f"error: cannot create state file {folder / 'state.db'}: its folder {folder}"
                             " is not writable — make that folder writable by this user, or pass --state PATH\n")
    assert list(folder.iterdir()) == []


def test_a_state_this_user_can_only_read_is_shown_and_left_as_it_was(project):
    project.write(JOBS)
    assert project.cli("run", "--force-slot", "points").returncode == 0
    crashed = project.start("run", "--force-slot", "quests", start_new_session=True)  # recorded running...
    deadline = time.time() + 30
    while not any(r["status"] == "running" for r in project.history("quests")):
        assert time.time() < deadline
        time.sleep(0.1)
    os.killpg(crashed.pid, signal.SIGKILL)  # ...then killed: reaping would record it crashed
    crashed.communicate()
    db = sqlite3.connect(project.state)  # as its owner's last process would on closing
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    folder = project.path / "readonly"
    folder.mkdir()
    shutil.copy(project.state, folder / "state.db")
    (folder / "state.db").chmod(0o444)
    folder.chmod(0o555)
    before = digest(folder)

    status = unprivileged(project, "status", "--json", state=folder / "state.db")
    assert status.returncode == 0, status.stderr
    jobs = {j["name"]: j for j in json.loads(status.stdout)["jobs"]}
    assert jobs["points"]["health"] == "OK"
    assert jobs["quests"]["last_run"]["status"] == "crashed"  # reaped in memory
    assert [j["name"] for j in jobs.values()] == ["quests", "points"]
    history = unprivileged(project, "history", "quests", "--json", state=folder / "state.db")
    assert history.returncode == 0, history.stderr
    assert [r["status"] for r in json.loads(history.stdout)] == ["crashed"]
    metrics = unprivileged(project, "metrics", state=folder / "state.db")
    assert metrics.returncode == 0 and 'schedsync_job_last_success_timestamp_seconds{job="points"}' in metrics.stdout
    assert unprivileged(project, "status", state=folder / "state.db").returncode == 0

    run = unprivileged(project, "run", "--force-slot", "points", state=folder / "state.db")
    assert run.returncode == 1 and run.stderr.startswith("error: state file ") and "read-only" in run.stderr
    assert digest(folder) == before  # nothing written, no -wal or -shm left


def test_the_budget_column_never_rounds_up(project):
    project.write(JOBS)
    store = open_store(str(project.state))
    try:
        assert store.spend(["up"], {"up": (30.0, 3600.0)}, 6.3, store.now()) is None  # 23.7 left
    finally:
        store.close()
    result = project.cli("status", env={"COLUMNS": "200"})
    [row] = [line for line in result.stdout.splitlines() if line.startswith("quests")]
    assert " 23/30 " in row and "24/30" not in row
    [budget] = project.status()["budgets"]
    assert 23.7 <= budget["tokens"] < 23.8


def test_another_applications_database_is_refused_and_left_unchanged(project):
    project.write(JOBS)
    other = project.path / "app.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO users (name) VALUES ('ada')")
    db.commit()
    db.close()
    before = other.read_bytes()
    for command in (["run", "--force-slot", "points"], ["status"]):
        result = project.cli("--state", str(other), *command)
        assert result.returncode == 1
        assert result.stderr == (f"error: state file {other} is another application's SQLite database"
                                 " (tables: users) — point --state at a schedsync state file, or at a new path\n")
    assert other.read_bytes() == before
    db = sqlite3.connect(other)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["users"]
    db.close()


def test_a_symlink_to_an_empty_or_missing_file_is_not_adopted_but_one_to_a_state_is(project):
    project.write(JOBS)
    empty = project.path / "empty"
    empty.touch()
    link = project.path / "link.db"
    link.symlink_to(empty)
    result = project.cli("--state", str(link), "run", "--force-slot", "points")
    assert result.returncode == 1
    assert result.stderr == (f"error: state file {link} is a symbolic link to an empty file — point --state"
                             " at the real file, or at a new path schedsync may create\n")
    assert empty.read_bytes() == b""
    link.unlink()
    link.symlink_to(project.path / "missing.db")
    assert "a missing file" in project.cli("--state", str(link), "run", "--force-slot", "points").stderr
    assert project.cli("run", "--force-slot", "points").returncode == 0
    link.unlink()
    link.symlink_to(project.state)
    # the same slot again (a cron run claims it once since issue 17): forced, as a person would
    assert project.cli("--state", str(link), "run", "--force-slot", "points").returncode == 0
    assert len(project.history("points")) == 2


def test_the_counters_migration_seeds_them_from_the_runs_already_recorded(tmp_path):
    from schedsync.store.sqlite import MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:3]:  # a state written before the counters existed (v3)
        migration(db)
    db.execute("PRAGMA user_version = 3")
    rows = [("a", "success", 2), ("a", "success", 1), ("a", "failed", 0), ("b", "running", 0)]
    db.executemany("INSERT INTO runs (job, status, trigger, started_at, host, pid, requests)"
                   " VALUES (?, ?, 'cron', 0, 'h', 1, ?)", rows)
    db.close()
    store = open_store(str(path))
    try:
        assert store.counters() == {"a": {"success": (2, 3), "failed": (1, 0)}}
        assert store.adhoc_jobs() == {}
    finally:
        store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_the_run_totals_migration_seeds_them_from_the_runs_already_recorded(tmp_path):
    from schedsync.store.sqlite import MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:4]:  # a state written before run_totals existed (v4)
        migration(db)
    db.execute("PRAGMA user_version = 4")
    rows = [("a", "success", 50, 1, 4, 0), ("a", "failed", 7000, 3, 0, 2), ("a", "skipped", 0, 0, 0, 0),
            ("a", "crashed", 9000, 1, 0, 0), ("b", "running", None, 0, 0, 0)]
    db.executemany("INSERT INTO runs (job, status, trigger, started_at, host, pid, duration_ms, attempts,"
                   " items_processed, items_failed) VALUES (?, ?, 'cron', 0, 'h', 1, ?, ?, ?, ?)", rows)
    db.close()
    store = open_store(str(path))
    try:
        assert store.run_totals() == {"a": {"runs": 2, "seconds": 7.05, "processed": 4, "failed": 2,
                                            "deleted": 0, "retries": 2, "buckets": {0.1: 1, 10.0: 1}}}
    finally:
        store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
