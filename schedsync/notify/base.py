"""The ``Notifier`` interface (after healthchecks' ``Transport``) and what notifiers share:
the moments they are asked about, which events a finished run is due, and the payload.

A notifier reads its own ``jobs.yaml`` setting from the job, returns the messages a
moment calls for, and sends one message. Delivery (all at once within ``TIMEOUT``, the
outcomes recorded, failures noted on a terminal, payloads redacted) is the package's,
once, for every notifier.
"""

from __future__ import annotations

from schedsync.core.models import FAILURES
from schedsync.core.records import dataclass
from schedsync.store.liveness import HOST

TIMEOUT = 5.0  # seconds for one attempt, connect to last byte


@dataclass
class Message:
    notifier: Notifier
    event: str  # failure | recovery | breaker_open | late | ping:start | ping:success | ping:fail
    target: str  # where it goes (a URL): shown only through ``notifier.shown``
    body: dict | None = None  # redacted by the delivery before ``send`` sees it
    # (alert mark key, repeat seconds or None): sent only if ``store.claim_alert`` grants it
    # (``repeat:``): None for the first failure of a streak, which always goes out.
    claim: tuple | None = None
    options: dict | None = None  # the target's settings (email: its ``smtp``), never shown


@dataclass
class Finished:
    """A finished run (not a skip), as notifiers see it."""

    run: object  # core.models.Run
    entry: dict  # the job's ``status --json`` row after the run
    run_entry: dict  # the run as JSON
    previous_streak: int | None  # failures in a row before it (None when it failed)
    opened: bool  # whether it opened the breaker
    now: float
    retry: dict | None = None  # the retry later it queued: {"number", "of", "at" (ISO), "shown"}


class Notifier:
    """One integration. Subclasses live one per module, listed in ``schedsync.notify.NOTIFIERS``,
    and implement ``send`` and the moments they care about (each returns messages).

    A notifier of ``notify:`` entries sets ``KEY`` (the entry's key: ``url``, ``slack``,
    ``email``) and ``body``; the events, ``after_failures`` and ``repeat`` are then handled
    here, the same for every one of them."""

    KEY: str | None = None

    def run_started(self, job, run) -> list[Message]:
        return []

    def run_finished(self, job, done: Finished) -> list[Message]:
        out = []
        for index, target in self.targets(job):
            for event in due(target["events"], target["after_failures"], done):
                message = Message(self, event, target[self.KEY],
                                  self.body(event, target, done.entry, done.run_entry, done.now,
                                            done.previous_streak, done.run, done.retry),
                                  options=target)
                if event == "failure" and target.get("repeat"):
                    first = done.entry["consecutive_failures"] <= target["after_failures"]
                    message.claim = (f"failure:{self.KEY}:{index}", None if first else target["repeat"])
                out.append(message)
        return out

    def targets(self, job) -> list[tuple[int, dict]]:
        """(index in ``notify:``, entry) of the job's entries this notifier sends."""
        return [(i, t) for i, t in enumerate(job.notify) if self.KEY and self.KEY in t]

    def wants_late(self, job) -> bool:
        """Whether the job's validated settings (a ``config.Job`` before ``${VAR}`` expansion)
        ask for ``late``."""
        return any("late" in t["events"] for _, t in self.targets(job))

    def late(self, job, entry: dict, now: float) -> list[Message]:
        """``entry`` is the LATE job's ``status --json`` row."""
        return [Message(self, "late", t[self.KEY], self.body("late", t, entry, entry["last_run"], now),
                        options=t)
                for _, t in self.targets(job) if "late" in t["events"]]

    def body(self, event: str, target: dict, entry: dict, run: dict | None, now: float,
             previous_streak: int | None = None, finished=None, retry: dict | None = None) -> dict | None:
        """The message for ``event`` (``finished``: the ``core.models.Run``, when a run ended;
        ``retry``: the retry later it queued, ``{"number", "of", "at", "shown"}``)."""
        return None

    def deliver(self, message: Message, body: dict | None, secrets) -> tuple[bool, str]:
        """Deliver one message (``body`` redacted): ``send`` unless the notifier needs more."""
        return self.send(message.target, body, secrets)

    def send(self, target: str, body: dict | None, secrets) -> tuple[bool, str]:
        """Deliver one message within ``TIMEOUT``: (ok, what happened), secrets redacted."""
        raise NotImplementedError

    def shown(self, target: str, secrets) -> str:
        """``target`` as recorded and shown: ``https://host/…``, as a path or query is often
        the credential itself."""
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(target)
            host = parts.hostname or "?"
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            return "(invalid URL)"
        tail = "/…" if parts.path.strip("/") or parts.query else ""
        return secrets.redact(f"{parts.scheme}://{host}{port}{tail}")


def due(events, after_failures: int, done: Finished) -> list[str]:
    """The events among ``events`` that ``done`` fires for a target with ``after_failures``."""
    failed = done.run.status in FAILURES
    out = []
    if failed and "failure" in events and done.entry["consecutive_failures"] >= after_failures:
        out.append("failure")
    if not failed and "recovery" in events and done.previous_streak >= after_failures:
        out.append("recovery")
    if done.opened and "breaker_open" in events:
        out.append("breaker_open")
    return out


def payload(event: str, entry: dict, run: dict | None, now: float, previous_streak: int | None = None,
            retry: dict | None = None) -> dict:
    """The JSON body of one webhook (README: Alerts). ``entry`` is the job's ``status --json`` row;
    ``retry`` the retry later a failed run queued (``retry``: ``{"number", "of", "at"}``)."""
    from schedsync.core.durations import iso

    body = {
        "event": event,
        "job": entry["name"],
        "text": text(event, entry, run, previous_streak, retry),
        "run": run,
        "health": entry["health"],
        "why": entry["why"],
        "breaker": entry["breaker"],
        "consecutive_failures": entry["consecutive_failures"],
        "host": HOST,
        "generated_at": iso(now),
        **started_by(run),
    }
    if retry and event == "failure":
        body["retry"] = {k: retry[k] for k in ("number", "of", "at")}
    return body


def started_by(run: dict | None) -> dict:
    """What started the run, for a payload: ``trigger`` (cron, api, retry, catchup…),
    ``parent`` (the run a chain's run came after, else None), ``retry_number`` (0: not a
    retry later) and ``params`` (``{NAME: value}`` or None), as its record has them. The
    whole body is redacted on delivery, params included."""
    run = run or {}
    return {"trigger": run.get("trigger"), "parent": run.get("parent"),
            "retry_number": run.get("retry_number") or 0, "params": run.get("params")}


def _origin(run: dict | None) -> str:
    """`` (api, params final_sweep=1)``: what started a run, for the one-line text; nothing
    for a plain cron run (its line stays as it always was)."""
    if not run:
        return ""
    parts = []
    trigger = run.get("trigger")
    if run.get("retry_number"):
        parts.append(f"{trigger or 'retry'} {run['retry_number']}"
                     + (f" of run {run['retry_of']}" if run.get("retry_of") else ""))
    elif trigger and trigger != "cron":
        parts.append(str(trigger))
    if run.get("parent"):
        parts.append(f"after run {run['parent']}")
    if run.get("params"):
        shown = " ".join(f"{k}={str(v)[:40]}" for k, v in sorted(run["params"].items()))
        parts.append(f"params {shown}"[:200])
    return f" ({', '.join(parts)})" if parts else ""


def text(event: str, entry: dict, run: dict | None, previous_streak: int | None,
         retry: dict | None = None) -> str:
    """One line for chat webhooks (Slack and Mattermost show ``text``): a failure that queued
    a retry later ends ``; retry 2 of 3 at 06:30:00 CET``."""

    name, streak = entry["name"], entry["consecutive_failures"]
    if event == "failure":
        detail = (run or {}).get("error") or (f"exit {run['exit_code']}" if run and run["exit_code"] else "")
        detail = detail.strip().splitlines()[0][:200] if detail.strip() else ""
        line = f"{name} {run['status'] if run else 'failed'} on {HOST}{_origin(run)}" + (
            f": {detail}" if detail else "")
        line += f" ({streak} failures in a row)" if streak > 1 else ""
        return line + (f"; retry {retry['number']} of {retry['of']} at {retry['shown']}" if retry else "")
    if event == "recovery":
        count = f" after {previous_streak} failure{'s' if previous_streak != 1 else ''}" if previous_streak else ""
        return f"{name} recovered on {HOST}{count}{_origin(run)}"
    if event == "breaker_open":
        breaker = entry["breaker"]
        return (f"{name}: breaker {breaker['name']} opened after {breaker['failures']} failures on {HOST}"
                f"{_origin(run)}; runs are skipped until {breaker['opens_until']}")
    return f"{name} is late on {HOST}: {entry['why']}"
