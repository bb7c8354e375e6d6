"""Token-bucket arithmetic: pure functions of (bucket, now). The store does the transaction.

Refill is continuous, ``capacity`` tokens per ``per`` seconds. ``updated`` never
moves backwards, so a clock that steps back mints nothing; a 429's Retry-After
pushes ``updated`` into the future with the bucket empty, so nothing refills
until then.
"""

from __future__ import annotations

import math

from schedsync.core.models import Bucket

EPSILON = 1e-9  # float refill must not deny a token that is there by a rounding error


def refill(bucket: Bucket, capacity: float, per: float, now: float) -> Bucket:
    if now <= bucket.updated:
        return Bucket(bucket.name, min(bucket.tokens, capacity), bucket.updated)
    tokens = min(capacity, bucket.tokens + (now - bucket.updated) * capacity / per)
    return Bucket(bucket.name, tokens, now)  # not dataclasses.replace: this is every acquire's path


def take(bucket: Bucket | None, name: str, capacity: float, per: float, cost: float,
         now: float) -> tuple[bool, Bucket, float | None]:
    """(granted, new bucket, when ``cost`` tokens will be there). None: never (cost > capacity)."""
    current = refill(bucket or Bucket(name, capacity, now), capacity, per, now)
    if cost > capacity:
        return False, current, None
    if current.tokens + EPSILON >= cost:
        return True, Bucket(current.name, max(0.0, current.tokens - cost), current.updated), now
    ready = max(now, current.updated) + (cost - current.tokens) * per / capacity
    # Up by one ulp: at epoch scale the sum may round down, and a caller that sleeps
    # until ``ready`` must find the tokens there, not a hair short of them.
    return False, current, math.nextafter(ready, math.inf)


def block_until(bucket: Bucket | None, name: str, until: float) -> Bucket:
    """Empty the bucket until ``until`` (an upstream's Retry-After)."""
    updated = until if bucket is None else max(bucket.updated, until)
    return Bucket(name, 0.0, updated)


# --- on the store (one transaction each; the caller sleeps outside it) --------------------

def spend(store, rates: dict, names: list[str], cost: float, now: float) -> float | None:
    """Take ``cost`` tokens from every bucket in ``names`` or from none.

    Returns None when granted, else when all of them will have enough (inf: never).
    """
    with store.transaction():
        taken, ready = [], None
        for name in names:
            capacity, per = rates[name]
            granted, bucket, at = take(store.load_bucket(name), name, capacity, per, cost, now)
            if not granted:
                # A flag, not ``ready > now``: a denial whose wait rounds to zero is still a denial.
                ready = max(now if ready is None else ready, math.inf if at is None else at)
            taken.append(bucket)
        if ready is not None:
            return ready
        for bucket in taken:
            store.save_bucket(bucket)
        return None


def block(store, names: list[str], until: float) -> None:
    with store.transaction():
        for name in names:
            store.save_bucket(block_until(store.load_bucket(name), name, until))


def levels(store, rates: dict, now: float) -> dict[str, float]:
    """Tokens in each bucket now (full for a bucket never used)."""
    out = {}
    for name, (capacity, per) in rates.items():
        bucket = store.load_bucket(name)
        out[name] = capacity if bucket is None else refill(bucket, capacity, per, now).tokens
    return out
