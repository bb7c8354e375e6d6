"""The pure rules of catch-up, backfill and retries later (``core.catchup``), at pinned times."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone

import pytest

import test_store
from schedsync.core.catchup import (
    MAX_BACKFILL,
    MAX_LOOKBACK,
    backfill_slots,
    due_slots,
    retry_for,
    superseded,
    window_closed,
)
from schedsync.core.models import CRASHED, FAILED, PARTIAL, SKIPPED, SUCCESS, TIMEOUT, Run
from schedsync.core.schedule import Schedule

UTC = timezone.utc
HOURLY = Schedule("0 * * * *", UTC)
DAILY_6 = Schedule("0 6 * * *", UTC)
MINUTE = Schedule("* * * * *", UTC)
store_factory, store = test_store.store_factory, test_store.store  # the contract's: SQLite and PostgreSQL


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def due(schedule=HOURLY, *, within=6 * 3600, runs="all", grace=300, now="2026-12-04 09:10",
        since="2026-12-01 00:00", accounted=()):
    return due_slots(schedule, within=within, runs=runs, grace=grace, now=at(now),
                     since=None if since is None else at(since), accounted=[at(a) for a in accounted])


# --- catch-up ---------------------------------------------------------------------------

def test_all_queues_every_missed_slot_in_the_window_oldest_first():
    # cron did not run 06:00, 07:00 and 08:00; 09:00 is still within its grace (cron's)
    assert due(now="2026-12-04 09:03", accounted=["2026-12-04 03:00", "2026-12-04 04:00",
                                                  "2026-12-04 05:00"]) == [
        at("2026-12-04 06:00"), at("2026-12-04 07:00"), at("2026-12-04 08:00")]


def test_latest_queues_only_the_newest_missed_slot():
    assert due(runs="latest", now="2026-12-04 09:03", accounted=["2026-12-04 05:00"]) == [
        at("2026-12-04 08:00")]


def test_latest_queues_nothing_once_a_newer_slot_is_accounted_for():
    # 08:00 was missed, but 09:00 ran: the job is up to date
    assert due(runs="latest", now="2026-12-04 09:06", accounted=["2026-12-04 09:00"]) == []
    # 08:00 was caught up already: 09:00 missing too is a new catch-up, once its grace passed
    assert due(runs="latest", now="2026-12-04 09:04", accounted=["2026-12-04 08:00"]) == []
    assert due(runs="latest", now="2026-12-04 09:05", accounted=["2026-12-04 08:00"]) == [
        at("2026-12-04 09:00")]


def test_a_slot_is_missed_only_once_its_grace_has_passed():
    assert due(within=3600, now="2026-12-04 09:04:59", accounted=["2026-12-04 08:00"]) == []
    assert due(within=3600, now="2026-12-04 09:05", accounted=["2026-12-04 08:00"]) == [
        at("2026-12-04 09:00")]


def test_slots_older_than_the_window_are_not_queued():
    assert due(within=2 * 3600 + 11 * 60, now="2026-12-04 09:10") == [
        at("2026-12-04 07:00"), at("2026-12-04 08:00"), at("2026-12-04 09:00")]


def test_a_job_never_seen_catches_nothing_up_and_a_new_one_not_before_it_was_seen():
    assert due(since=None) == []
    assert due(since="2026-12-04 07:30", now="2026-12-04 09:10") == [
        at("2026-12-04 08:00"), at("2026-12-04 09:00")]
    # first seen by the slot's own run, a moment after the slot: that slot counts
    assert due(since="2026-12-04 08:00:02", now="2026-12-04 09:10") == [
        at("2026-12-04 08:00"), at("2026-12-04 09:00")]
    assert due(since="2026-12-04 08:05:01", now="2026-12-04 09:10") == [at("2026-12-04 09:00")]


def test_catch_up_looks_back_a_bounded_number_of_slots():
    found = due(MINUTE, within=30 * 86400, grace=60, now="2026-12-04 09:10")
    assert len(found) == MAX_LOOKBACK
    assert found[-1] == at("2026-12-04 09:09")  # the newest ones


def test_window_closed():
    assert not window_closed(at("2026-12-04 03:00"), 6 * 3600, at("2026-12-04 09:00"))
    assert window_closed(at("2026-12-04 03:00"), 6 * 3600, at("2026-12-04 09:00:01"))


# --- backfill ---------------------------------------------------------------------------

def test_backfill_lists_the_slots_in_the_range_both_ends_included():
    assert backfill_slots(HOURLY, at("2026-12-01 10:00"), at("2026-12-01 14:00")) == [
        at(f"2026-12-01 {h}:00") for h in range(10, 15)]
    assert backfill_slots(HOURLY, at("2026-12-01 10:00:01"), at("2026-12-01 11:59")) == [
        at("2026-12-01 11:00")]
    assert backfill_slots(HOURLY, at("2026-12-01 10:01"), at("2026-12-01 10:59")) == []


def test_backfill_refuses_a_reversed_range_and_more_than_ten_thousand_slots():
    with pytest.raises(ValueError, match="--to is before --from"):
        backfill_slots(HOURLY, at("2026-12-02 00:00"), at("2026-12-01 00:00"))
    start = at("2026-01-01 00:00")
    assert len(backfill_slots(MINUTE, start, start + (MAX_BACKFILL - 1) * 60)) == MAX_BACKFILL
    with pytest.raises(ValueError, match="more than 10,000 slots"):
        backfill_slots(MINUTE, start, start + MAX_BACKFILL * 60)
    with pytest.raises(ValueError, match="more than 10,000 slots"):  # stops counting early
        backfill_slots(MINUTE, start, start + 10 * 365 * 86400)


# --- retries later ----------------------------------------------------------------------

def run(status, *, reason=None, started="2026-12-04 06:00", took=5, id=7, retry_of=None, retry_number=0):
    r = Run(id, "scrape", status, "cron", at(started), "h", 1, reason=reason,
            finished_at=at(started) + took)
    r.retry_of, r.retry_number = retry_of, retry_number
    return r


LATER = {"after": 1800.0, "max": 3}
TOMORROW = at("2026-12-05 06:00")


def test_a_failed_or_timed_out_run_queues_retry_one_after_its_end():
    for status in (FAILED, TIMEOUT):
        retry = retry_for(run(status), LATER, TOMORROW)
        assert (retry.of, retry.number, retry.due_at, retry.max, retry.superseded) == (
            7, 1, at("2026-12-04 06:30:05"), 3, False)


def test_a_retry_carries_the_chain_on_and_the_chain_stops_at_max():
    retry = retry_for(run(FAILED, id=9, retry_of=7, retry_number=1, started="2026-12-04 06:30:05"),
                      LATER, TOMORROW)
    assert (retry.of, retry.number) == (7, 2)
    assert retry_for(run(FAILED, id=11, retry_of=7, retry_number=3), LATER, TOMORROW) is None


def test_success_skips_crashes_and_cancels_start_no_retry():
    for status, reason in ((SUCCESS, None), (PARTIAL, None), (SKIPPED, "breaker_open"),
                           (CRASHED, None), (FAILED, "cancelled"), (FAILED, "replaced")):
        assert retry_for(run(status, reason=reason), LATER, TOMORROW) is None
    assert retry_for(run(FAILED), None, TOMORROW) is None  # no retry_later


def test_a_retry_due_at_or_after_the_next_slot_is_superseded():
    hourly_next = at("2026-12-04 07:00")
    assert not retry_for(run(FAILED, took=0), LATER, hourly_next).superseded  # 06:30
    late = retry_for(run(FAILED, started="2026-12-04 06:30"), LATER, hourly_next)  # 07:00:05
    assert late.superseded
    assert not retry_for(run(FAILED), LATER, None).superseded  # no schedule: no next slot
    assert superseded(hourly_next, hourly_next) and not superseded(hourly_next - 1, hourly_next)


# --- jobs.yaml: catchup and retry_later, per job or in defaults -------------------------

def parsed(text: str):
    from schedsync.config import parse

    return parse(textwrap.dedent(text), "jobs.yaml", "/srv/sync")


def error_of(text: str) -> str:
    from schedsync.core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parsed(text)
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_catchup_and_retry_later_merge_from_defaults_key_by_key():
    config = parsed("""\
        defaults:
          catchup: {within: 6h}
          retry_later: {after: 30m, max: 2}
        jobs:
          scrape:
            schedule: "0 6 * * *"
            catchup: {runs: all}
            retry_later: {max: 5}
            command: ["true"]
          hourly:
            schedule: "0 * * * *"
            command: ["true"]
          quiet:
            schedule: "0 * * * *"
            catchup: false
            retry_later: null
            command: ["true"]
          unscheduled:
            command: ["true"]
        """)
    scrape = config.job("scrape")
    assert scrape.catchup == {"within": 21600.0, "runs": "all"}
    assert scrape.retry_later == {"after": 1800.0, "max": 5}
    assert config.job("hourly").catchup == {"within": 21600.0, "runs": "latest"}  # the default runs
    assert config.job("hourly").retry_later == {"after": 1800.0, "max": 2}
    assert config.job("quiet").catchup is None and config.job("quiet").retry_later is None
    assert config.job("unscheduled").catchup is None  # defaults' catch-up: no slots, no error
    assert config.job("unscheduled").retry_later == {"after": 1800.0, "max": 2}


def test_neither_is_on_by_default():
    job = parsed("""\
        jobs:
          a: {schedule: "0 * * * *", command: ["true"]}
        """).job("a")
    assert job.catchup is None and job.retry_later is None


def test_retry_later_max_defaults_to_three():
    assert parsed("""\
        jobs:
          a: {schedule: "0 * * * *", retry_later: {after: 1h}, command: ["true"]}
        """).job("a").retry_later == {"after": 3600.0, "max": 3}


@pytest.mark.parametrize(("text", "expected"), [
    ('    catchup: {within: 6h, runs: newest}',
     "jobs.yaml:5 jobs.a.catchup.runs: 'newest' is not latest or all"),
    ('    catchup: {within: soon}', "jobs.yaml:5 jobs.a.catchup.within: 'soon' is not a duration"),
    ('    catchup: {within: 0s}', "jobs.yaml:5 jobs.a.catchup.within: must be more than 0s"),
    ('    catchup: {runs: all}', "jobs.yaml:5 jobs.a.catchup: needs within"),
    ('    catchup: 6h', "jobs.yaml:5 jobs.a.catchup: must be a mapping"),
    ('    catchup: {within: 6h, run: all}', "jobs.yaml:5 jobs.a.catchup.run: unknown key — did you mean 'runs'?"),
    ('    retry_later: {after: 30m, max: 0}',
     "jobs.yaml:5 jobs.a.retry_later.max: 0 must be a whole number of 1 or more"),
    ('    retry_later: {max: 3}', "jobs.yaml:5 jobs.a.retry_later: needs after"),
    ('    retry_later: {after: 0s}', "jobs.yaml:5 jobs.a.retry_later.after: must be more than 0s"),
    ('    retry_later: [30m]', "jobs.yaml:5 jobs.a.retry_later: must be a mapping"),
])
def test_bad_values_are_one_line_with_file_line_and_key(text, expected):
    assert error_of('jobs:\n  a:\n    schedule: "0 * * * *"\n    command: ["true"]\n' + text + "\n").startswith(
        expected)


def test_catchup_on_a_job_without_a_schedule_is_an_error_and_defaults_needs_within():
    assert error_of("""\
        jobs:
          a:
            command: ["true"]
            catchup: {within: 1h}
        """).startswith("jobs.yaml:4 jobs.a.catchup: a job without a schedule has no slots to catch up")
    assert error_of("""\
        defaults:
          catchup: {runs: all}
        jobs:
          a: {schedule: "0 * * * *", command: ["true"]}
        """).startswith("jobs.yaml:2 defaults.catchup: needs within")


def test_validate_names_the_line_of_a_bad_key(project):
    project.write("""\
        jobs:
          a:
            schedule: "0 * * * *"
            command: ["true"]
            retry_later: {after: 30m, max: many}
        """)
    result = project.cli("validate")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {project.config}:5 jobs.a.retry_later.max: 'many' must be a whole number of 1 or more"]


# --- backfill: the command line ---------------------------------------------------------

DAILY_JOBS = """\
    timezone: UTC
    jobs:
      scrape:
        schedule: "0 6 * * *"
        command: ["true"]
      adhoc:
        command: ["true"]
      minutely:
        schedule: "* * * * *"
        command: ["true"]
    """


@pytest.mark.parametrize(("args", "expected"), [
    (["adhoc", "--from", "2026-12-01", "--to", "2026-12-02"],
     "error: backfill adhoc: the job has no schedule, so it has no slots to queue — give it a schedule"),
    (["scrape", "--from", "2026-12-02", "--to", "2026-12-01"],
     "error: backfill scrape: --to 2026-12-01 is before --from 2026-12-02 — swap them"),
    (["minutely", "--from", "2026-01-01T00:00Z", "--to", "2026-01-07T22:40Z"],
     "error: backfill minutely: the range holds more than 10,000 slots of '* * * * *' — split it"),
    (["scrape", "--from", "yesterday", "--to", "2026-12-01"],
     "error: backfill scrape --from: 'yesterday' is not an ISO 8601 time — write e.g. 2026-12-01T06:00"),
    (["scrape", "--from", "2026-12-01"], "error: backfill scrape: needs --from and --to"),
    (["scrape", "--cancel", "--to", "2026-12-01"], "error: backfill --cancel takes no --from or --to"),
    (["nope", "--from", "2026-12-01", "--to", "2026-12-02"], "error: "),
])
def test_backfill_refuses_bad_arguments_in_one_line_exit_2_creating_nothing(project, args, expected):
    project.write(DAILY_JOBS)
    result = project.cli("backfill", *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(expected), result.stderr
    assert "Traceback" not in result.stderr
    assert not project.state.exists()


def test_a_date_alone_is_midnight_for_from_and_the_whole_day_for_to():
    from zoneinfo import ZoneInfo

    from schedsync.core.catchup import parse_time

    berlin = ZoneInfo("Europe/Berlin")
    assert parse_time("2026-12-01", berlin) == at("2026-11-30 23:00")
    assert parse_time("2026-12-01", berlin, end=True) == at("2026-12-01 22:59:59")
    assert parse_time("2026-12-01T06:00", berlin, end=True) == at("2026-12-01 05:00")
    assert parse_time("2026-12-01T06:00Z", berlin) == at("2026-12-01 06:00")
    assert parse_time("2026-12-01T06:00+01:00", timezone.utc) == at("2026-12-01 05:00")
    with pytest.raises(ValueError, match="is not an ISO 8601 time"):
        parse_time("tomorrow", berlin)


# --- the store: a retry is queued in the same step that records the run's end ------------


def test_finish_run_queues_the_retry_with_the_end_once_on_both_backends(store):
    T0 = test_store.T0
    admitted = store.admit_run("a", "cron", test_store.API, 60.0, [], {}, 0, now=T0, slot=T0 - 5)
    run = admitted.run
    run.status, run.finished_at, run.duration_ms, run.retry_at = FAILED, T0 + 2, 2000, T0 + 1802
    later = {"slot": T0 - 5, "kind": "retry", "due_at": T0 + 1802, "retry_of": run.id, "retry_number": 1,
             "state": "queued", "reason": None}
    store.finish_run(run, test_store.API, True, False, 60.0, test_store.KEEP_ALL, now=T0 + 2, later=later)
    [retry] = [s for s in store.slots("a") if s.kind == "retry"]
    assert (retry.slot, retry.state, retry.due_at, retry.retry_of, retry.retry_number) == (
        T0 - 5, "queued", T0 + 1802, run.id, 1)
    assert store.runs("a")[0].retry_at == T0 + 1802
    # the same finish again (replayed) adds nothing; a superseded retry is recorded skipped
    store.finish_run(run, test_store.API, True, False, 60.0, test_store.KEEP_ALL, now=T0 + 2, later=later)
    second = store.admit_run("a", "retry", test_store.API, 60.0, [], {}, 0, now=T0 + 3).run
    second.status, second.finished_at, second.duration_ms = FAILED, T0 + 4, 1000
    dropped = {**later, "retry_number": 2, "state": "skipped", "reason": "superseded"}
    store.finish_run(second, test_store.API, True, False, 60.0, test_store.KEEP_ALL, now=T0 + 4, later=dropped)
    assert sorted((s.retry_number, s.state, s.reason) for s in store.slots("a") if s.kind == "retry") == [
        (1, "queued", None), (2, "skipped", "superseded")]
    [claimed] = store.claim_due(["a"], 10, "h:1", now=T0 + 1802)
    assert claimed.id == retry.id


def test_enqueue_requeue_queues_a_done_backfill_again_on_both_backends(store):
    T0 = test_store.T0
    items = [{"slot": T0 - 86400, "kind": "backfill", "due_at": T0}, {"slot": T0 - 3600, "kind": "backfill",
                                                                    "due_at": T0}]
    ids = store.enqueue("a", items)
    [claimed] = store.claim_due(["a"], 10, "h:1", now=T0)
    assert claimed.id == ids[0]
    admitted = store.admit_run("a", "backfill", test_store.API, 60.0, [], {}, 0, now=T0 + 1, item=claimed.id)
    assert admitted.run.slot == T0 - 86400
    assert store.enqueue("a", items) == ids  # asked again without requeue: as they are
    assert [s.state for s in sorted(store.slots("a"), key=lambda s: s.id)] == ["ran", "queued"]
    assert store.enqueue("a", items, now=T0 + 60, requeue=True) == ids
    again = sorted(store.slots("a"), key=lambda s: s.id)
    assert [(s.state, s.run_id, s.due_at) for s in again] == [("queued", None, T0 + 0), ("queued", None, T0)]


def test_exec_jobs_take_neither_from_defaults():
    from schedsync.config import adhoc

    config = parsed("""\
        defaults:
          retry_later: {after: 30m}
        jobs:
          a: {schedule: "0 * * * *", catchup: {within: 1h}, command: ["true"]}
        """)
    for name in ("backup", "a"):  # a new name, and a registry job run through exec
        job = adhoc(config, name, ["true"], {}, "/tmp").job(name)
        assert job.catchup is None and job.retry_later is None
