"""Catch-up, backfill and retries later, end to end: real ``schedsync run``, ``tick`` and
``backfill`` processes at pinned times (libfaketime, ``tests/faketime.py``), the runs the
tick starts detached, and what they leave in the state."""

from __future__ import annotations

import json
import time

import pytest

from faketime import at, pinned
from schedsync.store import open_store


def cli_at(project, when, *args):
    return project.cli(*args, env=pinned(project.env, when))


def tick(project, when) -> None:
    result = cli_at(project, when, "tick")
    assert result.returncode == 0, result.stderr


def finished(project, job: str, count: int, timeout: float = 60) -> list[dict]:
    """The job's runs, oldest first, once ``count`` of them have finished (the tick's runs
    are detached: poll, bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in project.history(job) if r["status"] != "running"]
        if len(runs) >= count or time.monotonic() > deadline:
            assert len(runs) == count, [(r["status"], r["trigger"], r["reason"], r["error"], r["output"],
                                         r["exit_code"]) for r in runs]
            return runs[::-1]
        time.sleep(0.1)


def items(project, job: str, kind: str | None = None) -> list:
    """The job's ledger rows (of ``kind``), oldest slot first."""
    store = open_store(str(project.state), write=False)
    try:
        rows = store.slots(job, limit=1000)
    finally:
        store.close()
    return sorted((r for r in rows if kind is None or r.kind == kind), key=lambda r: (r.slot or 0, r.id))


def ran(project) -> list[str]:
    path = project.path / "ran.txt"
    return path.read_text().split() if path.exists() else []


def iso(text: str) -> str:
    return text.replace(" ", "T") + ":00Z"


HOURLY = """\
    timezone: UTC
    jobs:
      hourly:
        schedule: "0 * * * *"
        catchup: {within: 6h, runs: RUNS}
        command: 'echo "$SCHEDSYNC_SLOT" >> ran.txt'
    """


@pytest.mark.parametrize("runs", ["all", "latest"])
def test_three_missed_slots_are_caught_up_oldest_first_or_once(project, runs):
    project.write(HOURLY.replace("RUNS", runs))
    assert cli_at(project, "2026-12-04 05:00:03", "run", "hourly").returncode == 0  # cron at 05:00
    # the host was down at 06:00, 07:00 and 08:00; at 08:06 their grace (5m) has passed
    for minute in (6, 7, 8, 9):
        tick(project, f"2026-12-04 08:{minute:02d}:00")
        finished(project, "hourly", 1 + min(minute - 5, 3 if runs == "all" else 1))
    caught = ["2026-12-04 06:00", "2026-12-04 07:00", "2026-12-04 08:00"] if runs == "all" else [
        "2026-12-04 08:00"]
    assert ran(project) == [iso("2026-12-04 05:00")] + [iso(slot) for slot in caught]
    history = finished(project, "hourly", 1 + len(caught))
    assert [r["trigger"] for r in history] == ["cron"] + ["catchup"] * len(caught)
    assert [r["slot"] for r in history[1:]] == [iso(slot) for slot in caught]
    assert [(r.slot, r.state) for r in items(project, "hourly", "catchup")] == [
        (at(slot), "ran") for slot in caught]


def test_catch_up_spends_only_what_the_budget_holds_and_waits_for_the_refill(project):
    project.write("""\
        timezone: UTC
        budgets:
          api: {capacity: 2, per: 1h}     # one token back every 30 minutes
        jobs:
          hourly:
            schedule: "0 * * * *"
            budget: api
            catchup: {within: 6h, runs: all}
            command: 'echo "$SCHEDSYNC_SLOT" >> ran.txt'
        """)
    assert project.cli("validate").returncode == 0
    assert cli_at(project, "2026-12-04 04:30", "status", "--json", "--init").returncode == 0  # first seen
    for minute in (6, 7, 8, 9):  # 05:00 … 08:00 missed; two tokens: two runs, then it waits
        tick(project, f"2026-12-04 08:{minute:02d}:00")
        finished(project, "hourly", min(minute - 5, 2))
    assert ran(project) == [iso("2026-12-04 05:00"), iso("2026-12-04 06:00")]
    queued = [(r.slot, r.state) for r in items(project, "hourly", "catchup") if r.state == "queued"]
    assert queued == [(at("2026-12-04 07:00"), "queued"), (at("2026-12-04 08:00"), "queued")]
    assert [r["status"] for r in project.history("hourly")] == ["success", "success"]  # no skips
    tick(project, "2026-12-04 08:40:00")  # a token came back at about 08:36 (margin: each faked clock
    runs = finished(project, "hourly", 3)  # starts with its process, and a loaded box delays spends)
    assert ran(project)[-1] == iso("2026-12-04 07:00"), runs


def test_catch_up_holds_while_the_breaker_is_open(project):
    project.write("""\
        timezone: UTC
        jobs:
          hourly:
            schedule: "0 * * * *"
            breaker: {failures: 1, reset_after: 4h}
            catchup: {within: 6h, runs: latest}
            command: 'test ! -e broken && echo "$SCHEDSYNC_SLOT" >> ran.txt'
        """)
    (project.path / "broken").touch()
    assert cli_at(project, "2026-12-04 05:00:02", "run", "hourly").returncode == 1  # opens until 09:00:0x
    (project.path / "broken").unlink()
    for minute in (6, 7, 30):
        tick(project, f"2026-12-04 08:{minute:02d}:00")
    assert [r["status"] for r in project.history("hourly")] == ["failed"]  # nothing started, nothing skipped
    assert [(r.slot, r.state) for r in items(project, "hourly", "catchup")] == [
        (at("2026-12-04 08:00"), "queued")]
    tick(project, "2026-12-04 09:01:00")  # half-open: the catch-up is the trial run
    history = finished(project, "hourly", 2)
    assert (history[1]["trigger"], history[1]["status"]) == ("catchup", "success")
    assert ran(project) == [iso("2026-12-04 08:00")]


def test_a_backfill_of_five_slots_runs_five_times_through_a_one_token_a_minute_budget(project):
    project.write("""\
        timezone: UTC
        budgets:
          api: 1/1m
        jobs:
          daily:
            schedule: "0 6 * * *"
            budget: api
            command: 'echo "$SCHEDSYNC_SLOT" >> ran.txt'
        """)
    result = cli_at(project, "2026-12-04 08:59", "backfill", "daily", "--from", "2026-11-28",
                    "--to", "2026-12-02")  # a date alone: the whole day
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("daily: 5 slots queued for backfill")
    assert result.stderr.startswith("warning: no `schedsync tick` ran in the last 3 minutes")
    shown = cli_at(project, "2026-12-04 08:59", "status", "daily")
    assert "5 items waiting for `schedsync tick`" in shown.stdout, shown.stdout
    # One run a tick, 2 minutes apart (a run spends its token when its clock has moved on by
    # its start-up, seconds on a loaded box); bounded, so a stuck queue fails with the runs.
    done = 0
    for n in range(10):
        tick(project, f"2026-12-04 09:{2 * n:02d}:00")
        done = len(finished(project, "daily", done + 1))
        tick(project, f"2026-12-04 09:{2 * n:02d}:00")  # the same minute: the token is spent
        if len(ran(project)) == 5:
            break
    history = [(r["slot"], r["status"], r["reason"], r["error"]) for r in project.history("daily")]
    assert sorted(ran(project)) == [f"2026-{d}T06:00:00Z" for d in ("11-28", "11-29", "11-30", "12-01", "12-02")], \
        history
    assert ran(project)[0] == "2026-11-28T06:00:00Z", history  # oldest first
    assert {r["trigger"] for r in project.history("daily")} == {"backfill"}
    assert [r[1] for r in history] == ["success"] * 5, history  # no run skipped
    assert n == 4, history  # one run a tick, each tick
    last = 2 * n
    at = f"2026-12-04 09:{last + 1:02d}"
    assert "waiting for `schedsync tick`" not in cli_at(project, at, "status", "daily").stdout
    # asked for again (the first backfill met the same bug): queued again, and no warning now
    again = cli_at(project, at, "backfill", "daily", "--from", "2026-12-02", "--to", "2026-12-02")
    assert (again.stdout.split(";")[0], again.stderr) == ("daily: 1 slot queued for backfill", "")
    tick(project, f"2026-12-04 09:{last + 2:02d}:00")
    assert finished(project, "daily", len(history) + 1)[-1]["slot"] == "2026-12-02T06:00:00Z"


def test_backfill_cancel_empties_the_queue(project):
    project.write("""\
        timezone: UTC
        jobs:
          daily: {schedule: "0 6 * * *", command: ["true"]}
        """)
    assert cli_at(project, "2026-12-04 09:00", "backfill", "daily", "--from", "2026-11-01",
                  "--to", "2026-11-30T06:00Z").returncode == 0
    again = cli_at(project, "2026-12-04 09:00", "backfill", "daily", "--from", "2026-11-01", "--to", "2026-11-30")
    assert again.returncode == 0  # queued once, not twice
    assert len([r for r in items(project, "daily", "backfill") if r.state == "queued"]) == 30
    result = cli_at(project, "2026-12-04 09:00", "backfill", "daily", "--cancel")
    assert (result.returncode, result.stdout.strip()) == (0, "daily: 30 queued backfill slots cancelled")
    assert not [r for r in items(project, "daily", "backfill") if r.state == "queued"]
    tick(project, "2026-12-04 09:01")
    assert project.history("daily") == []


RETRYING = """\
    timezone: UTC
    jobs:
      scrape:
        schedule: "0 6 * * *"
        retry_later: {after: 30m, max: 3}
        command: 'echo "$SCHEDSYNC_SLOT" >> ran.txt; test -e ok'
        notify: [{url: "URL", events: [failure]}]
    """


def test_a_failing_daily_job_retries_at_30_60_and_90_minutes_then_stops(project, httpserver):
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    project.write(RETRYING.replace("URL", httpserver.url_for("/hook")))
    assert cli_at(project, "2026-12-04 06:00:00", "run", "scrape").returncode == 1
    first = finished(project, "scrape", 1)[0]
    assert first["retry_at"].startswith("2026-12-04T06:30:0")
    tick(project, "2026-12-04 06:29:00")  # not yet due
    for n, when in enumerate(("06:31:00", "07:02:00", "07:33:00"), 1):
        tick(project, f"2026-12-04 {when}")
        runs = finished(project, "scrape", 1 + n)
        assert (runs[-1]["trigger"], runs[-1]["retry_of"], runs[-1]["retry_number"]) == ("retry", first["id"], n)
    tick(project, "2026-12-04 08:04:00")  # the chain had its 3 retries
    runs = finished(project, "scrape", 4)
    assert [r["status"] for r in runs] == ["failed"] * 4
    assert runs[-1]["retry_at"] is None
    assert ran(project) == [iso("2026-12-04 06:00")] * 4  # every retry serves the 06:00 slot
    bodies = [json.loads(request.get_data()) for request, _ in httpserver.log]
    assert [b["retry"]["number"] for b in bodies[:3]] == [1, 2, 3] and "retry" not in bodies[3]
    assert bodies[0]["retry"]["of"] == 3 and bodies[0]["retry"]["at"].startswith("2026-12-04T06:30:0")
    texts = [b["text"] for b in bodies]
    assert [t.split("; ")[-1][:22] for t in texts[:3]] == [
        "retry 1 of 3 at 06:30:", "retry 2 of 3 at 07:01:", "retry 3 of 3 at 07:32:"]
    assert "; retry" not in texts[3] and f"(retry 3 of run {first['id']})" in texts[3]  # it was retry 3
    table = cli_at(project, "2026-12-04 08:05", "history", "scrape").stdout  # the chain, as a person reads it
    assert [f"retry {n} of run {first['id']}" in table for n in (1, 2, 3)] == [True] * 3
    assert table.count("(retry later at 2026-12-04 0") == 3, table
    metrics = cli_at(project, "2026-12-04 08:05", "metrics").stdout  # retries later count as retries
    inside = sum(max((r["attempts"] or 0) - 1, 0) for r in runs)
    assert f'schedsync_retries_total{{job="scrape"}} {inside + 3}' in metrics, metrics


def test_a_retry_that_succeeds_ends_the_chain(project, httpserver):
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    project.write(RETRYING.replace("URL", httpserver.url_for("/hook")))
    assert cli_at(project, "2026-12-04 06:00:00", "run", "scrape").returncode == 1
    (project.path / "ok").touch()
    tick(project, "2026-12-04 06:31:00")
    runs = finished(project, "scrape", 2)
    assert (runs[1]["status"], runs[1]["retry_number"], runs[1]["retry_at"]) == ("success", 1, None)
    tick(project, "2026-12-04 07:05:00")
    assert len(finished(project, "scrape", 2)) == 2
    assert [(r.kind, r.retry_number, r.state) for r in items(project, "scrape", "retry")] == [("retry", 1, "ran")]


def test_a_retry_due_after_the_next_slot_is_dropped_and_the_run_says_so(project):
    project.write("""\
        timezone: UTC
        jobs:
          hourly:
            schedule: "0 * * * *"
            retry_later: {after: 45m, max: 3}
            command: "exit 1"
        """)
    assert cli_at(project, "2026-12-04 06:00:00", "run", "hourly").returncode == 1  # retry at 06:45
    tick(project, "2026-12-04 06:46:00")
    runs = finished(project, "hourly", 2)
    assert runs[0]["retry_at"].startswith("2026-12-04T06:45:0")
    assert (runs[1]["retry_number"], runs[1]["reason"], runs[1]["retry_at"]) == (1, "retry_superseded", None)
    assert [(r.retry_number, r.state, r.reason) for r in items(project, "hourly", "retry")] == [
        (1, "ran", None), (2, "skipped", "superseded")]


def test_the_slot_reaches_list_commands_http_values_and_python_jobs(project, httpserver):
    httpserver.expect_request("/items").respond_with_json([{"id": 1}])
    (project.path / "slotjob.py").write_text(
        "def run(ctx):\n    open('python.txt', 'w').write(repr(ctx.slot))\n    return 0\n")
    project.write(f"""\
        timezone: UTC
        jobs:
          listed:
            schedule: "0 6 * * *"
            command: ["sh", "-c", "echo $0 >> ran.txt", "${{SCHEDSYNC_SLOT}}"]
          fetched:
            schedule: "0 6 * * *"
            http: {{url: "{httpserver.url_for('/items')}", params: {{day: "${{SCHEDSYNC_SLOT}}"}}}}
            into: {{table: items, pk: id}}
          called:
            schedule: "0 6 * * *"
            python: "slotjob:run"
        """)
    env = {k: v for k, v in project.env.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    project.env = {**env, "NO_PROXY": "*", "no_proxy": "*"}
    for job in ("listed", "fetched", "called"):
        assert cli_at(project, "2026-12-04 08:59", "backfill", job, "--from", "2026-12-02",
                      "--to", "2026-12-02").returncode == 0
    tick(project, "2026-12-04 09:00")
    for job in ("listed", "fetched", "called"):
        assert [(r["trigger"], r["status"]) for r in finished(project, job, 1)] == [("backfill", "success")]
    assert ran(project) == ["2026-12-02T06:00:00Z"]
    assert [request.args["day"] for request, _ in httpserver.log] == ["2026-12-02T06:00:00Z"]
    assert (project.path / "python.txt").read_text() == repr(at("2026-12-02 06:00"))


def test_retries_later_on_postgresql(project, pg_url):
    """The same chain on a PostgreSQL state, in real time (``after: 1s``): the retry is queued
    in finish's own transaction there too, and the tick starts each one once."""
    project.env["SCHEDSYNC_STATE"] = pg_url
    project.write("""\
        jobs:
          yearly:
            schedule: "0 0 1 1 *"
            retry_later: {after: 1s, max: 2}
            command: 'test -e ok'
        """)
    assert project.cli("run", "--force-slot", "yearly").returncode == 1
    deadline = time.monotonic() + 90
    while len([r for r in project.history("yearly") if r["status"] != "running"]) < 3 \
            and time.monotonic() < deadline:
        assert project.cli("tick").returncode == 0  # the real clock: PostgreSQL's is the server's
        time.sleep(0.5)
    runs = finished(project, "yearly", 3)
    assert [(r["trigger"], r["retry_number"], r["retry_of"]) for r in runs] == [
        ("cron", 0, None), ("retry", 1, runs[0]["id"]), ("retry", 2, runs[0]["id"])]
    assert [r["retry_at"] is not None for r in runs] == [True, True, False]
    assert project.cli("tick").returncode == 0
    assert len(finished(project, "yearly", 3)) == 3
    store = open_store(pg_url)
    try:
        assert sorted((s.retry_number, s.state) for s in store.slots("yearly") if s.kind == "retry") == [
            (1, "ran"), (2, "ran")]
    finally:
        store.close()


def test_a_slot_whose_run_crashed_is_caught_up(project):
    import os
    import signal

    project.write(HOURLY.replace("RUNS", "latest").replace(
        """'echo "$SCHEDSYNC_SLOT" >> ran.txt'""",
        """'test -e slow && echo started > started.txt && sleep 60; echo "$SCHEDSYNC_SLOT" >> ran.txt'"""))
    (project.path / "slow").touch()
    proc = project.start("run", "hourly", env=pinned(project.env, "2026-12-04 05:00:02"))
    try:
        deadline = time.monotonic() + 30
        while not (project.path / "started.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (project.path / "started.txt").exists()
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # schedsync dies mid-run: its keeper ends the job
        proc.communicate(timeout=30)
    (project.path / "slow").unlink()
    tick(project, "2026-12-04 05:06:00")  # grace passed: the crashed run's slot is missed
    runs = finished(project, "hourly", 2)
    assert [(r["status"], r["trigger"], r["slot"]) for r in runs] == [
        ("crashed", "cron", iso("2026-12-04 05:00")), ("success", "catchup", iso("2026-12-04 05:00"))]
    assert ran(project) == [iso("2026-12-04 05:00")]


def test_a_catch_up_still_queued_when_its_window_closes_is_missed(project):
    project.write("""\
        timezone: UTC
        jobs:
          hourly:
            schedule: "0 * * * *"
            breaker: {failures: 1, reset_after: 2h}
            catchup: {within: 1h, runs: all}
            command: 'test ! -e broken && echo "$SCHEDSYNC_SLOT" >> ran.txt'
        """)
    (project.path / "broken").touch()
    assert cli_at(project, "2026-12-04 05:00:02", "run", "hourly").returncode == 1  # open until 07:00:0x
    (project.path / "broken").unlink()
    tick(project, "2026-12-04 06:06:00")  # 06:00 missed: queued, held by the breaker
    tick(project, "2026-12-04 07:01:00")  # 06:00's window closed at 07:00
    assert [(r.slot, r.state, r.reason) for r in items(project, "hourly", "catchup")] == [
        (at("2026-12-04 06:00"), "missed", "catch-up window closed")]
    assert [r["status"] for r in project.history("hourly")] == ["failed"]
    assert ran(project) == []


def test_catchup_and_retry_later_put_the_tick_line_in_the_crontab(project):
    project.write("""\
        jobs:
          plain: {schedule: "0 * * * *", command: ["true"]}
        """)
    assert " tick" not in project.cli("crontab").stdout
    for setting in ("catchup: {within: 6h}", "retry_later: {after: 30m}"):
        project.write(f"""\
            jobs:
              plain: {{schedule: "0 * * * *", command: ["true"]}}
              later: {{schedule: "0 6 * * *", {setting}, command: ["true"]}}
            """)
        lines = project.cli("crontab").stdout.splitlines()
        assert [line.split()[-1] for line in lines if not line.startswith("#") and "schedsync" in line] == [
            "plain", "later", "tick"], lines
