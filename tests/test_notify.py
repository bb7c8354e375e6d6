"""`notify:` webhooks and `ping:` URLs, received by a real local HTTP server and sent by
the real CLI: which events fire when, the payload, and that alerts never fail a job."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from schedsync.store import open_store
from stored import finished_run

RUN_KEYS = {"id", "job", "status", "reason", "trigger", "started_at", "finished_at", "duration_ms",
            "attempts", "requests", "items_processed", "items_failed", "exit_code", "error",
            "retry_at", "host", "pid", "slot", "retry_of", "retry_number",  # the last three: issue 17
            "params", "parent",  # issue 18: what started the run
            "items_inserted", "items_updated", "items_deleted"}  # issue 19: what an http job's load did


@pytest.fixture
def hooks(httpserver):
    """The local server answers 200 to every webhook and ping; ``posted()`` lists what came."""
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    httpserver.expect_request("/other", method="POST").respond_with_data("ok")
    httpserver.expect_request("/down", method="POST").respond_with_data("broken", status=500)
    for path in ("/ping", "/ping/start", "/ping/fail"):
        httpserver.expect_request(path, method="GET").respond_with_data("OK")
    return httpserver


def posted(server, path: str = "/hook") -> list[dict]:
    return [json.loads(request.get_data()) for request, _ in server.log if request.path == path]


def events(server, path: str = "/hook") -> list[str]:
    return [body["event"] for body in posted(server, path)]


def flaky(project, server, notify: str, breaker: str = "{failures: 5}") -> None:
    """A job that fails until the file `ok` exists."""
    project.write(f"""
        state: schedsync.db
        jobs:
          flaky:
            schedule: "0 * * * *"
            command: "test -f ok || {{ echo the upstream said no >&2; exit 3; }}"
            breaker: {breaker}
            notify: {notify}
    """.replace("URL", server.url_for("/hook")))


def fail(project) -> None:
    assert project.cli("run", "--force-slot", "flaky").returncode == 1


def succeed(project) -> None:
    (project.path / "ok").touch()
    assert project.cli("run", "--force-slot", "flaky").returncode == 0
    (project.path / "ok").unlink()


# --- which events fire ---------------------------------------------------------------

def test_a_failed_run_posts_a_failure_with_the_documented_payload(project, hooks):
    flaky(project, hooks, "[URL]")
    result = project.cli("run", "--force-slot", "flaky")
    assert result.returncode == 1  # the job's own result, whatever the webhook did
    body, = posted(hooks)
    assert set(body) == {"event", "job", "text", "run", "health", "why", "breaker",
                         "consecutive_failures", "host", "generated_at",
                         "trigger", "parent", "retry_number", "params"}  # issue 18: what started it
    assert (body["trigger"], body["parent"], body["retry_number"], body["params"]) == ("cron", None, 0, None)
    assert body["event"] == "failure" and body["job"] == "flaky"
    assert set(body["run"]) == RUN_KEYS
    assert body["run"]["status"] == "failed" and body["run"]["exit_code"] == 3
    assert body["run"]["error"] == "exit 3: the upstream said no"
    assert body["run"]["id"] == project.history("flaky")[0]["id"]
    assert body["health"] == "FAILING"
    assert body["breaker"] == {"name": "flaky", "state": "closed", "failures": 1, "opens_until": None}
    assert body["consecutive_failures"] == 1
    assert body["host"] == socket.gethostname()
    assert body["generated_at"].endswith("Z")
    assert body["text"] == f"flaky failed on {socket.gethostname()}: exit 3: the upstream said no"


def test_webhooks_are_json_posts(project, hooks):
    flaky(project, hooks, "[URL]")
    fail(project)
    (request, _), = hooks.log
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("schedsync")


def test_a_success_posts_nothing_when_nothing_failed_before(project, hooks):
    flaky(project, hooks, "[URL]")
    succeed(project)
    succeed(project)
    assert hooks.log == []


def test_the_first_success_after_a_failure_posts_a_recovery_once(project, hooks):
    flaky(project, hooks, "[URL]")
    fail(project)
    fail(project)
    succeed(project)
    succeed(project)
    assert events(hooks) == ["failure", "failure", "recovery"]
    recovery = posted(hooks)[-1]
    assert recovery["health"] == "OK" and recovery["consecutive_failures"] == 0
    assert recovery["run"]["status"] == "success"
    assert recovery["text"] == f"flaky recovered on {socket.gethostname()} after 2 failures"


def test_failures_in_a_row_fire_from_the_nth_on_with_after_failures(project, hooks):
    flaky(project, hooks, "[{url: URL, after_failures: 3}]")
    fail(project)
    fail(project)
    assert hooks.log == []
    fail(project)
    assert [b["consecutive_failures"] for b in posted(hooks)] == [3]
    fail(project)
    assert [b["consecutive_failures"] for b in posted(hooks)] == [3, 4]
    succeed(project)
    assert events(hooks) == ["failure", "failure", "recovery"]


def test_a_recovery_is_not_sent_for_failures_that_stayed_under_after_failures(project, hooks):
    flaky(project, hooks, "[{url: URL, after_failures: 3}]")
    fail(project)
    fail(project)
    succeed(project)
    assert hooks.log == []


def test_skips_between_failures_do_not_break_the_streak(project, hooks):
    flaky(project, hooks, "[{url: URL, after_failures: 2}]")
    fail(project)
    project.cli("pause", "flaky")
    assert project.cli("run", "--force-slot", "flaky").returncode == 75
    project.cli("resume", "flaky")
    fail(project)
    assert [b["consecutive_failures"] for b in posted(hooks)] == [2]


def test_the_run_that_opens_the_breaker_posts_breaker_open(project, hooks):
    flaky(project, hooks, "[{url: URL, events: [breaker_open]}]", breaker="{failures: 2, reset_after: 10m}")
    fail(project)
    assert hooks.log == []
    fail(project)
    body, = posted(hooks)
    assert body["event"] == "breaker_open"
    assert body["breaker"]["state"] == "open" and body["breaker"]["failures"] == 2
    assert body["breaker"]["opens_until"].endswith("Z")
    assert project.cli("run", "--force-slot", "flaky").returncode == 75  # skipped while open: no more alerts
    assert len(hooks.log) == 1


def test_each_target_gets_only_the_events_it_asked_for(project, hooks):
    project.write(f"""
        jobs:
          flaky:
            command: "test -f ok || exit 3"
            breaker: {{failures: 1}}
            notify:
              - {{url: "{hooks.url_for('/hook')}", events: [failure]}}
              - {{url: "{hooks.url_for('/other')}", events: [breaker_open, recovery]}}
    """)
    fail(project)
    assert events(hooks, "/hook") == ["failure"]
    assert events(hooks, "/other") == ["breaker_open"]


def test_notify_in_defaults_applies_to_every_job(project, hooks):
    project.write(f"""
        defaults:
          notify: ["{hooks.url_for('/hook')}"]
        jobs:
          one:
            command: "exit 1"
          two:
            command: "exit 2"
    """)
    project.cli("run", "one")
    project.cli("run", "two")
    assert sorted(body["job"] for body in posted(hooks)) == ["one", "two"]


def test_a_run_found_crashed_later_posts_a_failure(project, hooks):
    project.write(f"""
        jobs:
          hangs:
            command: ["sleep", "60"]
            notify: ["{hooks.url_for('/hook')}"]
    """)
    proc = project.start("run", "hangs", start_new_session=True)
    deadline = time.time() + 20
    while not project.history("hangs") and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # schedsync and its child die without recording the end
    proc.wait()
    assert hooks.log == []
    assert project.status()["jobs"][0]["health"] == "FAILING"  # reading the records reaps it
    body, = posted(hooks)
    assert body["event"] == "failure" and body["run"]["status"] == "crashed"
    assert body["run"]["finished_at"] is not None


# --- late ----------------------------------------------------------------------------

def late_job(project, server, grace: str = "0s") -> None:
    project.write(f"""
        state: schedsync.db
        jobs:
          every-minute:
            schedule: "* * * * *"
            grace: {grace}
            command: ["true"]
            notify: [{{url: "{server.url_for('/hook')}", events: [late]}}]
    """)
    store = open_store(str(project.state))
    try:
        store.see_jobs(["every-minute"], time.time() - 3600)
    finally:
        store.close()


def backdate_a_run(project, job: str, ago: float) -> None:
    """A run that started ``ago`` seconds back: the job's newest start, and long enough ago to be late."""
    store = open_store(str(project.state))
    try:
        finished_run(store, job, "success", time.time() - ago, exit_code=0)
    finally:
        store.close()


def test_status_sends_late_once_for_a_job_that_missed_its_start(project, hooks):
    late_job(project, hooks)
    assert project.cli("status").returncode == 0
    body, = posted(hooks)
    assert body["event"] == "late" and body["health"] == "LATE" and body["run"] is None
    assert body["text"].startswith(f"every-minute is late on {socket.gethostname()}: missed the ")  # names the slot
    project.cli("status", "--json")
    project.cli("metrics")
    assert len(hooks.log) == 1  # the same missed stretch is not announced again


def test_metrics_sends_late_too(project, hooks):
    late_job(project, hooks)
    assert project.cli("metrics").returncode == 0
    assert events(hooks) == ["late"]


def test_late_fires_again_once_the_job_has_started_and_is_late_again(project, hooks):
    late_job(project, hooks)
    project.cli("status")
    backdate_a_run(project, "every-minute", ago=600)
    project.cli("status")
    project.cli("status")
    assert events(hooks) == ["late", "late"]
    assert posted(hooks)[1]["run"]["status"] == "success"


def test_a_job_that_is_not_late_sends_no_late(project, hooks):
    late_job(project, hooks, grace="5m")  # a run now keeps it on time for 5 minutes, however slow the machine
    assert project.cli("run", "--force-slot", "every-minute").returncode == 0
    project.cli("status")
    assert hooks.log == []


# --- ping ----------------------------------------------------------------------------

def pinged(project, server, command: str) -> None:
    project.write(f"""
        jobs:
          watched:
            command: "{command}"
            ping: "{server.url_for('/ping')}"
    """)


def test_ping_hits_start_then_the_url_on_success(project, hooks):
    pinged(project, hooks, "true")
    assert project.cli("run", "watched").returncode == 0
    assert [(r.method, r.path) for r, _ in hooks.log] == [("GET", "/ping/start"), ("GET", "/ping")]


def test_ping_hits_start_then_fail_on_failure(project, hooks):
    pinged(project, hooks, "exit 4")
    assert project.cli("run", "watched").returncode == 1
    assert [r.path for r, _ in hooks.log] == ["/ping/start", "/ping/fail"]


def test_a_skipped_run_pings_nothing(project, hooks):
    pinged(project, hooks, "true")
    project.cli("pause", "watched")
    assert project.cli("run", "watched").returncode == 75
    assert hooks.log == []


def test_ping_keeps_a_query_string_after_the_suffix(project, hooks):
    project.write(f"""
        jobs:
          watched:
            command: "true"
            ping: "{hooks.url_for('/ping')}?rid=1"
    """)
    project.cli("run", "watched")
    assert [(r.path, r.query_string) for r, _ in hooks.log] == [("/ping/start", b"rid=1"), ("/ping", b"rid=1")]


# --- failures of the alert itself ---------------------------------------------------------

def test_a_failing_webhook_does_not_fail_the_job_and_shows_in_status_job(project, hooks):
    project.write(f"""
        jobs:
          fine:
            command: "exit 3"
            notify: ["{hooks.url_for('/down')}"]
    """)
    result = project.cli("run", "fine")
    assert result.returncode == 1  # the job's failure, nothing more
    assert "notif" not in result.stderr  # cron would mail it: the record says it instead
    out = project.cli("status", "fine", env={"COLUMNS": "160"}).stdout
    assert f"failure → http://{hooks.host}:{hooks.port}/…: HTTP 500" in out


def test_an_unreachable_webhook_is_recorded_and_the_run_still_succeeds(project, hooks):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens here once closed
    project.write(f"""
        jobs:
          fine:
            command: "true"
            ping: "http://127.0.0.1:{port}/ping"
    """)
    assert project.cli("run", "fine").returncode == 0
    out = project.cli("status", "fine").stdout
    assert "ping:start → http://127.0.0.1" in out and "connection refused" in out


def test_a_webhook_that_never_answers_costs_at_most_a_few_seconds(project):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections (the kernel does), never answers
        port = silent.getsockname()[1]
        project.write(f"""
            jobs:
              fine:
                command: "exit 1"
                notify: ["http://127.0.0.1:{port}/hook"]
        """)
        started = time.monotonic()
        result = project.cli("run", "fine")
        took = time.monotonic() - started
    assert result.returncode == 1
    assert took < 9
    assert "timed out after 5s" in project.cli("status", "fine").stdout


def test_a_failed_alert_is_noted_on_a_terminal(project, hooks):
    import pty

    project.write(f"""
        jobs:
          fine:
            command: "true"
            ping: "{hooks.url_for('/nowhere')}"
    """)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(project.argv("run", "fine"), stdin=follower, stdout=follower, stderr=follower,
                            cwd=project.path, env=project.env)
    os.close(follower)
    assert proc.wait(timeout=30) == 0
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    text = out.decode()
    assert f"warning: fine: ping:start to http://{hooks.host}:{hooks.port}/… failed: HTTP 500" in text


# --- secrets ---------------------------------------------------------------------------

def test_payloads_and_records_never_show_secrets(project, hooks):
    secret = "s3cr3t-value-123"
    project.write(f"""
        jobs:
          leaky:
            env: {{API_TOKEN: "${{API_TOKEN}}"}}
            command: "echo using $API_TOKEN >&2; exit 2"
            notify: ["{hooks.url_for('/hook')}?key=${{HOOK_KEY}}"]
    """)
    result = project.cli("run", "leaky", env={"API_TOKEN": secret, "HOOK_KEY": "hook-key-4567"})
    assert result.returncode == 1
    (request, _), = hooks.log
    assert request.args["key"] == "hook-key-4567"  # the real URL is used...
    body = request.get_data(as_text=True)
    assert secret not in body and "***" in body
    assert json.loads(body)["run"]["error"] == "exit 2: using ***"
    out = project.cli("status", "leaky", env={"API_TOKEN": secret, "HOOK_KEY": "hook-key-4567"}).stdout
    assert "hook-key-4567" not in out and secret not in out  # ...and never shown


# --- cost --------------------------------------------------------------------------------

def test_a_plain_command_job_imports_no_alert_or_http_code(project):
    project.write("""
        jobs:
          plain:
            command: ["true"]
    """)
    result = project.cli("run", "plain", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "schedsync.app.runner" in imported  # the profile is there
    assert not imported & {"schedsync.ops.alerts", "urllib.request", "http.client", "httpx"}
