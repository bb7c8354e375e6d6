"""``schedsync trigger`` end to end (issue 18, items 1 and 7): real CLI processes, real
``tick`` runs started detached, a real HTTP server on loopback for http jobs and alerts, and
SQLite and PostgreSQL states: the queue, its dedupe, params from jobs.yaml to the job and
its records, ``--wait``, and alerts that say what started a run."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from schedsync.store import open_store

JOBS = """\
    jobs:
      ok:
        command: 'echo "final=$SCHEDSYNC_PARAM_FINAL_SWEEP batch=$SCHEDSYNC_PARAM_BATCH"'
        params:
          final_sweep: {default: "0", pattern: "^[01]$"}
          batch: {default: 100, pattern: "[0-9]{1,4}"}
      broken:
        command: 'echo "no luck" >&2; exit 3'
      plain:
        command: ["true"]
    """


def trigger(project, *args, timeout: float = 120):
    return project.cli("trigger", *args, timeout=timeout)


def finished(project, job: str, count: int, timeout: float = 60) -> list[dict]:
    """The job's runs, oldest first, once ``count`` have finished (a tick's runs are
    detached: poll, bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in project.history(job) if r["status"] != "running"]
        if len(runs) >= count or time.monotonic() > deadline:
            assert len(runs) == count, runs
            return runs[::-1]
        time.sleep(0.1)


def api_items(state: str, job: str) -> list:
    store = open_store(state, write=False)
    try:
        return sorted((s for s in store.slots(job, limit=1000) if s.kind == "api"), key=lambda s: s.id)
    finally:
        store.close()


def no_proxy(project) -> None:
    env = {k: v for k, v in project.env.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    project.env = {**env, "NO_PROXY": "*", "no_proxy": "*"}


# --- --wait: the run, and its exit code ---------------------------------------------------

def test_trigger_wait_runs_the_job_and_exits_as_run_would(project):
    project.write(JOBS)
    done = trigger(project, "ok", "--param", "final_sweep=1", "--wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().isdigit()  # the queue id, first
    assert "ok: run" in done.stderr and "success" in done.stderr
    run, = project.history("ok")
    assert (run["trigger"], run["status"]) == ("api", "success")
    assert run["output"] == "final=1 batch=100\n"  # a param given, a default filled in
    assert run["params"] == {"final_sweep": "1", "batch": "100"}

    failed = trigger(project, "broken", "--wait")
    assert failed.returncode == 1, failed.stderr
    assert "exit 3" in failed.stderr
    assert [(r["trigger"], r["status"]) for r in project.history("broken")] == [("api", "failed")]

    assert project.cli("pause", "plain").returncode == 0
    skipped = trigger(project, "plain", "--wait")
    assert skipped.returncode == 75, skipped.stderr
    assert "paused" in skipped.stderr and "stays queued" in skipped.stderr
    item, = api_items(str(project.state), "plain")
    assert (item.state, item.reason) == ("queued", "paused")  # the tick starts it once resumed


def test_trigger_without_a_tick_says_the_item_waits_for_one(project):
    project.write(JOBS)
    queued = trigger(project, "plain")
    assert queued.returncode == 0
    assert queued.stdout.strip() == str(api_items(str(project.state), "plain")[0].id)
    assert queued.stderr.startswith("warning: no `schedsync tick` ran in the last 3 minutes")
    assert queued.stderr.count("\n") == 1 and "--wait" in queued.stderr
    assert project.history("plain") == []  # nothing ran: it waits
    assert project.cli("tick").returncode == 0
    assert [r["trigger"] for r in finished(project, "plain", 1)] == ["api"]
    again = trigger(project, "plain", "--json")  # a tick ran just now: no warning
    assert again.returncode == 0 and again.stderr == ""
    shown = json.loads(again.stdout)
    assert shown["job"] == "plain" and shown["deduped"] is False and shown["due_at"].endswith("Z")


def test_wait_with_a_tick_lets_the_tick_start_it_and_a_held_item_ends_the_wait_with_75(project):
    project.write("""\
        jobs:
          flaky:
            command: 'test -e ok'
            breaker: {failures: 1, reset_after: 1h}
        """)
    assert project.cli("tick").returncode == 0  # a tick ran lately: --wait leaves the start to it
    (project.path / "ok").touch()
    waiting = project.start("trigger", "flaky", "--wait")
    try:
        deadline = time.monotonic() + 60
        while not api_items(str(project.state), "flaky") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # it would have started it by now, had it meant to
        assert project.history("flaky") == [] and waiting.poll() is None
        assert project.cli("tick").returncode == 0
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, err
    assert [(r["trigger"], r["status"]) for r in project.history("flaky")] == [("api", "success")]
    (project.path / "ok").unlink()
    assert project.cli("run", "flaky").returncode == 1  # the breaker opens
    waiting = project.start("trigger", "flaky", "--wait")
    try:
        deadline = time.monotonic() + 60
        while len(api_items(str(project.state), "flaky")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert project.cli("tick").returncode == 0  # holds it back: the breaker is open
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 75, err
    assert "skipped (breaker_open)" in err and "stays queued" in err
    assert api_items(str(project.state), "flaky")[-1].state == "queued"


# --- dedupe ---------------------------------------------------------------------------------

def test_the_same_params_queue_one_item_and_other_params_another(project):
    project.write(JOBS)
    first = json.loads(trigger(project, "ok", "--param", "final_sweep=1", "--json").stdout)
    second = json.loads(trigger(project, "ok", "--param", "final_sweep=1", "--json").stdout)
    assert (second["item"], second["deduped"], first["deduped"]) == (first["item"], True, False)
    other = json.loads(trigger(project, "ok", "--param", "final_sweep=0", "--json").stdout)
    assert other["item"] != first["item"] and not other["deduped"]
    # the defaults fill in before comparing: no params at all is final_sweep=0 batch=100
    same = json.loads(trigger(project, "ok", "--json").stdout)
    assert (same["item"], same["deduped"]) == (other["item"], True)
    assert len(api_items(str(project.state), "ok")) == 2
    # once it ran, the same params queue a new item
    assert project.cli("tick").returncode == 0
    ran = finished(project, "ok", 1)
    assert ran[0]["trigger"] == "api"
    assert project.cli("tick").returncode == 0
    finished(project, "ok", 2)  # the tick starts one item of a job at a time
    fresh = json.loads(trigger(project, "ok", "--param", "final_sweep=1", "--json").stdout)
    assert fresh["item"] not in (first["item"], other["item"]) and not fresh["deduped"]


def _at_once(project, count: int, *args) -> list[str]:
    """``count`` trigger processes started together; what each printed."""
    procs = [project.start("trigger", *args) for _ in range(count)]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        out.append(stdout)
    return out


def test_concurrent_triggers_queue_one_item(project):
    project.write(JOBS)
    printed = [json.loads(text) for text in _at_once(project, 6, "ok", "--param", "batch=7", "--json")]
    assert len({p["item"] for p in printed}) == 1
    assert sorted(p["deduped"] for p in printed) == [False] + [True] * 5
    assert len(api_items(str(project.state), "ok")) == 1


def test_concurrent_triggers_queue_one_item_and_wait_runs_it_on_postgresql(project, pg_url):
    project.env["SCHEDSYNC_STATE"] = pg_url
    project.write(JOBS)
    printed = [json.loads(text) for text in _at_once(project, 6, "ok", "--param", "batch=7", "--json")]
    assert len({p["item"] for p in printed}) == 1
    assert sorted(p["deduped"] for p in printed) == [False] + [True] * 5
    assert len(api_items(pg_url, "ok")) == 1
    assert trigger(project, "ok", "--param", "batch=8", "--json").stdout != printed[0]
    assert len(api_items(pg_url, "ok")) == 2
    done = trigger(project, "broken", "--wait")
    assert done.returncode == 1, done.stderr
    run, = project.history("broken")
    assert (run["trigger"], run["status"], run["params"]) == ("api", "failed", None)
    assert project.cli("tick").returncode == 0  # the tick starts the queued api item
    runs = finished(project, "ok", 1)
    assert (runs[0]["trigger"], runs[0]["params"]) == ("api", {"final_sweep": "0", "batch": "7"})
    assert runs[0]["output"] == "final=0 batch=7\n"


# --- params: refused, and where they go ---------------------------------------------------------

@pytest.mark.parametrize(("args", "says"), [
    (("--param", "nope=1"), "ok has no param 'nope' (declared: final_sweep, batch)"),
    (("--param", "final_sweep=2"), "param final_sweep of ok: '2' does not match '^[01]$'"),
    (("--param", "final_sweep=1\n"), "does not match"),  # fullmatch: no trailing newline slips in
    (("--param", "batch=" + "9" * 1025), "param batch of ok is over 1024 bytes"),
    (("--param", "final_sweep"), "--param 'final_sweep' is not NAME=VALUE"),
    (("--param", "batch=1", "--param", "batch=2"), "--param batch is given twice"),
    (("--at", "tomorrow"), "trigger --at 'tomorrow'"),
    (("--in", "10m", "--at", "2026-12-01T00:00"), "--at or --in, not both"),
])
def test_bad_params_are_refused_with_one_line_and_exit_2(project, args, says):
    project.write(JOBS)
    result = trigger(project, "ok", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and says in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not project.state.exists() or api_items(str(project.state), "ok") == []


def test_an_unknown_job_is_refused(project):
    project.write(JOBS)
    result = trigger(project, "okk")
    assert result.returncode == 2 and "no job named 'okk'" in result.stderr and "did you mean 'ok'" in result.stderr


@pytest.mark.parametrize(("params", "says"), [
    ('{x: {pattern: "("}}', "jobs.p.params.x.pattern: is not a valid regular expression"),
    ('{x: {default: "2", pattern: "^[01]$"}}', "jobs.p.params.x.default: '2' does not match its pattern"),
    ("{9x: {}}", "'9x' is not a valid param name"),
    ("{a: {}, A: {}}", "'A' and 'a' are the same variable SCHEDSYNC_PARAM_A"),
    ("{x: {deflt: 1}}", "jobs.p.params.x.deflt: unknown key"),
    ("[x]", "jobs.p.params: must be a mapping"),
])
def test_params_are_validated_at_load_with_file_and_line(project, params, says):
    project.write(f"""\
        jobs:
          p:
            command: ["true"]
            params: {params}
        """)
    result = project.cli("validate")
    assert result.returncode == 2
    assert f"{project.config.name}:4 " in result.stderr or f"{project.config}:4 " in result.stderr, result.stderr
    assert says in result.stderr, result.stderr


def test_params_reach_command_http_and_python_jobs(project, httpserver):
    no_proxy(project)
    httpserver.expect_request("/items").respond_with_json([{"id": 1}])
    (project.path / "paramjob.py").write_text(
        "import json\n"
        "def run(ctx):\n    open('python.txt', 'w').write(json.dumps(ctx.params, sort_keys=True))\n    return 0\n")
    project.write(f"""\
        jobs:
          listed:
            command: ["sh", "-c", "echo $0 $SCHEDSYNC_PARAM_DAY >> ran.txt", "${{SCHEDSYNC_PARAM_DAY}}"]
            params: {{day: {{pattern: "[0-9-]+"}}}}
          fetched:
            http: {{url: "{httpserver.url_for('/items')}", params: {{day: "${{SCHEDSYNC_PARAM_DAY}}"}}}}
            into: {{table: items, pk: id}}
            params: {{day: {{default: "2026-01-01"}}}}
          called:
            python: "paramjob:run"
            params: {{day: {{}}, size: {{default: "50"}}}}
        """)
    for job in ("listed", "fetched", "called"):
        result = trigger(project, job, "--param", "day=2026-12-02", "--wait")
        assert result.returncode == 0, (job, result.stderr)
    assert (project.path / "ran.txt").read_text() == "2026-12-02 2026-12-02\n"
    assert [request.args["day"] for request, _ in httpserver.log] == ["2026-12-02"]
    assert json.loads((project.path / "python.txt").read_text()) == {"day": "2026-12-02", "size": "50"}
    # a cron-started run gets the defaults (an http value with none given uses its default)
    assert project.cli("run", "fetched").returncode == 0
    assert [request.args["day"] for request, _ in httpserver.log] == ["2026-12-02", "2026-01-01"]
    assert project.history("fetched")[0]["params"] == {"day": "2026-01-01"}
    assert project.history("fetched")[0]["trigger"] == "cron"


def test_history_and_logs_show_the_params(project):
    project.write(JOBS)
    assert trigger(project, "ok", "--param", "final_sweep=1", "--param", "batch=50", "--wait").returncode == 0
    assert project.cli("run", "plain").returncode == 0
    table = project.cli("history", "ok").stdout
    assert "api batch=50 final_sweep=1" in table, table
    assert project.history("ok")[0]["params"] == {"batch": "50", "final_sweep": "1"}
    assert project.history("plain")[0]["params"] is None  # a job without params has none
    header = project.cli("logs", "ok").stdout.splitlines()[0]
    assert header.endswith(", params batch=50 final_sweep=1"), header


def test_a_secret_passed_as_a_param_is_redacted_where_it_is_recorded(project):
    project.write("""\
        jobs:
          leaky:
            command: 'echo "token is $SCHEDSYNC_PARAM_T"'
            env: {API_TOKEN: "${API_TOKEN}"}
            params: {t: {}}
        """)
    secret = "s3cr3t-value-abcdef"
    project.env["API_TOKEN"] = secret
    assert trigger(project, "leaky", "--param", f"t={secret}", "--wait").returncode == 0
    run, = project.history("leaky")
    assert secret not in json.dumps(run) and secret not in project.cli("history", "leaky").stdout
    assert run["params"]["t"] != secret


# --- the tick, --in, and alerts ------------------------------------------------------------------

def test_the_tick_starts_an_api_item_when_it_is_due(project):
    project.write(JOBS)
    later = json.loads(trigger(project, "plain", "--in", "10m", "--json").stdout)
    assert project.cli("tick").returncode == 0
    time.sleep(0.5)  # nothing to wait for: it is not due; a wrongly started run would show
    assert project.history("plain") == []
    assert api_items(str(project.state), "plain")[0].state == "queued"
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 660))
    assert project.cli("tick", "--now", soon).returncode == 0
    run, = finished(project, "plain", 1)
    assert run["trigger"] == "api"
    item, = api_items(str(project.state), "plain")
    assert (item.id, item.state, item.run_id) == (later["item"], "ran", run["id"])


def test_a_paused_job_s_trigger_waits_in_the_queue_until_resume(project):
    """The tick holds a paused job's items back (started, each would only be skipped
    ``paused``, a record a minute); after ``resume`` the next tick runs it."""
    project.write(JOBS)
    assert project.cli("pause", "plain").returncode == 0
    queued = json.loads(trigger(project, "plain", "--json").stdout)
    for _ in range(2):
        assert project.cli("tick").returncode == 0
    time.sleep(0.5)  # a wrongly started run would show
    assert project.history("plain") == []
    assert api_items(str(project.state), "plain")[0].state == "queued"
    assert project.cli("resume", "plain").returncode == 0
    assert project.cli("tick").returncode == 0
    run, = finished(project, "plain", 1)
    assert (run["trigger"], run["status"]) == ("api", "success")
    item, = api_items(str(project.state), "plain")
    assert (item.id, item.state) == (queued["item"], "ran")


def test_an_alert_says_what_started_the_run(project, httpserver):
    no_proxy(project)
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    project.write(f"""\
        jobs:
          sweep:
            command: 'exit 4'
            notify: ["{httpserver.url_for('/hook')}"]
            params: {{final: {{default: "0"}}, key: {{}}}}
            env: {{API_TOKEN: "${{API_TOKEN}}"}}
        """)
    secret = "tok-0123456789abcdef"
    project.env["API_TOKEN"] = secret
    assert trigger(project, "sweep", "--param", "final=1", "--param", f"key={secret}", "--wait").returncode == 1
    assert project.cli("run", "sweep").returncode == 1
    bodies = [json.loads(request.get_data()) for request, _ in httpserver.log]
    assert len(bodies) == 2
    api, cron = bodies
    assert (api["trigger"], api["parent"], api["retry_number"]) == ("api", None, 0)
    assert api["params"]["final"] == "1" and api["params"]["key"] != secret  # redacted
    assert api["run"]["params"] == api["params"]
    assert " (api, params final=1 key=" in api["text"], api["text"]
    assert secret not in json.dumps(api)
    assert (cron["trigger"], cron["retry_number"], cron["params"]) == ("cron", 0, {"final": "0"})
    assert cron["text"].startswith("sweep failed on ") and "(params final=0)" in cron["text"]


def test_the_plain_run_path_imports_no_trigger_code(project):
    project.write(JOBS)
    probe = ("import runpy, sys\n"
             "sys.argv = ['schedsync', '-c', sys.argv[1], 'run', sys.argv[2]]\n"
             "try:\n    runpy.run_module('schedsync', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m in ('schedsync.app.trigger', 'schedsync.config.params',"
             " 'json')))\n")
    assert project.cli("run", "plain").returncode == 0  # jobs.yaml parsed once, then cached as cron finds it
    for job, loaded in (("plain", "[]"), ("ok", "['json', 'schedsync.config.params']")):
        out = subprocess.run([sys.executable, "-c", probe, str(project.config), job], capture_output=True,
                             text=True, env=project.env, cwd=project.path, timeout=60)
        assert out.stdout.strip().splitlines()[-1] == loaded, (job, out.stdout, out.stderr)
