"""A job's health at one instant, decided from its records alone.

``job_health`` reads no clock and does no I/O: the caller passes ``now``, the
job's schedule and stored state. The first rule that matches wins:

1. PAUSED: the job is paused. Nothing is expected of it, so ``next_expected``
   is None, as for an unscheduled job.
2. STALLED: the newest run is still ``running`` more than timeout + 60 s after
   it started. The hard timeout should have ended it (the minute covers
   SIGTERM, SIGKILL and recording), so it is hung and holds the job's lock,
   blocking every later run: the first thing to fix.
3. FAILING: the last finished run that was not a skip failed, timed out or
   crashed, or the breaker is open. A new run in progress does not hide this
   (the reason adds "now running for 2m"): at 09:00 a user is told the 08:00
   run failed and a retry is under way, and ``status --check`` does not turn
   green for the length of every retry of a job that keeps failing.
4. STALE (jobs with ``fresh:``, while a run is in progress): see 7. A run in
   progress does not hide it (the reason adds "now running for 2m"): it may well
   bring nothing newer, and ``status --check`` would flap with every run.
5. RUNNING: the newest run is ``running``. It outranks LATE and STALLED below
   because a run in progress is the answer to both.
6. LATE (scheduled jobs): ``e1``, the latest expected start at or before
   now - grace, came after the job was first seen (None: now), and no run
   started since (5 s early still counts: cron wakes on its own clock). Skips
   count as starts: cron did start us.
7. STALLED (scheduled jobs): ``e2``, the expected start before ``e1``, came
   after the job was first seen, and there has been no success since it
   (``last_success_at``, where the store counts ``partial`` as a success): two
   expected runs in a row passed without one. This is
   how we read SPEC's "no success within 2 × the schedule's interval": counting
   expected starts rather than multiplying an interval keeps it right for
   irregular schedules (``0 9 * * 1-5`` on a Monday morning after a Friday
   success) and across DST changes.
8. STALE (jobs with ``fresh: {within, field}``): the watermark, the newest value of
   ``field`` the job has stored (kept by the state as the maximum over runs), is
   older than ``within`` at ``now``, however well the runs go. A job with no
   watermark yet (nothing stored) is not STALE: freshness starts with its first
   stored value. LATE and STALLED outrank it: a missed start is the likelier cause.
9. NEVER: no run at all.
10. OK.

Unscheduled jobs are thus PAUSED, FAILING, STALE, RUNNING, NEVER or OK.
"""

from __future__ import annotations

from schedsync.core.durations import clock, format_age, format_duration, relative
from schedsync.core.models import (
    CRASHED,
    FAILED,
    FAILURES,
    PARTIAL,
    PAUSED,
    RUNNING,
    SKIPPED,
    SUCCESS,
    TIMEOUT,
    JobState,
    Run,
)
from schedsync.core.records import dataclass

TYPE_CHECKING = False  # importing typing costs every read command ~3 ms, for one annotation

if TYPE_CHECKING:
    from schedsync.core.schedule import Schedule

# Lower sorts first: sorted(rows, key=lambda h: SEVERITY[h.health]) lists the
# worst first. Broken jobs lead, by how long they have been broken: FAILING
# (the job errs), STALLED (nothing good for two expected runs, or hung), LATE
# (one start missed). Then those needing no action: in progress, not yet
# started, put aside by a person, fine.
SEVERITY = {"FAILING": 0, "STALLED": 1, "LATE": 2, "STALE": 3, "RUNNING": 4, "NEVER": 5, "PAUSED": 6,
            "OK": 7}

OVERRUN_SLACK = 60.0  # past the timeout, for SIGTERM, SIGKILL and recording the end
START_SLACK = 5.0  # cron wakes on its own clock; a start this early still counts
_NEVER = float("-inf")  # a time before every other keeps the comparisons plain
_VERBS = {
    SUCCESS: "succeeded",
    PARTIAL: "partly succeeded",
    FAILED: "failed",
    TIMEOUT: "timed out",
    CRASHED: "crashed",
    SKIPPED: "was skipped",
}


@dataclass
class Health:
    health: str  # RUNNING OK LATE STALE STALLED FAILING PAUSED NEVER
    reason: str  # one short phrase saying why
    next_expected: float | None  # next fire time after now; None when unscheduled or paused


def job_health(
    *,
    schedule: Schedule | None,
    grace: float,
    timeout: float,
    state: JobState,
    breaker_state: str,
    now: float,
    fresh: dict | None = None,
    watermark: float | None = None,
) -> Health:
    """The job's health at ``now`` (see the module docstring for the rules)."""
    if state.paused:
        return Health("PAUSED", f"paused; resume with `schedsync resume {state.name}`", None)
    next_expected = schedule.next_after(now) if schedule else None
    running = state.recent[0] if state.recent and state.recent[0].status == RUNNING else None

    if running and now - running.started_at > timeout + OVERRUN_SLACK:
        reason = f"running for {_age(running.started_at, now)}, past its {format_duration(timeout)} timeout"
        return Health("STALLED", reason, next_expected)

    troubles = []
    last = next((run for run in state.recent if run.status not in (RUNNING, SKIPPED)), None)
    if last and last.status in FAILURES:
        troubles.append(_describe(last, now))
    if breaker_state == "open":
        troubles.append("breaker open")
    if troubles:
        if running:
            troubles.append(f"now running for {_age(running.started_at, now)}")
        return Health("FAILING", "; ".join(troubles), next_expected)

    stale = _stale(fresh, watermark, now)
    if running:
        if stale:
            return Health("STALE", f"{stale}; now running for {_age(running.started_at, now)}", next_expected)
        return Health("RUNNING", f"running for {_age(running.started_at, now)}", next_expected)
    if schedule:
        verdict = _missed(schedule, grace, state, now)
        if verdict:
            return Health(*verdict, next_expected)
    if stale:
        return Health("STALE", stale, next_expected)
    if not state.recent:
        return Health("NEVER", "no runs yet", next_expected)
    # A run skipped while the job was paused says nothing once it is resumed (and its
    # "`schedsync resume` it" would then be wrong): describe the newest other run.
    shown = next((run for run in state.recent if run.reason != PAUSED), None)
    return Health("OK", _describe(shown, now) if shown else "resumed; no run since", next_expected)


def _missed(schedule: Schedule, grace: float, state: JobState, now: float) -> tuple[str, str] | None:
    """LATE or STALLED with a reason, judged on the expected starts since the job was first seen."""
    first_seen = state.first_seen if state.first_seen is not None else now
    expected = [fire for fire in schedule.previous_fires(now - grace, 2) if fire >= first_seen]
    started = _or_never(state.last_started_at)
    if expected and started < expected[0] - START_SLACK:
        return "LATE", (f"missed the {_clock(expected[0], schedule, now)} slot: no run since"
                         f" (grace {format_duration(grace)})")
    succeeded = _or_never(state.last_success_at)  # the store counts partial runs as successes
    if len(expected) == 2 and succeeded < expected[1] - START_SLACK:
        last = f"last {_ago(succeeded, now)}" if succeeded > _NEVER else "never succeeded"
        return "STALLED", f"no success in 2 expected runs ({last})"
    return None


def _stale(fresh: dict | None, watermark: float | None, now: float) -> str | None:
    """``newest updated_at is 3h12m old, over 2h`` when the watermark is older than ``within``."""
    if not fresh or watermark is None or now - watermark <= fresh["within"]:
        return None
    return f"newest {fresh['field']} is {_age(watermark, now)} old, over {format_duration(fresh['within'])}"


def _describe(run: Run, now: float) -> str:
    """``last run failed 3h ago: exit 1``, aged from when it ended."""
    ended = run.finished_at if run.finished_at is not None else run.started_at
    text = f"last run {_VERBS[run.status]} {_ago(ended, now)}"
    if run.error and run.error.strip():
        detail = _first_line(run.error)
    elif run.status == SKIPPED and run.reason:
        detail = run.reason
    elif run.exit_code:
        detail = f"exit {run.exit_code}"
    else:
        return text
    return f"{text}: {detail}"


def _first_line(text: str, limit: int = 80) -> str:
    line = text.strip().splitlines()[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _clock(t: float, schedule: Schedule, now: float) -> str:
    """The wall-clock time of ``t`` in the schedule's zone, labelled; with the date unless today."""
    return clock(t, schedule.tz, now)


def _age(t: float, now: float) -> str:
    return format_age(now - t)


def _ago(t: float, now: float) -> str:
    """``5m ago``, ``just now``: the same units as every age shown."""
    return relative(min(t, now), now)


def _or_never(t: float | None) -> float:
    return t if t is not None else _NEVER
