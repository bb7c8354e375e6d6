"""`schedsync logs`, the `status --check` line for each health, `--version`, and usage errors
in the house style, through the real CLI on real state files. Each read command is also run
through typer (by an option the fast path leaves to it), so both ways in are held to the same
output."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from schedsync import __version__
from schedsync.store import open_store
from stored import finished_run

DAY = 86400.0


def seen_long_ago(project, *jobs: str, ago: float = 3600) -> None:
    store = open_store(str(project.state))
    try:
        store.see_jobs(list(jobs), time.time() - ago)
    finally:
        store.close()


def add_run(project, job: str, status: str, started_at: float, reason: str | None = None) -> int:
    store = open_store(str(project.state))
    try:
        return finished_run(store, job, status, started_at, reason=reason,
                            exit_code=1 if status == "failed" else 0).id
    finally:
        store.close()


LEAKY = """\
    jobs:
      leaky:
        command: ["sh", "-c", "echo fetching page 1; echo token is $T; echo giving up >&2; exit 3"]
        env: {T: "${SYNC_TOKEN}"}
      quiet:
        command: ["true"]
    """
SECRET = "sk-live-0123456789abcdef"


# --- logs --------------------------------------------------------------------------------

def test_logs_of_a_failed_run_shows_its_output_with_the_secret_as_stars(project):
    project.write(LEAKY)
    assert project.cli("run", "leaky", env={"SYNC_TOKEN": SECRET}).returncode == 1
    result = project.cli("logs", "leaky")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    run = project.history("leaky")[0]
    assert re.fullmatch(rf"run {run['id']} of leaky: failed \(exit 3\), started \d{{4}}-\d\d-\d\d "
                        r"\d\d:\d\d:\d\d UTC, took \S+, host \S+", header), header
    assert "fetching page 1" in lines and "token is ***" in lines and "giving up" in lines
    assert SECRET not in result.stdout + result.stderr


# What a hostile job prints: an OSC title, a screen clear, an OSC 52 clipboard write, a C1 CSI.
HOSTILE = "title\x1b]0;pwned\x07 clear\x1b[2J clip\x1b]52;c;cm0gLXJmIH4=\x07 csi\x9b31m end"
SHOWN = "title^[]0;pwned^G clear^[[2J clip^[]52;c;cm0gLXJmIH4=^G csiM-^[31m end"  # as cat -v shows it
RAW = (b"\x1b]0;", b"\x1b[2J", b"\x1b]52;", b"\xc2\x9b", b"\x07")


def hostile_run(project, monkeypatch) -> int:
    """A failed run of ``esc`` whose output, error and host (another host's, on a shared
    state) all carry escape sequences."""
    from schedsync.store import liveness

    project.write("jobs:\n  esc:\n    command: [\"true\"]\n")
    monkeypatch.setattr(liveness, "HOST", "web\x1b]0;host\x07one")
    store = open_store(str(project.state))
    try:
        return finished_run(store, "esc", "failed", time.time() - 60, exit_code=1, output=HOSTILE + "\n",
                            error=HOSTILE).id
    finally:
        store.close()


def on_terminal(project, *args: str) -> str:
    """What ``schedsync ARGS`` writes to a real pseudo-terminal, 200 columns wide."""
    import os
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(project.argv(*args), stdin=follower, stdout=follower, stderr=follower,
                            cwd=project.path, env={**project.env, "COLUMNS": "200"})
    os.close(follower)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer is gone
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=30) == 0, seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    assert not any(raw in seen for raw in RAW), seen  # nothing the terminal would obey
    return seen.decode()


def test_logs_on_a_terminal_shows_control_characters_as_cat_v_does_and_a_pipe_gets_the_bytes(project, monkeypatch):
    hostile_run(project, monkeypatch)
    shown = on_terminal(project, "logs", "esc")
    assert "host web^[]0;host^Gone" in shown and SHOWN in shown
    piped = subprocess.run(project.argv("logs", "esc"), capture_output=True, env=project.env, cwd=project.path,
                           stdin=subprocess.DEVNULL, timeout=60)
    assert piped.returncode == 0
    header, output = piped.stdout.decode().split("\n", 1)
    assert header.endswith("host web\x1b]0;host\x07one") and output == HOSTILE + "\n"  # a pipe: the bytes


@pytest.mark.parametrize("args", [("history", "esc"), ("status", "esc"), ("status",)])
def test_tables_on_a_terminal_show_an_errors_control_characters_visibly(project, monkeypatch, args):
    hostile_run(project, monkeypatch)
    shown = on_terminal(project, *args)
    assert "esc" in shown and ("^[]0;pwned^G" in shown or "^[[2J" in shown)


def test_history_and_logs_show_times_in_the_local_zone_labelled_and_history_the_host(project):
    import os
    from datetime import datetime
    from zoneinfo import ZoneInfo

    project.write(LEAKY)
    project.cli("run", "quiet")
    [run] = project.history("quiet")
    local = datetime.fromisoformat(run["started_at"].replace("Z", "+00:00")).astimezone(ZoneInfo("Asia/Kathmandu"))
    shown = f"{local:%Y-%m-%d %H:%M:%S} +0545"  # UTC+05:45: no hour-aligned zone passes by chance
    for args in (("history", "quiet"), ("history", "quiet", "--limit", "5")):  # the fast path, then typer
        result = project.cli(*args, env={"TZ": "Asia/Kathmandu"})
        assert result.returncode == 0, result.stderr
        header, row = result.stdout.splitlines()
        assert header.split() == ["ID", "STARTED", "STATUS", "TOOK", "TRIES", "REQ", "ITEMS", "EXIT", "TRIGGER",
                                  "HOST", "DETAIL"]
        assert shown in row and row.split()[-1] == os.uname().nodename == run["host"]
    header = project.cli("logs", "quiet", env={"TZ": "Asia/Kathmandu"}).stdout.splitlines()[0]
    assert f"started {shown}, took " in header


def test_tables_into_a_pipe_end_their_lines_without_spaces(project):
    project.write(LEAKY)
    project.cli("run", "quiet")
    project.cli("run", "leaky")
    for args in (("history", "quiet"), ("history", "leaky"), ("list",), ("status",), ("status", "leaky")):
        out = project.cli(*args).stdout
        assert "success" in out or "failed" in out or "command" in out, (args, out)
        assert [line for line in out.splitlines() if line.endswith(" ")] == [], (args, out)


def test_logs_of_a_given_run_shows_that_run_and_history_says_how_to_get_there(project):
    project.write(LEAKY)
    project.cli("run", "leaky", env={"SYNC_TOKEN": "first-secret-value"})
    first = project.history("leaky")[0]["id"]
    project.cli("run", "leaky", env={"SYNC_TOKEN": SECRET})
    out = project.cli("logs", "leaky", str(first)).stdout
    assert out.startswith(f"run {first} of leaky: failed") and "token is ***" in out
    history = project.cli("history", "leaky")
    assert history.returncode == 0
    assert f"schedsync logs leaky {first + 1}" in history.stderr
    assert "schedsync logs" not in history.stdout  # a pipe into grep gets the table only


def test_logs_of_a_run_without_output_says_so(project):
    project.write(LEAKY)
    project.cli("run", "quiet")
    result = project.cli("logs", "quiet")
    assert result.returncode == 0
    assert result.stdout.startswith("run 1 of quiet: success, started ") and len(result.stdout.splitlines()) == 1
    assert result.stderr == "(no output captured)\n"


def test_logs_of_an_unknown_job_exits_2(project):
    project.write(LEAKY)
    result = project.cli("logs", "leakyy")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "leaky" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_logs_of_a_missing_run_or_another_jobs_run_is_one_line_and_exit_1(project):
    project.write(LEAKY)
    project.cli("run", "quiet")
    missing = project.cli("logs", "leaky", "99")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == ("error: leaky has no run 99 — `schedsync history leaky` lists its runs "
                              "(pruned ones are gone)\n")
    other = project.cli("logs", "leaky", "1")
    assert other.returncode == 1
    assert other.stderr == "error: run 1 is a run of quiet, not of leaky — schedsync logs quiet 1\n"
    never = project.cli("logs", "leaky")
    assert never.returncode == 1
    assert never.stderr == "error: leaky has no runs yet — run it once: schedsync run leaky\n"


def test_logs_with_a_run_id_that_is_not_a_number_is_a_usage_error(project):
    project.write(LEAKY)
    result = project.cli("logs", "leaky", "last")
    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid value for '[RUN_ID]'")
    assert result.stderr.rstrip().endswith("— see `schedsync logs --help`")


# --- status --check: one line per health ------------------------------------------------------

HEALTHS = """\
    jobs:
      fine:
        schedule: "*/5 * * * *"
        command: ["true"]
      broken:
        schedule: "0 * * * *"
        command: ["false"]
      every-minute:
        schedule: "* * * * *"
        grace: 0s
        command: ["true"]
      starved:
        schedule: "* * * * *"
        grace: 5m
        command: ["true"]
      by-hand:
        command: ["true"]
    """


def check(project, *args):
    result = project.cli("status", "--check", *args)
    return result.returncode, result.stdout


def test_check_says_ok_with_the_number_of_jobs_when_none_needs_action(project):
    project.write(HEALTHS)
    project.cli("run", "--force-slot", "fine")
    assert check(project) == (0, "SCHEDSYNC OK - 5 jobs\n")
    assert check(project, "fine") == (0, "SCHEDSYNC OK - 1 job\n")


def test_check_is_critical_for_a_failing_job(project):
    project.write(HEALTHS)
    project.cli("run", "--force-slot", "broken")
    assert check(project) == (1, "SCHEDSYNC CRITICAL - 1 of 5 jobs: broken FAILING\n")


def test_check_is_a_warning_for_a_late_job(project):
    project.write(HEALTHS)
    seen_long_ago(project, "every-minute")
    assert check(project) == (1, "SCHEDSYNC WARNING - 1 of 5 jobs: every-minute LATE\n")


def test_check_is_a_warning_for_a_stalled_job(project):
    project.write(HEALTHS)
    seen_long_ago(project, "starved")
    add_run(project, "starved", "skipped", time.time(), reason="rate_limited")
    assert check(project, "starved") == (1, "SCHEDSYNC WARNING - 1 of 1 job: starved STALLED\n")


def test_check_names_every_job_needing_action_worst_first_and_is_critical_if_one_fails(project):
    project.write(HEALTHS)
    seen_long_ago(project, "every-minute", "starved")
    add_run(project, "starved", "skipped", time.time(), reason="rate_limited")
    project.cli("run", "--force-slot", "broken")
    code, out = check(project)
    assert (code, out) == (1, "SCHEDSYNC CRITICAL - 3 of 5 jobs: broken FAILING, starved STALLED, "
                              "every-minute LATE\n"), out


def test_check_counts_running_paused_and_never_run_jobs_as_ok(project):
    project.write(HEALTHS)
    project.cli("pause", "by-hand")
    assert [j["health"] for j in project.status()["jobs"] if j["name"] == "by-hand"] == ["PAUSED"]
    assert check(project) == (0, "SCHEDSYNC OK - 5 jobs\n")


def test_check_verbose_adds_the_table_after_the_line(project):
    project.write(HEALTHS)
    project.cli("run", "--force-slot", "broken")
    code, out = check(project, "-v")
    first, *table = out.splitlines()
    assert (code, first) == (1, "SCHEDSYNC CRITICAL - 1 of 5 jobs: broken FAILING")
    assert table[0].split()[:2] == ["JOB", "HEALTH"] and any(ln.startswith("broken ") for ln in table)
    assert len(table) >= 6


def test_check_is_unknown_with_exit_3_when_the_state_cannot_be_read(project):
    project.write(HEALTHS)
    project.state.write_bytes(b"this is not a database, just bytes " * 200)
    result = project.cli("status", "--check")
    assert result.returncode == 3
    assert result.stdout.startswith("SCHEDSYNC UNKNOWN - ") and len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert project.cli("status").returncode == 1  # plain status: the usual one-line error


def test_check_with_json_keeps_the_json_and_the_exit_code(project):
    project.write(HEALTHS)
    project.cli("run", "--force-slot", "broken")
    result = project.cli("status", "--check", "--json")
    assert result.returncode == 1
    assert {j["name"] for j in json.loads(result.stdout)["jobs"]} == {"fine", "broken", "every-minute",
                                                                         "starved", "by-hand"}


# --- --version and usage errors -----------------------------------------------------------------

def test_version_prints_the_version(project):
    for args in (["--version"], ["--version", "status"]):
        result = project.cli(*args)
        assert (result.returncode, result.stdout, result.stderr) == (0, f"schedsync {__version__}\n", "")


def test_run_without_a_job_is_one_line_in_the_house_style(project):
    project.write(LEAKY)
    result = project.cli("run")
    assert result.returncode == 2
    assert result.stderr == ("error: missing argument 'JOB' — name a job from jobs.yaml, e.g. "
                             "`schedsync run JOB` (`schedsync list` shows them)\n")


@pytest.mark.parametrize("args, what", [
    (("status", "--bogus"), "error: no such option: --bogus"),
    (("--bogus", "status"), "error: no such option: --bogus"),
    (("frobnicate",), "error: no such command 'frobnicate'"),
    (("history", "leaky", "--limit", "zero"), "error: invalid value for '--limit' / '-n'"),
])
def test_usage_errors_are_one_line_with_a_fix_and_exit_2(project, args, what):
    project.write(LEAKY)
    result = project.cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith(what), result.stderr
    assert len(result.stderr.splitlines()) == 1 and " — see `schedsync" in result.stderr


def test_help_is_typers(project):
    result = project.cli("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: schedsync [OPTIONS] COMMAND [ARGS]...")
    assert "logs" in result.stdout and "--version" in result.stdout


# --- the fast path and typer give the same answers -----------------------------------------------

def test_read_commands_answer_the_same_through_typer(project):
    """``--`` and ``-n20`` are not the fast path's: typer parses those command lines."""
    project.write(LEAKY)
    project.cli("run", "leaky", env={"SYNC_TOKEN": SECRET})
    for fast, slow in [(("status", "--json"), ("status", "--json", "--")),
                       (("status", "--check"), ("status", "--check", "--")),
                       (("logs", "leaky"), ("logs", "--", "leaky")),
                       (("history", "leaky", "--json"), ("history", "leaky", "-n20", "--json")),
                       (("history", "leaky"), ("history", "leaky", "-n20")),
                       (("metrics",), ("metrics", "--")),
                       (("list",), ("list", "--")),
                       (("validate",), ("validate", "--"))]:
        a, b = project.cli(*fast), project.cli(*slow)
        assert (a.returncode, a.stderr) == (b.returncode, b.stderr), slow

        def same(out):
            return re.sub(r'"(generated_at|next_expected|why)": "[^"]*"|schedsync_\w+_seconds\S* \S+', "", out)

        assert same(a.stdout) == same(b.stdout), slow


# --- what each read command loads (start-up: bench/bench_read.py measures it) ---------------

@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("status", "--check"),
                                  ("status", "leaky"), ("history", "leaky"), ("logs", "leaky"),
                                  ("list",), ("metrics",), ("validate",), ("--version",)])
def test_a_plain_read_command_line_into_a_pipe_imports_neither_typer_nor_rich(project, args):
    project.write(LEAKY)
    project.cli("run", "leaky", env={"SYNC_TOKEN": SECRET})
    env = {k: v for k, v in project.env.items() if k != "COLUMNS"}  # a pipe as cron or an agent has it
    env.update(PYTHONPROFILEIMPORTTIME="1", SYNC_TOKEN=SECRET)
    result = subprocess.run(project.argv(*args), capture_output=True, text=True, env=env,
                            stdin=subprocess.DEVNULL, cwd=project.path, timeout=60)
    assert result.returncode == (1 if args == ("status", "--check") else 0), result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "schedsync.cli.main" in imported  # the profile is there
    assert not {m.split(".")[0] for m in imported} & {"typer", "click", "rich", "pydantic"}


def test_help_and_a_terminal_still_get_typer_and_rich(project):
    project.write(LEAKY)
    result = project.cli("status", "--help", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0 and "--check" in result.stdout
    assert "typer" in {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}


def test_the_history_hint_points_at_the_newest_run_with_output(project):
    project.write('jobs:\n  talky: {command: "echo said something"}\n')
    assert project.cli("run", "talky").returncode == 0
    assert project.cli("pause", "talky").returncode == 0
    assert project.cli("run", "talky").returncode == 75  # a skip: no output
    runs = project.history("talky")
    assert [r["status"] for r in runs] == ["skipped", "success"]
    result = project.cli("history", "talky")
    assert result.stderr == f"a run's output: schedsync logs talky {runs[1]['id']}\n"
    assert "said something" in project.cli("logs", "talky", str(runs[1]["id"])).stdout


@pytest.mark.parametrize("command, usage", [
    (("run",), "schedsync run [OPTIONS] JOB"),
    (("logs",), "schedsync logs [OPTIONS] JOB [RUN_ID]"),
    (("breaker", "reset"), "schedsync breaker reset [OPTIONS] JOB"),
    (("exec",), "schedsync exec [OPTIONS] NAME [-- CMD ARGS…]"),
])
def test_help_shows_required_arguments_without_braces(project, command, usage):
    result = project.cli(*command, "--help")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == f"Usage: {usage}"
