"""``schedsync tick`` and the slot ledger through the real CLI (issue 17, items 1, 2, 6):
run_by: tick, the tick line, concurrent ticks, a tick killed between claiming and
starting, a clock that steps back, a broken jobs.yaml, status/history/metrics of slots.

Ticks run with a pinned ``--now`` where the slot matters; the runs they start are real
detached processes, waited for by polling with a timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timezone

import pytest

from schedsync.core.errors import SchedsyncError
from schedsync.store import open_store

JOBS = """\
    jobs:
      ticked:
        schedule: "* * * * *"
        run_by: tick
        command: ["sh", "-c", "echo \\"$SCHEDSYNC_SLOT\\" >> ticked.out"]
      daily:
        schedule: "0 3 29 2 *"  # 03:00 on 29 February: never the real clock's slot in a test
        command: ["sh", "-c", "echo \\"$SCHEDSYNC_SLOT\\" >> daily.out"]
"""


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def minute(offset: float = 0.0) -> float:
    """A whole minute a few minutes back, so a pinned tick never meets the real clock's slot."""
    return (time.time() // 60) * 60 - 600 + offset


def wait_for(check, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def finished(project, job: str, n: int, timeout: float = 90.0) -> list[dict]:
    """The job's runs once ``n`` of them have finished (none still running)."""
    def done():
        runs = project.history(job)
        return runs if len(runs) >= n and all(r["status"] != "running" for r in runs) else None
    return wait_for(done, timeout, f"{n} finished runs of {job}")


def ledger(project, job: str) -> list:
    """The job's ledger rows; none while a first tick is still creating the state."""
    try:
        store = open_store(str(project.state), write=False)
    except SchedsyncError:
        return []
    try:
        return store.slots(job, 100)
    finally:
        store.close()


def tick(project, at: float, **kwargs):
    result = project.cli("tick", "--now", iso(at), **kwargs)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result


def test_a_run_by_tick_job_runs_once_per_slot_with_its_slot(project):
    project.write(JOBS)
    t = minute()
    tick(project, t + 5)
    [run] = finished(project, "ticked", 1)
    assert (run["status"], run["trigger"], run["slot"]) == ("success", "cron", iso(t))
    assert (run["retry_of"], run["retry_number"]) == (None, 0)
    assert (project.path / "ticked.out").read_text() == f"{iso(t)}\n"
    tick(project, t + 30)  # the same slot: already claimed, nothing started
    tick(project, t + 65)
    runs = finished(project, "ticked", 2)
    assert [r["slot"] for r in runs] == [iso(t + 60), iso(t)]
    assert project.history("daily") == []  # a job with its own crontab line: not the tick's


def test_the_tick_exits_without_waiting_for_the_runs_it_starts(project):
    project.write(JOBS.replace('"echo \\"$SCHEDSYNC_SLOT\\" >> ticked.out"', '"sleep 30"'))
    t = minute()
    began = time.monotonic()
    with open(project.path / "tick.out", "w") as out:
        proc = subprocess.Popen(project.argv("tick", "--now", iso(t + 5)), stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, cwd=project.path, env=project.env)
        assert proc.wait(timeout=60) == 0
    assert time.monotonic() - began < 25  # the run sleeps 30 s; the tick did not wait for it
    [run] = wait_for(lambda: [r for r in project.history("ticked") if r["status"] == "running"] or None)
    os.killpg(os.getpgid(run["pid"]), signal.SIGTERM)  # its own session: stop it, by its pid
    finished(project, "ticked", 1)


def test_ten_ticks_at_once_start_each_due_item_exactly_once(project):
    jobs = "jobs:\n" + "".join(
        f"  t{i}:\n    schedule: \"* * * * *\"\n    run_by: tick\n"
        f"    command: [\"sh\", \"-c\", \"echo \\\"$SCHEDSYNC_SLOT\\\" >> t{i}.out\"]\n" for i in range(5))
    jobs += ("  filled:\n    schedule: \"0 * * * *\"\n"
             "    command: [\"sh\", \"-c\", \"echo \\\"$SCHEDSYNC_SLOT\\\" >> filled.out\"]\n")
    project.config.write_text(jobs)
    t = minute()
    backfill = [t - 3600 * i for i in range(1, 6)]
    store = open_store(str(project.state))
    store.enqueue("filled", [{"slot": s, "kind": "backfill", "due_at": s} for s in backfill])
    store.close()
    ticks = [project.start("tick", "--now", iso(t + 5)) for _ in range(10)]
    for proc in ticks:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and err == "", err
    for i in range(5):
        [run] = finished(project, f"t{i}", 1)
        assert run["slot"] == iso(t)
    # one item of a job at a time, however many ticks: what is left waits for later ticks
    for n in range(30):
        runs = finished(project, "filled", 1)
        if len(runs) == 5:
            break
        tick(project, t + 6 + n)
    time.sleep(2)  # a duplicate start would show by now
    runs = project.history("filled")
    assert [(r["slot"], r["status"], r["trigger"]) for r in runs] == [(iso(s), "success", "backfill") for s in backfill]
    assert all(len(project.history(f"t{i}")) == 1 for i in range(5))
    assert sorted((project.path / "filled.out").read_text().split()) == sorted(iso(s) for s in backfill)
    assert all(s.state == "ran" for s in ledger(project, "filled"))


def test_a_tick_killed_between_claiming_and_starting_loses_nothing(project):
    project.write(JOBS)
    t = minute()
    proc = project.start("tick", "--now", iso(t + 5), env={"SCHEDSYNC_TEST_TICK_PAUSE": "120"})
    try:
        wait_for(lambda: any(s.state == "claimed" for s in ledger(project, "ticked")),
                 what="the tick's claim")
    finally:
        proc.kill()  # kill -9, by its pid
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(1)
    assert project.history("ticked") == []  # claimed, never started
    tick(project, t + 30)  # the claim is not stale yet: nobody takes it over
    time.sleep(1)
    assert project.history("ticked") == []
    tick(project, t + 70)  # stale: queued again and started (with the next slot's own item)
    runs = finished(project, "ticked", 2)
    assert sorted(r["slot"] for r in runs) == [iso(t), iso(t + 60)]


def test_a_clock_that_steps_back_replays_no_slot(project):
    project.write(JOBS)
    t = minute()
    tick(project, t + 5)
    finished(project, "ticked", 1)
    tick(project, t - 3600 + 5)  # an hour back: those slots are older than one that ran
    tick(project, t + 10)
    time.sleep(2)
    assert [r["slot"] for r in project.history("ticked")] == [iso(t)]


def test_a_job_driven_by_both_its_line_and_the_tick_runs_once_and_records_no_skip(project):
    project.write(JOBS)
    if time.localtime().tm_sec >= 50:
        time.sleep(61 - time.localtime().tm_sec)  # one slot for the whole test
    assert project.cli("tick").returncode == 0  # real time: the current slot
    leftover = project.cli("run", "ticked")  # a crontab line from before run_by: tick
    assert leftover.returncode == 75 and leftover.stdout == leftover.stderr == ""
    runs = finished(project, "ticked", 1)
    assert [r["status"] for r in runs] == ["success"]
    # and the other way round: the line first, then the tick starts nothing
    project.write(JOBS.replace("run_by: tick", "run_by: cron"))
    assert project.cli("run", "daily").returncode == 0  # not its slot: claims none
    assert len(finished(project, "ticked", 1)) == 1


def test_a_cron_run_claims_its_slot_once_on_sqlite(project):
    project.write(JOBS.replace("run_by: tick", "run_by: cron"))
    if time.localtime().tm_sec >= 50:
        time.sleep(61 - time.localtime().tm_sec)
    first, second = project.cli("run", "ticked"), project.cli("run", "ticked")
    assert first.returncode == 0 and second.returncode == 75
    runs = project.history("ticked")
    assert [(r["status"], r["reason"]) for r in runs] == [("skipped", "already_ran"), ("success", None)]
    assert runs[0]["slot"] == runs[1]["slot"] and "--force-slot" in runs[0]["error"]
    assert project.cli("run", "--force-slot", "ticked").returncode == 0


def test_missed_slots_are_recorded_shown_and_counted(project):
    project.write(JOBS.replace("run_by: tick", "run_by: cron\n        grace: 2m"))
    t = minute(-600)
    tick(project, t)  # the first look: marks, records nothing before it
    tick(project, t + 10 * 60)  # 10 slots passed with no run; the newest 2 are within grace
    missed = [s for s in ledger(project, "ticked") if s.state == "missed"]
    assert sorted(s.slot for s in missed) == [t - 120 + 60 * i for i in range(1, 11) if t - 120 + 60 * i <= t + 480]
    metrics = project.cli("metrics").stdout
    assert f'schedsync_slots_missed_total{{job="ticked"}} {len(missed)}' in metrics
    assert 'schedsync_slots_missed_total{job="daily"} 0' in metrics
    shown = project.cli("status", "ticked")
    assert "missed" in shown.stdout and "slots" in shown.stdout
    tick(project, t + 10 * 60 + 5)  # nothing new to record
    assert len([s for s in ledger(project, "ticked") if s.state == "missed"]) == len(missed)


def test_crontab_prints_the_tick_line_and_no_line_for_run_by_tick_jobs(project):
    project.write(JOBS)
    lines = project.cli("crontab").stdout.splitlines()
    assert not any(line.endswith(" run ticked") for line in lines)
    assert any(line.endswith(" run daily") for line in lines)
    [tick_line] = [line for line in lines if line.endswith(" tick")]
    assert tick_line.startswith("* * * * *")
    project.write(JOBS.replace("run_by: tick", "run_by: cron"))
    assert not any(line.endswith(" tick") for line in project.cli("crontab").stdout.splitlines())


def test_run_by_is_validated_with_its_line(project):
    project.write(JOBS.replace("run_by: tick", "run_by: ticker"))
    result = project.cli("validate")
    assert result.returncode == 2
    assert "jobs.yaml:4" in result.stderr and "run_by" in result.stderr and "ticker" in result.stderr
    project.write("""\
        defaults:
          run_by: tick
        jobs:
          byhand:
            command: ["true"]
          solo:
            run_by: tick
            command: ["true"]
    """)
    result = project.cli("validate")
    assert result.returncode == 2 and "jobs.yaml:7" in result.stderr and "no schedule" in result.stderr


def test_a_tick_on_a_broken_jobs_yaml_exits_2_and_status_says_why(project):
    project.write(JOBS)
    tick(project, minute())
    good = project.config.read_text()
    project.config.write_text(good.replace("jobs:", "jobs: [", 1))
    result = project.cli("tick")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    project.config.write_text(good)
    status = project.status()
    assert "jobs.yaml" in status["tick"]["error"] and "failed" in status["tick"]["warning"]
    assert "the last `schedsync tick` failed" in project.cli("status").stderr


def test_status_warns_when_a_job_needs_the_tick_and_none_ran(project):
    project.write(JOBS)
    assert project.cli("run", "daily").returncode == 0
    shown = project.cli("status")
    assert "ticked need `schedsync tick`, and no tick ran ever" in shown.stderr
    assert project.status()["tick"]["last_at"] is None
    assert project.cli("tick").returncode == 0
    assert "need `schedsync tick`" not in project.cli("status").stderr
    project.write(JOBS.replace("run_by: tick", "run_by: cron"))
    assert "tick" not in project.status()


def test_run_of_another_jobs_item_is_refused(project):
    project.write(JOBS)
    t = minute()
    tick(project, t + 5)
    finished(project, "ticked", 1)
    [item] = [s for s in ledger(project, "ticked")]
    result = project.cli("run", "daily", "--item", str(item.id))
    assert result.returncode == 2 and f"work item {item.id} is not one of daily's" in result.stderr
    again = project.cli("run", "ticked", "--item", str(item.id))  # it ran: quietly nothing
    assert again.returncode == 75 and again.stderr == ""
    assert len(project.history("ticked")) == 1


def test_history_json_has_the_new_fields_for_a_manual_run(project):
    project.write(JOBS)
    project.cli("run", "daily")
    [run] = json.loads(project.cli("history", "daily", "--json").stdout)
    assert run["slot"] is None and run["retry_of"] is None and run["retry_number"] == 0


@pytest.mark.parametrize("args", [["tick", "--now", "yesterday"]])
def test_a_bad_now_is_a_usage_error(project, args):
    project.write(JOBS)
    result = project.cli(*args)
    assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_a_tick_with_nothing_to_start_imports_no_subprocess(project):
    # subprocess (with locale, re, threading…) is for starting runs: not every idle minute's tick
    project.write("""\
        jobs:
          by-its-line:
            schedule: "* * * * *"
            command: ["true"]
    """)
    assert project.cli("tick").returncode == 0  # the config cache, the state and the marks
    traced = project.cli("tick", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert traced.returncode == 0, traced.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in traced.stderr.splitlines() if line.startswith("import time:")}
    assert "schedsync.app.tick" in imported and "subprocess" not in imported
