"""Concurrency limits (``limits: {heavy: 2}``, a job's ``limit: heavy``): a run is admitted
only while fewer than N runs of each of its limits are running.

A limit of N is N places (``store.locks.place``): flock files on SQLite (this host), leases on
PostgreSQL (every host). Each is freed by the OS or the server when its holder dies, so a
crash never leaves a limit full. A run takes one free place of every limit it names, all or
none (so two runs naming the same limits in another order never hold one each and wait for
the other), after its job's lock and before its budgets; it holds them until it ends (on
SQLite the job's processes hold them too, like the job's lock).

Imported only by jobs that name a limit: a plain run's start-up pays nothing.
"""

from __future__ import annotations

import time

POLL_FIRST, POLL_MOST = 0.05, 1.0  # seconds between tries while a limit is full (backoff)


def take_places(store, job, sleep=time.sleep) -> tuple[list, str | None]:
    """A place of each of ``job.limits``, waiting up to ``job.max_wait`` seconds: (places,
    None), or ([], the name of a limit still full) once the wait is over."""
    end = time.monotonic() + job.max_wait
    nap = POLL_FIRST
    while True:
        places, full = _try(store, job.limits)
        if full is None:
            return places, None
        left = end - time.monotonic()
        if left <= 0:
            return [], full
        sleep(min(nap, left))
        nap = min(nap * 1.5, POLL_MOST)


def _try(store, limits: dict) -> tuple[list, str | None]:
    taken: list = []
    for name in sorted(limits):
        place = _free_place(store, name, limits[name])
        if place is None:
            release(taken)
            return [], name
        taken.append(place)
    return taken, None


def _free_place(store, name: str, most: int):
    for index in range(most):
        place = store.locks.place(name, index)
        if place.acquire(0.0):
            return place
    return None


def release(places: list) -> None:
    for place in reversed(places):
        place.release()


def full_error(config, store, limit: str, most: int) -> str:
    """``limit heavy is full (2 running: export run 12 on alpha pid 345, …)``: who holds it,
    from the running runs of the jobs that name it."""
    users = [name for name, job in config.jobs.items() if limit in (job.limits or {})]
    holders = [r for r in store.running_runs(users)] if users else []
    who = ", ".join(f"{r.job} run {r.id} on {r.host} pid {r.pid}" for r in holders[:5])
    if len(holders) > 5:
        who += f" and {len(holders) - 5} more"
    return f"limit {limit} is full ({most} at once" + (f"; running: {who})" if who else ")")
