"""The shipped rules and dashboard against a real Prometheus (Debian's ``prometheus``)
scraping a real ``schedsync serve``, both on loopback. .ci/run installs Prometheus."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from test_serve import Served

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib" / "prometheus" / "schedsync.rules.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "schedsync.json"
PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed "
                                "(.ci/run installs it)")

JOBS = """
    budgets:
      api: 5/1h
    jobs:
      broken:
        schedule: "* * * * *"
        budget: api
        retries: {attempts: 2, initial: 0.1s, on_exit_codes: [3]}
        breaker: {failures: 100}
        command: "exit 3"
      fine:
        schedule: "*/5 * * * *"
        command: ["true"]
"""


def listening_port(pid: int, timeout: float = 30) -> int:
    """The TCP port ``pid`` listens on (it was started on port 0): its socket inodes in
    /proc/PID/fd, looked up in /proc/PID/net/tcp (state 0A, LISTEN)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open(f"/proc/{pid}/net/tcp", encoding="ascii") as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    return int(fields[1].split(":")[1], 16)
        time.sleep(0.2)
    raise AssertionError(f"prometheus (pid {pid}) listens on no TCP port after {timeout} s")


class Prometheus:
    def __init__(self, folder: Path, target: str, rules: Path):
        config = folder / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "schedsync", "honor_labels": True,
                                "static_configs": [{"targets": [target]}]}]}))
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["NO_PROXY"] = "*"
        with open(folder / "prometheus.log", "wb") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
                 "--web.listen-address=127.0.0.1:0", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=folder)
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.url = f"http://127.0.0.1:{listening_port(self.proc.pid)}"

    def api(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with self.opener.open(f"{self.url}/api/v1/{path}{query}", timeout=30) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def until(self, what: str, check, timeout: float = 45):
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = check()
            except OSError:  # not answering yet
                found = None
            if found:
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{what}: not within {timeout} s")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def grafana(expr: str, job: str) -> str:
    """What Grafana sends for ``expr``: its variables replaced (a 1 s scrape interval)."""
    for name, value in (("$__rate_interval", "30s"), ("$__range", "5m"), ("$__interval", "5s"), ("$job", job)):
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def test_rules_evaluate_the_failing_alert_fires_and_every_dashboard_query_has_data(project, tmp_path):
    project.write(JOBS)
    assert project.cli("run", "--force-slot", "fine").returncode == 0
    assert project.cli("run", "--force-slot", "broken").returncode == 1
    # A copy of the shipped rules whose `for:` are 0 s: the shipped ones wait minutes.
    rules = tmp_path / "schedsync.rules.yml"
    shipped = RULES.read_text()
    assert re.search(r"alert: SchedsyncJobFailing\n\s+expr: .*\n\s+for: 5m", shipped)
    rules.write_text(re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", shipped))
    served = Served(project)
    prom = None
    try:
        prom = Prometheus(tmp_path, served.url.removeprefix("http://"), rules)
        prom.until("the target scraped", lambda: [t for t in prom.api("targets")["activeTargets"]
                                                  if t["health"] == "up"])
        # Runs while Prometheus watches, so the counters' increase() is not zero.
        assert project.cli("run", "--force-slot", "broken").returncode == 1
        assert project.cli("run", "--force-slot", "fine").returncode == 0
        prom.until("a scrape after the runs", lambda: prom.api(
            "query", query='schedsync_runs_total{job="fine",status="success"} == 2')["result"])

        def evaluated():
            rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
            assert all(r["health"] != "err" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
            return rules if rules and all(r["health"] == "ok" for r in rules) else None

        rules_seen = prom.until("every rule evaluated", evaluated)
        assert {r["name"] for r in rules_seen} == {
            "SchedsyncJobFailing", "SchedsyncJobLate", "SchedsyncJobStalled", "SchedsyncJobStale",
            "SchedsyncJobDataStale",
            "SchedsyncJobNotRun", "SchedsyncBreakerOpen", "SchedsyncBudgetEmpty", "SchedsyncServeDown"}

        firing = prom.until("the failing-job alert", lambda: [
            a for a in prom.api("alerts")["alerts"]
            if a["labels"]["alertname"] == "SchedsyncJobFailing" and a["state"] == "firing"])
        assert [a["labels"]["job"] for a in firing] == ["broken"]
        assert firing[0]["annotations"]["summary"] == "schedsync job broken is failing"

        queries = dashboard_queries()
        assert len(queries) >= 9
        for job in ("broken", ".+"):
            for title, expr in queries:
                result = prom.api("query", query=grafana(expr, job))["result"]
                assert result, f"{title}: no data for job={job}: {grafana(expr, job)}"
        rate = prom.api("query", query=grafana(queries[1][1], "broken"))["result"]
        assert [float(r["value"][1]) for r in rate] == [0.0]  # broken never succeeds
        retries = prom.api("query", query='schedsync_retries_total{job="broken"}')["result"]
        assert float(retries[0]["value"][1]) == 2  # two runs, a retry each
    finally:
        if prom:
            prom.stop()
        served.stop()


def test_serve_exports_its_own_process_metrics(project):
    project.write(JOBS)
    assert project.cli("run", "--force-slot", "fine").returncode == 0
    served = Served(project)
    try:
        status, _, text = served.get("/metrics")
    finally:
        served.stop()
    assert status == 200
    from prometheus_client.parser import text_string_to_metric_families

    found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name.startswith("process_")}
    assert set(found) >= {"process_cpu_seconds_total", "process_resident_memory_bytes",
                          "process_start_time_seconds", "process_open_fds", "process_max_fds",
                          "process_virtual_memory_bytes"}
    assert 0 < found["process_cpu_seconds_total"] < 600
    assert 5e6 < found["process_resident_memory_bytes"] < 1e9
    assert abs(found["process_start_time_seconds"] - time.time()) < 600
    assert 3 <= found["process_open_fds"] <= found["process_max_fds"]


def test_the_dashboard_imports_as_is_with_a_datasource_and_a_job_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert "__inputs" not in dashboard and dashboard["uid"] == "schedsync"  # nothing to fill in at import
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["query"]["query"] == "label_values(schedsync_job_health, job)"
    assert variables["job"]["multi"] and variables["job"]["includeAll"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert [p["title"] for p in panels] == [
        "Health", "Success rate by job", "Run durations", "Retries", "Failed runs", "Running vs finished",
        "Items per hour", "Budget levels against capacity", "Breaker states"]
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and 'job=~"$job"' in target["expr"]
    assert {p["type"] for p in panels} >= {"table", "heatmap", "timeseries", "state-timeline"}
