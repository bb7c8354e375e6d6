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
    from tenacity import RetryCallState, wait_exponential

    exponential = wait_exponential(multiplier=retries["initial"], max=retries["max"],
                                   exp_base=retries["multiplier"])
    state = RetryCallState(None, None, (), {})
    state.attempt_number = attempt
    wait = exponential(state) * (1 + retries["jitter"] * (2 * rng() - 1))
    return max(wait, hint or 0.0)


def retrying(retries: dict, deadline: float, *, retry, sleep=time.sleep, clock=time.time):
    """A tenacity ``Retrying`` for one run: ``retry`` is a tenacity retry predicate."""
    from tenacity import Retrying, stop_after_attempt

    def wait(state) -> float:
        hint = None
        if state.outcome is not None and state.outcome.failed:
            hint = getattr(state.outcome.exception(), "seconds", None)
        return backoff(retries, state.attempt_number, hint)

    def past_deadline(state) -> bool:
        # Stop rather than sleep through the run's timeout: the wait would be wasted.
        return clock() + wait(state) >= deadline

    # reraise only re-raises exceptions; when retries end on a result (a command's
    # listed exit code), hand back that last result instead of a RetryError.
    return Retrying(stop=stop_after_attempt(retries["attempts"]) | past_deadline, wait=wait,
                    retry=retry, sleep=sleep, reraise=True,
                    retry_error_callback=lambda state: state.outcome.result())
