"""Alerts: the notifiers (``notify:`` webhooks, Slack, email; ``ping:``) and their delivery.

Layers: ``notify`` sits beside ``jobs``, below ``app``. It imports ``core``, ``store``
and ``config`` only; the application layer (``app.run``, ``app.status``) hands it what
it needs (the job's status row, the run).
``tests/test_architecture.py`` holds the order.

A notifier is one module here with a ``NOTIFIER`` (a ``base.Notifier``), listed in
``NOTIFIERS``: it reads its own setting from the job and says which messages each
moment calls for. Events, per ``notify:`` entry (``events`` defaults to
``[failure, recovery]``):

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

An entry goes to one of ``url`` (``webhook.py``), ``slack`` (``slack.py``) or ``email``
(``mail.py``); ``base.Notifier`` applies ``events``, ``after_failures`` and ``repeat`` for
all three. With ``repeat``, a ``failure`` after the first of its streak is sent only when
``store.claim_alert(job, "failure:KIND:INDEX", now, every=repeat)`` grants it (the mark is
the time it was last sent; one process wins).

``ping:`` is in ``ping.py``. Delivery is here, once for every notifier: nothing can
fail a job, each attempt has a 5 s budget (``base.TIMEOUT``), its outcome is stored
(shown by ``schedsync status JOB``) and, on a terminal, a failed one is noted on
stderr. Payloads go through the job's secret redaction. Only jobs with ``notify:`` or
``ping:`` import this package (``app.run`` checks); urllib is imported on first send.
"""

from __future__ import annotations

import sys
import time

from schedsync.config import Config, Job, Secrets
from schedsync.core.models import Notification, Run

KEEP = 50  # attempts kept per job
# The notifiers, in the order their messages are sent and recorded.
NOTIFIERS = ("schedsync.notify.webhook", "schedsync.notify.slack", "schedsync.notify.mail",
             "schedsync.notify.ping")


def notifiers() -> list:
    from importlib import import_module

    return [import_module(module).NOTIFIER for module in NOTIFIERS]


# --- what the application layer calls -----------------------------------------------------

def run_started(store, job: Job, run: Run, secrets: Secrets) -> None:
    """As the run begins (``ping: URL`` → GET ``URL/start``)."""
    _deliver(store, job, secrets, [m for n in notifiers() for m in n.run_started(job, run)], run.id)


def after_run(store, job: Job, run: Run, secrets: Secrets, now: float, entry: dict,
              run_entry: dict, previous_streak: int | None, opened: bool, retry: dict | None = None) -> None:
    """Webhooks and the closing ping for a finished run (not for skips). ``entry`` is the
    job's ``status --json`` row after the run, ``run_entry`` the run as JSON,
    ``previous_streak`` the failures in a row before it (None when it failed) and
    ``opened`` whether it opened the breaker, ``retry`` the retry later it queued (``{"number",
    "of", "at", "shown"}``), if any."""
    from schedsync.notify.base import Finished

    done = Finished(run, entry, run_entry, previous_streak, opened, now, retry)
    messages = [m for n in notifiers() for m in n.run_finished(job, done)]
    _deliver(store, job, secrets, [m for m in messages if _claimed(store, job.name, m, now)], run.id)


def _claimed(store, job: str, message, now: float) -> bool:
    """A ``repeat:`` failure goes out only when its alert mark is older than ``repeat`` (the
    first of a streak always), one process winning; a state that cannot say sends it."""
    if message.claim is None:
        return True
    from schedsync.core.errors import StateError

    key, every = message.claim
    try:
        return store.claim_alert(job, key, now, every)
    except StateError:
        return True


def config_unreadable(store, job: str, event: str, now: float, what: str, run_id: int | None = None) -> None:
    """Record that ``event`` could not be sent: the job's notify settings do not expand."""
    _record(store, [Notification(job, event, "(not sent)", now, False,
                                 f"cannot read the notify settings: {what}", run_id)])


def late(config: Config, store, jobs: list[dict], now: float) -> None:
    """Send ``late`` for each LATE job in ``jobs`` (status rows) not yet alerted since its last start."""
    from schedsync.config import expand
    from schedsync.core.errors import ConfigError

    every = notifiers()
    for entry in jobs:
        if entry["health"] != "LATE":
            continue
        spec = config.jobs[entry["name"]]
        if not any(n.wants_late(spec) for n in every):
            continue
        last = entry["last_run"]
        if not store.claim_alert(entry["name"], "late", last["id"] if last else 0):
            continue  # already sent for this stretch, by us or another process
        try:
            job, secrets = expand(config.job(entry["name"]), config.path)
        except ConfigError as exc:
            config_unreadable(store, entry["name"], "late", now, exc.what)
            continue
        _deliver(store, job, secrets, [m for n in every for m in n.late(job, entry, now)],
                 last["id"] if last else None)


# --- delivery -------------------------------------------------------------------------

def _deliver(store, job: Job, secrets: Secrets, messages: list, run_id: int | None) -> None:
    """Send every message at once, record the outcomes, note failures on a terminal."""
    if not messages:
        return
    import threading

    from schedsync.notify.base import TIMEOUT

    results: list = [None] * len(messages)

    def one(index: int, message, body) -> None:
        results[index] = message.notifier.deliver(message, body, secrets)

    threads = []
    for index, message in enumerate(messages):
        thread = threading.Thread(target=one, args=(index, message, secrets.redact_tree(message.body)),
                                  daemon=True)
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + TIMEOUT + 1
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    now = time.time()
    notes = []
    for message, result in zip(messages, results, strict=True):
        ok, detail = result or (False, f"no answer within {TIMEOUT:g}s")
        shown = message.notifier.shown(message.target, secrets)
        notes.append(Notification(job.name, message.event, shown, now, ok, detail, run_id))
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
