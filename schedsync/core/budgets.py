"""Token-bucket arithmetic: pure functions of (bucket, now). The store backend runs
them inside its own transaction.

Refill is continuous, ``capacity`` tokens per ``per`` seconds. A stored time later
than ``now`` is never trusted: it is clamped to ``now`` (a clock that ran ahead and
then stepped back must not starve the bucket until it catches up), and that step
mints nothing. A 429's Retry-After pauses the bucket until then and keeps its
tokens (``blocked_until``). A pause is at most ``longest_pause(per)`` (a day, or one
refill period if longer); one stored further ahead than that was set by a clock that
has since stepped back, and is dropped.
"""

from __future__ import annotations

import math

from schedsync.core.models import Bucket

EPSILON = 1e-9  # float refill must not deny a token that is there by a rounding error
DAY = 86400.0


def longest_pause(per: float) -> float:
    return per if per > DAY else DAY


def refill(bucket: Bucket, capacity: float, per: float, now: float) -> Bucket:
    updated = bucket.updated if bucket.updated < now else now  # clamped: never trust a future time
    tokens = min(capacity, bucket.tokens + (now - updated) * capacity / per)
    blocked = bucket.blocked_until
    if blocked is not None and (blocked <= now or blocked > now + longest_pause(per)):
        blocked = None  # passed, or set by a clock that has since stepped back
    return Bucket(bucket.name, tokens, now, blocked)  # not dataclasses.replace: every acquire's path


def take(bucket: Bucket | None, name: str, capacity: float, per: float, cost: float,
         now: float) -> tuple[bool, Bucket, float | None]:
    """(granted, new bucket, when ``cost`` tokens will be there). None: never (cost > capacity)."""
    current = refill(bucket or Bucket(name, capacity, now), capacity, per, now)
    if cost > capacity:
        return False, current, None
    blocked = current.blocked_until
    if blocked is None and current.tokens + EPSILON >= cost:
        return True, Bucket(current.name, max(0.0, current.tokens - cost), now), now
    ready = now + max(0.0, cost - current.tokens) * per / capacity
    if blocked is not None:
        ready = max(ready, blocked)
    return False, current, never_short(ready)


def never_short(ready: float) -> float:
    """``ready`` up by one ulp: at epoch scale the sum may round down, and a caller that
    sleeps until ``ready`` must find the tokens there, not a hair short of them.
    (PostgreSQL's ``spend`` computes the sum in SQL; the store applies this to it.)"""
    return math.nextafter(ready, math.inf)


def block_until(bucket: Bucket | None, name: str, until: float, capacity: float, per: float,
                now: float) -> Bucket:
    """Pause the bucket until ``until`` (an upstream's Retry-After), keeping its tokens.

    A longer pause already there stands; one beyond ``longest_pause`` is cut to it.
    """
    current = refill(bucket or Bucket(name, capacity, now), capacity, per, now)
    until = min(until, now + longest_pause(per))
    if current.blocked_until is not None:
        until = max(until, current.blocked_until)
    return Bucket(name, current.tokens, now, until if until > now else None)
