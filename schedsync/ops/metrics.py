"""``schedsync metrics``: the Prometheus text exposition format (version 0.0.4), by hand.

prometheus_client is not a dependency: the format is a few lines of text, and
every import costs the cron tick that runs ``metrics --textfile``. Series
(one-hot gauges carry every possible label value, so PromQL sees stable series):

    schedsync_job_last_success_timestamp_seconds{job}   only once a job has succeeded
    schedsync_job_last_run_timestamp_seconds{job}       start of the newest run
    schedsync_job_last_duration_seconds{job}            of the newest finished run
    schedsync_job_last_status{job,status}               1 for the newest run's status
    schedsync_job_consecutive_failures{job}
    schedsync_job_health{job,health}                    1 for the job's health
    schedsync_job_next_expected_timestamp_seconds{job}  scheduled, unpaused jobs only
    schedsync_budget_tokens{budget} / schedsync_budget_capacity{budget}
    schedsync_budget_period_seconds{budget}
    schedsync_breaker_state{breaker,state}              1 for closed, open or half-open
    schedsync_breaker_failures{breaker}
    schedsync_runs_total{job,status}                    counter: finished runs (skips, crashes too)
    schedsync_requests_total{job}                       counter: HTTP requests made by runs
                                                        (a crashed run's too: stored as it went)
    schedsync_slots_missed_total{job}                   counter: scheduled slots whose grace passed
                                                        with no run claiming them (recorded by the tick)

The counters are kept in the state apart from the runs, so pruning old runs
never lowers them and ``rate()`` works.
"""

from __future__ import annotations

import os

from schedsync.core.breaker import CLOSED, HALF_OPEN, OPEN
from schedsync.core.health import SEVERITY
from schedsync.core.models import CRASHED, FAILED, PARTIAL, RUNNING, SKIPPED, SUCCESS, TIMEOUT

STATUSES = (RUNNING, SUCCESS, PARTIAL, FAILED, TIMEOUT, SKIPPED, CRASHED)
HEALTHS = tuple(SEVERITY)
BREAKER_STATES = (CLOSED, OPEN, HALF_OPEN)


class Exposition:
    """Families in order, each with its HELP and TYPE once, samples beneath."""

    def __init__(self):
        self.lines: list[str] = []

    def family(self, name: str, help_text: str, kind: str = "gauge") -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: dict, value: float) -> None:
        inner = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{inner}}} {_number(value)}" if inner else f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def exposition(views, budget_rows: list[dict], counters: dict | None = None,
               missed: dict | None = None) -> str:
    """The text for ``report.views(...)``, ``report.status(...)["budgets"]``,
    ``store.counters()`` and ``store.slot_counters()``."""
    out = Exposition()

    def per_job(name: str, help_text: str, value_of) -> None:
        out.family(name, help_text)
        for view in views:
            value = value_of(view)
            if value is not None:
                out.sample(name, {"job": view.job.name}, value)

    per_job("schedsync_job_last_success_timestamp_seconds",
            "Start time of the job's newest successful (or partial) run, Unix seconds.",
            lambda v: v.state.last_success_at)
    per_job("schedsync_job_last_run_timestamp_seconds",
            "Start time of the job's newest run of any status (skips included), Unix seconds.",
            lambda v: v.state.last_started_at)
    per_job("schedsync_job_last_duration_seconds",
            "Duration of the job's newest finished run that was not skipped, seconds.",
            lambda v: next((r.duration_ms / 1000 for r in v.state.recent
                            if r.duration_ms is not None and r.status not in (RUNNING, SKIPPED)), None))
    out.family("schedsync_job_last_status", "1 for the status of the job's newest run, 0 for the others.")
    for view in views:
        last = view.state.recent[0].status if view.state.recent else None
        for status in STATUSES:
            out.sample("schedsync_job_last_status", {"job": view.job.name, "status": status},
                       1 if status == last else 0)
    per_job("schedsync_job_consecutive_failures",
            "Failed, timed-out and crashed runs since the job's last success.",
            lambda v: v.consecutive_failures)
    out.family("schedsync_job_health", "1 for the job's health (see `schedsync status`), 0 for the others.")
    for view in views:
        for health in HEALTHS:
            out.sample("schedsync_job_health", {"job": view.job.name, "health": health},
                       1 if health == view.health.health else 0)
    per_job("schedsync_job_next_expected_timestamp_seconds",
            "When cron should next start the job, Unix seconds (scheduled, unpaused jobs).",
            lambda v: v.health.next_expected)

    out.family("schedsync_budget_tokens", "Tokens in the budget's bucket now.")
    for row in budget_rows:
        out.sample("schedsync_budget_tokens", {"budget": row["name"]}, row["tokens"])
    out.family("schedsync_budget_capacity", "Tokens the budget's bucket holds when full.")
    for row in budget_rows:
        out.sample("schedsync_budget_capacity", {"budget": row["name"]}, row["capacity"])
    out.family("schedsync_budget_period_seconds", "Seconds the budget takes to refill from empty.")
    for row in budget_rows:
        out.sample("schedsync_budget_period_seconds", {"budget": row["name"]}, row["per_seconds"])

    breakers = {}
    for view in views:  # jobs naming one breaker share it: one series each
        breakers.setdefault(view.breaker.name, view)
    out.family("schedsync_breaker_state", "1 for the breaker's state (closed, open, half-open), 0 for the others.")
    for name, view in breakers.items():
        for state in BREAKER_STATES:
            out.sample("schedsync_breaker_state", {"breaker": name, "state": state},
                       1 if state == view.breaker_state else 0)
    out.family("schedsync_breaker_failures", "Failed runs counted by the breaker since it last closed.")
    for name, view in breakers.items():
        out.sample("schedsync_breaker_failures", {"breaker": name}, view.breaker.failures)
    if counters is not None:
        _counters(out, views, counters)
    if missed is not None:
        out.family("schedsync_slots_missed_total", "Scheduled slots whose grace passed with no run"
                   " claiming them (recorded by `schedsync tick`); not lowered by retention pruning.", "counter")
        for view in views:
            if view.job.schedule:
                out.sample("schedsync_slots_missed_total", {"job": view.job.name}, missed.get(view.job.name, 0))
    return out.text()


def _counters(out: Exposition, views, counters: dict) -> None:
    # Every job of the registry gets every status, zeros included: a counter that appears
    # only at its first increment makes rate() miss that increment.
    names = [view.job.name for view in views]
    out.family("schedsync_runs_total", "Runs finished (skipped and crashed ones too), by status; "
               "not lowered by retention pruning.", "counter")
    for name in names:
        for status in STATUSES:
            if status != RUNNING:
                out.sample("schedsync_runs_total", {"job": name, "status": status},
                           counters.get(name, {}).get(status, (0, 0))[0])
    out.family("schedsync_requests_total", "HTTP requests made by the job's finished runs "
               "(crashed ones too); not lowered by retention pruning.", "counter")
    for name in names:
        out.sample("schedsync_requests_total", {"job": name},
                   sum(requests for _, requests in counters.get(name, {}).values()))


def write_textfile(path: str, text: str) -> None:
    """Replace ``path`` atomically, so node_exporter never reads half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # node_exporter usually runs as another user
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
