"""`schedsync crontab --check` and `status`'s drift warning, against a real installed crontab.

Root's crontab is the machine's (other tests install lines into it at the same time), so
these tests use the crontab of a second user, nobody, through runuser and the real
`crontab` command; a file lock keeps them from sharing nobody's crontab with each other.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from test_locks import NOBODY, as_nobody, nobody_python

pytestmark = pytest.mark.skipif(NOBODY is None or not shutil.which("runuser") or not shutil.which("crontab"),
                                reason="needs root, runuser and cron's crontab command")

# Schedules that (almost) never fire, should a cron daemon be running meanwhile.
JOBS = """\
jobs:
  leap:
    schedule: "0 0 29 2 *"
    command: ["true"]
  yearly:
    schedule: "@yearly"
    command: ["true"]
  newyear:
    schedule: "5 0 1 1 *"
    command: ["true"]
  by-hand:
    command: ["true"]
"""
UNRELATED = "17 4 29 2 * /usr/bin/true --not-ours -c /etc/elsewhere.yaml run leap"


class Nobody:
    """A folder nobody owns with a jobs.yaml, and schedsync run there as nobody."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.config = folder / "jobs.yaml"
        self.python = nobody_python()

    def cli(self, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
        env = [f"HOME={self.folder}", f"XDG_CACHE_HOME={self.folder}/cache",
               f"XDG_STATE_HOME={self.folder}/state", f"PATH={path or os.environ['PATH']}"]
        return as_nobody("env", "-i", *env, *self.python, "-m", "schedsync", "-c", str(self.config), *args,
                         cwd=self.folder)

    def install(self, text: str) -> None:
        result = subprocess.run(["runuser", "-u", "nobody", "--", "crontab", "-"], input=text, text=True,
                                capture_output=True, timeout=60, cwd=self.folder)
        assert result.returncode == 0, result.stderr

    def printed(self) -> list[str]:
        result = self.cli("crontab")
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()


@pytest.fixture
def nobody():
    with open(os.path.join(tempfile.gettempdir(), "schedsync-tests-nobody-crontab.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # nobody's crontab is one per machine
        before = subprocess.run(["crontab", "-u", "nobody", "-l"], capture_output=True, text=True, timeout=30)
        folder = Path(tempfile.mkdtemp(prefix="schedsync-drift-"))
        try:
            folder.chmod(0o755)
            (folder / "jobs.yaml").write_text(JOBS)
            os.chown(folder, NOBODY, -1)
            os.chown(folder / "jobs.yaml", NOBODY, -1)
            yield Nobody(folder)
        finally:
            if before.returncode == 0:
                subprocess.run(["crontab", "-u", "nobody", "-"], input=before.stdout, text=True, timeout=30)
            else:
                subprocess.run(["crontab", "-u", "nobody", "-r"], capture_output=True, timeout=30)
            shutil.rmtree(folder, ignore_errors=True)


def line_of(lines: list[str], job: str) -> str:
    [line] = [ln for ln in lines if ln.endswith(f" run {job}")]
    return line


def test_check_names_each_missing_extra_and_changed_line_and_leaves_other_lines_alone(nobody):
    printed = nobody.printed()
    leap, yearly = line_of(printed, "leap"), line_of(printed, "yearly")
    gone = leap.replace("0 0 29 2 *", "1 0 29 2 *").replace(" run leap", " run gone")
    nobody.install("\n".join(["MAILTO=someone", UNRELATED, leap,
                              yearly.replace("@yearly", "@monthly"), gone, leap, ""]))

    result = nobody.cli("crontab", "--check")

    assert result.returncode == 1, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted([
        f"missing: newyear: {line_of(printed, 'newyear')}",
        "changed: line 4: yearly runs at `@monthly`, jobs.yaml says `@yearly`",
        f"extra: line 5: {gone} (a job jobs.yaml does not schedule)",
        f"extra: line 6: {leap} (installed twice)",
    ])
    [error] = result.stderr.splitlines()
    assert error.startswith("error: the installed crontab differs from `schedsync crontab` (4 differences) — ")

    # what it prints, with another program's lines around it: in sync
    nobody.install("\n".join([UNRELATED, *printed, "# the end", ""]))
    ok = nobody.cli("crontab", "--check")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert ok.stdout.startswith("crontab: in sync with ")


def test_a_changed_command_is_drift_but_spacing_is_not(nobody):
    printed = nobody.printed()
    leap = line_of(printed, "leap")
    respaced = leap.replace("0 0 29 2 *    ", "0  0 29 2 * ")
    other = [ln for ln in printed if ln != leap]
    nobody.install("\n".join([*other, respaced, ""]))
    assert nobody.cli("crontab", "--check").returncode == 0
    nobody.install("\n".join([*other, leap.replace(" run leap", " --state /tmp/x.db run leap"), ""]))
    result = nobody.cli("crontab", "--check")
    assert result.returncode == 1
    [changed] = result.stdout.splitlines()
    assert changed.startswith("changed: line ") and "--state /tmp/x.db" in changed


def test_status_warns_in_one_line_when_the_crontab_differs(nobody):
    nobody.install("\n".join(nobody.printed()) + "\n")
    assert nobody.cli("run", "by-hand").returncode == 0  # a state to read (reads create none)
    quiet = nobody.cli("status")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr

    nobody.config.write_text(JOBS.replace('"@yearly"', '"@monthly"'))  # edited, not reinstalled
    warned = nobody.cli("status")
    assert warned.returncode == 0
    [line] = [ln for ln in warned.stderr.splitlines() if "warning" in ln]
    assert line == ("warning: the installed crontab differs from `schedsync crontab`: yearly changed"
                    " — see `schedsync crontab --check`")
    assert warned.stderr.count("\n") == 1 or "a run's output" in warned.stderr
    for machine in (("status", "--json"), ("status", "--check")):  # what monitoring runs: no subprocess
        assert "warning" not in nobody.cli(*machine).stderr

    # a user whose crontab does not run this registry at all (say, root looking at a
    # service's jobs) is not warned: that crontab is someone else's business
    assert as_nobody("crontab", "-r").returncode == 0
    assert "warning" not in nobody.cli("status").stderr


def test_without_cron_check_says_so_and_status_stays_silent(project, tmp_path):
    project.write(JOBS)
    no_cron = str(tmp_path / "empty-path")  # a PATH where no crontab command is found
    os.mkdir(no_cron)
    result = project.cli("crontab", "--check", env={"PATH": no_cron})
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: there is no `crontab` command here") and " — install cron" in line
    assert project.cli("run", "by-hand").returncode == 0  # a state to read (reads create none)
    status = project.cli("status", env={"PATH": no_cron})
    assert status.returncode == 0 and status.stderr == "", status.stderr

