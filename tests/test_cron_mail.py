"""What cron mails for a failed run (stdout and stderr as pipes, as cron runs the CLI): an http
job's request log, a hint that runs from cron's PATH, and a record left by a tick that failed on
a broken jobs.yaml. Real CLI subprocesses, a real upstream on loopback."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from schedsync.store import open_store
from test_crontab import cron_env
from test_http import Upstream, job_yaml, reply


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


def hint(result) -> str:
    """The command in the `— see `…`` hint of a failed run's one error line."""
    [line] = result.stderr.strip().splitlines()
    found = re.search(r" — see `([^`]+)`$", line)
    assert found, line
    return found.group(1)


def as_cron(project, command: str, cwd) -> subprocess.CompletedProcess:
    """``command`` under /bin/sh with cron's environment (its short PATH), from another folder."""
    env = cron_env(project)
    if "PYTHONPATH" in project.env:  # this checkout, not another installed copy
        env["PYTHONPATH"] = project.env["PYTHONPATH"]
    return subprocess.run(["/bin/sh", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_a_failed_http_run_mails_its_request_log(project, upstream):
    @upstream.route("/down")
    def down(request):
        return reply(503, {"error": "maintenance"})

    project.write(job_yaml(upstream, """\
      url: "{base}/down"
      headers: {{Authorization: "Bearer ${{MAIL_TOKEN}}"}}
      items: data"""))
    result = project.cli("run", "items", env={"MAIL_TOKEN": "s3cr3t-mail-token"})

    assert result.returncode == 1
    url = f"{upstream.base}/down"
    logged = [line for line in result.stdout.splitlines() if f"GET {url} → HTTP 503" in line]
    assert len(logged) == 3, result.stdout  # every try, as the run's record keeps them
    assert "failed: GET" in result.stdout.splitlines()[-1]
    assert result.stderr.startswith("error: items: failed in ") and result.stderr.count("\n") == 1
    assert "s3cr3t-mail-token" not in result.stdout + result.stderr
    [run] = project.history("items")
    assert run["output"] == result.stdout


def test_the_hint_in_cron_mail_runs_from_crons_path(project, tmp_path):
    project.write("""
        state: schedsync.db
        jobs:
          broken: {command: "echo half done; exit 3"}
    """)
    result = project.cli("run", "broken", env={"SCHEDSYNC_STATE": ""})
    assert result.returncode == 1
    command = hint(result)
    assert command.endswith(" history broken") and " -c " in command
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shown = as_cron(project, command, elsewhere)
    assert shown.returncode == 0, shown.stderr
    assert "failed" in shown.stdout and "exit 3" in shown.stdout


def test_the_hint_of_an_exec_run_without_a_registry_names_its_state(project, tmp_path):
    # no jobs.yaml (project.config was never written), the state named by --state alone
    result = subprocess.run([sys.executable, "-m", "schedsync", "--state", str(project.state), "exec",
                             "backup", "--", "sh", "-c", "exit 4"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL, cwd=project.path,
                            env={k: v for k, v in project.env.items() if k != "SCHEDSYNC_STATE"})
    assert result.returncode == 1, result.stderr
    command = hint(result)
    assert f"--state {project.state}" in command and " -c " not in command
    shown = as_cron(project, command, tmp_path)
    assert shown.returncode == 0 and "exit 4" in shown.stdout, shown.stderr


JOBS = """
    state: {state}
    jobs:
      nightly:
        schedule: "0 3 * * *"
        command: ["true"]
"""


@pytest.mark.parametrize("broken", [
    'schedule: "61 * * * *"',  # valid YAML, an invalid registry
    "schedule: [",  # not YAML at all
])
def test_a_cron_tick_on_a_broken_registry_leaves_a_record(project, broken):
    project.write(JOBS.format(state='"data/state.db"  # beside'))
    env = {"SCHEDSYNC_STATE": ""}  # the registry's own state:, as the crontab line has it
    assert project.cli("run", "nightly", env=env).returncode == 0
    good = project.config.read_text()
    project.config.write_text(good.replace('schedule: "0 3 * * *"', broken))

    result = project.cli("run", "nightly", env=env)
    other = project.cli("run", "never-ran", env=env)  # a name the state does not know

    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {project.config}:")
    assert other.returncode == 2
    project.config.write_text(good)
    runs = json.loads(project.cli("history", "nightly", "--json", env=env).stdout)
    assert [(r["status"], r["trigger"]) for r in runs] == [("failed", "cron"), ("success", "cron")]
    assert runs[0]["error"] == line[len("error: "):]
    store = open_store(str(project.path / "data" / "state.db"))
    try:
        assert store.runs("never-ran") == []  # no job was invented for a name it never saw
    finally:
        store.close()


def test_a_broken_registry_never_creates_a_state(project):
    project.write(JOBS.format(state="fresh.db").replace('"0 3 * * *"', '"61 * * * *"'))
    result = project.cli("run", "nightly", env={"SCHEDSYNC_STATE": ""})
    assert result.returncode == 2
    assert not (project.path / "fresh.db").exists()


def test_a_broken_registry_never_creates_a_postgresql_state(project, pg_server):
    db = pg_server.createdb()
    project.write(JOBS.format(state=f'"{pg_server.url(db)}"').replace('"0 3 * * *"', '"61 * * * *"'))
    result = project.cli("run", "nightly", env={"SCHEDSYNC_STATE": ""})
    assert result.returncode == 2
    # the empty database gained no schema: a broken tick records only into a state that exists
    assert pg_server.psql(db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'schedsync'").strip() == "0"
