"""``fresh: {within, field}``: a job whose newest stored value of its time field is older than
the window is STALE although its runs succeed; ``status`` (table, --json, --check),
``/healthz``, ``/metrics`` and the dashboard treat STALE like LATE. Through the real CLI and a
real ``schedsync serve`` against a real upstream on loopback."""

from __future__ import annotations

import re
import textwrap
import time
from datetime import datetime, timezone

import pytest

from schedsync.config import parse
from schedsync.core.errors import ConfigError
from schedsync.core.health import job_health
from schedsync.core.models import RUNNING, SUCCESS, JobState, Run
from test_http import Upstream, reply
from test_serve import Served


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


def iso_ago(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() - seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def serve_items(upstream, items: list):
    """``/items`` answers ``items`` (a list the test may change between runs)."""
    @upstream.route("/items")
    def route(request):
        return reply(200, list(items))


def write_job(project, upstream, fresh: str = "{within: 2h, field: updated_at}", since: str = "") -> None:
    project.write(f"""
        jobs:
          drops:
            retries: {{attempts: 1}}
            fresh: {fresh}
            http:
              url: "{upstream.base}/items"
              {since}
            into: {{table: drops, pk: id, db: data.db}}
    """)


def health(project) -> dict:
    [job] = project.status()["jobs"]
    return job


def test_old_data_makes_a_succeeding_job_stale_with_the_lag_and_check_fails_as_for_late(project, upstream):
    items = [{"id": 1, "updated_at": iso_ago(3 * 3600 + 12 * 60 + 5)},
             {"id": 2, "updated_at": iso_ago(5 * 3600)}, {"id": 3}]
    serve_items(upstream, items)
    write_job(project, upstream)
    result = project.cli("run", "drops")
    assert result.returncode == 0, result.stderr
    assert project.history("drops")[0]["status"] == "success"

    job = health(project)
    assert job["health"] == "STALE"
    assert job["fresh"] == {"field": "updated_at", "within_seconds": 7200.0, "newest": items[0]["updated_at"]}
    assert re.fullmatch(r"newest updated_at is 3h1[23]m old, over 2h", job["why"]), job["why"]
    check = project.cli("status", "--check")
    assert check.returncode == 1  # as for LATE
    assert check.stdout.startswith("SCHEDSYNC WARNING - 1 of 1 job: drops STALE")
    table = project.cli("status", env={"COLUMNS": "200"})
    assert table.returncode == 0 and "STALE" in table.stdout and "old, over 2h" in table.stdout
    metrics = project.cli("metrics").stdout
    assert 'schedsync_job_health{job="drops",health="STALE"} 1' in metrics
    assert 'schedsync_job_health{job="drops",health="OK"} 0' in metrics

    served = Served(project)
    try:
        code, _, body = served.get("/healthz")
        assert code == 503  # as for LATE
        assert '"needs_action": [\n    "drops"\n  ]' in body and '"health": "STALE"' in body
        code, _, page = served.get("/")
        assert code == 200 and "needs-action" in page and "STALE" in page
    finally:
        served.stop()

    # Fresh data arrives: healthy again, and the newest value is kept over later runs.
    items[:] = [{"id": 4, "updated_at": iso_ago(600)}]
    assert project.cli("run", "drops").returncode == 0
    assert health(project)["health"] == "OK"
    items[:] = [{"id": 5, "updated_at": iso_ago(9 * 3600)}]  # an older one later: the max stays
    assert project.cli("run", "drops").returncode == 0
    assert health(project)["health"] == "OK"
    assert project.cli("status", "--check").returncode == 0
    served = Served(project)
    try:
        assert served.get("/healthz")[0] == 200
    finally:
        served.stop()


def test_epoch_values_and_the_field_of_since(project, upstream):
    items = [{"id": 1, "modified": int(time.time()) - 4 * 3600}]
    serve_items(upstream, items)
    write_job(project, upstream, fresh="{within: 1h}",
              since="since: {param: after, field: modified, format: epoch}")
    assert project.cli("run", "drops").returncode == 0
    job = health(project)
    assert job["health"] == "STALE" and job["why"].startswith("newest modified is 4h")
    items[:] = [{"id": 2, "modified": str(int(time.time()))}]
    assert project.cli("run", "drops").returncode == 0
    assert health(project)["health"] == "OK"


def test_a_job_that_stored_nothing_yet_is_not_stale(project, upstream):
    serve_items(upstream, [])
    write_job(project, upstream)
    assert project.cli("run", "drops").returncode == 0
    assert health(project)["health"] == "OK"
    assert project.cli("status", "--check").returncode == 0


def test_fresh_added_to_a_job_whose_table_has_data_reads_the_table_once(project, upstream):
    items = [{"id": 1, "updated_at": iso_ago(3 * 3600)}]
    serve_items(upstream, items)
    project.write(f"""
        jobs:
          drops:
            http: {{url: "{upstream.base}/items"}}
            into: {{table: drops, pk: id, db: data.db}}
    """)
    assert project.cli("run", "drops").returncode == 0
    items[:] = []  # the upstream sends nothing new
    write_job(project, upstream)
    assert project.cli("run", "drops").returncode == 0
    assert health(project)["health"] == "STALE"


# --- the rule (core.health) and the keys (jobs.yaml) ------------------------------------

def test_stale_is_kept_while_a_run_is_in_progress_and_late_outranks_it():
    now = 1_800_000_000.0
    fresh = {"within": 7200.0, "field": "updated_at"}
    done = Run(id=1, job="drops", status=SUCCESS, trigger="cron", started_at=now - 600, host="h", pid=1,
               finished_at=now - 590)
    going = Run(id=2, job="drops", status=RUNNING, trigger="cron", started_at=now - 120, host="h", pid=2)
    state = JobState("drops", now - 86400, False, [going, done], now - 600, now - 120)
    got = job_health(schedule=None, grace=300, timeout=3600, state=state, breaker_state="closed", now=now,
                     fresh=fresh, watermark=now - 3 * 3600)
    assert (got.health, got.reason) == ("STALE", "newest updated_at is 3h old, over 2h; now running for 2m")
    state.recent = [done]
    assert job_health(schedule=None, grace=300, timeout=3600, state=state, breaker_state="closed", now=now,
                      fresh=fresh, watermark=now - 3600).health == "OK"
    assert job_health(schedule=None, grace=300, timeout=3600, state=state, breaker_state="closed", now=now,
                      fresh=fresh, watermark=None).health == "OK"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(textwrap.dedent(text), "jobs.yaml", "/srv/sync")
    assert caught.value.exit_code == 2
    return str(caught.value)


@pytest.mark.parametrize("fresh, message", [
    ("{within: 2h}", "jobs.yaml:4 jobs.a.fresh: needs the items' time field: fresh.field, or http.since.field"),
    ("{within: soon, field: u}", "jobs.yaml:4 jobs.a.fresh.within: 'soon' is not a duration"),
    ("{within: 2h, field: u, every: 1h}", "jobs.yaml:4 jobs.a.fresh.every: unknown key"),
    ("2h", "jobs.yaml:4 jobs.a.fresh: must be {within: DURATION} with optional field: NAME"),
])
def test_bad_fresh_keys_name_their_line(fresh, message):
    assert error_of(f"""\
        jobs:
          a:
            http: {{url: "https://example.test/x"}}
            fresh: {fresh}
            into: {{table: t, pk: id}}
        """).startswith(message)


def test_fresh_is_for_http_jobs_and_resume_needs_a_window():
    assert error_of("""\
        jobs:
          a:
            command: "true"
            fresh: {within: 2h, field: u}
        """).startswith("jobs.yaml:4 jobs.a.fresh: is for http jobs")
    assert error_of("""\
        jobs:
          a:
            http: {url: "https://example.test/x", resume: {after: 1h}}
            into: {table: t, pk: id}
        """).startswith("jobs.yaml:3 jobs.a.http.resume: ")
    config = parse(textwrap.dedent("""\
        jobs:
          a:
            http: {url: "https://example.test/x", resume: {within: 90m}, since: {param: s, field: u}}
            into: {table: t, pk: id}
            fresh: {within: 2h}
        """), "jobs.yaml", "/srv/sync")
    job = config.job("a")
    assert job.section["resume"] == {"within": 5400.0}
    assert job.fresh == {"within": 7200.0, "field": "u"}
