"""Circuit-breaker transitions: pure functions of (breaker, settings, now).

closed --failures in a row--> open --reset_after--> half-open (derived, not stored)
half-open admits ``half_open_runs`` trial runs at once, each holding a lease that
expires, so a trial whose process died does not block the breaker forever.
A trial's success closes the breaker; its failure re-opens it.
"""

from __future__ import annotations

from schedsync.core.models import Breaker
from schedsync.core.records import dataclass, replace

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
# The one place a breaker's settings default (config's built-in defaults are these; a
# store given fewer settings fills them from here, on either backend).
DEFAULTS = {"failures": 5, "reset_after": 600.0, "half_open_runs": 1}


def settings_of(settings: dict) -> dict:
    """``settings`` with every missing one taken from ``DEFAULTS``."""
    return {**DEFAULTS, **settings}


@dataclass
class Admission:
    allowed: bool
    trial: bool = False
    retry_at: float | None = None


def state_at(breaker: Breaker, now: float) -> str:
    if breaker.state == OPEN and breaker.opens_until is not None and now >= breaker.opens_until:
        return HALF_OPEN
    return breaker.state


def admit(breaker: Breaker, settings: dict, now: float, lease: float) -> tuple[Admission, Breaker]:
    """May a run start now? A half-open trial takes a lease for ``lease`` seconds."""
    settings = settings_of(settings)
    state = state_at(breaker, now)
    if state == CLOSED:
        return Admission(True), breaker
    if state == OPEN:
        return Admission(False, retry_at=breaker.opens_until), breaker
    leases = [t for t in breaker.leases if t > now]
    if len(leases) >= settings["half_open_runs"]:
        return Admission(False, retry_at=min(leases)), replace(breaker, leases=leases)
    return Admission(True, trial=True), replace(breaker, leases=leases + [now + lease])


def record(breaker: Breaker, settings: dict, now: float, ok: bool,
           trial: bool) -> tuple[Breaker, tuple[str, str] | None]:
    """The breaker after a run ended; and the transition (from, to) if there was one."""
    settings = settings_of(settings)
    before = state_at(breaker, now)
    if ok:
        closed = Breaker(breaker.name)
        return closed, ((before, CLOSED) if before != CLOSED else None)
    if trial or before == HALF_OPEN:
        # A second trial failing after the first re-opened it renews the wait, quietly.
        return _open(breaker, settings, now, breaker.failures + 1), (
            (before, OPEN) if before != OPEN else None)
    failures = breaker.failures + 1
    if before == CLOSED and failures >= settings["failures"]:
        return _open(breaker, settings, now, failures), (CLOSED, OPEN)
    return replace(breaker, failures=failures), None


def _open(breaker: Breaker, settings: dict, now: float, failures: int) -> Breaker:
    return Breaker(breaker.name, OPEN, failures, opened_at=now,
                   opens_until=now + settings["reset_after"], leases=[])
