from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedsync.core.schedule import ALIASES, Schedule

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
ALIAS_HINT = "(use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)"


def at(text: str, tz=UTC) -> float:
    """POSIX time of a wall-clock time; in a repeated hour, its first pass."""
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def fires_after(schedule: Schedule, t: float, n: int) -> list[float]:
    fires = []
    for _ in range(n):
        t = schedule.next_after(t)
        fires.append(t)
    return fires


def test_next_after_is_strictly_after_the_given_time():
    hourly = Schedule("0 * * * *", UTC)
    assert hourly.next_after(at("2024-05-06 09:00")) == at("2024-05-06 10:00")
    assert hourly.next_after(at("2024-05-06 08:59:59.5")) == at("2024-05-06 09:00")


def test_last_at_or_before_includes_the_time_itself():
    hourly = Schedule("0 * * * *", UTC)
    assert hourly.last_at_or_before(at("2024-05-06 09:00")) == at("2024-05-06 09:00")
    assert hourly.last_at_or_before(at("2024-05-06 09:00:00.5")) == at("2024-05-06 09:00")
    assert hourly.last_at_or_before(at("2024-05-06 08:59:59.9")) == at("2024-05-06 08:00")


def test_previous_fires_lists_the_latest_first():
    weekdays = Schedule("0 9 * * 1-5", UTC)
    monday_morning = at("2024-05-06 08:00")
    assert weekdays.previous_fires(monday_morning, 3) == [
        at("2024-05-03 09:00"),
        at("2024-05-02 09:00"),
        at("2024-05-01 09:00"),
    ]


def test_it_reads_the_schedule_in_its_zone():
    daily = Schedule("0 9 * * *", BERLIN)
    assert daily.next_after(at("2024-01-15 00:00")) == at("2024-01-15 08:00")
    assert daily.next_after(at("2024-07-15 00:00")) == at("2024-07-15 07:00")


def test_without_a_zone_it_uses_the_system_zone(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    daily = Schedule("0 9 * * *")
    assert daily.next_after(at("2024-01-15 00:00")) == at("2024-01-15 14:00")


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_an_alias_fires_like_its_cron_line_and_is_kept_as_written(alias):
    schedule = Schedule(alias, BERLIN)
    assert schedule.expr == alias
    start = at("2024-02-27 13:14")
    assert fires_after(schedule, start, 3) == fires_after(Schedule(ALIASES[alias], BERLIN), start, 3)


def test_aliases_mean_what_they_mean_in_cron():
    assert ALIASES == {
        "@yearly": "0 0 1 1 *",
        "@annually": "0 0 1 1 *",
        "@monthly": "0 0 1 * *",
        "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *",
        "@midnight": "0 0 * * *",
        "@hourly": "0 * * * *",
    }


def test_the_expression_is_kept_as_the_user_wrote_it():
    assert Schedule(" 0  9 * * mon-fri ", UTC).expr == " 0  9 * * mon-fri "


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
        ("0 0 31 2 *", "day-of-month 31 never occurs in month 2"),
        ("0 * * * * *", "expected 5 fields, got 6"),
        ("* * * *", "expected 5 fields, got 4"),
        ("", "expected 5 fields, got 0"),
        ("every hour", "expected 5 fields, got 2"),
        ("a b c d e", 'cannot read the minute field "a"'),
        ("*/0 * * * *", 'cannot read the minute field "*/0"'),
        ("0 9 * * FRI-MON", 'cannot read the day-of-week field "FRI-MON"'),
        ("@reboot", "@reboot is not supported (schedsync runs from cron's time schedule)"),
        ("@every", f"@every is not a cron alias {ALIAS_HINT}"),
        ("@Daily", f"@Daily is not a cron alias {ALIAS_HINT}"),  # cron's aliases are case-sensitive
        ("0 0 L * *", '"L" in the day-of-month field is a cronsim extension cron does not understand'),
        ("0 0 * * 5#2", '"#" in the day-of-week field is a cronsim extension cron does not understand'),
    ],
)
def test_a_bad_expression_says_what_is_wrong_in_a_few_words(expr, reason):
    with pytest.raises(ValueError) as error:
        Schedule(expr, UTC)
    assert str(error.value) == reason


def test_day_of_week_names_are_not_mistaken_for_extensions():
    assert Schedule("0 9 * * WED", UTC).next_after(at("2024-05-06 00:00")) == at("2024-05-08 09:00")


# Daylight saving time. Berlin: 2024-03-31 02:00 CET -> 03:00 CEST and
# 2024-10-27 03:00 CEST -> 02:00 CET. New York: 2024-03-10 02:00 EST -> 03:00 EDT
# and 2024-11-03 02:00 EDT -> 01:00 EST. Cron (Debian, as cronsim) runs a
# fixed-time job whose time is skipped as soon as the clock jumps, and one whose
# time repeats only once; jobs with a wildcard hour follow real time.


def test_a_2_30_job_runs_at_3_00_when_berlin_springs_forward():
    daily = Schedule("30 2 * * *", BERLIN)
    assert fires_after(daily, at("2024-03-30 12:00", BERLIN), 2) == [
        at("2024-03-31 03:00", BERLIN),
        at("2024-04-01 02:30", BERLIN),
    ]


def test_a_2_30_job_runs_once_when_berlin_falls_back():
    daily = Schedule("30 2 * * *", BERLIN)
    assert fires_after(daily, at("2024-10-26 12:00"), 2) == [
        at("2024-10-27 00:30"),  # 02:30 CEST, the first pass
        at("2024-10-28 01:30"),  # 02:30 CET
    ]


def test_in_the_repeated_hour_the_last_fire_is_the_first_pass_of_that_hour():
    daily = Schedule("30 2 * * *", BERLIN)
    second_pass_2_15 = at("2024-10-27 01:15")  # 02:15 CET
    assert daily.last_at_or_before(second_pass_2_15) == at("2024-10-27 00:30")
    assert daily.next_after(second_pass_2_15) == at("2024-10-28 01:30")


def test_an_hourly_job_follows_real_time_across_berlin_changes():
    hourly = Schedule("0 * * * *", BERLIN)
    spring = fires_after(hourly, at("2024-03-30 23:30"), 4)  # 00:00 CET to 04:00 CEST
    fall = fires_after(hourly, at("2024-10-26 23:30"), 4)  # 02:00 CEST, then 02:00 CET
    assert spring == [at("2024-03-31 00:00") + hour * 3600 for hour in range(4)]
    assert fall == [at("2024-10-27 00:00") + hour * 3600 for hour in range(4)]
    assert [datetime.fromtimestamp(t, BERLIN).hour for t in spring] == [1, 3, 4, 5]
    assert [datetime.fromtimestamp(t, BERLIN).hour for t in fall] == [2, 2, 3, 4]


def test_a_2_30_job_runs_at_3_00_when_new_york_springs_forward():
    daily = Schedule("30 2 * * *", NEW_YORK)
    assert fires_after(daily, at("2024-03-09 12:00", NEW_YORK), 2) == [
        at("2024-03-10 03:00", NEW_YORK),
        at("2024-03-11 02:30", NEW_YORK),
    ]


def test_a_2_30_job_is_untouched_when_new_york_falls_back_at_2_00():
    daily = Schedule("30 2 * * *", NEW_YORK)
    assert fires_after(daily, at("2024-11-02 12:00"), 2) == [at("2024-11-03 07:30"), at("2024-11-04 07:30")]


def test_a_1_30_job_runs_once_when_new_york_repeats_that_hour():
    daily = Schedule("30 1 * * *", NEW_YORK)
    assert fires_after(daily, at("2024-11-02 12:00"), 2) == [
        at("2024-11-03 05:30"),  # 01:30 EDT, the first pass
        at("2024-11-04 06:30"),  # 01:30 EST
    ]


def test_an_hourly_job_follows_real_time_across_new_york_changes():
    hourly = Schedule("0 * * * *", NEW_YORK)
    assert fires_after(hourly, at("2024-03-10 06:30"), 3) == [at("2024-03-10 07:00") + h * 3600 for h in range(3)]
    assert fires_after(hourly, at("2024-11-03 04:30"), 3) == [at("2024-11-03 05:00") + h * 3600 for h in range(3)]


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    expr=st.sampled_from(["30 2 * * *", "30 1 * * *", "0 * * * *", "*/20 1-3 * * *", "0 9 * * 1-5", "@daily"]),
    tz=st.sampled_from([BERLIN, NEW_YORK, UTC]),
    t=st.floats(min_value=at("2024-03-08 00:00"), max_value=at("2024-03-12 00:00"))
    | st.floats(min_value=at("2024-10-25 00:00"), max_value=at("2024-11-05 00:00")),
)
def test_next_after_and_last_at_or_before_agree_around_dst_changes(expr, tz, t):
    schedule = Schedule(expr, tz)
    last = schedule.last_at_or_before(t)
    following = schedule.next_after(t)
    assert last <= t < following
    assert schedule.next_after(last) == following
    assert schedule.last_at_or_before(following) == following
