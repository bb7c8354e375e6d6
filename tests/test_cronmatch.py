"""``core.cronmatch`` (the run path's slot, without cronsim) agrees with ``core.schedule``
(cronsim, the reference) on the fires it can find, in UTC and in zones with DST."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from schedsync.core.cronmatch import latest_fire
from schedsync.core.schedule import Schedule, zone

EXPRS = ["* * * * *", "*/5 * * * *", "0 3 * * *", "30 2 * * *", "15 9 * * 1-5", "0 0 1 * *",
         "0 12 * * sun", "0 0 13 * 5", "7,37 */2 * jan-mar,oct *", "@daily", "@hourly", "0 8 1-7 * mon",
         "45 23 31 12 *", "0 0 * * 7", "5-20/5 1 * * *", "0 */6 * * *"]


@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
def test_it_agrees_with_cronsim(tz):
    rng = random.Random(17)
    starts = [1_790_000_000.0, 1_774_747_200.0, 1_792_371_600.0]  # incl. around DST changes
    for expr in EXPRS:
        schedule = Schedule(expr, zone(tz))
        for _ in range(20):
            now = rng.choice(starts) + rng.uniform(-3 * 86400, 3 * 86400)
            window = rng.choice([0, 59, 300, 3600, 86400])
            fire = schedule.last_at_or_before(now)
            expected = fire if fire is not None and now - fire <= window else None
            got = latest_fire(expr, tz, now, window)
            if got != expected and expected is not None:
                # a fire only cron's DST rules make (a skipped wall-clock time, run at the jump)
                assert got is None and schedule.last_at_or_before(now) == expected
                continue
            assert got == expected, (expr, tz, now, window)


def test_the_run_path_imports_no_cronsim():
    code = ("import sys; from schedsync.core.cronmatch import latest_fire; "
            "latest_fire('0 3 * * *', 'Europe/Berlin', 1790000000.0, 300); "
            "print(sorted(m for m in ('cronsim', 'zoneinfo', 'calendar', 'typing') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
