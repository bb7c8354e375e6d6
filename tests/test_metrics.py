"""`schedsync metrics`: Prometheus text exposition, read back with prometheus_client's parser."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schedsync.ops.metrics import Exposition
from schedsync.store import open_store

JOBS = """
    state: schedsync.db
    budgets:
      api: 10/1h
      spare: {capacity: 60, per: 1h}
    jobs:
      fine:
        schedule: "*/5 * * * *"
        budget: api
        command: ["true"]
      broken:
        command: "exit 3"
        breaker: {failures: 2, reset_after: 10m}
      idle:
        command: ["true"]
        breaker: {name: shared}
      idle-too:
        command: ["true"]
        breaker: {name: shared}
"""


def parse(text: str) -> dict:
    """{metric name: {frozenset of label items: value}}"""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def value(metrics: dict, name: str, **labels) -> float:
    return metrics[name][frozenset(labels.items())]


@pytest.fixture
def metrics(project):
    project.write(JOBS)
    assert project.cli("run", "--force-slot", "fine").returncode == 0
    for _ in range(2):
        assert project.cli("run", "--force-slot", "broken").returncode == 1
    result = project.cli("metrics")
    assert result.returncode == 0 and result.stderr == ""
    return parse(result.stdout)


def test_every_family_has_help_and_type_gauge_but_the_counters_and_the_histogram(project):
    project.write(JOBS)
    open_store(str(project.state)).close()  # an empty state: read commands create none
    text = project.cli("metrics").stdout
    families = list(text_string_to_metric_families(text))
    assert all(f.documentation for f in families)
    counters = {f.name for f in families if f.type == "counter"}
    assert counters == {"schedsync_runs", "schedsync_requests", "schedsync_items",
                        "schedsync_retries", "schedsync_slots_missed"}  # the parser drops _total
    assert {f.name for f in families if f.type == "histogram"} == {"schedsync_run_duration_seconds"}
    assert {f.type for f in families} == {"gauge", "counter", "histogram"}
    assert {f.name for f in families if f.type == "gauge"} == {
        "schedsync_job_last_success_timestamp_seconds", "schedsync_job_last_run_timestamp_seconds",
        "schedsync_job_last_duration_seconds", "schedsync_job_last_status",
        "schedsync_job_consecutive_failures", "schedsync_job_health",
        "schedsync_job_next_expected_timestamp_seconds", "schedsync_budget_tokens",
        "schedsync_budget_capacity", "schedsync_budget_period_seconds", "schedsync_breaker_state",
        "schedsync_breaker_failures", "schedsync_job_interval_seconds", "schedsync_job_breaker",
        "schedsync_job_budget", "schedsync_runs_running"}


def test_the_last_success_is_a_unix_timestamp_and_absent_for_jobs_without_one(project, metrics):
    started = project.history("fine")[0]["started_at"]
    from datetime import datetime

    expected = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
    assert abs(value(metrics, "schedsync_job_last_success_timestamp_seconds", job="fine") - expected) < 1
    assert abs(expected - time.time()) < 120
    jobs = {dict(labels)["job"] for labels in metrics["schedsync_job_last_success_timestamp_seconds"]}
    assert jobs == {"fine"}


def test_the_last_duration_is_in_seconds(project, metrics):
    took = project.history("broken")[0]["duration_ms"] / 1000
    assert value(metrics, "schedsync_job_last_duration_seconds", job="broken") == pytest.approx(took)


def test_the_last_status_is_one_hot_over_every_status(metrics):
    statuses = ("running", "success", "partial", "failed", "timeout", "skipped", "crashed")
    for job, last in (("fine", "success"), ("broken", "failed")):
        assert {s: value(metrics, "schedsync_job_last_status", job=job, status=s) for s in statuses} == \
            {s: 1.0 if s == last else 0.0 for s in statuses}
    assert sum(value(metrics, "schedsync_job_last_status", job="idle", status=s) for s in statuses) == 0


def test_consecutive_failures_count_failed_runs_since_the_last_success(metrics):
    assert value(metrics, "schedsync_job_consecutive_failures", job="broken") == 2
    assert value(metrics, "schedsync_job_consecutive_failures", job="fine") == 0


def test_health_is_one_hot_over_every_health(metrics):
    healths = ("RUNNING", "OK", "LATE", "STALE", "STALLED", "FAILING", "PAUSED", "NEVER")
    for job, health in (("fine", "OK"), ("broken", "FAILING"), ("idle", "NEVER")):
        assert {h: value(metrics, "schedsync_job_health", job=job, health=h) for h in healths} == \
            {h: 1.0 if h == health else 0.0 for h in healths}


def test_budgets_show_tokens_capacity_and_period(metrics):
    assert 8.9 < value(metrics, "schedsync_budget_tokens", budget="api") < 9.5
    assert value(metrics, "schedsync_budget_capacity", budget="api") == 10
    assert value(metrics, "schedsync_budget_tokens", budget="spare") == 60  # never used: full
    assert value(metrics, "schedsync_budget_period_seconds", budget="spare") == 3600


def test_breakers_show_their_state_once_each_even_when_shared(metrics):
    assert value(metrics, "schedsync_breaker_state", breaker="broken", state="open") == 1
    assert value(metrics, "schedsync_breaker_state", breaker="broken", state="closed") == 0
    assert value(metrics, "schedsync_breaker_state", breaker="shared", state="closed") == 1
    assert value(metrics, "schedsync_breaker_failures", breaker="broken") == 2
    breakers = [dict(labels)["breaker"] for labels in metrics["schedsync_breaker_failures"]]
    assert sorted(breakers) == ["broken", "fine", "shared"]


def test_next_expected_is_given_for_scheduled_jobs_only(metrics):
    nxt = value(metrics, "schedsync_job_next_expected_timestamp_seconds", job="fine")
    assert time.time() < nxt <= time.time() + 300
    assert len(metrics["schedsync_job_next_expected_timestamp_seconds"]) == 1


def test_textfile_is_written_whole_and_readable_by_node_exporter(project):
    project.write(JOBS)
    project.cli("run", "--force-slot", "fine")
    target = project.path / "collector" / "schedsync.prom"
    target.parent.mkdir()
    result = project.cli("metrics", "--textfile", str(target))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert value(parse(target.read_text()), "schedsync_job_health", job="fine", health="OK") == 1
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(target.parent) == ["schedsync.prom"]  # no temporary file left behind


def test_textfile_replaces_the_previous_file_by_rename(project):
    project.write(JOBS)
    open_store(str(project.state)).close()  # an empty state: read commands create none
    target = project.path / "schedsync.prom"
    target.write_text("old\n")
    before = target.stat().st_ino
    assert project.cli("metrics", "--textfile", str(target)).returncode == 0
    assert target.stat().st_ino != before  # a new file renamed over the old: never half-written
    assert "schedsync_job_health" in target.read_text()


def test_textfile_must_end_in_prom(project):
    project.write(JOBS)
    result = project.cli("metrics", "--textfile", "out.txt")
    assert result.returncode == 2
    assert result.stderr == ("error: --textfile out.txt: node_exporter's textfile collector reads only"
                             " *.prom files — name it e.g. schedsync.prom\n")


def test_textfile_in_a_missing_folder_exits_1(project):
    project.write(JOBS)
    open_store(str(project.state)).close()  # an empty state: read commands create none
    target = project.path / "no-such-folder" / "schedsync.prom"
    result = project.cli("metrics", "--textfile", str(target))
    assert result.returncode == 1
    assert result.stderr == (f"error: cannot write {target}: No such file or directory"
                             " — check that its folder exists and is writable by this user\n")


def test_metrics_of_a_broken_config_exit_2(project):
    project.write("jobs: {}\n")
    result = project.cli("metrics")
    assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_label_values_and_help_are_escaped():
    out = Exposition()
    out.family("x_total", "Help with a \\ backslash\nand a newline.")
    out.sample("x_total", {"job": 'a "quoted"\\ name\nwith a newline'}, 1.5)
    family, = text_string_to_metric_families(out.text())
    assert family.documentation == "Help with a \\ backslash\nand a newline."
    assert family.samples[0].labels == {"job": 'a "quoted"\\ name\nwith a newline'}
    assert family.samples[0].value == 1.5


def test_metrics_does_not_import_prometheus_client(project):
    project.write(JOBS)
    result = project.cli("metrics", env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "schedsync.ops.metrics" in imported and "prometheus_client" not in imported


# --- what a dashboard needs (issue 20): histogram, items, retries, running, interval -----

DASHBOARD_JOBS = """
    jobs:
      nap:
        schedule: "0 * * * *"
        command: ["sleep", "0.3"]
      flaky:
        schedule: "*/5 * * * *"
        retries: {attempts: 3, initial: 0.1s, on_exit_codes: [3]}
        command: "exit 3"
      items:
        python: "itemjob:run"
      long:
        command: ["sleep", "60"]
"""

ITEM_JOB = '''
def run(ctx):
    return {"processed": 7, "failed": 2}
'''


def test_durations_are_a_histogram_per_job_from_a_tenth_of_a_second_to_an_hour(project):
    project.write(DASHBOARD_JOBS)
    for _ in range(2):
        assert project.cli("run", "--force-slot", "nap").returncode == 0
    metrics = parse(project.cli("metrics").stdout)
    bounds = ["0.1", "0.5", "1.0", "5.0", "10.0", "30.0", "60.0", "120.0", "300.0", "600.0", "1800.0",
              "3600.0", "+Inf"]
    buckets = {dict(k)["le"]: v for k, v in metrics["schedsync_run_duration_seconds_bucket"].items()
               if dict(k)["job"] == "nap"}
    assert buckets == {le: 0 if le == "0.1" else 2 for le in bounds}
    took = sum(run["duration_ms"] for run in project.history("nap")) / 1000
    assert value(metrics, "schedsync_run_duration_seconds_sum", job="nap") == pytest.approx(took)
    assert value(metrics, "schedsync_run_duration_seconds_count", job="nap") == 2
    assert value(metrics, "schedsync_run_duration_seconds_count", job="flaky") == 0  # every job, zeros too


def test_retries_count_the_attempts_after_the_first(project):
    project.write(DASHBOARD_JOBS)
    for _ in range(2):
        assert project.cli("run", "--force-slot", "flaky").returncode == 1
    assert [run["attempts"] for run in project.history("flaky")] == [3, 3]
    metrics = parse(project.cli("metrics").stdout)
    assert value(metrics, "schedsync_retries_total", job="flaky") == 4
    assert value(metrics, "schedsync_retries_total", job="nap") == 0


def test_items_are_counted_by_result(project):
    project.write(DASHBOARD_JOBS)
    (project.path / "itemjob.py").write_text(ITEM_JOB)
    for _ in range(2):
        assert project.cli("run", "--force-slot", "items").returncode == 0
    metrics = parse(project.cli("metrics").stdout)
    assert {r: value(metrics, "schedsync_items_total", job="items", result=r)
            for r in ("processed", "failed", "deleted")} == {"processed": 14, "failed": 4, "deleted": 0}


def test_retention_pruning_never_lowers_the_histogram_items_or_retries(project):
    project.write(DASHBOARD_JOBS.replace('python: "itemjob:run"', 'python: "itemjob:run"\n'
                                         '        retention: {success: 1s}'))
    (project.path / "itemjob.py").write_text(ITEM_JOB)
    for _ in range(3):
        assert project.cli("run", "--force-slot", "items").returncode == 0
        time.sleep(1.1)  # each run prunes the successes older than 1 s (the newest is kept)
    assert len(project.history("items")) < 3
    metrics = parse(project.cli("metrics").stdout)
    assert value(metrics, "schedsync_run_duration_seconds_count", job="items") == 3
    assert value(metrics, "schedsync_items_total", job="items", result="processed") == 21


def test_running_runs_are_a_gauge(project):
    project.write(DASHBOARD_JOBS)
    assert project.cli("run", "--force-slot", "nap").returncode == 0
    long = project.start("run", "long")
    try:
        deadline = time.monotonic() + 60
        while value(parse(project.cli("metrics").stdout), "schedsync_runs_running", job="long") != 1:
            assert time.monotonic() < deadline and long.poll() is None, "the long run never showed as running"
            time.sleep(0.2)
        assert value(parse(project.cli("metrics").stdout), "schedsync_runs_running", job="nap") == 0
    finally:
        long.send_signal(signal.SIGTERM)
        long.communicate(timeout=30)
    assert value(parse(project.cli("metrics").stdout), "schedsync_runs_running", job="long") == 0


def test_the_interval_of_scheduled_jobs_and_their_breakers_and_budgets_for_joins(project, metrics):
    assert value(metrics, "schedsync_job_interval_seconds", job="fine") == 300
    assert len(metrics["schedsync_job_interval_seconds"]) == 1  # unscheduled jobs have none
    assert value(metrics, "schedsync_job_breaker", job="idle-too", breaker="shared") == 1
    assert value(metrics, "schedsync_job_budget", job="fine", budget="api") == 1
    assert len(metrics["schedsync_job_budget"]) == 1
