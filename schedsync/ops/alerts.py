"""Alerts: ``notify:`` webhooks (a JSON POST per event) and ``ping:`` (healthchecks.io style).

Events, per ``notify:`` entry (``events`` defaults to ``[failure, recovery]``):

- ``failure``: a run failed, timed out or crashed (also one found crashed later),
  once it is the ``after_failures``-th failure in a row or later (default 1: every
  failed run, as cron's mail would be).
- ``recovery``: the first success (or partial) after at least ``after_failures``
  failures in a row.
- ``breaker_open``: this run's failure opened the job's breaker (closed or half-open
  to open).
- ``late``: the job is LATE. A late job is by definition not running, so its own
  runs cannot notice: ``schedsync status`` (every form) and ``schedsync metrics``
  do, and send it once per missed stretch: at most once between two starts of the
  job (the store records which start it was sent for, so many processes noticing
  at once send one). ``schedsync crontab`` adds a watcher line when a job asks
  for ``late``.

``ping: URL`` GETs ``URL/start`` when a run starts, ``URL`` when it succeeds (or
is partial) and ``URL/fail`` when it fails. Skipped runs ping nothing.

Nothing here can fail a job: each attempt has a 5 s budget, and its outcome is
stored (shown by ``schedsync status JOB``) and, on a terminal, a failed one is
noted on stderr. Payloads go through the job's secret redaction. Only jobs with
``notify:`` or ``ping:`` import this module; urllib is imported on first send.

This module is handed what it needs (the job's status row, the run) by the
application layer (``app.run``, ``app.status``); it imports nothing above it.
"""

from __future__ import annotations

import json
import sys
import time

from schedsync import USER_AGENT
from schedsync.config import Config, Job, Secrets
from schedsync.core.models import FAILURES, PARTIAL, SUCCESS, Notification, Run
from schedsync.store.liveness import HOST

TIMEOUT = 5.0  # seconds for one request, connect to last byte
KEEP = 50  # attempts kept per job


# --- what the application layer calls -----------------------------------------------------

def ping_start(store, job: Job, run: Run, secrets: Secrets) -> None:
    """``ping: URL`` → GET ``URL/start`` as the run begins."""
    _deliver(store, job, secrets, [("ping:start", _ping_url(job.ping, "start"), None)], run.id)


def after_run(store, job: Job, run: Run, secrets: Secrets, now: float, entry: dict,
              run_entry: dict, previous_streak: int | None, opened: bool) -> None:
    """Webhooks and the closing ping for a finished run (not for skips). ``entry`` is the
    job's ``status --json`` row after the run, ``run_entry`` the run as JSON,
    ``previous_streak`` the failures in a row before it (None when it failed) and
    ``opened`` whether it opened the breaker."""
    failed = run.status in FAILURES
    sends = []
    for target in job.notify:
        events = target["events"]
        due = []
        if failed and "failure" in events and entry["consecutive_failures"] >= target["after_failures"]:
            due.append("failure")
        if not failed and "recovery" in events and previous_streak >= target["after_failures"]:
            due.append("recovery")
        if opened and "breaker_open" in events:
            due.append("breaker_open")
        for event in due:
            body = payload(event, entry, run_entry, now, previous_streak)
            sends.append((event, target["url"], body))
    if job.ping:
        if run.status in (SUCCESS, PARTIAL):
            sends.append(("ping:success", _ping_url(job.ping, ""), None))
        else:
            sends.append(("ping:fail", _ping_url(job.ping, "fail"), None))
    _deliver(store, job, secrets, sends, run.id)


def config_unreadable(store, job: str, event: str, now: float, what: str, run_id: int | None = None) -> None:
    """Record that ``event`` could not be sent: the job's notify settings do not expand."""
    _record(store, [Notification(job, event, "(not sent)", now, False,
                                 f"cannot read the notify settings: {what}", run_id)])


def late(config: Config, store, jobs: list[dict], now: float) -> None:
    """Send ``late`` for each LATE job in ``jobs`` (status rows) not yet alerted since its last start."""
    from schedsync.config import expand
    from schedsync.core.errors import ConfigError

    for entry in jobs:
        if entry["health"] != "LATE":
            continue
        if not config.jobs[entry["name"]].wants("late"):
            continue
        last = entry["last_run"]
        if not store.claim_alert(entry["name"], "late", last["id"] if last else 0):
            continue  # already sent for this stretch, by us or another process
        try:
            job, secrets = expand(config.job(entry["name"]), config.path)
        except ConfigError as exc:
            config_unreadable(store, entry["name"], "late", now, exc.what)
            continue
        sends = [("late", target["url"], payload("late", entry, last, now))
                 for target in job.notify if "late" in target["events"]]
        _deliver(store, job, secrets, sends, last["id"] if last else None)


# --- the payload ----------------------------------------------------------------------

def payload(event: str, entry: dict, run: dict | None, now: float, previous_streak: int | None = None) -> dict:
    """The JSON body of one webhook (README: Alerts). ``entry`` is the job's ``status --json`` row."""
    from schedsync.core.durations import iso

    return {
        "event": event,
        "job": entry["name"],
        "text": _text(event, entry, run, previous_streak),
        "run": run,
        "health": entry["health"],
        "why": entry["why"],
        "breaker": entry["breaker"],
        "consecutive_failures": entry["consecutive_failures"],
        "host": HOST,
        "generated_at": iso(now),
    }


def _text(event: str, entry: dict, run: dict | None, previous_streak: int | None) -> str:
    """One line for chat webhooks (Slack and Mattermost show ``text``)."""

    name, streak = entry["name"], entry["consecutive_failures"]
    if event == "failure":
        detail = (run or {}).get("error") or (f"exit {run['exit_code']}" if run and run["exit_code"] else "")
        detail = detail.strip().splitlines()[0][:200] if detail.strip() else ""
        text = f"{name} {run['status'] if run else 'failed'} on {HOST}" + (f": {detail}" if detail else "")
        return text + (f" ({streak} failures in a row)" if streak > 1 else "")
    if event == "recovery":
        count = f" after {previous_streak} failure{'s' if previous_streak != 1 else ''}" if previous_streak else ""
        return f"{name} recovered on {HOST}{count}"
    if event == "breaker_open":
        breaker = entry["breaker"]
        return (f"{name}: breaker {breaker['name']} opened after {breaker['failures']} failures on {HOST};"
                f" runs are skipped until {breaker['opens_until']}")
    return f"{name} is late on {HOST}: {entry['why']}"


# --- delivery -------------------------------------------------------------------------

def _ping_url(base: str, suffix: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base)
    path = parts.path.rstrip("/") + (f"/{suffix}" if suffix else "")
    return urlunsplit(parts._replace(path=path or "/"))


def _deliver(store, job: Job, secrets: Secrets, sends: list, run_id: int | None) -> None:
    """Send every (event, url, body) at once, record the outcomes, note failures on a terminal."""
    if not sends:
        return
    import threading

    results: list = [None] * len(sends)

    def one(index: int, url: str, body) -> None:
        results[index] = _send(url, body, secrets)

    threads = []
    for index, (_, url, body) in enumerate(sends):
        thread = threading.Thread(target=one, args=(index, url, secrets.redact_tree(body)), daemon=True)
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + TIMEOUT + 1
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    now = time.time()
    notes = []
    for (event, url, _), result in zip(sends, results):
        ok, detail = result or (False, f"no answer within {TIMEOUT:g}s")
        notes.append(Notification(job.name, event, _target(url, secrets), now, ok, detail, run_id))
    _record(store, notes)
    if sys.stderr.isatty():
        for note in notes:
            if not note.ok:
                print(f"warning: {job.name}: {note.event} to {note.target} failed: {note.detail}"
                      " — the job's result is unaffected; see `schedsync status "
                      f"{job.name}`", file=sys.stderr)


def _record(store, notes: list[Notification]) -> None:
    from schedsync.core.errors import StateError

    try:
        store.record_notifications(notes, keep=KEEP)
    except StateError as exc:  # the state broke after the run was recorded: say so, go on
        print(f"warning: could not record notifications: {exc}", file=sys.stderr)


def _send(url: str, body: dict | None, secrets: Secrets) -> tuple[bool, str]:
    """POST ``body`` as JSON (or GET when None); (ok, what happened)."""
    import socket
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    headers = {"User-Agent": USER_AGENT}
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        request = urllib.request.Request(url, data=data, headers=headers,
                                         method="GET" if data is None else "POST")
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            response.read(65536)
            return True, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}" + (f" {exc.reason}" if exc.reason else "")
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return False, f"timed out after {TIMEOUT:g}s"
        if isinstance(reason, ConnectionRefusedError):
            return False, "connection refused"
        return False, secrets.redact(str(getattr(reason, "strerror", None) or reason))
    except (socket.timeout, TimeoutError):
        return False, f"timed out after {TIMEOUT:g}s"
    except (ValueError, OSError) as exc:
        return False, secrets.redact(str(exc)) or type(exc).__name__


def _target(url: str, secrets: Secrets) -> str:
    """``https://host/…``: webhook and ping paths are often the credential itself."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(invalid URL)"
    tail = "/…" if parts.path.strip("/") or parts.query else ""
    return secrets.redact(f"{parts.scheme}://{host}{port}{tail}")
