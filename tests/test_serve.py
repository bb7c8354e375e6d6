"""`schedsync serve` as a real process on a free loopback port, over a real state with a
healthy, a failing, a late and a running job: /healthz, /metrics (read by prometheus_client),
the dashboard in headless Chromium, credentials, concurrency, memory, SIGTERM, a broken state.

The browser test needs Debian's ``chromium``: skipped when it is missing, failed under CI
(``CI`` set), since ``.ci/run`` installs it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, Project
from schedsync.store import open_store

SECRET = "s3cr3t-token-value"
JOBS = """
    state: schedsync.db
    budgets:
      api: 10/1h
    jobs:
      healthy:
        description: Always works
        schedule: "*/5 * * * *"
        budget: api
        command: ["sh", "-c", "echo all good"]
      failing:
        schedule: "0 * * * *"
        retries: {attempts: 1}
        env: {API_TOKEN: "${API_TOKEN}"}
        command: "echo 'token='$API_TOKEN' <b>bold</b> & <script>alert(1)</script>'; exit 3"
      late:
        schedule: "* * * * *"
        grace: 1s
        command: ["true"]
      slow:
        command: ["sleep", "120"]
"""
EXPECTED = {"healthy": "OK", "failing": "FAILING", "late": "LATE", "slow": "RUNNING"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Served:
    """A running ``schedsync serve`` and a client for it that never uses a proxy."""

    def __init__(self, project: Project, *args: str, env: dict | None = None):
        self.proc = project.start("serve", "--bind", "127.0.0.1:0", *args, env=env)
        line = self.proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + self.proc.stderr.read() if self.proc.poll() is not None else line
        self.url = f"http://127.0.0.1:{match.group(1)}"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str, headers: dict | None = None, method: str = "GET"):
        """(status, headers, body text) of one request."""
        request = urllib.request.Request(self.url + path, headers=headers or {}, method=method)
        try:
            with self.opener.open(request, timeout=30) as reply:
                return reply.status, reply.headers, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read().decode()

    def rss_kib(self) -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return code, self.proc.stderr.read()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A project whose jobs are healthy, failing, late and running, and a server over it."""
    tmp = tmp_path_factory.mktemp("serve")
    folder = tmp / "project"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDSYNC_")}
    env.update(HOME=str(tmp / "home"), XDG_CACHE_HOME=str(tmp / "cache"),
               XDG_STATE_HOME=str(tmp / "xdg-state"), PYTHONPATH=str(ROOT), API_TOKEN=SECRET,
               SCHEDSYNC_STATE=str(folder / "schedsync.db"))
    project = Project(folder, env)
    project.write(JOBS)
    for _ in range(3):  # a sparkline needs two runs or more
        assert project.cli("run", "healthy").returncode == 0
    assert project.cli("run", "failing").returncode == 1
    from schedsync.store import open_store

    store = open_store(str(project.state))
    store.see_jobs(["late"], time.time() - 3600)  # first seen an hour ago, never run since: LATE
    store.close()
    slow = project.start("run", "slow")
    deadline = time.time() + 30
    while not any(j["name"] == "slow" and j["health"] == "RUNNING" for j in project.status()["jobs"]):
        assert time.time() < deadline, "the slow job never showed as running"
        time.sleep(0.2)
    served = Served(project)
    yield project, served
    served.stop()
    slow.send_signal(signal.SIGTERM)
    slow.wait(timeout=30)


# --- /healthz ----------------------------------------------------------------------------

def test_healthz_is_503_and_lists_every_job_worst_first_when_some_need_action(world):
    _, served = world
    code, headers, body = served.get("/healthz")
    assert code == 503
    assert headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert {j["name"]: j["health"] for j in data["jobs"]} == EXPECTED
    assert data["ok"] is False
    assert sorted(data["needs_action"]) == ["failing", "late"]
    assert [j["name"] for j in data["jobs"]][:2] == ["failing", "late"]  # worst first
    assert SECRET not in body


def test_healthz_is_200_when_no_job_is_late_stalled_or_failing(project):
    project.write("""
        jobs:
          fine: {schedule: "*/5 * * * *", command: ["true"]}
          by-hand: {command: ["true"]}
    """)
    assert project.cli("run", "fine").returncode == 0
    served = Served(project)
    try:
        code, _, body = served.get("/healthz")
        assert code == 200, body
        assert json.loads(body)["ok"] is True
        assert {j["name"]: j["health"] for j in json.loads(body)["jobs"]} == {"fine": "OK", "by-hand": "NEVER"}
    finally:
        served.stop()


# --- /metrics ----------------------------------------------------------------------------

def test_metrics_is_the_exposition_prometheus_reads_with_its_content_type(world):
    project, served = world
    code, headers, body = served.get("/metrics")
    assert code == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(body)}
    health = {s.labels["job"]: s.labels["health"] for s in families["schedsync_job_health"].samples
              if s.value == 1}
    assert health == EXPECTED
    assert families["schedsync_runs"].type == "counter"
    runs = {(s.labels["job"], s.labels["status"]): s.value for s in families["schedsync_runs"].samples}
    assert runs[("healthy", "success")] == 3 and runs[("failing", "failed")] == 1
    assert runs[("late", "success")] == 0  # every job, every status: stable series for rate()
    assert {s.labels["job"] for s in families["schedsync_requests"].samples} == set(EXPECTED)
    cli = project.cli("metrics").stdout  # the same text as `schedsync metrics`, counters included
    assert _without_times(cli) == _without_times(body)


def _without_times(text: str) -> list[str]:
    # tokens refill and "now" moves between the two reads; the series are what must match
    return [line.rsplit(" ", 1)[0] for line in text.splitlines()]


def test_run_counters_survive_retention_pruning(project):
    project.write("""
        jobs:
          often: {retention: {success: 1s}, command: ["true"]}
    """)
    for _ in range(3):
        assert project.cli("run", "often").returncode == 0
    time.sleep(1.2)
    assert project.cli("prune").returncode == 0
    assert len(project.history("often")) == 1  # the newest success is kept, the rest pruned
    families = {f.name: f for f in text_string_to_metric_families(project.cli("metrics").stdout)}
    runs = {s.labels["status"]: s.value for s in families["schedsync_runs"].samples}
    assert runs["success"] == 3


# --- pages -------------------------------------------------------------------------------

class _Rows(HTMLParser):
    """data-job and data-health of the dashboard's rows, and the page's text."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, str] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-job" in attrs:
            self.rows[attrs["data-job"]] = attrs["data-health"]

    def handle_data(self, data):
        self.text.append(data)


def test_the_dashboard_in_headless_chromium_shows_every_job_and_its_health(world, tmp_path):
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run this test: .ci/run installs it "
                        "(apt-get install -y --no-install-recommends chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    _, served = world
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-proxy-server",
               "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", served.url + "/"], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _Rows()
    page.feed(dom.stdout)
    assert page.rows == EXPECTED  # every job's row, with its health, as the browser built the DOM
    text = " ".join(page.text)
    for name, health in EXPECTED.items():
        assert name in text and health in text
    assert "2 of 4 jobs need action" in text
    assert "<script>alert(1)</script>" not in dom.stdout  # the error is shown escaped, never run
    shot = tmp_path / "dashboard.png"
    result = subprocess.run([*browser, "--window-size=1400,420", f"--screenshot={shot}", served.url + "/"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000


def test_the_dashboard_escapes_names_errors_and_reloads_itself(world):
    _, served = world
    code, headers, body = served.get("/")
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<meta http-equiv="refresh"' in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script>" not in body
    assert "<svg" in body  # the duration sparkline, inline
    assert "http://" not in body.replace(served.url, "") and "https://" not in body  # nothing fetched
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def test_a_job_page_shows_history_transitions_and_the_output_redacted_and_escaped(world):
    project, served = world
    code, _, body = served.get("/job/failing")
    assert code == 200
    assert 'id="history"' in body and "Breaker transitions" in body
    run_id = project.history("failing")[0]["id"]
    assert f'data-run="{run_id}" data-status="failed"' in body
    output = re.search(r'<pre class="output" id="output">(.*?)</pre>', body, re.S).group(1)
    assert "token=***" in output and SECRET not in body
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;" in output
    code, _, body = served.get(f"/job/failing?run={run_id}")
    assert code == 200 and "token=***" in body


def test_unknown_pages_jobs_and_runs_are_404_and_writes_are_refused(world):
    _, served = world
    assert served.get("/job/nosuch")[0] == 404
    assert served.get("/job/failing?run=999999")[0] == 404
    assert served.get("/favicon.ico")[0] == 404
    code, headers, _ = served.get("/healthz", method="POST")
    assert code == 405 and headers["Allow"] == "GET, HEAD"
    assert served.get("/" + "x" * 5000)[0] == 414


# --- credentials -------------------------------------------------------------------------

def test_a_non_loopback_bind_without_a_credential_is_refused(project):
    project.write(JOBS)
    result = project.cli("serve", "--bind", "0.0.0.0:9178", timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --bind 0.0.0.0:9178 is not a loopback address")
    assert len(result.stderr.splitlines()) == 1 and "SCHEDSYNC_SERVE_TOKEN" in result.stderr


def test_a_wrong_or_missing_token_gets_401_and_the_token_is_never_echoed(project):
    project.write(JOBS)
    open_store(str(project.state)).close()  # an empty state: read commands create none
    token = "tok-" + "q" * 24
    served = Served(project, env={"SCHEDSYNC_SERVE_TOKEN": token})
    try:
        code, headers, body = served.get("/healthz", {"Authorization": "Bearer wrong"})
        assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert served.get("/metrics")[0] == 401
        assert served.get("/", {"Authorization": f"Bearer {token}"})[0] == 200
        assert token not in body
    finally:
        code, stderr = served.stop()
    assert token not in stderr


def test_basic_auth_checks_user_and_password(project):
    project.write(JOBS)
    open_store(str(project.state)).close()  # an empty state: read commands create none
    served = Served(project, env={"SCHEDSYNC_SERVE_BASIC": "ops:pa55word"})
    try:
        def auth(pair: str) -> dict:
            return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}

        assert served.get("/metrics", auth("ops:wrong"))[0] == 401
        assert served.get("/metrics", auth("ops:pa55word"))[0] == 200
    finally:
        served.stop()


# --- load, lifetime, failure -------------------------------------------------------------

def test_fifty_concurrent_clients_are_all_answered(world):
    _, served = world
    start = threading.Barrier(50)

    def one(i: int) -> int:
        start.wait()
        return served.get("/" if i % 2 else "/healthz")[0]

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(one, range(50)))
    assert codes.count(200) == 25 and codes.count(503) == 25


def test_memory_stays_flat_over_two_thousand_requests(world):
    _, served = world

    def hammer(n: int) -> None:
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda i: served.get(("/healthz", "/metrics", "/")[i % 3])[0], range(n)))
        assert set(codes) <= {200, 503}

    hammer(300)  # warm: caches, thread stacks, the allocator's arenas
    before = served.rss_kib()
    hammer(2000)
    after = served.rss_kib()
    assert after - before < 8 * 1024, f"RSS grew from {before} KiB to {after} KiB"


def test_sigterm_stops_it_cleanly(project):
    project.write(JOBS)
    served = Served(project)
    assert served.get("/healthz")[0] in (200, 503)
    code, stderr = served.stop()
    assert code == 0
    assert "Traceback" not in stderr and stderr.strip().endswith("schedsync serve: stopped")


def test_a_state_that_cannot_be_read_gives_503_and_one_line(project):
    project.write(JOBS)
    served = Served(project)
    try:
        assert served.get("/healthz")[0] in (200, 503)
        for suffix in ("-wal", "-shm"):
            Path(f"{project.state}{suffix}").unlink(missing_ok=True)
        project.state.write_bytes(b"this is not a database" * 100)
        for path in ("/healthz", "/metrics", "/", "/job/healthy"):
            code, headers, body = served.get(path)
            assert code == 503, (path, body)
            assert headers["Content-Type"].startswith("text/plain")
            assert body.startswith("error: state file") and body.count("\n") == 1, body
    finally:
        code, stderr = served.stop()
    assert "Traceback" not in stderr


def test_a_broken_registry_stops_it_at_start_with_exit_2(project):
    project.write("jobs: {a: {schedule: '61 * * * *', command: [true]}}\n")
    result = project.cli("serve", "--bind", "127.0.0.1:0", timeout=30)
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert len(result.stderr.splitlines()) == 1


def test_a_state_unreadable_from_the_start_is_served_as_503(project, tmp_path):
    project.write(JOBS)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    served = Served(project, env={"SCHEDSYNC_STATE": str(folder)})  # a folder, not a file
    try:
        code, _, body = served.get("/healthz")
        assert code == 503 and body.startswith("error: state file") and body.count("\n") == 1
    finally:
        served.stop()
