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
    schedsync_run_duration_seconds{job}                 histogram: finished runs, not skipped
                                                        or crashed (buckets DURATION_BUCKETS)
    schedsync_items_total{job,result}                   counter: processed, failed, deleted
    schedsync_retries_total{job}                        counter: attempts - 1 of each run
    schedsync_runs_running{job}                         runs in progress now
    schedsync_job_interval_seconds{job}                 gap between the next two starts (scheduled)
    schedsync_job_breaker{job,breaker}                  1: which breaker a job feeds (for joins)
    schedsync_job_budget{job,budget}                    1: which budgets a job spends (for joins)
    process_*                                           serve's own process (``process_metrics``)

The counters and the histogram are kept in the state apart from the runs, so pruning
old runs never lowers them and ``rate()`` works.
"""

from __future__ import annotations

import os

from schedsync.core.breaker import CLOSED, HALF_OPEN, OPEN
from schedsync.core.health import SEVERITY
from schedsync.core.models import CRASHED, DURATION_BUCKETS, FAILED, PARTIAL, RUNNING, SKIPPED, SUCCESS, TIMEOUT

STATUSES = (RUNNING, SUCCESS, PARTIAL, FAILED, TIMEOUT, SKIPPED, CRASHED)
HEALTHS = tuple(SEVERITY)
BREAKER_STATES = (CLOSED, OPEN, HALF_OPEN)
ITEM_RESULTS = ("processed", "failed", "deleted")


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
               missed: dict | None = None, totals: dict | None = None, running: dict | None = None,
               extra: str = "", tz=None) -> str:
    """The text for ``report.views(...)``, ``report.status(...)["budgets"]``,
    ``store.counters()``, ``store.slot_counters()``, ``store.run_totals()`` and {job: runs in
    progress}; ``extra`` (exposition text, e.g. ``process_metrics()``) is appended; ``tz``: the
    schedules' zone."""
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
    per_job("schedsync_job_interval_seconds",
            "Seconds between the job's next two scheduled starts (scheduled, unpaused jobs).",
            lambda v: _interval(v, tz))
    out.family("schedsync_job_breaker", "1 for the breaker the job feeds (join on breaker).")
    for view in views:
        out.sample("schedsync_job_breaker", {"job": view.job.name, "breaker": view.breaker.name}, 1)
    out.family("schedsync_job_budget", "1 for each budget the job spends (join on budget).")
    for view in views:
        for budget in view.job.budgets:
            out.sample("schedsync_job_budget", {"job": view.job.name, "budget": budget}, 1)
    if running is not None:
        per_job("schedsync_runs_running", "Runs of the job in progress now.",
                lambda v: running.get(v.job.name, 0))

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
    if totals is not None:
        _totals(out, views, totals)
    return out.text() + extra


def _totals(out: Exposition, views, totals: dict) -> None:
    names = [view.job.name for view in views]
    empty = {"runs": 0, "seconds": 0.0, "processed": 0, "failed": 0, "deleted": 0, "retries": 0, "buckets": {}}
    out.family("schedsync_run_duration_seconds", "Durations of finished runs (not skipped, not "
               "crashed), seconds; not lowered by retention pruning.", "histogram")
    for name in names:
        row = totals.get(name, empty)
        below = 0
        for le in DURATION_BUCKETS:
            below += row["buckets"].get(le, 0)
            out.sample("schedsync_run_duration_seconds_bucket", {"job": name, "le": _number(le)}, below)
        out.sample("schedsync_run_duration_seconds_bucket", {"job": name, "le": "+Inf"}, row["runs"])
        out.sample("schedsync_run_duration_seconds_sum", {"job": name}, row["seconds"])
        out.sample("schedsync_run_duration_seconds_count", {"job": name}, row["runs"])
    out.family("schedsync_items_total", "Items of finished runs (not skipped, not crashed) by "
               "result: processed, failed, deleted; not lowered by retention pruning.", "counter")
    for name in names:
        row = totals.get(name, empty)
        for result in ITEM_RESULTS:
            out.sample("schedsync_items_total", {"job": name, "result": result}, row[result])
    out.family("schedsync_retries_total", "Retries inside finished runs (attempts - 1); not "
               "lowered by retention pruning.", "counter")
    for name in names:
        out.sample("schedsync_retries_total", {"job": name}, totals.get(name, empty)["retries"])


def _interval(view, tz) -> float | None:
    nxt = view.health.next_expected
    if nxt is None or not view.job.schedule:
        return None
    from schedsync.core.schedule import Schedule

    return Schedule(view.job.schedule, tz).next_after(nxt) - nxt


def running_counts(store, views) -> dict:
    """{job: runs in progress}: the store's running rows, less those the snapshot found dead."""
    gone = {run.id for view in views for run in view.state.recent if run.status != RUNNING}
    out: dict = {}
    for run in store.running_runs([view.job.name for view in views]):
        if run.id not in gone:
            out[run.job] = out.get(run.job, 0) + 1
    return out


def process_metrics() -> str:
    """``process_*`` of this process, as prometheus_client's process collector names them,
    read from /proc (Linux); empty elsewhere."""
    out = Exposition()
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
        fds = len(os.listdir("/proc/self/fd"))
        max_fds = None
        with open("/proc/self/limits", encoding="ascii") as f:
            for line in f:
                if line.startswith("Max open files"):
                    max_fds = float(line.split()[3])
    except (OSError, ValueError, StopIteration):
        return ""
    # /proc/self/stat after the ")": state is fields[0], so field N of proc(5) is fields[N - 3].
    out.family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", "counter")
    out.sample("process_cpu_seconds_total", {}, (int(fields[11]) + int(fields[12])) / ticks)
    out.family("process_virtual_memory_bytes", "Virtual memory size in bytes.")
    out.sample("process_virtual_memory_bytes", {}, int(fields[20]))
    out.family("process_resident_memory_bytes", "Resident memory size in bytes.")
    out.sample("process_resident_memory_bytes", {}, int(fields[21]) * os.sysconf("SC_PAGE_SIZE"))
    out.family("process_start_time_seconds", "Start time of the process since unix epoch in seconds.")
    out.sample("process_start_time_seconds", {}, boot + int(fields[19]) / ticks)
    out.family("process_open_fds", "Number of open file descriptors.")
    out.sample("process_open_fds", {}, fds)
    if max_fds is not None:
        out.family("process_max_fds", "Maximum number of open file descriptors.")
        out.sample("process_max_fds", {}, max_fds)
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
