"""http + into jobs, through the real CLI against a real server on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

FAST = "retries: {attempts: 3, initial: 10ms, max: 50ms, jitter: 0}"


# --- a real upstream on loopback -------------------------------------------------------------

@dataclass
class Request:
    method: str
    path: str
    query: dict  # name -> last value
    headers: dict
    raw_path: str
    handler: object = None  # the BaseHTTPRequestHandler, for routes that write their own answer


def reply(status: int = 200, body=None, headers: dict | None = None, text: str | None = None):
    """What a route returns: (status, bytes, headers)."""
    if text is not None:
        raw = text.encode()
        kind = "text/html"
    else:
        raw = json.dumps(body).encode()
        kind = "application/json"
    return status, raw, {"Content-Type": kind, **(headers or {})}


class Upstream:
    """A threaded HTTP server; each test maps paths to functions of the Request."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.routes = {}
        self.requests: list[Request] = []
        self.release = threading.Event()  # hanging routes wait on it until teardown
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.answer()

            def do_POST(self):
                self.answer()

            def answer(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                request = Request(self.command, parts.path,
                                  {k: v[-1] for k, v in parse_qs(parts.query).items()},
                                  dict(self.headers), self.path, self)
                upstream.requests.append(request)
                route = upstream.routes.get(parts.path)
                if route is None:
                    status, raw, headers = reply(404, {"error": "no route"})
                else:
                    result = route(request)
                    if result is None:  # the route wrote its own response
                        return
                    status, raw, headers = result
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}"

    def route(self, path: str):
        def register(function):
            self.routes[path] = function
            return function
        return register

    def hits(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


def pages_of(items: list, size: int):
    return [items[i:i + size] for i in range(0, len(items), size)]


def rows(project, table: str, order: str = "id") -> list[dict]:
    db = sqlite3.connect(project.path / "data.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM [{table}] ORDER BY [{order}]")]
    finally:
        db.close()


def job_yaml(upstream, http: str, *, extra: str = "", budgets: str = "", into: str = "{table: items, pk: id}",
             name: str = "items") -> str:
    return f"""
state: schedsync.db
{budgets}
jobs:
  {name}:
{extra}
    {FAST}
    http:
{http.format(base=upstream.base)}
    into: {into}
"""


def one_error_line(result) -> str:
    """The single stderr line of a failed run, and that it is one line."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- storing pages ------------------------------------------------------------------------------

def serve_next_links(upstream, items, size=2):
    chunks = pages_of(items, size)

    @upstream.route("/items")
    def items_route(request):
        page = int(request.query.get("page", 1))
        nxt = f"/items?page={page + 1}" if page < len(chunks) else None
        return reply(200, {"data": chunks[page - 1], "links": {"next": nxt}})


def test_it_upserts_three_pages_into_the_table(project, upstream):
    items = [{"id": i, "name": f"drop {i}", "reward": {"token": "X", "amount": i}, "tags": ["a"]}
             for i in range(1, 7)]
    serve_next_links(upstream, items)
    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data
      next: links.next"""))

    result = project.cli("run", "items")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # under cron, success prints nothing
    stored = rows(project, "items")
    assert [r["id"] for r in stored] == [1, 2, 3, 4, 5, 6]
    assert json.loads(stored[0]["reward"]) == {"token": "X", "amount": 1}
    assert json.loads(stored[0]["tags"]) == ["a"]
    [run] = project.history("items")
    assert (run["status"], run["requests"], run["attempts"], run["items_processed"],
            run["items_failed"]) == ("success", 3, 1, 6, 0)
    assert [r.query.get("page") for r in upstream.hits("/items")] == [None, "2", "3"]


def test_a_second_run_updates_rows_instead_of_duplicating_them(project, upstream):
    items = [{"id": i, "name": f"drop {i}"} for i in range(1, 7)]
    serve_next_links(upstream, items)
    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data
      next: links.next"""))
    assert project.cli("run", "items").returncode == 0

    items[4]["name"] = "renamed"
    items[5]["chain"] = "base"  # a new key becomes a new column
    assert project.cli("run", "items").returncode == 0

    stored = rows(project, "items")
    assert len(stored) == 6
    assert stored[4]["name"] == "renamed"
    assert stored[5]["chain"] == "base" and stored[0]["chain"] is None


def test_it_follows_a_cursor_until_there_is_none(project, upstream):
    chunks = pages_of([{"id": i} for i in range(1, 6)], 2)

    @upstream.route("/feed")
    def feed(request):
        at = int(request.query.get("after", 0))
        cursor = str(at + 1) if at + 1 < len(chunks) else None
        return reply(200, {"data": chunks[at], "meta": {"cursor": cursor}})

    project.write(job_yaml(upstream, """\
      url: "{base}/feed?region=eu"
      items: data
      next: {{cursor: meta.cursor, param: after}}"""))

    assert project.cli("run", "items").returncode == 0

    assert [r["id"] for r in rows(project, "items")] == [1, 2, 3, 4, 5]
    hits = upstream.hits("/feed")
    assert [r.query.get("after") for r in hits] == [None, "1", "2"]
    assert all(r.query["region"] == "eu" for r in hits)


def test_it_counts_pages_up_until_an_empty_page(project, upstream):
    chunks = pages_of([{"id": i} for i in range(1, 6)], 2)

    @upstream.route("/quests")
    def quests(request):
        page = int(request.query["p"])
        return reply(200, {"quests": chunks[page - 1] if page <= len(chunks) else []})

    project.write(job_yaml(upstream, """\
      url: "{base}/quests"
      params: {{per_page: 2}}
      items: quests
      next: {{page: p}}"""))

    assert project.cli("run", "items").returncode == 0

    assert len(rows(project, "items")) == 5
    assert [(r.query["p"], r.query["per_page"]) for r in upstream.hits("/quests")] == [
        ("1", "2"), ("2", "2"), ("3", "2"), ("4", "2")]
    assert project.history("items")[0]["requests"] == 4


def test_it_follows_the_link_header_and_keeps_query_credentials(project, upstream):
    chunks = pages_of([{"pool": f"p{i}", "apy": i / 10} for i in range(1, 6)], 2)

    @upstream.route("/yield")
    def pools(request):
        page = int(request.query.get("page", 1))
        headers = {}
        if page < len(chunks):
            headers["Link"] = f'</yield?page={page + 1}>; rel="next", </yield?page=1>; rel="first"'
        return reply(200, chunks[page - 1], headers)

    project.write(job_yaml(upstream, """\
      url: "{base}/yield"
      params: {{api_key: k-123456}}
      next: link-header""", into="{table: pools, pk: pool}"))

    result = project.cli("run", "items")

    assert result.returncode == 0, result.stderr
    assert [r["pool"] for r in rows(project, "pools", order="pool")] == ["p1", "p2", "p3", "p4", "p5"]
    assert [(r.query.get("page"), r.query["api_key"]) for r in upstream.hits("/yield")] == [
        (None, "k-123456"), ("2", "k-123456"), ("3", "k-123456")]


def test_max_pages_bounds_a_sync_that_never_ends(project, upstream):
    @upstream.route("/forever")
    def forever(request):
        page = int(request.query.get("page", 1))
        return reply(200, {"data": [{"id": page}], "next": f"/forever?page={page + 1}"})

    project.write(job_yaml(upstream, """\
      url: "{base}/forever"
      items: data
      next: next
      max_pages: 4"""))

    assert project.cli("run", "items").returncode == 0

    [run] = project.history("items")
    assert (run["status"], run["requests"], run["items_processed"]) == ("success", 4, 4)
    assert "stopped at http.max_pages (4) with pages left" in run["output"]


def test_a_post_sends_its_body_as_json(project, upstream):
    seen = []

    @upstream.route("/search")
    def search(request):
        seen.append((request.method, request.headers.get("Content-Type")))
        return reply(200, {"data": [{"id": 1}]})

    project.write(job_yaml(upstream, """\
      url: "{base}/search"
      method: post
      body: {{query: airdrops, limit: 50}}
      items: data"""))

    assert project.cli("run", "items").returncode == 0
    assert seen == [("POST", "application/json")]


# --- incremental sync ----------------------------------------------------------------------------

def test_since_sends_the_start_of_the_last_complete_sync_and_nothing_the_first_time(project, upstream):
    @upstream.route("/changes")
    def changes(request):
        return reply(200, {"data": [{"id": 1}]})

    project.write(job_yaml(upstream, """\
      url: "{base}/changes"
      items: data
      since: {{param: updated_since}}"""))

    assert project.cli("run", "items").returncode == 0
    assert project.cli("run", "items").returncode == 0

    first, second = upstream.hits("/changes")
    assert "updated_since" not in first.query
    started = project.history("items")[-1]["started_at"]  # oldest first run, ISO seconds
    assert second.query["updated_since"] == started


def test_since_skips_runs_that_stopped_early(project, upstream):
    throttle = {"page 2": False}

    @upstream.route("/changes")
    def changes(request):
        page = int(request.query.get("page", 1))
        if page == 2 and throttle["page 2"]:
            return reply(429, {"error": "quota"}, {"Retry-After": "3600"})
        return reply(200, {"data": [{"id": page}], "next": "/changes?page=2" if page == 1 else None})

    project.write(job_yaml(upstream, """\
      url: "{base}/changes"
      items: data
      next: next
      since: {{param: since, format: epoch}}"""))

    assert project.cli("run", "items").returncode == 0
    throttle["page 2"] = True
    assert project.cli("run", "items").returncode == 0  # page 1 stored, then throttled: partial
    throttle["page 2"] = False
    assert project.cli("run", "items").returncode == 0

    third, stopped, complete = project.history("items")
    assert (stopped["status"], stopped["reason"]) == ("partial", "rate_limited")
    assert stopped["error"].endswith("returned HTTP 429 Too Many Requests: {\"error\": \"quota\"}")
    sent = [r.query.get("since") for r in upstream.hits("/changes") if r.query.get("page") is None]
    started = int(datetime.fromisoformat(complete["started_at"].replace("Z", "+00:00")).timestamp())
    assert sent == [None, str(started), str(started)]  # the partial run does not count


def test_since_with_a_field_sends_the_newest_stored_value(project, upstream):
    @upstream.route("/changes")
    def changes(request):
        return reply(200, {"data": [{"id": 1, "updated_at": "2024-05-01T10:00:00Z"},
                                    {"id": 2, "updated_at": "2024-05-02T09:30:00Z"}]})

    project.write(job_yaml(upstream, """\
      url: "{base}/changes"
      items: data
      since: {{param: after, field: updated_at}}"""))

    assert project.cli("run", "items").returncode == 0
    assert project.cli("run", "items").returncode == 0

    first, second = upstream.hits("/changes")
    assert "after" not in first.query
    assert second.query["after"] == "2024-05-02T09:30:00Z"


# --- retries, budgets, breakers, timeouts ----------------------------------------------------------

def test_a_429_with_retry_after_is_waited_out_and_pauses_the_shared_budget(project, upstream):
    told = threading.Event()

    @upstream.route("/busy")
    def busy(request):
        if len(upstream.hits("/busy")) == 1:
            told.set()
            return reply(429, {"error": "slow down"}, {"Retry-After": "3"})
        return reply(200, {"data": [{"id": 1}]})

    project.write(f"""
state: schedsync.db
budgets:
  api: 60/1m
jobs:
  items:
    budget: api
    timeout: 20s
    {FAST}
    http:
      url: "{upstream.base}/busy"
      items: data
    into: {{table: items, pk: id}}
  sibling:
    budget: api
    command: ["true"]
""")
    running = project.start("run", "items")
    assert told.wait(10)
    time.sleep(0.2)  # let the 429 reach the bucket

    sibling = project.cli("run", "sibling")

    assert sibling.returncode == 75, sibling.stderr
    [skip] = project.history("sibling")
    assert (skip["status"], skip["reason"]) == ("skipped", "rate_limited")
    assert skip["retry_at"] is not None
    out, err = running.communicate(timeout=30)
    assert running.returncode == 0, err
    [run] = project.history("items")
    assert (run["status"], run["attempts"], run["requests"], run["items_processed"]) == ("success", 2, 2, 1)
    first, retry = upstream.hits("/busy")
    assert retry is not first
    # the pause kept the bucket's tokens: 2 requests spent of 60 (emptying it left about 3)
    [budget] = project.status()["budgets"]
    assert budget["tokens"] >= 55, budget


def test_a_429_asking_for_longer_than_the_run_has_stops_it_rate_limited(project, upstream):
    @upstream.route("/quota")
    def quota(request):
        return reply(429, {"error": "daily quota used"}, {"Retry-After": "7200"})

    project.write(f"""
state: schedsync.db
budgets:
  api: 60/1m
jobs:
  items:
    budget: api
    {FAST}
    http: {{url: "{upstream.base}/quota", items: data}}
    into: {{table: items, pk: id}}
  sibling:
    budget: api
    command: ["true"]
""")

    began = time.time()
    result = project.cli("run", "items")
    sibling = project.cli("run", "sibling")

    assert result.returncode == 1
    [run] = project.history("items")
    assert (run["status"], run["reason"], run["attempts"]) == ("failed", "rate_limited", 1)
    assert run["error"] == (f'GET {upstream.base}/quota returned HTTP 429 Too Many Requests: '
                            '{"error": "daily quota used"}')
    retry_at = datetime.fromisoformat(run["retry_at"].replace("Z", "+00:00")).timestamp()
    assert began + 7190 < retry_at < time.time() + 7210
    assert sibling.returncode == 75  # the upstream's wait applies to every job on the budget


def test_a_503_storm_fails_each_run_then_opens_the_breaker(project, upstream):
    @upstream.route("/down")
    def down(request):
        return reply(503, {"error": "maintenance"})

    project.write(job_yaml(upstream, """\
      url: "{base}/down"
      items: data""", extra="    breaker: {failures: 2, reset_after: 10m}"))
    url = f"{upstream.base}/down"

    for i in range(2):
        result = project.cli("run", "items")
        assert result.returncode == 1
        if i == 1:  # the run that opens the breaker says so first (a line of its own)
            opened, rest = result.stderr.split("\n", 1)
            assert opened.startswith("breaker items opened after 2 failures: runs skipped until ")
            result.stderr = rest
        assert one_error_line(result).startswith("error: items: failed in ")
        expected = f'GET {url} returned HTTP 503 Service Unavailable: {{"error": "maintenance"}} (after 3 tries)'
        assert expected in result.stderr
    third = project.cli("run", "items")

    assert third.returncode == 75
    runs = project.history("items")
    assert [r["status"] for r in runs] == ["skipped", "failed", "failed"]
    assert runs[0]["reason"] == "breaker_open"
    assert (runs[1]["attempts"], runs[1]["requests"]) == (3, 3)
    assert runs[1]["error"] == expected
    assert len(upstream.hits("/down")) == 6


def test_a_hanging_upstream_ends_at_the_run_timeout(project, upstream):
    @upstream.route("/hang")
    def hang(request):
        upstream.release.wait(30)
        return reply(200, {"data": []})

    project.write(job_yaml(upstream, """\
      url: "{base}/hang"
      items: data""", extra="    timeout: 2s"))

    began = time.monotonic()
    result = project.cli("run", "items")
    took = time.monotonic() - began

    assert result.returncode == 1
    assert took < 15, took  # without the hard deadline the trickle would last hours
    [run] = project.history("items")
    assert (run["status"], run["error"]) == ("timeout", "timed out after 2.0s")
    assert "timed out after 2.0s" in one_error_line(result)


def test_an_upstream_that_trickles_bytes_is_cut_by_the_hard_deadline(project, upstream):
    @upstream.route("/trickle")
    def trickle(request):
        # Headers, then a byte every 200ms: no single read ever times out.
        out = request.handler
        out.send_response(200)
        out.send_header("Content-Type", "application/json")
        out.send_header("Content-Length", "100000")
        out.end_headers()
        while not upstream.release.wait(0.2):
            try:
                out.wfile.write(b" ")
                out.wfile.flush()
            except OSError:
                return None
        return None

    project.write(job_yaml(upstream, """\
      url: "{base}/trickle"
      items: data
      timeout: 1s""", extra="    timeout: 2s"))

    began = time.monotonic()
    result = project.cli("run", "items")
    took = time.monotonic() - began

    assert result.returncode == 1, result.stderr
    assert took < 15, took  # without the hard deadline the trickle would last hours
    [run] = project.history("items")
    assert (run["status"], run["error"]) == ("timeout", "timed out after 2.0s")


def shown_in_kathmandu(iso_time: str) -> tuple[str, str]:
    """``iso_time`` as a message shows it with TZ=Asia/Kathmandu (UTC+05:45): ``21:40:07 +0545``
    on the day, else ``2026-12-05 00:10:07 +0545`` (either: the day may turn meanwhile)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    at = datetime.fromisoformat(iso_time.replace("Z", "+00:00")).astimezone(ZoneInfo("Asia/Kathmandu"))
    return at.strftime("%H:%M:%S +0545"), at.strftime("%Y-%m-%d %H:%M:%S +0545")


def test_an_empty_budget_stops_pagination_as_partial_keeping_stored_pages(project, upstream):
    serve_next_links(upstream, [{"id": i} for i in range(1, 9)])
    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data
      next: links.next""", budgets="budgets: {api: {capacity: 2, per: 1h}}", extra="    budget: api"))

    result = project.cli("run", "items", env={"TZ": "Asia/Kathmandu"})

    assert result.returncode == 0, result.stderr
    [run] = project.history("items")
    assert (run["status"], run["reason"], run["requests"], run["items_processed"]) == (
        "partial", "rate_limited", 2, 4)
    assert run["retry_at"] is not None
    # the local time, labelled, as every time shown
    assert run["error"] in [f"budget api is empty until {until}; stopped after 2 pages"
                            for until in shown_in_kathmandu(run["retry_at"])]
    assert result.stderr == f"items: partial: 4 items stored, then {run['error']}\n"
    assert [r["id"] for r in rows(project, "items")] == [1, 2, 3, 4]


def test_an_empty_budget_before_the_first_request_is_a_skip_not_a_failure(project, upstream):
    serve_next_links(upstream, [{"id": 1}])
    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data""", budgets="budgets: {api: {capacity: 1, per: 1h}}", extra="    budget: api"))
    assert project.cli("run", "items").returncode == 0

    result = project.cli("run", "items", env={"TZ": "Asia/Kathmandu"})

    assert (result.returncode, result.stdout, result.stderr) == (75, "", "")
    [run, _] = project.history("items")
    assert (run["status"], run["reason"], run["requests"]) == ("skipped", "rate_limited", 0)
    assert project.status()["jobs"][0]["breaker"]["failures"] == 0
    assert run["error"] in [f"budget api is empty until {until}" for until in shown_in_kathmandu(run["retry_at"])]
    assert run["retry_at"] is not None
    assert len(upstream.hits("/items")) == 1



def test_a_budget_emptied_by_retries_keeps_the_upstreams_error(project, upstream):
    @upstream.route("/down")
    def down(request):
        return reply(503, {"error": "maintenance"})

    project.write(job_yaml(upstream, """\
      url: "{base}/down"
      items: data""", budgets="budgets: {api: {capacity: 2, per: 1h}}",
                           extra="    budget: api\n    breaker: {failures: 1, reset_after: 10m}"))

    result = project.cli("run", "items")

    assert result.returncode == 1
    cause = (f'GET {upstream.base}/down returned HTTP 503 Service Unavailable: {{"error": "maintenance"}}'
             " (after 2 tries; budget empty before the 3rd)")
    [run] = project.history("items")
    assert (run["status"], run["requests"], run["error"]) == ("failed", 2, cause)
    assert cause in result.stderr and "is empty" not in result.stderr
    [job] = project.status()["jobs"]
    assert "HTTP 503" in job["why"] and "is empty" not in job["why"], job["why"]
    detail = project.cli("status", "items", env={"COLUMNS": "400"}).stdout
    [opened] = [line for line in detail.splitlines() if "closed → open" in line or "closed -> open" in line]
    assert "HTTP 503" in opened and "is empty" not in opened
    assert len(upstream.hits("/down")) == 2

@pytest.mark.parametrize("budget", [True, False], ids=["budget", "no-budget"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_run_killed_mid_sync_is_recorded_crashed_with_the_requests_it_made(
        project, upstream, request, backend, budget):
    # Each request's count is stored with its budget token (or alone, without a budget)
    # before it is sent, so the crashed run's `requests` is exactly what the server got.
    if backend == "postgresql":
        project.env["SCHEDSYNC_STATE"] = request.getfixturevalue("pg_url")
    held = threading.Event()  # the third page hangs: schedsync is killed while waiting for it

    @upstream.route("/pages")
    def pages(request):
        page = int(request.query.get("page", 1))
        if page == 2 and "hop" not in request.query:
            return reply(302, {}, {"Location": "/pages?page=2&hop=1"})  # a hop is a request too
        if page == 3:
            held.set()
            upstream.release.wait(60)
            return None  # the client is gone: answer nothing
        return reply(200, {"data": [{"id": page}], "next": f"/pages?page={page + 1}"})

    project.write(f"""
budgets: {{api: 100/1h}}
jobs:
  items:
    {"budget: api" if budget else ""}
    timeout: 5m
    {FAST}
    http:
      url: "{upstream.base}/pages"
      items: data
      next: next
    into: {{db: "{project.path / 'data.db'}", table: items, pk: id}}
""")
    proc = project.start("run", "items")
    try:
        assert held.wait(60), proc.communicate(timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    answered = len(upstream.hits("/pages"))
    assert answered == 4  # pages 1 and 2, the hop, and the third, unanswered

    deadline = time.monotonic() + 60
    while (runs := project.history("items"))[0]["status"] == "running":  # the server frees its session
        assert time.monotonic() < deadline, runs
        time.sleep(0.1)
    [run] = runs
    assert (run["status"], run["requests"]) == ("crashed", answered)
    metrics = project.cli("metrics")
    assert metrics.returncode == 0, metrics.stderr
    assert f'schedsync_requests_total{{job="items"}} {answered}' in metrics.stdout.splitlines()
    assert 'schedsync_runs_total{job="items",status="crashed"} 1' in metrics.stdout.splitlines()


# --- errors a user can act on ------------------------------------------------------------------------

def test_an_unreachable_host_says_so(project):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    project.write(f"""
state: schedsync.db
jobs:
  items:
    retries: {{attempts: 2, initial: 10ms}}
    http: {{url: "http://127.0.0.1:{port}/x"}}
    into: {{table: items, pk: id}}
""")

    result = project.cli("run", "items")

    assert result.returncode == 1
    [run] = project.history("items")
    assert run["error"] == f"cannot connect to 127.0.0.1:{port}: [Errno 111] Connection refused (after 2 tries)"
    assert run["error"] in one_error_line(result)


def test_a_tls_error_says_so_and_is_not_retried(project, upstream):
    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data""").replace("http://", "https://"))

    result = project.cli("run", "items")

    assert result.returncode == 1
    [run] = project.history("items")
    port = upstream.server.server_address[1]
    assert run["error"].startswith(f"TLS error talking to 127.0.0.1:{port}: [SSL")
    assert run["attempts"] == 1
    assert run["error"] in one_error_line(result)


def test_a_non_json_body_fails_with_its_type_and_first_characters(project, upstream):
    @upstream.route("/items")
    def html(request):
        return reply(200, text="<html>\n  <body>Down for maintenance" + "." * 200 + "</body></html>")

    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data"""))

    result = project.cli("run", "items")

    assert result.returncode == 1
    [run] = project.history("items")
    assert run["error"] == (f"GET {upstream.base}/items returned non-JSON (text/html): "
                            "<html> <body>Down for maintenance" + "." * 66 + "…")
    assert run["error"] in one_error_line(result)


def test_a_missing_items_path_names_the_keys_that_are_there(project, upstream):
    @upstream.route("/items")
    def other(request):
        return reply(200, {"results": [], "count": 0})

    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data"""))

    result = project.cli("run", "items")

    assert result.returncode == 1
    [run] = project.history("items")
    assert run["error"] == f"GET {upstream.base}/items has no `data` in its JSON (keys: results, count)"
    assert run["error"] in one_error_line(result)


def test_a_404_fails_at_once_without_retrying(project, upstream):
    @upstream.route("/gone")
    def gone(request):
        return reply(404, {"error": "no such feed"})

    project.write(job_yaml(upstream, """\
      url: "{base}/gone"
      items: data"""))

    result = project.cli("run", "items")

    assert result.returncode == 1
    [run] = project.history("items")
    assert run["error"] == f'GET {upstream.base}/gone returned HTTP 404 Not Found: {{"error": "no such feed"}}'
    assert (run["attempts"], run["requests"]) == (1, 1)
    assert len(upstream.hits("/gone")) == 1
    assert run["error"] in one_error_line(result)


def test_items_without_the_key_make_the_run_partial(project, upstream):
    @upstream.route("/items")
    def mixed(request):
        return reply(200, {"data": [{"id": 1}, {"name": "no id"}, {"id": None}, "a string", {"id": 4}]})

    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data"""))

    result = project.cli("run", "items")

    assert result.returncode == 0
    assert result.stderr == ("items: partial: 3 of 5 items failed "
                             "(2 items had no `id` and 1 item was not a JSON object)\n")
    [run] = project.history("items")
    assert (run["status"], run["items_processed"], run["items_failed"]) == ("partial", 2, 3)
    assert [r["id"] for r in rows(project, "items")] == [1, 4]


def test_a_composite_key_needs_every_part(project, upstream):
    @upstream.route("/items")
    def prices(request):
        return reply(200, {"data": [{"chain": "base", "pool": "a", "apy": 1}, {"chain": "base", "apy": 2}]})

    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data""", into="{table: apy, pk: [chain, pool]}"))

    result = project.cli("run", "items")

    assert result.returncode == 0
    assert result.stderr == "items: partial: 1 of 2 items failed (1 item had no `chain`, `pool`)\n"


# --- secrets ---------------------------------------------------------------------------------------

def test_tokens_never_reach_the_state_the_data_history_or_stderr(project, upstream):
    header_token, query_token = "hdr-s3cr3t-Zq81", "qry-s3cr3t-Wx42"
    calls = []

    @upstream.route("/private")
    def private(request):
        calls.append(request)
        if len(calls) == 1:  # an upstream that echoes what it got, as error pages do
            return reply(500, {"error": f"bad auth {request.headers.get('Authorization')} "
                                        f"for {request.raw_path}"})
        return reply(200, {"data": [{"id": 1, "name": "ok"}]})

    project.write(f"""
state: schedsync.db
jobs:
  items:
    retries: {{attempts: 1, initial: 10ms}}
    http:
      url: "{upstream.base}/private?key=${{QUERY_TOKEN}}&page=1"
      headers: {{Authorization: "Bearer ${{HEADER_TOKEN}}"}}
      items: data
    into: {{table: items, pk: id}}
""")
    env = {"HEADER_TOKEN": header_token, "QUERY_TOKEN": query_token}

    failed = project.cli("run", "items", env=env)
    succeeded = project.cli("run", "items", env=env)
    history = project.cli("history", "items", "--json", env=env)

    assert failed.returncode == 1 and succeeded.returncode == 0
    assert calls[0].headers["Authorization"] == f"Bearer {header_token}"
    assert calls[0].query["key"] == query_token
    error = project.history("items")[1]["error"]
    assert error.startswith(f"GET {upstream.base}/private?key=***&page=1 returned HTTP 500 "
                            "Internal Server Error: {\"error\": \"bad auth Bearer ***")
    for token in (header_token, query_token):
        for text in (failed.stderr, failed.stdout, succeeded.stderr, history.stdout):
            assert token not in text
        for path in project.path.rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes(), path


def test_credential_looking_query_values_are_hidden_even_when_literal(project, upstream):
    project.write(job_yaml(upstream, """\
      url: "{base}/nowhere?access_token=literal-value-123&page=2"
      items: data"""))

    result = project.cli("run", "items")

    assert result.returncode == 1
    [run] = project.history("items")
    assert run["error"].startswith(f"GET {upstream.base}/nowhere?access_token=***&page=2 returned HTTP 404")
    assert "literal-value-123" not in result.stderr


# --- the hot path -------------------------------------------------------------------------------

def test_a_command_job_does_not_import_httpx(project):
    import subprocess
    import sys

    project.write("""
state: schedsync.db
jobs:
  plain:
    command: ["true"]
""")
    code = ("import sys, runpy; sys.argv = ['schedsync', '-c', 'jobs.yaml', 'run', 'plain']\n"
            "try:\n    runpy.run_module('schedsync', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('httpx' in sys.modules, 'schedsync.jobs.http' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=project.path, env=project.env, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stderr


# --- a terminal ----------------------------------------------------------------------------------

def run_on_a_terminal(project, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdout and stderr; (exit code, what it showed)."""
    import os
    import pty
    import select
    import subprocess

    master, slave = pty.openpty()
    proc = subprocess.Popen(project.argv(*args), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            cwd=project.path, env={**project.env, "TERM": "xterm", "COLUMNS": "120"})
    os.close(slave)
    chunks, ends = [], time.monotonic() + timeout
    while time.monotonic() < ends:
        if not select.select([master], [], [], 0.5)[0]:
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout), b"".join(chunks).decode("utf-8", "replace")


def test_a_long_sync_shows_progress_on_a_terminal(project, upstream):
    chunks = pages_of([{"id": i} for i in range(1, 11)], 2)

    @upstream.route("/slow")
    def slow(request):
        time.sleep(0.3)
        page = int(request.query.get("page", 1))
        return reply(200, {"data": chunks[page - 1], "next": f"/slow?page={page + 1}" if page < 5 else None})

    project.write(job_yaml(upstream, """\
      url: "{base}/slow"
      items: data
      next: next"""))

    code, shown = run_on_a_terminal(project, "run", "items")

    assert code == 0, shown
    assert re.search(r"items  page \d  \d+ items  [\d,]+/s", shown), shown
    assert re.search(r"items: success in [\d.]+m?s, 10 items", shown), shown


# --- pure parts ------------------------------------------------------------------------------------

def test_retry_after_reads_seconds_and_http_dates():
    from schedsync.jobs.transport import retry_after

    now = 1_700_000_000.0
    assert retry_after("120", now) == 120
    assert retry_after("Wed, 15 Nov 2023 00:13:20 GMT", now) == pytest.approx(7200)
    assert retry_after("Tue, 14 Nov 2023 20:00:00 GMT", now) == 0  # already past
    assert retry_after("soon", now) is None
    assert retry_after(None, now) is None


def test_urls_are_shown_without_credentials():
    from schedsync.config import Secrets
    from schedsync.jobs.display import show_url

    secrets = Secrets()
    secrets.add("abc123secret")
    shown = show_url("https://bob:pw@api.example.com/v1/x?q=abc123secret&api_key=zz&page=2#frag", secrets)
    assert shown == "https://bob:***@api.example.com/v1/x?q=***&api_key=***&page=2"


def test_dotted_paths_reach_into_objects_and_lists():
    from schedsync.jobs.pagination import dig

    data = {"result": {"pages": [{"items": [1, 2]}]}, "next": None}
    assert dig(data, "result.pages.0.items")[:2] == (True, [1, 2])
    assert dig(data, "next")[:2] == (True, None)
    assert dig(data, "result.missing") == (False, None, {"pages": [{"items": [1, 2]}]})


# --- review fixes ----------------------------------------------------------------------------------

def test_concurrent_jobs_writing_the_same_data_db_all_succeed(project, upstream):
    size, count = 300, 20

    @upstream.route("/many")
    def many(request):
        page = int(request.query.get("page", 1))
        if page > count:
            return reply(200, {"data": []})
        first = (page - 1) * size
        return reply(200, {"data": [{"id": first + i, "name": f"item {first + i}", "n": i}
                                    for i in range(size)]})

    names = ("alpha", "beta", "gamma")
    project.write("state: schedsync.db\njobs:\n" + "".join(f"""
  {name}:
    {FAST}
    http:
      url: "{upstream.base}/many"
      items: data
      next: {{page: page}}
    into: {{table: {name}, pk: id}}
""" for name in names))

    started = [project.start("run", name) for name in names]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in started]
    for p in started:
        p.stdout.close()
        p.stderr.close()

    for code, err in results:
        assert code == 0, err
    for name in names:
        assert len(rows(project, name)) == size * count


def test_a_url_that_is_invalid_after_expanding_variables_fails_without_quoting_it(project, upstream):
    project.write(job_yaml(upstream, """\
      url: "http://user:${{API_PASS}}@127.0.0.1:{base_port}/items"
      items: data""".replace("{base_port}", upstream.base.rsplit(":", 1)[1])))

    result = project.cli("run", "items", env={"API_PASS": "sec/ret-pass-991"})

    assert result.returncode == 1, result.stderr
    line = one_error_line(result)
    assert "not valid after expanding variables" in line
    assert "Traceback" not in result.stderr
    for part in ("sec", "ret-pass-991"):
        assert part not in line
    [run] = project.history("items")
    assert run["status"] == "failed" and "sec" not in run["error"]


def test_a_data_db_that_is_not_a_database_fails_in_one_line(project, upstream):
    serve_next_links(upstream, [{"id": 1}])
    (project.path / "junk.db").write_text("this is not a database\n" * 200)
    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data""", into="{table: things, pk: id, db: junk.db}"))

    result = project.cli("run", "items")

    assert result.returncode == 1, result.stderr
    line = one_error_line(result)
    assert "cannot store items into things in" in line and "junk.db" in line
    assert "file is not a database" in line


@pytest.mark.parametrize("rule", [{"cursor": 5, "param": "x"}, {"page": [1]}, {"cursor": "c", "param": 3}])
def test_a_bad_next_rule_is_a_request_failure_not_a_traceback(rule):
    # The registry check rejects these first; Sync must still fail in one line if one gets through.
    from schedsync.jobs.pagination import RequestFailed, check_next_rule

    with pytest.raises(RequestFailed, match="http.next"):
        check_next_rule(rule)
    for good in (None, "links.next", "link-header", {"cursor": "meta.c", "param": "after"}, {"page": "p"}):
        check_next_rule(good)


def test_secrets_are_hidden_in_the_form_httpx_puts_in_a_query():
    import httpx

    from schedsync.config import Secrets
    from schedsync.jobs.display import show_url

    secrets = Secrets()
    secrets.add("a b/c:d@e")
    url = httpx.URL("https://api.example.com/x?q=a b/c:d@e&page=2")
    assert "a%20b/c" in str(url)
    assert show_url(url, secrets) == "https://api.example.com/x?q=***&page=2"


def test_since_never_trusts_a_sync_recorded_later_than_now(project, upstream):
    # A run recorded while the clock ran a day ahead must not become the next `since`:
    # every change between the real last sync and tomorrow would never be fetched.
    @upstream.route("/changes")
    def changes(request):
        return reply(200, {"data": [{"id": 1}]})

    project.write(job_yaml(upstream, """\
      url: "{base}/changes"
      items: data
      since: {{param: updated_since}}"""))
    assert project.cli("run", "items").returncode == 0
    real = project.history("items")[0]["started_at"]

    from schedsync.store import open_store
    from stored import finished_run

    store = open_store(str(project.state))
    try:
        finished_run(store, "items", "success", time.time() + 86400)
    finally:
        store.close()

    assert project.cli("run", "items").returncode == 0
    assert upstream.hits("/changes")[-1].query["updated_since"] == real
    log = project.cli("logs", "items")
    assert "later than now" in log.stdout, log.stdout


def test_a_command_job_beside_an_http_job_imports_nothing_of_http(project):
    """The kinds' registry imports a kind only when a job uses it: validating the http job
    (cold cache) loads its light kind module, never httpx; a warm run loads neither."""
    import subprocess
    import sys

    project.write("""
state: schedsync.db
jobs:
  plain:
    command: ["true"]
  sync:
    http: {url: "http://127.0.0.1:9/items"}
    into: {table: items, pk: id}
""")
    code = ("import sys, runpy; sys.argv = ['schedsync', '-c', 'jobs.yaml', 'run', 'plain']\n"
            "try:\n    runpy.run_module('schedsync', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('httpx' in sys.modules, 'schedsync.jobs.http' in sys.modules,"
            " 'schedsync.kinds.http' in sys.modules)")
    seen = []
    for _ in ("cold", "warm"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=project.path, env=project.env, timeout=60)
        seen.append(out.stdout.strip().splitlines()[-1])
    assert seen == ["False False True", "False False False"], out.stderr
