from __future__ import annotations

import itertools
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from schedsync.core.health import SEVERITY, Health, job_health
from schedsync.core.models import (
    BREAKER_OPEN,
    CRASHED,
    FAILED,
    LOCKED,
    PARTIAL,
    RATE_LIMITED,
    RUNNING,
    SKIPPED,
    SUCCESS,
    TIMEOUT,
    JobState,
    Run,
)
from schedsync.core.schedule import Schedule

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
HOURLY = Schedule("0 * * * *", UTC)
DAILY_9AM = Schedule("0 9 * * *", UTC)
WEEKDAYS_9AM = Schedule("0 9 * * 1-5", UTC)
LONG_AGO = "2024-01-01 00:00"
_ids = itertools.count(1)


def at(text: str, tz=UTC) -> float:
    """``"09:30"`` is on Monday 2024-05-06, the pinned day; else a full date and time."""
    day_and_time = text if " " in text else f"2024-05-06 {text}"
    return datetime.fromisoformat(day_and_time).replace(tzinfo=tz).timestamp()


def run(status: str, started: str, *, reason=None, exit_code=None, error=None, took: float = 60, tz=UTC) -> Run:
    started_at = at(started, tz)
    return Run(
        id=next(_ids),
        job="airdrops",
        status=status,
        trigger="cron",
        started_at=started_at,
        host="box",
        pid=4242,
        reason=reason,
        finished_at=None if status == RUNNING else started_at + took,
        exit_code=exit_code,
        error=error,
    )


def skipped(started: str, reason: str = LOCKED) -> Run:
    return run(SKIPPED, started, reason=reason, took=0)


def state(*runs: Run, first_seen: str | None = LONG_AGO, paused=False) -> JobState:
    """A job's stored state as the store reads it back: partial runs count as successes."""
    recent = sorted(runs, key=lambda r: r.started_at, reverse=True)
    return JobState(
        name="airdrops",
        first_seen=at(first_seen) if first_seen else None,
        paused=paused,
        recent=recent,
        last_success_at=max((r.started_at for r in runs if r.status in (SUCCESS, PARTIAL)), default=None),
        last_started_at=recent[0].started_at if recent else None,
    )


def health(job: JobState, *, schedule=HOURLY, grace=300, timeout=300, breaker="closed", now="09:30") -> Health:
    return job_health(schedule=schedule, grace=grace, timeout=timeout, state=job, breaker_state=breaker, now=at(now))


# OK and NEVER


def test_it_is_ok_when_the_last_expected_run_succeeded():
    assert health(state(run(SUCCESS, "08:00"), run(SUCCESS, "09:00"))) == Health(
        "OK", "last run succeeded 29m ago", at("10:00")
    )


def test_it_is_never_before_its_first_expected_start_has_passed():
    first_seen_after_the_9am_start = state(first_seen="09:10")
    assert health(first_seen_after_the_9am_start) == Health("NEVER", "no runs yet", at("10:00"))


def test_a_job_whose_first_seen_time_is_unknown_counts_as_first_seen_now():
    assert health(state(first_seen=None)).health == "NEVER"


# LATE


def test_it_is_late_when_cron_never_started_the_9am_run():
    yesterday = run(SUCCESS, "2024-05-05 09:00")
    assert health(state(yesterday), schedule=DAILY_9AM, now="09:10") == Health(
        "LATE", "missed the 09:00:00 UTC slot: no run since (grace 5m)", at("2024-05-07 09:00")
    )


def test_it_is_not_late_until_the_grace_period_has_passed():
    yesterday = state(run(SUCCESS, "2024-05-05 09:00"))
    assert health(yesterday, schedule=DAILY_9AM, now="09:04:59").health == "OK"
    assert health(yesterday, schedule=DAILY_9AM, now="09:05:00").health == "LATE"


def test_a_job_that_never_ran_is_late_once_a_start_and_its_grace_passed():
    assert health(state(first_seen="08:50")).health == "LATE"


def test_a_skipped_run_counts_as_started_since_cron_did_start_it():
    job = state(run(SUCCESS, "08:00"), skipped("09:00", LOCKED))
    assert health(job) == Health("OK", "last run was skipped 30m ago: locked", at("10:00"))


def test_a_run_started_a_few_seconds_before_its_minute_counts_as_that_start():
    assert health(state(run(SUCCESS, "08:00"), run(SUCCESS, "08:59:56"))).health == "OK"


def test_a_late_start_names_the_date_once_it_is_a_day_old():
    weekly = Schedule("0 9 * * 1", UTC)
    job = state(run(SUCCESS, "2024-04-29 09:00"))
    assert health(job, schedule=weekly, grace=86400, now="2024-05-07 10:00").reason == (
        "missed the 2024-05-06 09:00:00 UTC slot: no run since (grace 1d)"
    )


def test_late_wins_over_stalled_when_nothing_started_at_all():
    job = state(run(SUCCESS, "06:00"))
    assert health(job).reason == "missed the 09:00:00 UTC slot: no run since (grace 5m)"


# STALLED


def test_it_is_stalled_when_two_expected_runs_passed_without_a_success():
    job = state(run(SUCCESS, "07:00"), skipped("08:00", RATE_LIMITED), skipped("09:00", RATE_LIMITED))
    assert health(job) == Health("STALLED", "no success in 2 expected runs (last 2h30m ago)", at("10:00"))


def test_one_expected_run_without_a_success_is_not_yet_stalled():
    job = state(run(SUCCESS, "08:00"), skipped("09:00", RATE_LIMITED))
    assert health(job).health == "OK"


def test_a_job_that_never_succeeded_says_so_when_stalled():
    job = state(skipped("08:00", RATE_LIMITED), skipped("09:00", RATE_LIMITED), first_seen="07:30")
    assert health(job).reason == "no success in 2 expected runs (never succeeded)"


def test_expected_runs_before_the_job_was_first_seen_do_not_count():
    job = state(skipped("09:00", RATE_LIMITED), first_seen="08:30")
    assert health(job).health == "OK"


def test_a_partial_run_counts_as_a_success():
    job = state(run(PARTIAL, "08:00"), run(PARTIAL, "09:00", error="1 of 50 items failed"))
    assert health(job) == Health("OK", "last run partly succeeded 29m ago: 1 of 50 items failed", at("10:00"))


def test_a_partial_run_is_a_success_that_keeps_a_job_from_stalling():
    job = state(run(SUCCESS, "07:00"), run(PARTIAL, "08:00"), skipped("09:00", RATE_LIMITED))
    assert health(job).health == "OK"


def test_a_run_past_its_timeout_is_stalled():
    hung = run(RUNNING, "07:30")
    assert health(state(run(SUCCESS, "06:00"), hung), timeout=300) == Health(
        "STALLED", "running for 2h, past its 5m timeout", at("10:00")
    )


def test_a_run_gets_a_minute_past_its_timeout_before_it_counts_as_hung():
    job = state(run(RUNNING, "09:00"))
    assert health(job, timeout=300, now="09:06:00").health == "RUNNING"
    assert health(job, timeout=300, now="09:06:01").health == "STALLED"


def test_a_hung_run_outranks_a_failure_since_it_blocks_every_later_run():
    job = state(run(FAILED, "08:00", exit_code=1), run(RUNNING, "08:30"))
    assert health(job, breaker="open").health == "STALLED"


# A weekday schedule over the weekend


def test_a_weekday_job_is_healthy_on_monday_morning_after_a_friday_success():
    job = state(run(SUCCESS, "2024-05-02 09:00"), run(SUCCESS, "2024-05-03 09:00"))
    assert health(job, schedule=WEEKDAYS_9AM, now="08:00") == Health(
        "OK", "last run succeeded 2d22h ago", at("09:00")
    )


def test_a_weekday_job_that_missed_friday_is_only_late_on_monday_morning_if_friday_never_started():
    friday_skipped = state(run(SUCCESS, "2024-05-02 09:00"), skipped("2024-05-03 09:00", RATE_LIMITED))
    assert health(friday_skipped, schedule=WEEKDAYS_9AM, now="08:00").health == "OK"


def test_a_weekday_job_without_success_on_friday_and_monday_is_stalled():
    job = state(
        run(SUCCESS, "2024-05-02 09:00"),
        skipped("2024-05-03 09:00", RATE_LIMITED),
        skipped("09:00", RATE_LIMITED),
    )
    assert health(job, schedule=WEEKDAYS_9AM, now="09:30").health == "STALLED"


# DST: expected starts are cron's, so a job that ran when cron started it is fine.


def test_a_2_30_job_that_ran_at_3_00_when_berlin_sprang_forward_is_not_late():
    daily = Schedule("30 2 * * *", BERLIN)
    job = state(run(SUCCESS, "2024-03-30 02:30", tz=BERLIN), run(SUCCESS, "2024-03-31 03:00", tz=BERLIN))
    assert health(job, schedule=daily, now="2024-03-31 01:10").health == "OK"  # 03:10 CEST
    assert health(state(job.recent[1]), schedule=daily, now="2024-03-31 01:10").health == "LATE"


def test_a_2_30_job_is_not_expected_again_when_berlin_repeats_2_30():
    daily = Schedule("30 2 * * *", BERLIN)
    job = state(run(SUCCESS, "2024-10-26 00:30"), run(SUCCESS, "2024-10-27 00:30"))  # 02:30 CEST
    second_pass_2_40 = "2024-10-27 01:40"
    assert health(job, schedule=daily, now=second_pass_2_40) == Health(
        "OK", "last run succeeded 1h09m ago", at("2024-10-28 01:30")
    )


def test_an_hourly_job_is_expected_twice_in_the_hour_berlin_repeats():
    hourly = Schedule("0 * * * *", BERLIN)
    ran_at_first_2_00 = state(run(SUCCESS, "2024-10-27 00:00", tz=UTC))
    assert health(ran_at_first_2_00, schedule=hourly, now="2024-10-27 01:10").reason == (
        "missed the 02:00:00 CET slot: no run since (grace 5m)"
    )


# FAILING


def test_it_is_failing_when_the_last_run_failed():
    job = state(run(SUCCESS, "08:00"), run(FAILED, "09:00", exit_code=1))
    assert health(job) == Health("FAILING", "last run failed 29m ago: exit 1", at("10:00"))


@pytest.mark.parametrize(("status", "said"), [(TIMEOUT, "timed out"), (CRASHED, "crashed")])
def test_a_timeout_or_a_crash_is_failing_too(status, said):
    job = state(run(status, "09:00", error="killed after 5m"))
    assert health(job).reason == f"last run {said} 29m ago: killed after 5m"


def test_a_failure_reason_shows_the_first_line_of_the_error_cut_to_80_characters():
    error = "HTTP 503 from https://api.example.com/v1/airdrops " + "x" * 100 + "\nTraceback ..."
    reason = health(state(run(FAILED, "09:00", error=error, exit_code=1))).reason
    assert reason == "last run failed 29m ago: " + error[:79] + "…"


def test_a_skip_after_a_failure_does_not_hide_it():
    job = state(run(FAILED, "08:00", exit_code=2), skipped("09:00", BREAKER_OPEN))
    assert health(job) == Health("FAILING", "last run failed 1h29m ago: exit 2", at("10:00"))


def test_it_is_failing_while_its_breaker_is_open_even_after_a_success():
    job = state(run(SUCCESS, "09:00"))
    assert health(job, breaker="open") == Health("FAILING", "breaker open", at("10:00"))


def test_a_failure_and_an_open_breaker_are_both_named():
    job = state(run(FAILED, "09:00", exit_code=1))
    assert health(job, breaker="open").reason == "last run failed 29m ago: exit 1; breaker open"


def test_a_half_open_breaker_after_a_success_is_ok():
    assert health(state(run(SUCCESS, "09:00")), breaker="half-open").health == "OK"


def test_a_failed_job_running_again_stays_failing_and_says_it_is_running():
    job = state(run(FAILED, "08:00", exit_code=1), run(RUNNING, "09:00"))
    assert health(job, now="09:02") == Health(
        "FAILING", "last run failed 1h01m ago: exit 1; now running for 2m", at("10:00")
    )


# RUNNING and PAUSED


def test_a_running_job_is_running():
    job = state(run(SUCCESS, "08:00"), run(RUNNING, "09:00"))
    assert health(job, now="09:02") == Health("RUNNING", "running for 2m", at("10:00"))


def test_a_running_job_is_not_stalled_or_late_while_it_runs():
    long_runner = state(run(SUCCESS, "06:00"), run(RUNNING, "07:00"))
    assert health(long_runner, timeout=4 * 3600).health == "RUNNING"


def test_a_paused_job_is_paused_whatever_its_runs_say():
    job = state(run(FAILED, "08:00", exit_code=1), run(RUNNING, "08:30"), paused=True)
    assert health(job, breaker="open") == Health("PAUSED", "paused; resume with `schedsync resume airdrops`", None)


# Unscheduled jobs


def test_an_unscheduled_job_is_never_late_or_stalled():
    job = state(run(SUCCESS, "2024-04-02 09:00"))
    assert health(job, schedule=None) == Health("OK", "last run succeeded 34d ago", None)


def test_an_unscheduled_job_that_never_ran_is_never():
    assert health(state(), schedule=None) == Health("NEVER", "no runs yet", None)


def test_an_unscheduled_job_can_be_failing():
    assert health(state(run(CRASHED, "09:00")), schedule=None).health == "FAILING"


# Sorting


def test_severity_ranks_every_health_worst_first():
    assert sorted(SEVERITY, key=SEVERITY.get) == ["FAILING", "STALLED", "LATE", "STALE", "RUNNING", "NEVER",
                                                  "PAUSED", "OK"]


# Ages: whole units, as every age shown ("39ms ago" beside "1.0s ago" was two styles)


@pytest.mark.parametrize("after, said", [(0.039, "just now"), (1.5, "1s ago"), (9.9, "9s ago"), (42.5, "42s ago"),
                                         (125, "2m05s ago")])
def test_an_age_is_in_whole_units_and_under_a_second_is_just_now(after, said):
    job = state(run(SUCCESS, "09:00", took=60))
    ended = at("09:01")
    reason = job_health(schedule=None, grace=300, timeout=300, state=job, breaker_state="closed",
                        now=ended + after).reason
    assert reason == f"last run succeeded {said}"


def test_a_resumed_job_is_described_by_its_last_run_not_by_the_skips_while_it_was_paused():
    job = state(run(SUCCESS, "08:00"), run(SKIPPED, "09:00", reason="paused", error="paused; `schedsync resume` it",
                                          took=0))
    assert health(job, schedule=None) == Health("OK", "last run succeeded 1h29m ago", None)
    only_skips = state(run(SKIPPED, "09:00", reason="paused", took=0))
    assert health(only_skips, schedule=None) == Health("OK", "resumed; no run since", None)


@pytest.mark.parametrize("started, now", [(100.9, 101.2), (100.2, 101.9), (100.999, 160.001)])
def test_an_age_from_a_whole_second_iso_time_matches_the_same_age_from_the_float(started, now):
    # status shows LAST RUN from the run's ISO time (whole seconds) and WHY from the float:
    # one row once read "success 1s ago" beside "last run succeeded just now"
    from schedsync.core.durations import iso, posix, relative

    assert relative(posix(iso(started)), now) == relative(started, now)
