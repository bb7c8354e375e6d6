"""`schedsync serve`'s writes as a real process on a free loopback port, over a real state:
POST /api/jobs/NAME/{trigger,pause,resume}, /api/runs/ID/retry, /api/breakers/NAME/reset;
credentials (none: 403, wrong: 401), Host, Origin and csrf_token checks, the audit log (as
`status JOB` shows it), a triggered run started at once, and the dashboard's "Run now"
clicked through the DOM in headless Chromium (driven over the DevTools pipe).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import Project
from schedsync.store import open_store
from test_serve import Served, chromium

TOKEN = "tok-" + "w" * 28
BASIC = "ops:pa55word"
JOBS = """
    state: schedsync.db
    jobs:
      nightly:
        schedule: "0 3 * * *"
        params:
          final_sweep: {default: "0", pattern: "^[01]$"}
        command: ["sh", "-c", "echo sweep=$SCHEDSYNC_PARAM_FINAL_SWEEP serve-token=[$SCHEDSYNC_SERVE_TOKEN]"]
      flaky:
        breaker: {failures: 1, reset_after: 1h}
        command: ["sh", "-c", "echo boom; exit 3"]
"""


def bearer(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def basic(pair: str = BASIC) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def post(served: Served, path: str, body: bytes | dict | None = None, headers: dict | None = None):
    """(status, headers, body text) of one POST; a dict body goes as JSON."""
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(served.url + path, data=body or b"", headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())
    try:
        with opener.open(request, timeout=30) as reply:
            return reply.status, reply.headers, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 303 is the answer under test


def one_line_error(body: str) -> str:
    assert body.count("\n") == 1 and body.endswith("\n"), body
    return json.loads(body)["error"]


def job_status(project: Project, job: str) -> dict:
    result = project.cli("status", job, "--json")
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)["jobs"][0]


def paused(project: Project, job: str) -> bool:
    return job_status(project, job)["paused"]


def audit(project: Project, job: str, breaker: str | None = None) -> list:
    """The state's audit entries of ``job``, newest first (``status JOB`` shows them)."""
    store = open_store(str(project.state), write=False)
    try:
        return store.audit(job, breaker, 50)
    finally:
        store.close()


def queued(project: Project, job: str) -> int:
    store = open_store(str(project.state), write=False)
    try:
        return store.queued(job)
    finally:
        store.close()


@pytest.fixture
def served(project):
    """``serve`` with a bearer token and basic auth both set, over a state with one failed run."""
    project.write(JOBS)
    assert project.cli("run", "flaky").returncode == 1  # the breaker opens (failures: 1)
    server = Served(project, env={"SCHEDSYNC_SERVE_TOKEN": TOKEN, "SCHEDSYNC_SERVE_BASIC": BASIC})
    yield project, server
    code, stderr = server.stop()
    assert TOKEN not in stderr and "pa55word" not in stderr and "Traceback" not in stderr, stderr


# --- credentials -------------------------------------------------------------------------

def test_without_a_credential_every_write_is_403_saying_how_to_enable_it(project):
    project.write(JOBS)
    assert project.cli("run", "flaky").returncode == 1
    server = Served(project)  # loopback, no credential: reads open, writes off
    try:
        for path in ("/api/jobs/nightly/trigger", "/api/jobs/nightly/pause", "/api/jobs/nightly/resume",
                     "/api/breakers/flaky/reset", f"/api/runs/{project.history('flaky')[0]['id']}/retry"):
            code, headers, body = post(server, path, {}, bearer())
            assert code == 403, (path, body)
            assert headers["Content-Type"] == "application/json"
            error = one_line_error(body)
            assert "SCHEDSYNC_SERVE_TOKEN" in error and "SCHEDSYNC_SERVE_BASIC" in error
        assert not paused(project, "nightly") and job_status(project, "flaky")["breaker"]["state"] == "open"
        assert queued(project, "nightly") == 0
        _, _, page = server.get("/")
        assert "<form" not in page and "Run now" not in page  # no buttons without writes
    finally:
        server.stop()


def test_a_wrong_credential_is_401_and_writes_nothing(served):
    project, server = served
    for headers in ({}, bearer("wrong"), basic("ops:wrong"), basic("other:pa55word")):
        code, reply_headers, body = post(server, "/api/jobs/nightly/pause", {}, headers)
        assert code == 401, (headers, body)
        assert one_line_error(body) == "unauthorized" and "WWW-Authenticate" in reply_headers
    assert not paused(project, "nightly") and audit(project, "nightly") == []


# --- pause, resume, breaker reset, and the audit log ---------------------------------------

def test_pause_resume_and_breaker_reset_answer_200_and_each_is_in_the_audit_log(served):
    project, server = served
    code, _, body = post(server, "/api/jobs/nightly/pause", {"reason": "maintenance window"}, bearer())
    assert code == 200, body
    assert json.loads(body) == {"ok": True, "action": "pause", "job": "nightly", "paused": True}
    assert paused(project, "nightly")
    code, _, body = post(server, "/api/jobs/nightly/resume", {}, {**basic(), "Content-Type": "application/json"})
    assert code == 200 and not paused(project, "nightly"), body
    code, _, body = post(server, "/api/breakers/flaky/reset", None, bearer())  # no body at all: fine
    assert code == 200 and json.loads(body)["was"] == "open", body
    assert job_status(project, "flaky")["breaker"]["state"] == "closed"

    entries = audit(project, "nightly")  # newest first
    assert [(a.action, a.who, a.client, a.reason) for a in entries] == [
        ("resume", "basic:ops", "127.0.0.1", None), ("pause", "token", "127.0.0.1", "maintenance window")]
    assert audit(project, "flaky")[0].breaker == "flaky"
    text = project.cli("status", "nightly").stdout  # as a person reads it
    assert re.search(r"\n(audit +)?\s+\S.*: resume by basic:ops from 127\.0\.0\.1\n", text), text
    assert re.search(r": pause by token from 127\.0\.0\.1: maintenance window\n", text), text
    assert "breaker_reset by token from 127.0.0.1 (breaker flaky)" in project.cli("status", "flaky").stdout
    _, _, page = server.get("/job/nightly", bearer())
    table = re.search(r'<table id="audit">.*?</table>', page, re.S).group(0)
    assert table.count("<tr data-action=") == 2 and "maintenance window" in table and "basic:ops" in table
    for secret in (TOKEN, "pa55word"):
        assert secret not in page and secret not in text


def test_unknown_jobs_runs_and_endpoints_are_404_and_bad_bodies_400_or_413(served):
    project, server = served
    for path in ("/api/jobs/nosuch/pause", "/api/jobs/nosuch/trigger", "/api/breakers/nosuch/reset",
                 "/api/runs/999999/retry", "/api/runs/abc/retry", "/api/jobs/nightly/explode"):
        code, _, body = post(server, path, {}, bearer())
        assert code == 404, (path, body)
        one_line_error(body)
    code, _, body = post(server, "/api/jobs/nightly/pause", b"{not json",
                         {**bearer(), "Content-Type": "application/json"})
    assert code == 400 and "not JSON" in one_line_error(body)
    code, _, body = post(server, "/api/jobs/nightly/pause", b"[1, 2]", bearer())
    assert code == 400, body
    code, _, body = post(server, "/api/jobs/nightly/pause", b"x" * (64 * 1024 + 1), bearer())
    assert code == 413 and "over 64 KiB" in one_line_error(body)
    assert not paused(project, "nightly") and audit(project, "nightly") == []
    assert server.get("/healthz")[0] == 401  # reads still need the credential, and still work:
    assert server.get("/healthz", bearer())[0] in (200, 503)


# --- Host, Origin and the csrf_token --------------------------------------------------------

def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page).group(1)


def form(fields: dict) -> bytes:
    from urllib.parse import urlencode

    return urlencode(fields).encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_a_forged_cross_origin_form_post_is_refused_and_nothing_is_written(served):
    project, server = served
    _, _, page = server.get("/", basic())
    token = csrf_of(page)  # even with a valid token (a forged page cannot read one)
    for origin in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                   {"Referer": "http://evil.example/attack.html"},
                   {"Origin": "http://127.0.0.1:1"}):  # same host, another port: another origin
        for path in ("/api/jobs/nightly/pause", "/api/jobs/nightly/trigger"):
            code, _, body = post(server, path, form({"csrf_token": token, "next": "/"}), {**basic(), **FORM, **origin})
            assert code == 403, (origin, body)
            assert "cross-origin" in one_line_error(body)
    assert not paused(project, "nightly") and queued(project, "nightly") == 0
    assert audit(project, "nightly") == []


def test_a_wrong_host_is_refused_as_dns_rebinding_would_send_it(served):
    project, server = served
    port = server.url.rsplit(":", 1)[1]
    for headers in ({"Host": f"rebind.evil.example:{port}", "Origin": f"http://rebind.evil.example:{port}"},
                    {"Host": f"rebind.evil.example:{port}"}):
        code, _, body = post(server, "/api/jobs/nightly/pause", {}, {**bearer(), **headers})
        assert code == 403 and "Host rebind.evil.example" in one_line_error(body), body
    assert not paused(project, "nightly")


def test_a_name_given_with_allow_host_is_accepted(project):
    project.write(JOBS)
    open_store(str(project.state)).close()  # writes never create a state
    server = Served(project, "--allow-host", "Sched.Example", env={"SCHEDSYNC_SERVE_TOKEN": TOKEN})
    try:
        code, _, body = post(server, "/api/jobs/nightly/pause", {}, {**bearer(), "Host": "sched.example"})
        assert code == 200, body
        assert paused(project, "nightly")
    finally:
        server.stop()


def test_a_form_post_needs_its_csrf_token_and_then_goes_back_to_the_page(served):
    project, server = served
    same = {"Origin": server.url}
    for fields in ({"next": "/"}, {"csrf_token": "0" * 64, "next": "/"}, {"csrf_token": "", "next": "/"}):
        code, _, body = post(server, "/api/jobs/nightly/pause", form(fields), {**basic(), **FORM, **same})
        assert code == 403 and "csrf_token" in one_line_error(body), (fields, body)
    # the token is bound to the credential: the bearer page's token does not serve basic auth
    _, _, bearer_page = server.get("/", bearer())
    code, _, _ = post(server, "/api/jobs/nightly/pause", form({"csrf_token": csrf_of(bearer_page)}),
                      {**basic(), **FORM, **same})
    assert code == 403
    # a form of the browser's kind with no Origin nor Referer: refused, even with basic auth
    _, _, page = server.get("/job/nightly", basic())
    code, _, _ = post(server, "/api/jobs/nightly/pause", form({"csrf_token": csrf_of(page)}), {**basic(), **FORM})
    assert code == 403
    assert not paused(project, "nightly")

    code, headers, _ = post(server, "/api/jobs/nightly/pause",
                            form({"csrf_token": csrf_of(page), "next": "/job/nightly"}),
                            {**basic(), **FORM, "Referer": server.url + "/job/nightly"})
    assert code == 303 and headers["Location"] == "/job/nightly"
    assert paused(project, "nightly")
    code, headers, _ = post(server, "/api/jobs/nightly/resume",
                            form({"csrf_token": csrf_of(page), "next": "//evil.example/"}), {**basic(), **FORM, **same})
    assert code == 303 and headers["Location"] == "/"  # never to another site
    assert not paused(project, "nightly")
    assert [(a.action, a.who) for a in audit(project, "nightly")] == [("resume", "basic:ops"), ("pause", "basic:ops")]


def test_buttons_show_only_with_writes_on_and_the_page_allows_forms_to_itself_only(served):
    project, server = served
    _, headers, page = server.get("/", basic())
    assert "form-action 'self'" in headers["Content-Security-Policy"]
    row = re.search(r'<tr class="job[^"]*" data-job="flaky".*?</tr>', page, re.S).group(0)
    for action in ("trigger", "pause", "breaker_reset"):  # the breaker is open
        assert f'data-action="{action}" data-target="flaky"' in row, action
    _, _, job_page = server.get("/job/flaky", basic())
    run_id = project.history("flaky")[0]["id"]
    assert f'action="/api/runs/{run_id}/retry"' in job_page and ">Retry</button>" in job_page


# --- triggers and retries ---------------------------------------------------------------------

def runs_of(project: Project, job: str, trigger: str = "api") -> list[dict]:
    return [r for r in project.history(job) if r["trigger"] == trigger]


def wait_for_run(project: Project, job: str, count: int = 1, finished: bool = True) -> list[dict]:
    """Poll history (bounded) until ``count`` api-triggered runs of ``job`` exist (and ended)."""
    deadline = time.monotonic() + 60
    while True:
        runs = runs_of(project, job)
        if len(runs) >= count and (not finished or all(r["status"] != "running" for r in runs)):
            return runs
        assert time.monotonic() < deadline, f"no {count} api run(s) of {job} within 60 s: {runs}"
        time.sleep(0.1)


def test_a_trigger_with_the_token_is_202_and_serve_starts_the_run_within_two_seconds(served):
    project, server = served
    posted = time.time()
    code, headers, body = post(server, "/api/jobs/nightly/trigger",
                               {"params": {"final_sweep": "1"}, "reason": "upstream export landed"}, bearer())
    assert code == 202, body
    answer = json.loads(body)
    assert answer["ok"] is True and answer["job"] == "nightly" and answer["deduped"] is False
    assert isinstance(answer["queue_id"], int)
    started = first_started(project, "nightly")  # no tick runs here: serve started it
    print(f"the triggered run started {started - posted:.2f}s after the POST")
    assert started - posted < 2.0
    (run,) = wait_for_run(project, "nightly")
    assert run["status"] == "success", run
    assert "sweep=1 serve-token=[]" in project.cli("logs", "nightly").stdout  # serve's secret stays in serve
    (entry,) = audit(project, "nightly")
    assert (entry.action, entry.who, entry.client, entry.item_id, json.loads(entry.params), entry.reason) == \
        ("trigger", "token", "127.0.0.1", answer["queue_id"], {"final_sweep": "1"}, "upstream export landed")
    text = project.cli("status", "nightly").stdout
    assert f"trigger by token from 127.0.0.1 (queue {answer['queue_id']} final_sweep=1): upstream export landed" \
        in text, text


def first_started(project: Project, job: str) -> float:
    """When the job's first api-triggered run started (the state's float time), polled in-process."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        store = open_store(str(project.state), write=False)
        try:
            runs = [r for r in store.runs(job, 10) if r.trigger == "api"]
        finally:
            store.close()
        if runs:
            return runs[-1].started_at
        time.sleep(0.05)
    raise AssertionError(f"no api run of {job} started within 60 s")


def test_a_bad_param_is_400_in_one_line_and_queues_nothing(served):
    project, server = served
    for params in ({"final_sweep": "2"}, {"nosuch": "1"}, {"final_sweep": 1}, ["final_sweep"]):
        code, _, body = post(server, "/api/jobs/nightly/trigger", {"params": params}, bearer())
        assert code == 400, (params, body)
        one_line_error(body)
    assert queued(project, "nightly") == 0 and audit(project, "nightly") == []


def test_retrying_a_failed_run_queues_and_starts_a_new_run_of_its_job(served):
    project, server = served
    failed = project.history("flaky")[0]
    post(server, "/api/breakers/flaky/reset", {}, bearer())  # else the open breaker skips the retry
    code, _, body = post(server, f"/api/runs/{failed['id']}/retry", {}, bearer())
    assert code == 202, body
    answer = json.loads(body)
    assert (answer["job"], answer["run_id"]) == ("flaky", failed["id"])
    (run,) = wait_for_run(project, "flaky")
    assert run["id"] != failed["id"] and run["status"] == "failed"
    entry = audit(project, "flaky")[0]
    assert (entry.action, entry.run_id, entry.item_id) == ("retry", failed["id"], answer["queue_id"])


def test_a_retry_keeps_the_runs_params(served):
    project, server = served
    code, _, body = post(server, "/api/jobs/nightly/trigger", {"params": {"final_sweep": "1"}}, bearer())
    assert code == 202, body
    (first,) = wait_for_run(project, "nightly")
    code, _, body = post(server, f"/api/runs/{first['id']}/retry", {"reason": "once more"}, bearer())
    assert code == 202, body
    second = wait_for_run(project, "nightly", 2)[0]
    assert second["id"] != first["id"] and second["params"] == {"final_sweep": "1"}
    assert "sweep=1" in project.cli("logs", "nightly", str(second["id"])).stdout


def test_a_forged_cross_origin_trigger_queues_nothing(served):
    project, server = served
    code, _, body = post(server, "/api/jobs/nightly/trigger", {"params": {}},
                         {**bearer(), "Origin": "http://evil.example"})
    assert code == 403, body
    assert queued(project, "nightly") == 0 and runs_of(project, "nightly") == []


# --- the dashboard's buttons in headless Chromium ----------------------------------------------

class DevTools:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (the DevTools protocol as
    NUL-separated JSON on fds 3 and 4: no websocket library, no port). ``Runtime.evaluate``
    is the browser's own, so it works under the page's CSP, which allows no script."""

    def __init__(self, command: list[str]):
        import fcntl
        import queue
        import threading

        self.to_browser_r, self.to_browser_w = os.pipe()
        self.from_browser_r, self.from_browser_w = os.pipe()
        ends = (self.to_browser_r, self.from_browser_w)

        def onto_3_and_4() -> None:  # in the child, before exec
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in ends]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen([*command, "--remote-debugging-pipe", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=onto_3_and_4, close_fds=False)
        for fd in ends:
            os.close(fd)
        self.replies: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self.next_id = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.stderr: list[bytes] = []
        self.err_reader = threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True)
        self.err_reader.start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page.enable", "Network.enable"):
            self.call(domain, session=self.session)

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self.from_browser_r, 65536)
            if not chunk:
                self.replies.put(None)
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                (self.replies.put if "id" in message else self.events.append)(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            import queue

            try:
                reply = self.replies.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"Chromium did not answer {method} within 60 s") from None
            assert reply is not None, "Chromium went away: " + b"".join(self.stderr)[-2000:].decode(errors="replace")
            if reply["id"] == self.next_id:
                assert "error" not in reply, (method, reply)
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                           self.session)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def load(self, url: str) -> None:
        """Open ``url`` and wait until its document is complete."""
        self.call("Page.navigate", {"url": url}, self.session)
        self.settle()

    def settle(self, want: str | None = None) -> str:
        """Wait (bounded) for the document at ``want`` (a path prefix), or any, to be complete; its URL."""
        deadline = time.monotonic() + 60
        while True:
            state, href = self.evaluate("[document.readyState, location.href]")
            if state == "complete" and (want is None or want in href):
                return href
            assert time.monotonic() < deadline, f"page never loaded: {state} {href}"
            time.sleep(0.1)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("Browser.close")
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.to_browser_w, self.from_browser_r):
            os.close(fd)


def test_run_now_clicked_in_headless_chromium_starts_a_run_that_then_shows_on_the_page(served, tmp_path):
    project, server = served
    browser = DevTools(chromium(tmp_path))
    try:
        browser.call("Network.setExtraHTTPHeaders", {"headers": basic()}, browser.session)  # as a browser logs in
        browser.load(server.url + "/")
        row = "document.querySelector('tr[data-job=\"nightly\"]')"
        assert browser.evaluate(f"{row}.querySelector('td:nth-child(3)').textContent.trim()") == "never"
        clicked = browser.evaluate(f"(() => {{ const b = {row}.querySelector('button[data-action=\"trigger\"]');"
                                   " b.click(); return b.textContent; })()")
        assert clicked == "Run now"
        deadline = time.monotonic() + 60
        while not audit(project, "nightly"):  # the form's POST went through (reloading sooner would cancel it)
            assert time.monotonic() < deadline, "the click posted nothing"
            time.sleep(0.1)
        while True:  # the page reloads itself every 10 s; we reload it sooner
            browser.load(server.url + "/")
            last = browser.evaluate(f"{row}.querySelector('td:nth-child(3)').textContent.trim()")
            if last.startswith("success"):
                break
            assert time.monotonic() < deadline, f"the run never showed on the dashboard: {last!r}"
            time.sleep(0.3)
        browser.load(server.url + "/job/nightly")
        triggers = browser.evaluate("[...document.querySelectorAll('#history tr[data-run]')]"
                                    ".map(tr => [tr.dataset.status, tr.cells[4].textContent])")
        assert triggers == [["success", "api"]]
        who = browser.evaluate("[...document.querySelectorAll('#audit tr[data-action]')]"
                               ".map(tr => [tr.dataset.action, tr.cells[2].textContent])")
        assert who == [["trigger", "basic:ops"]]
    finally:
        browser.close()
    (entry,) = audit(project, "nightly")
    assert (entry.action, entry.who, entry.client) == ("trigger", "basic:ops", "127.0.0.1")


def test_the_dashboard_with_its_buttons_still_fits_a_1024_px_window(served, tmp_path):
    """As test_serve's width test, with writes on: the Actions column stacks its buttons."""
    _, server = served
    _, _, body = server.get("/", bearer())
    assert "Run now" in body
    probe = ("<script>const t = document.querySelector('#jobs'), d = document.documentElement;"
             "document.body.dataset.widths = [t.scrollWidth, d.clientWidth, d.scrollWidth].join(' ');"
             "</script>")
    page = tmp_path / "dashboard.html"
    page.write_text(body.replace('http-equiv="refresh"', 'name="no-refresh"').replace("</body>", probe + "</body>"))
    dom = subprocess.run([*chromium(tmp_path), "--window-size=1024,768", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    table, window, document = map(int, re.search(r'data-widths="(\d+) (\d+) (\d+)"', dom.stdout).groups())
    assert window == 1024
    assert table <= window - 2 * 20 and document <= window, (table, document)
