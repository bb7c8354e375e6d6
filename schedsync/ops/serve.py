"""``schedsync serve``: read-only HTTP over the state, for probes, Prometheus and people.

    /healthz      every job's health as JSON; 200 when none is LATE, STALE, STALLED or FAILING, else 503
    /metrics      what ``schedsync metrics`` prints (text/plain; version=0.0.4)
    /             the dashboard: one row per job, worst first; it reloads itself
    /job/NAME     one job: status, breaker transitions, history, a run's output

Every request loads the registry (from its cache when unchanged) and opens the
state afresh, so an edited jobs.yaml or a replaced state file is seen at once
and nothing grows between requests; the state is opened as read commands open it
(``write=False``: a state this user cannot write is served read-only). The data
come from the application layer (``app.status``) and ``ops.metrics``, as
``status`` and ``metrics`` use them: this module only renders. Jinja2 (autoescaping) renders
the HTML; it is imported here only, never on the path of ``schedsync run``.

Loopback by default. Any other address needs a credential from the environment
(``SCHEDSYNC_SERVE_TOKEN`` for ``Authorization: Bearer``, ``SCHEDSYNC_SERVE_BASIC``
as ``user:password`` for basic auth); once one is set, every request must carry it.

Writes (``POST /api/...``: trigger, retry, pause, resume, breaker reset; ``app.control``)
exist only when a credential is set, on loopback too (else 403 saying how to enable them).
A write's ``Host`` must be an IP address, ``localhost`` or a name given with ``--allow-host``
(a DNS-rebinding page's Host is its own name), and its ``Origin`` (else ``Referer``) must be
this very host; a browser form must also carry ``csrf_token``, an HMAC of a per-process secret
and the request's credential. An API call with neither Origin nor Referer (curl, a managed
scheduler) needs a bearer token, or basic auth with ``Content-Type: application/json``
(which no browser sends cross-site without a preflight serve never grants). A triggered run
is started at once as ``schedsync run JOB --item ID`` (the tick is the fallback); every
write is kept in the state's audit log.

Hostile clients: a request (line and headers) must arrive whole within CLIENT_TIMEOUT
and MAX_REQUEST bytes, so MAX_CLIENTS connections hold at most MAX_CLIENTS x MAX_REQUEST
of requests; when all are taken, the one that has been sending longest makes room; a
client that goes away costs one line on stderr; SIGTERM stops at once (threads are daemons).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from schedsync.core.durations import clock, format_age, format_duration, posix, relative
from schedsync.core.errors import ConfigError, SchedsyncError
from schedsync.core.models import FAILURES as FAILED_STATUSES

DEFAULT_BIND = "127.0.0.1:9178"
TOKEN_ENV, BASIC_ENV = "SCHEDSYNC_SERVE_TOKEN", "SCHEDSYNC_SERVE_BASIC"
REFRESH = 10  # seconds between the dashboard's reloads
CLIENT_TIMEOUT = 10.0  # seconds to send a whole request (in all, not per read), and per response write
MAX_PATH = 2048  # bytes of path and query; longer gets 414
MAX_REQUEST = 16 * 1024  # bytes of request line and headers together; more gets 431
MAX_CLIENTS = 64  # connections handled at once; see Server.process_request for the next one
EVICT_AFTER = 1.0  # seconds a connection must have been sending before a newcomer may replace it
HISTORY = 50  # runs on a job's page
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
MAX_BODY = 64 * 1024  # bytes of a write's body; more gets 413
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
WRITES_OFF = (f"writes are off: serve has no credential — set {TOKEN_ENV}=<secret> (bearer) or "
              f"{BASIC_ENV}=user:password in serve's environment to enable them")
# POST /api/<what>/<NAME or ID>/<action>: (what, action) -> the app.control action
ACTIONS = {("jobs", "trigger"): "trigger", ("runs", "retry"): "retry", ("jobs", "pause"): "pause",
           ("jobs", "resume"): "resume", ("breakers", "reset"): "breaker_reset"}


class Credentials:
    """What a request must present, from the environment; never shown anywhere."""

    def __init__(self, environ=os.environ):
        self._csrf_key = os.urandom(32)
        self.token = environ.get(TOKEN_ENV) or None
        self.basic = environ.get(BASIC_ENV) or None
        user, _, password = (self.basic or "").partition(":")
        if self.basic is not None and not (user and password):  # never shown: it is a secret
            raise ConfigError(f"${BASIC_ENV} must be user:password, neither of them empty",
                              f"export {BASIC_ENV}=user:password")

    def __bool__(self) -> bool:
        return bool(self.token or self.basic)

    def allows(self, header: str | None) -> bool:
        if not self:
            return True
        scheme, _, value = (header or "").strip().partition(" ")
        value = value.strip().encode()
        if self.token and scheme.lower() == "bearer":
            return hmac.compare_digest(value, self.token.encode())
        if self.basic and scheme.lower() == "basic":
            return hmac.compare_digest(value, base64.b64encode(self.basic.encode()))
        return False

    def challenge(self) -> str:
        return 'Basic realm="schedsync"' if self.basic else 'Bearer realm="schedsync"'

    def label(self, header: str | None) -> str:
        """Which credential an allowed request carried, for the audit log: ``token`` or
        ``basic:USER`` (never the secret)."""
        scheme = (header or "").strip().partition(" ")[0].lower()
        if scheme == "basic" and self.basic:
            return "basic:" + self.basic.partition(":")[0]
        return "token" if scheme == "bearer" else "none"

    def csrf(self, header: str | None) -> str:
        """A form's ``csrf_token``: an HMAC of this process's secret and the request's
        credential, so a page of another origin (which cannot read ours) cannot forge it,
        and it dies with the process and with the credential."""
        return hmac.new(self._csrf_key, (header or "").strip().encode(), hashlib.sha256).hexdigest()


def _hostname(host: str) -> str:
    """``name`` of a Host header's ``name:port`` or ``[v6]:port``."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else ""
    return host.rpartition(":")[0] if ":" in host else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _netloc(netloc: str, scheme: str) -> str:
    """``host:port`` lowercased, without the scheme's default port."""
    netloc = netloc.strip().lower().rpartition("@")[2]
    default = ":443" if scheme == "https" else ":80"
    return netloc[: -len(default)] if netloc.endswith(default) else netloc


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--bind {text}: not HOST:PORT", f"write e.g. --bind {DEFAULT_BIND}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


class Site:
    """The pages, given a way to open the registry and the state for one request."""

    def __init__(self, config_opt: str | None, state_opt: str | None):
        self.config_opt, self.state_opt = config_opt, state_opt
        import jinja2

        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), autoescape=True,
                                      undefined=jinja2.StrictUndefined)
        self.env.filters["when"] = _when
        self.env.filters["clock"] = _clock
        self.env.filters["took"] = _took
        self.env.filters["level"] = level
        self.env.globals["sparkline"] = sparkline
        self.env.globals["full_in"] = full_in
        self.env.globals["REFRESH"] = REFRESH

    def opened(self):
        config, _, store = self._open(write=False)
        return config, store

    def _open(self, write: bool):
        from schedsync.config import load, resolve_config, resolve_state
        from schedsync.store import open_store

        config = load(resolve_config(self.config_opt))
        state = resolve_state(self.state_opt, config)
        return config, state, open_store(state, write=write, create=False)

    def write(self, action: str, name: str, body: dict, actor) -> tuple[int, dict]:
        """One write (``ACTIONS``' value) on job, run or breaker ``name``; (HTTP code, JSON answer).
        A trigger or retry whose item waits to start is started now (``schedsync run JOB --item ID``)."""
        from schedsync.app import control

        config, state, store = self._open(write=True)
        try:
            if action == "trigger":
                params = body.get("params") or {}
                if not isinstance(params, dict):
                    raise ConfigError('"params" must be an object of NAME: "value"',
                                              'send e.g. {"params": {"final_sweep": "1"}}')
                item_id, deduped = control.trigger(config, store, name, params, actor)
                self._start(config, store, state, item_id)
                return 202, {"job": name, "queue_id": item_id, "deduped": deduped}
            if action == "retry":
                if not name.isdigit():
                    raise control.NotFound(f"no run {name!r}", "a run id is a number")
                job, item_id, deduped = control.retry(config, store, int(name), actor)
                self._start(config, store, state, item_id)
                return 202, {"job": job, "run_id": int(name), "queue_id": item_id, "deduped": deduped}
            if action in ("pause", "resume"):
                getattr(control, action)(config, store, name, actor)
                return 200, {"job": name, "paused": action == "pause"}
            breaker, was = control.reset_breaker(config, store, name, actor)
            return 200, {"breaker": breaker, "was": was or "closed", "now": "closed"}
        finally:
            store.close()

    def _start(self, config, store, state: str, item_id: int) -> None:
        """Start the item now if it still waits and is due; the tick does it otherwise."""
        from schedsync.app.starter import registry_path, starter

        item = store.item(item_id)
        if item is None or item.state != "queued" or item.due_at > store.now() + 1:
            return
        environ = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, BASIC_ENV)}  # never the job's
        process = starter(registry_path(config), state, environ)(item)
        threading.Thread(target=process.wait, daemon=True).start()  # reaped when it ends: no zombie

    def healthz(self) -> tuple[int, str, bytes]:
        from schedsync.app import report, status

        data = self._with_state(lambda config, store: status.status(config, store, alert=False))
        jobs = [{"name": j["name"], "health": j["health"], "why": j["why"],
                 "last_run_at": (j["last_run"] or {}).get("started_at"),
                 "next_expected": j["next_expected"]} for j in report.worst_first(data["jobs"])]
        bad = [j["name"] for j in jobs if j["health"] in report.NEEDS_ACTION]
        body = {"ok": not bad, "generated_at": data["generated_at"], "needs_action": bad, "jobs": jobs}
        return (503 if bad else 200), "application/json", (json.dumps(body, indent=2) + "\n").encode()

    def metrics(self) -> tuple[int, str, bytes]:
        from schedsync.app.report import display_zone
        from schedsync.app.status import snapshot
        from schedsync.ops.metrics import exposition, process_metrics, running_counts

        def text(config, store):
            snap = snapshot(config, store, alert=False)
            return exposition(snap.views, snap.budgets, store.counters(), store.slot_counters(),
                              store.run_totals(), running_counts(store, snap.views), extra=process_metrics(),
                              tz=display_zone(config))

        return 200, PROMETHEUS, self._with_state(text).encode()

    def dashboard(self, csrf: str | None = None) -> tuple[int, str, bytes]:
        from schedsync.app import report, status

        data, tz = self._with_state(lambda config, store: (status.status(config, store, alert=False),
                                                           report.display_zone(config)))
        jobs = report.worst_first(data["jobs"])
        bad = [j for j in jobs if j["health"] in report.NEEDS_ACTION]
        budgets = {b["name"]: b for b in data["budgets"]}
        html = self.env.get_template("dashboard.html").render(
            data=data, jobs=jobs, bad=bad, budgets=budgets, now=posix(data["generated_at"]), tz=tz,
            csrf=csrf, here="/")
        return 200, "text/html; charset=utf-8", html.encode()

    def job(self, name: str, run_id: str | None, csrf: str | None = None) -> tuple[int, str, bytes]:
        from schedsync.app import report, status

        def gather(config, store):
            now = store.now()
            detail = status.job_detail(config, store, name, now, alert=False)
            runs = status.history(config, store, name, HISTORY, False)
            return detail, runs, _secrets(config, name), report.display_zone(config)

        detail, runs, secrets, tz = self._with_state(gather)
        from urllib.parse import quote

        here = "/job/" + quote(name, safe="") + (f"?run={quote(run_id, safe='')}" if run_id else "")
        shown = next((r for r in runs if str(r["id"]) == run_id), None) if run_id else \
            next((r for r in runs if r["output"]), runs[0] if runs else None)
        if run_id and shown is None:
            raise NotFound(f"no run {run_id} among the {len(runs)} newest runs of {name}")
        output = secrets.redact(shown["output"]) if shown else None
        errors = {r["id"]: secrets.redact(r["error"]) for r in runs}
        html = self.env.get_template("job.html").render(
            job=detail["jobs"][0], detail=detail, runs=runs, shown=shown, output=output,
            errors=errors, now=posix(detail["generated_at"]), tz=tz, csrf=csrf, here=here,
            failures=FAILED_STATUSES)
        return 200, "text/html; charset=utf-8", html.encode()

    def _with_state(self, read):
        config, store = self.opened()
        try:
            return read(config, store)
        finally:
            store.close()


class NotFound(Exception):
    pass


def _secrets(config, name: str):
    """The job's secrets, to redact its output once more on the way out (records are
    redacted when written; this also covers a secret added to the registry since)."""
    from schedsync.config import Secrets, expand

    try:
        return expand(config.job(name), config.path)[1]
    except SchedsyncError:
        return Secrets()  # a ${VAR} unset in the server's environment: the record's redaction stands


def _when(iso_time: str | None, now: float) -> str:
    """``5m ago``, ``in 3m``, as ``status`` shows them."""
    return relative(posix(iso_time), now) if iso_time else "—"


def _clock(iso_time: str | None, tz) -> str:
    """``2026-12-01 10:05:02 CET``, as ``history`` shows it."""
    return clock(posix(iso_time), tz) if iso_time else "—"


def _took(duration_ms: int | None) -> str:
    return "—" if duration_ms is None else format_duration(duration_ms / 1000)


def level(budget: dict) -> str:
    """``14/15``: whole tokens, rounded down as everywhere (14.9 left is 14 requests)."""
    return f"{int(budget['tokens'])}/{budget['capacity']:g}"


def full_in(budget: dict) -> str:
    """How long until the bucket is full again at its refill rate: ``full``, ``6m``."""
    missing = budget["capacity"] - budget["tokens"]
    if missing <= 0:
        return "full"
    return format_age(missing / budget["capacity"] * budget["per_seconds"])


def sparkline(recent: list[dict], width: int = 96, height: int = 24) -> str:
    """An inline SVG polyline of run durations, oldest left (skips and running runs left out)."""
    points = [r["duration_ms"] for r in reversed(recent)
              if r["duration_ms"] is not None and r["status"] not in ("skipped", "running")]
    if len(points) < 2:
        return ""
    top = max(points) or 1
    step = width / (len(points) - 1)
    xy = " ".join(f"{i * step:.1f},{height - 2 - (p / top) * (height - 4):.1f}" for i, p in enumerate(points))
    from markupsafe import Markup

    # Each line is scaled to its own longest run (a 2 s job next to a 2 h one would be flat
    # otherwise), so that scale is written beside it.
    return Markup(f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
                  f' role="img" aria-label="durations, longest {_took(top)}">'
                  f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{xy}"/></svg>'
                  f' <span class="spark-scale" title="the top of the line">max {_took(top)}</span>')


class TooLarge(Exception):
    pass


class Evicted(Exception):
    pass


class RequestReader(io.RawIOBase):
    """The connection as the handler reads it: each request's line and headers must arrive
    within CLIENT_TIMEOUT in all (not per read, which a byte a second would renew) and within
    MAX_REQUEST bytes (http.server alone would take 100 headers of 64 KiB each)."""

    def __init__(self, sock):
        self.sock, self.evicted = sock, False
        self.restart()

    def restart(self) -> None:
        self.started = time.monotonic()
        self.left = MAX_REQUEST

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left <= 0:
            raise TooLarge()
        remaining = self.started + CLIENT_TIMEOUT - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no whole request within {CLIENT_TIMEOUT:g}s")
        self.sock.settimeout(remaining)
        count = self.sock.recv_into(buffer, min(len(buffer), self.left))
        if self.evicted:  # woken by Server.evict: what came is not a request to answer
            raise Evicted()
        self.left -= count
        return count

    def evict(self) -> None:
        self.evicted = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the handler's recv
        except OSError:
            pass


class Handler(BaseHTTPRequestHandler):
    timeout = CLIENT_TIMEOUT
    protocol_version = "HTTP/1.1"
    site: Site
    credentials: Credentials
    allowed_hosts: frozenset = frozenset()
    server: Server

    def version_string(self) -> str:
        return "schedsync"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.reader = RequestReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        self.requestline = self.request_version = self.command = ""  # send_error's, before a line is in
        self.reader.restart()
        self.server.sending(self.reader, True)
        try:
            super().handle_one_request()
        except TooLarge:
            self.connection.settimeout(CLIENT_TIMEOUT)
            self.send_error(431, "Request too large", f"request line and headers over {MAX_REQUEST} bytes")
            self.close_connection = True
        except Evicted:
            self.log_error("closed to make room: every connection was taken, this one still sending its request")
            self.close_connection = True
        finally:
            self.server.sending(self.reader, False)

    def parse_request(self) -> bool:
        try:
            return super().parse_request()
        finally:  # the request is in: it is answered, never evicted, and writes get their own timeout
            self.server.sending(self.reader, False)
            self.connection.settimeout(CLIENT_TIMEOUT)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        if len(self.path) > MAX_PATH:
            return self._send(414, "text/plain; charset=utf-8", b"request path too long\n", head)
        if not self.credentials.allows(self.headers.get("Authorization")):
            return self._send(401, "text/plain; charset=utf-8", b"unauthorized\n", head,
                              {"WWW-Authenticate": self.credentials.challenge()})
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        try:
            if path == "/healthz":
                reply = self.site.healthz()
            elif path == "/metrics":
                reply = self.site.metrics()
            elif path in ("/", "/index.html"):
                reply = self.site.dashboard(self._csrf())
            elif path.startswith("/job/") and path.count("/") == 2:
                run_id = parse_qs(url.query).get("run", [None])[0]
                reply = self.site.job(unquote(path[5:]), run_id, self._csrf())
            else:
                reply = 404, "text/plain; charset=utf-8", b"not found: try /, /healthz or /metrics\n"
        except NotFound as exc:
            reply = 404, "text/plain; charset=utf-8", f"{exc}\n".encode()
        except ConfigError as exc:
            # an unknown job in /job/NAME is a 404; a broken registry makes every page 503
            code = 404 if "no job named" in str(exc) else 503
            reply = code, "text/plain; charset=utf-8", f"error: {exc}\n".encode()
        except SchedsyncError as exc:
            reply = 503, "text/plain; charset=utf-8", f"error: {exc}\n".encode()
        except Exception as exc:  # a bug: one line to the client, the traceback to our stderr
            import traceback

            traceback.print_exc(file=sys.stderr)
            reply = 500, "text/plain; charset=utf-8", f"internal error: {type(exc).__name__}\n".encode()
        self._send(*reply, head=head)

    def _csrf(self) -> str | None:
        """The forms' token when writes are on (the request was allowed: it carries the credential)."""
        return self.credentials.csrf(self.headers.get("Authorization")) if self.credentials else None

    def _refuse(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # bodies never read

    def do_POST(self) -> None:
        """A write: ``POST /api/jobs/NAME/trigger`` and the others of ``ACTIONS``."""
        if len(self.path) > MAX_PATH:
            return self._json(414, {"error": "request path too long"})
        parts = urlsplit(self.path).path.strip("/").split("/")
        action = ACTIONS.get((parts[1], parts[3])) if len(parts) == 4 and parts[0] == "api" else None
        if action is None:
            if parts[0] != "api":
                return self._refuse()  # the pages are read-only
            return self._json(404, {"error": "no such endpoint: POST /api/jobs/NAME/{trigger,pause,resume},"
                                             " /api/runs/ID/retry or /api/breakers/NAME/reset"})
        if not self.credentials:
            return self._json(403, {"error": WRITES_OFF})
        authorization = self.headers.get("Authorization")
        if not self.credentials.allows(authorization):
            return self._json(401, {"error": "unauthorized"}, {"WWW-Authenticate": self.credentials.challenge()})
        kind = (self.headers.get("Content-Type") or "").partition(";")[0].strip().lower()
        body, error = self._body()
        if error:
            return self._json(*error)
        why, api = self._foreign(authorization, kind)
        if why:
            return self._json(403, {"error": why})
        form = kind == FORM and not api  # `curl -d` says form too: a bearer call's body is JSON
        if form:
            fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
            if not hmac.compare_digest(fields.get("csrf_token", "").encode(),
                                       self.credentials.csrf(authorization).encode()):
                return self._json(403, {"error": "missing or wrong csrf_token — reload the page and try again"})
            data: dict = {"reason": fields.get("reason") or None}
        else:
            try:
                data = json.loads(body) if body.strip() else {}
            except ValueError:
                return self._json(400, {"error": 'the body is not JSON — send e.g. {"params": {}, "reason": "..."}'})
            if not isinstance(data, dict):
                return self._json(400, {"error": 'the body must be a JSON object, e.g. {"params": {}}'})
        reason = data.get("reason")
        if reason is not None and not isinstance(reason, str):
            return self._json(400, {"error": '"reason" must be a string'})
        from schedsync.app.control import Actor
        from schedsync.app.control import NotFound as Missing

        actor = Actor(self.credentials.label(authorization), self.client_address[0], reason)
        try:
            code, answer = self.site.write(action, unquote(parts[2]), data, actor)
        except Missing as exc:
            return self._json(404, {"error": str(exc)})
        except ConfigError as exc:  # a wrong param, a run still running
            return self._json(400, {"error": str(exc)})
        except SchedsyncError as exc:
            return self._json(503, {"error": str(exc)})
        except Exception as exc:  # a bug: one line to the client, the traceback to our stderr
            import traceback

            traceback.print_exc(file=sys.stderr)
            return self._json(500, {"error": f"internal error: {type(exc).__name__}"})
        if form:  # back to the page the button was on
            target = fields.get("next") or "/"
            if not target.startswith("/") or target.startswith("//") or "\\" in target or "\r" in target \
                    or "\n" in target:
                target = "/"
            return self._send(303, "text/plain; charset=utf-8", b"", extra={"Location": target})
        self._json(code, {"ok": True, "action": action, **answer})

    def _foreign(self, authorization: str | None, kind: str) -> tuple[str | None, bool]:
        """(why a write does not come from serve's own pages or a plain API client (DNS
        rebinding, a forged cross-origin form) or None, whether it is an API call: neither
        Origin nor Referer, so no browser sent it)."""
        host = (self.headers.get("Host") or "").strip().lower()
        name = _hostname(host)
        if not name or not (name == "localhost" or _is_ip(name) or name in self.allowed_hosts):
            return (f"Host {host or '(none)'} is not this server's — call it by its IP address or"
                    " localhost, or start serve with --allow-host NAME"), False
        origin = self.headers.get("Origin")
        referer = self.headers.get("Referer") if origin is None else None
        source = origin if origin is not None else referer
        if source is None:
            scheme = (authorization or "").strip().partition(" ")[0].lower()
            if not (scheme == "bearer" or kind == JSON):
                return ("a request with neither Origin nor Referer must be an API call: a bearer token,"
                        " or basic auth with Content-Type: application/json"), False
            return None, True
        seen = urlsplit(source.strip())
        if seen.scheme not in ("http", "https") or _netloc(seen.netloc, seen.scheme) != _netloc(host, seen.scheme):
            return (f"{'Origin' if origin is not None else 'Referer'} {source.strip()[:100]} is not this server"
                    f" ({host}): cross-origin writes are refused"), False
        return None, False

    def _body(self) -> tuple[bytes, tuple | None]:
        """The request's body (at most MAX_BODY bytes, within CLIENT_TIMEOUT), or an error reply."""
        if self.headers.get("Transfer-Encoding"):
            return b"", (411, {"error": "send the body with Content-Length, not chunked"})
        text = (self.headers.get("Content-Length") or "0").strip()
        if not text.isdigit():
            return b"", (400, {"error": "Content-Length is not a number"})
        length = int(text)
        if length > MAX_BODY:
            return b"", (413, {"error": f"the body is over {MAX_BODY // 1024} KiB"})
        self.reader.restart()
        self.reader.left = length + 1
        try:
            body = self.rfile.read(length)
        except (TimeoutError, TooLarge):
            return b"", (408, {"error": f"no whole body within {CLIENT_TIMEOUT:g}s"})
        if len(body) < length:
            return b"", (400, {"error": "the body ended before its Content-Length"})
        return body, None

    def _json(self, code: int, body: dict, extra: dict | None = None) -> None:
        self._send(code, "application/json", (json.dumps(body) + "\n").encode(), extra=extra)

    def _send(self, code: int, kind: str, body: bytes, head: bool = False, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if kind.startswith("text/html"):
            # no script, no fetched asset: the page needs nothing but itself
            self.send_header("Content-Security-Policy",
                             "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if code >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass  # no access log: a probe every few seconds would fill the journal

    def log_error(self, format: str, *args) -> None:
        sys.stderr.write(f"schedsync serve: {self.address_string()}: {format % args}\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client does not hold up SIGTERM
    request_queue_size = 128

    def __init__(self, address, handler, family):
        self.address_family = family
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.senders: set[RequestReader] = set()  # connections still sending their request
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        super().__init__(address, handler)

    def sending(self, reader: RequestReader, now: bool) -> None:
        with self.lock:
            (self.senders.add if now else self.senders.discard)(reader)

    def process_request(self, request, client_address):
        # at most MAX_CLIENTS threads; while all are taken, the connection that has been sending
        # its request longest (over EVICT_AFTER) is closed to make room, or this one waits
        evicted = None
        while not self.slots.acquire(timeout=0.1):
            if self.stopping.is_set():
                return self.shutdown_request(request)
            if evicted is not None and time.monotonic() - evicted < 1.0:
                continue  # the evicted handler is still letting go of its slot: one per newcomer
            with self.lock:
                oldest = min(self.senders, key=lambda r: r.started, default=None)
                if oldest is None or time.monotonic() - oldest.started < EVICT_AFTER:
                    continue
                self.senders.discard(oldest)
            oldest.evict()
            evicted = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):  # a bug: its traceback
            return super().handle_error(request, client_address)
        # a client that went away (reset, broken pipe): one line, no traceback
        sys.stderr.write(f"schedsync serve: {client_address[0]}: {error.strerror or error}\n")

    def shutdown(self):
        self.stopping.set()  # process_request waits no longer
        super().shutdown()


def serve(config_opt: str | None, state_opt: str | None, bind: str, environ=os.environ,
          allow_hosts: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    host, port = parse_bind(bind)
    credentials = Credentials(environ)
    if not is_loopback(host) and not credentials:
        raise ConfigError(f"--bind {bind} is not a loopback address and no credential is set",
                          f"export {TOKEN_ENV}=<secret> (bearer) or {BASIC_ENV}=user:password, "
                          f"or bind 127.0.0.1")
    site = Site(config_opt, state_opt)
    from schedsync.config import load, resolve_config

    load(resolve_config(config_opt))  # a broken registry is a usage error now (exit 2)
    # a state that cannot be read yet (a volume not mounted) is not: each request says 503
    allowed = frozenset(h.strip().lower() for h in allow_hosts or [] if h.strip())
    handler = type("BoundHandler", (Handler,), {"site": site, "credentials": credentials,
                                                "allowed_hosts": allowed})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        server = Server((host, port), handler, family)
    except OSError as exc:
        raise SchedsyncError(f"cannot listen on {bind}: {exc.strerror or exc}",
                             "pick a free port with --bind HOST:PORT") from None

    def stop(signum, frame):
        # shutdown() waits for serve_forever to return: call it from another thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    shown_host = f"[{host}]" if ":" in host else host
    auth = " (credential required; writes on)" if credentials else ""
    print(f"schedsync serve: listening on http://{shown_host}:{server.server_address[1]}/{auth}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("schedsync serve: stopped", file=sys.stderr, flush=True)
    return 0
