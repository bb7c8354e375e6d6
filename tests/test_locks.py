"""Lock files and their folder are trusted only when private; a second user (nobody) attacks."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOBODY = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else None
pytestmark = pytest.mark.skipif(NOBODY is None or not shutil.which("runuser"),
                                reason="needs root and runuser to act as a second user")
JOBS_YAML = 'jobs:\n  shell: {command: ["true"]}\n'


def as_nobody(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, **kwargs)


def nobody_python() -> list[str]:
    """An interpreter nobody may run (ours may sit in root's home) that imports schedsync."""
    path = os.pathsep.join([str(ROOT), *site.getsitepackages()])
    for python in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if python and as_nobody("env", f"PYTHONPATH={path}", python, "-c", "import yaml, cronsim").returncode == 0:
            return ["env", f"PYTHONPATH={path}", python]
    pytest.skip("no Python interpreter that nobody can run with our packages")


@pytest.fixture
def place():
    """A folder both users can reach, owned by root (the tmp_path chain is root's own)."""
    folder = Path(tempfile.mkdtemp(prefix="schedsync-locks-"))
    folder.chmod(0o755)
    (folder / "jobs.yaml").write_text(JOBS_YAML)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def run_as_root(place: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(place), "XDG_CACHE_HOME": str(place / "cache")}
    env = {k: v for k, v in env.items() if not k.startswith("SCHEDSYNC_")}
    return subprocess.run([sys.executable, "-m", "schedsync", "-c", str(place / "jobs.yaml"),
                           "--state", str(place / "state.db"), *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, env=env)


def history(place: Path) -> list[dict]:
    result = run_as_root(place, "history", "shell", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line(result, *fragments: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_lock_folder_made_by_another_user_is_refused_and_the_attempt_recorded(place):
    place.chmod(0o1777)  # a shared folder, like /tmp: anyone may pre-create the lock folder
    assert as_nobody("mkdir", "-m", "777", str(place / "state.db.locks")).returncode == 0
    result = run_as_root(place, "run", "shell")
    assert_one_line(result, f"lock folder {place}/state.db.locks belongs to uid {NOBODY}", "rm -r")
    [run] = history(place)
    assert run["status"] == "failed" and run["error"] == result.stderr.strip()[len("error: "):]
    # nothing was created inside the folder the other user controls
    assert os.listdir(place / "state.db.locks") == []


def test_root_on_another_users_state_is_told_to_run_as_them_not_to_remove_their_locks(place):
    # nobody's own installation (state and lock folder alike), and root runs one of its jobs
    python = nobody_python()
    os.chown(place, NOBODY, grp.getgrnam("nogroup").gr_gid)
    command = [*python, "-m", "schedsync", "-c", str(place / "jobs.yaml"), "--state", str(place / "state.db")]
    assert as_nobody("env", f"HOME={place}", f"XDG_CACHE_HOME={place}/cache", *command, "run", "shell").returncode == 0
    result = run_as_root(place, "run", "shell")
    assert_one_line(result, f"lock folder {place}/state.db.locks belongs to uid {NOBODY} (nobody), as does the state",
                    "sudo -u nobody schedsync")
    assert "rm " not in result.stderr
    assert os.path.isdir(place / "state.db.locks")


def test_a_lock_folder_others_can_write_is_refused(place):
    (place / "state.db.locks").mkdir()
    (place / "state.db.locks").chmod(0o777)
    assert_one_line(run_as_root(place, "run", "shell"), "is writable by other users", "chmod 700")
    (place / "state.db.locks").chmod(0o770)
    assert_one_line(run_as_root(place, "run", "shell"), "is writable by other users")
    shutil.rmtree(place / "state.db.locks")
    assert run_as_root(place, "run", "shell").returncode == 0
    info = os.lstat(place / "state.db.locks")  # made afresh: ours and private
    assert (info.st_uid, info.st_mode & 0o777) == (0, 0o700)


def test_a_lock_folder_that_is_a_symlink_to_another_users_folder_is_refused(place):
    place.chmod(0o1777)
    theirs = place / "theirs"
    assert as_nobody("mkdir", "-m", "700", str(theirs)).returncode == 0
    (place / "state.db.locks").symlink_to(theirs)
    assert_one_line(run_as_root(place, "run", "shell"), "is not a folder")


def test_a_lock_file_swapped_for_a_symlink_is_never_followed(place):
    assert run_as_root(place, "run", "shell").returncode == 0
    lock = place / "state.db.locks" / "shell.lock"
    lock.unlink()
    victim = place / "victim"  # root's file the symlink points at: must not be created
    lock.symlink_to(victim)
    assert_one_line(run_as_root(place, "run", "shell"), f"lock file {lock} is a symbolic link")
    assert not victim.exists()


def test_a_lock_file_left_by_sudo_gives_one_line_and_records_the_attempt(place):
    python = nobody_python()
    os.chown(place, NOBODY, grp.getgrnam("nogroup").gr_gid)
    command = [*python, "-m", "schedsync", "-c", str(place / "jobs.yaml"), "--state", str(place / "state.db")]
    env_home = [f"HOME={place}", f"XDG_CACHE_HOME={place}/cache"]
    first = as_nobody("env", *env_home, *command, "run", "shell")
    assert first.returncode == 0, first.stderr
    # what one `sudo schedsync run shell` of an older schedsync left behind
    lock = place / "state.db.locks" / "shell.lock"
    lock.unlink()
    lock.touch(mode=0o600)
    os.chown(lock, 0, 0)
    for _ in range(2):  # every tick: the same one line, never a traceback
        result = as_nobody("env", *env_home, *command, "run", "shell")
        assert_one_line(result, f"lock file {lock} cannot be opened by this user", "sudo rm")
    runs = history(place)
    assert [r["status"] for r in runs] == ["failed", "failed", "success"]
    assert runs[0]["error"] == result.stderr.strip()[len("error: "):]


def test_a_state_file_the_user_cannot_open_gives_one_line(place):
    # A guard: the state's own errors were one line already; the lock's were the traceback.
    python = nobody_python()
    os.chown(place, NOBODY, grp.getgrnam("nogroup").gr_gid)
    assert run_as_root(place, "run", "shell").returncode == 0  # root's state, 0600
    (place / "state.db").chmod(0o600)
    command = [*python, "-m", "schedsync", "-c", str(place / "jobs.yaml"), "--state", str(place / "state.db")]
    result = as_nobody("env", f"HOME={place}", f"XDG_CACHE_HOME={place}/cache2", *command, "run", "shell")
    assert_one_line(result, f"state file {place}/state.db")
