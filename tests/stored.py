"""Seeding a state for a test through the store interface alone (no SQL)."""

from __future__ import annotations

from schedsync.store import BreakerSpec

NO_BREAKER = BreakerSpec("(test seed)", {"name": "(test seed)", "failures": 10**9,
                                          "reset_after": 60.0, "half_open_runs": 1})


def finished_run(store, job: str, status: str, started_at: float, **fields):
    """A finished run of ``job`` as if it started at ``started_at``: admitted, then finished,
    feeding no breaker and pruning nothing."""
    run = store.admit_run(job, "cron", NO_BREAKER, 60.0, [], {}, 0, now=started_at).run
    run.status, run.finished_at, run.duration_ms = status, started_at + 1, 1000
    for key, value in fields.items():
        setattr(run, key, value)
    store.finish_run(run, NO_BREAKER, False, False, 60.0, {}, now=started_at + 1)
    return run
