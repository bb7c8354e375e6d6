"""`schedsync exec NAME -- CMD ARGS…`: an ad-hoc command with a registry job's lock, timeout,
record, output rules and exit codes, through the real CLI (and under a real crontab line)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT
from schedsync.store import open_store
from test_cron_e2e import AFTER_THE_MINUTE, _crontab, _next_minute, _schedsync, cron  # noqa: F401 (fixture)

REGISTRY = """
    state: schedsync.db
    defaults:
      timeout: 2s
    budgets:
      api: 1/1h
    jobs:
      listed:
        timeout: 1s
        command: ["true"]
"""


def runs_in(state: Path, job: str) -> list:
    store = open_store(str(state))
    try:
        return store.runs(job, 50)
    finally:
        store.close()


def test_a_successful_command_prints_nothing_and_is_recorded_without_a_registry(project):
    # no jobs.yaml at all, and no -c: built-in defaults
    result = subprocess.run([sys.executable, "-m", "schedsync", "exec", "backup", "--", "sh", "-c",
                             "echo copying; echo done"], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, env=project.env, cwd=project.path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    [run] = runs_in(project.state, "backup")
    assert (run.status, run.trigger, run.exit_code) == ("success", "cron", 0)
    assert "copying" in run.output


def test_a_failing_command_prints_its_output_and_one_error_line_and_exits_1(project):
    project.write(REGISTRY)
    result = project.cli("exec", "backup", "--", "sh", "-c", "echo disk full; exit 4")
    assert result.returncode == 1
    assert result.stdout == "disk full\n"
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: backup: failed") and "exit 4" in result.stderr
    assert " history backup`" in result.stderr  # the hint: cron's mail names the absolute path


def test_it_shows_up_in_status_and_history_under_its_name(project):
    project.write(REGISTRY)
    assert project.cli("exec", "backup", "--", "true").returncode == 0
    assert project.cli("exec", "backup", "--", "false").returncode == 1
    jobs = {j["name"]: j for j in project.status()["jobs"]}
    assert jobs["backup"]["health"] == "FAILING" and jobs["backup"]["kind"] == "command"
    assert [r["status"] for r in project.history("backup")] == ["failed", "success"]
    table = project.cli("status").stdout
    assert "backup" in table and "FAILING" in table
    metrics = project.cli("metrics").stdout
    assert 'schedsync_runs_total{job="backup",status="failed"} 1' in metrics


def test_its_runs_are_looked_up_with_state_and_no_registry(project, tmp_path):
    # cron ran `schedsync --state X exec` with no jobs.yaml; later, from another folder without
    # one either, --state alone finds it: history, logs, status (table, detail, JSON, check)
    state = str(project.state)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in project.env.items() if k != "SCHEDSYNC_STATE"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "schedsync", "--state", state, *args],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                              env=env, cwd=elsewhere)

    assert cli("exec", "backup", "--", "sh", "-c", "echo copied; exit 3").returncode == 1
    history = cli("history", "backup", "--json")
    assert history.returncode == 0, history.stderr
    assert [r["status"] for r in json.loads(history.stdout)] == ["failed"]
    logs = cli("logs", "backup")
    assert logs.returncode == 0 and "copied" in logs.stdout, logs.stderr
    for args in (("status",), ("status", "backup"), ("status", "--check")):
        shown = cli(*args)
        assert "backup" in shown.stdout and "FAILING" in shown.stdout, (args, shown.stderr)
    [job] = json.loads(cli("status", "--json").stdout)["jobs"]
    assert (job["name"], job["health"]) == ("backup", "FAILING")
    unknown = cli("history", "bakup")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert "did you mean 'backup'?" in unknown.stderr
    # with no state named either, the missing registry is still the error
    bare = subprocess.run([sys.executable, "-m", "schedsync", "history", "backup"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, env=env, cwd=elsewhere)
    assert bare.returncode == 2 and "jobs.yaml: no such file" in bare.stderr


def test_the_registry_defaults_apply_and_timeout_overrides_them(project):
    project.write(REGISTRY)
    started = time.monotonic()
    result = project.cli("exec", "slow", "--", "sleep", "30")  # defaults: timeout 2s
    assert result.returncode == 1 and time.monotonic() - started < 20
    assert project.history("slow")[0]["status"] == "timeout"
    assert project.cli("exec", "slow", "--timeout", "20s", "--", "sleep", "3").returncode == 0


def test_a_registry_job_of_the_same_name_lends_its_settings(project):
    project.write(REGISTRY)
    result = project.cli("exec", "listed", "--", "sleep", "10")  # listed: timeout 1s
    assert result.returncode == 1
    assert project.history("listed")[0]["status"] == "timeout"


def test_a_second_exec_while_the_first_holds_the_lock_is_skipped_with_75(project):
    project.write(REGISTRY)
    first = project.start("exec", "backup", "--timeout", "30s", "--", "sleep", "5")
    try:
        deadline = time.time() + 20
        while not any(r.status == "running" for r in runs_in(project.state, "backup")):
            assert time.time() < deadline and first.poll() is None, first.stderr.read()
            time.sleep(0.1)
        second = project.cli("exec", "backup", "--", "true")
        assert second.returncode == 75, second.stderr
        assert project.history("backup")[0]["reason"] == "locked"
    finally:
        first.wait(timeout=30)
    assert first.returncode == 0


def test_a_budget_is_spent_and_an_empty_one_skips(project):
    project.write(REGISTRY)
    assert project.cli("exec", "pull", "--budget", "api", "--", "true").returncode == 0
    result = project.cli("exec", "pull", "--budget", "api", "--", "true")
    assert result.returncode == 75  # api holds 1 token an hour
    assert project.history("pull")[0]["reason"] == "rate_limited"


def test_the_command_line_is_never_stored(project):
    project.write(REGISTRY)
    assert project.cli("exec", "quiet", "--", "sh", "-c", "exit 0", "--password=hunter2-xyz").returncode == 0
    for path in (p for p in project.path.glob("schedsync.db*") if p.is_file()):
        assert b"hunter2-xyz" not in path.read_bytes()


def test_usage_errors_are_one_line_and_exit_2(project):
    project.write(REGISTRY)
    cases = {("exec", "backup"): "error: exec backup: no command given — put it after --",
             ("exec", "backup", "--timeout", "soon", "--", "true"): "error: exec backup: --timeout: 'soon'",
             ("exec", "backup", "--overlap", "never", "--", "true"): "error: exec backup: --overlap: 'never'",
             ("exec", "backup", "--budget", "nope", "--", "true"):
                 "error: exec backup: --budget: no budget named 'nope'",
             ("exec", "Bad Name", "--", "true"): "error: exec Bad Name: NAME: 'Bad Name' is not a valid name"}
    for args, start in cases.items():
        result = project.cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith(start) and result.stderr.count("\n") == 1, result.stderr
    assert not runs_in(project.state, "backup")


def test_exec_under_a_real_crontab_line_produces_a_record(project, cron):  # noqa: F811
    project.write(REGISTRY)
    marker = project.path / "wrapped"
    out = project.path / "cron-output"
    out.mkdir()
    env = project.env
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    settings = {"MAILTO": "", "HOME": env["HOME"], "XDG_CACHE_HOME": env["XDG_CACHE_HOME"],
                "XDG_STATE_HOME": env["XDG_STATE_HOME"], "PYTHONPATH": str(ROOT)}
    argv = " ".join(shlex.quote(a) for a in [*_schedsync(), "-c", str(project.config), "exec",
                                                "wrapped", "--timeout", "30s", "--", "touch", str(marker)])
    o, e, rc = (shlex.quote(str(out / f"wrapped.{x}")) for x in ("out", "err", "rc"))
    line = f"* * * * * {argv} >{o} 2>{e}; echo $? >{rc}.tmp && mv {rc}.tmp {rc}\n"
    assert "%" not in line
    block = "".join(f'{k}="{v}"\n' for k, v in settings.items()) + line
    cron(block)
    deadline, reinstalled = _next_minute(time.time()) + AFTER_THE_MINUTE, False
    while not (out / "wrapped.rc").exists() and time.time() < deadline:
        if not reinstalled and str(marker) not in _crontab("-l").stdout:
            # root's crontab is the machine's: another checkout's suite may have swapped it
            cron(block)
            deadline, reinstalled = _next_minute(time.time()) + AFTER_THE_MINUTE, True
        time.sleep(0.5)
    assert (out / "wrapped.rc").exists(), (
        f"cron ran nothing; found {sorted(os.listdir(out))}; crontab now:\n{_crontab('-l').stdout}")
    assert [(out / f"wrapped.{x}").read_text() for x in ("rc", "out", "err")] == ["0\n", "", ""]
    assert marker.exists()
    runs = project.history("wrapped")
    assert ("success", "cron") in [(r["status"], r["trigger"]) for r in runs], json.dumps(runs)


def test_a_plain_exec_line_does_not_import_typer_rich_httpx_or_jinja2(project):
    project.write(REGISTRY)
    code = ("import sys, runpy\n"
            "sys.argv = ['schedsync', '-c', 'jobs.yaml', 'exec', 'fast', '--timeout', '5s', '--', 'true']\n"
            "try:\n    runpy.run_module('schedsync', run_name='__main__')\n"
            "except SystemExit as exc:\n    print('exit', exc.code)\n"
            "print(sorted(m for m in ('typer', 'click', 'rich', 'httpx', 'jinja2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=project.path, env=project.env, timeout=60)
    assert out.stdout.strip().splitlines()[-2:] == ["exit 0", "[]"], out.stdout + out.stderr
    assert project.history("fast")[0]["status"] == "success"


def test_help_goes_through_the_full_cli_and_options_may_use_equals(project):
    project.write(REGISTRY)
    assert "--timeout" in project.cli("exec", "--help").stdout
    assert project.cli("--state", str(project.state), "exec", "other", "--overlap=allow", "--", "true").returncode == 0
    assert project.history("other")[0]["status"] == "success"
