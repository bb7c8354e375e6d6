"""Retries inside one run, on tenacity: exponential backoff with jitter, an
upstream's Retry-After honoured, bounded by ``attempts`` and by the run's deadline.

Imported only when a job can retry, so a plain command run never pays for tenacity.
"""

from __future__ import annotations

import random
import time


class RetryAfter(Exception):
    """A transient failure that names how long the upstream asked us to wait."""

    def __init__(self, message: str, seconds: float | None = None):
        super().__init__(message)
        self.seconds = seconds


def backoff(retries: dict, attempt: int, hint: float | None = None, rng=random.random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    try:  # tenacity's wait_exponential, as it computes it
        exponential = min(retries["initial"] * retries["multiplier"] ** (attempt - 1), retries["max"])
    except OverflowError:
        exponential = retries["max"]
    wait = max(0, exponential) * (1 + retries["jitter"] * (2 * rng() - 1))
    return max(wait, hint or 0.0)


def retrying(retries: dict, deadline: float, *, retry, sleep=time.sleep, clock=time.time):
    """A tenacity ``Retrying`` for one run: ``retry`` is a tenacity retry predicate."""
    from tenacity import RetryCallState, Retrying, stop_after_attempt
    from tenacity.stop import stop_base

    def wait(state) -> float:
        hint = None
        if state.outcome is not None and state.outcome.failed:
            hint = getattr(state.outcome.exception(), "seconds", None)
        return backoff(retries, state.attempt_number, hint)

    class past_deadline(stop_base):
        def __call__(self, state: RetryCallState) -> bool:
            # Stop rather than sleep through the run's timeout: the wait would be wasted.
            return clock() + wait(state) >= deadline

    # reraise only re-raises exceptions; when retries end on a result (a command's
    # listed exit code), hand back that last result instead of a RetryError.
    def last_result(state: RetryCallState):
        assert state.outcome is not None  # tenacity calls back after an attempt
        return state.outcome.result()

    return Retrying(stop=stop_after_attempt(retries["attempts"]) | past_deadline(), wait=wait,
                    retry=retry, sleep=sleep, reraise=True, retry_error_callback=last_result)
