"""Circuit breakers: the pure transitions at pinned times, and a Hypothesis state
machine (clock steps back, half-open races) against a small reference model."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, precondition, rule

from schedsync.core.breaker import CLOSED, HALF_OPEN, OPEN, Admission, admit, record, state_at
from schedsync.core.models import CRASHED, FAILED, FAILURES, PARTIAL, SKIPPED, TIMEOUT, Breaker

T0 = 1_715_000_000.0
SETTINGS = {"failures": 3, "reset_after": 600.0, "half_open_runs": 1}
LEASE = 360.0  # the runner's lease: the job's timeout + 60s


def fail(b: Breaker, now: float = T0, trial: bool = False, settings=SETTINGS):
    return record(b, settings, now, ok=False, trial=trial)


def succeed(b: Breaker, now: float = T0, trial: bool = False, settings=SETTINGS):
    return record(b, settings, now, ok=True, trial=trial)


def failed_times(n: int, b: Breaker | None = None, now: float = T0) -> Breaker:
    b = b or Breaker("api")
    for _ in range(n):
        b, _ = fail(b, now)
    return b


def opened(at: float = T0) -> Breaker:
    return failed_times(3, now=at)


# --- closed ------------------------------------------------------------------------------

def test_a_closed_breaker_admits_runs_that_are_not_trials():
    admission, after = admit(Breaker("api"), SETTINGS, T0, LEASE)
    assert admission == Admission(True, trial=False)
    assert after == Breaker("api")


def test_it_stays_closed_below_the_failure_threshold():
    b = failed_times(2)
    assert (b.state, b.failures) == (CLOSED, 2)
    assert admit(b, SETTINGS, T0, LEASE)[0].allowed


def test_it_opens_after_failures_in_a_row():
    b = failed_times(2)
    after, transition = fail(b, T0 + 5)
    assert transition == (CLOSED, OPEN)
    assert after == Breaker("api", OPEN, 3, opened_at=T0 + 5, opens_until=T0 + 605, leases=[])


def test_a_success_between_failures_starts_the_count_again():
    b, transition = succeed(failed_times(2))
    assert transition is None  # closed stays closed, quietly
    assert failed_times(2, b).state == CLOSED


def test_partial_runs_count_as_successes_and_skips_never_reach_the_breaker():
    assert PARTIAL not in FAILURES and SKIPPED not in FAILURES
    assert set(FAILURES) == {FAILED, TIMEOUT, CRASHED}
    b, _ = record(failed_times(2), SETTINGS, T0, ok=PARTIAL not in FAILURES, trial=False)
    assert b == Breaker("api")


def test_a_success_that_changes_nothing_returns_an_equal_breaker_so_nothing_is_saved():
    assert succeed(Breaker("api")) == (Breaker("api"), None)


# --- open --------------------------------------------------------------------------------

def test_an_open_breaker_skips_runs_until_it_half_opens():
    admission, after = admit(opened(), SETTINGS, T0 + 599, LEASE)
    assert admission == Admission(False, retry_at=T0 + 600)
    assert after == opened()


def test_it_half_opens_exactly_at_reset_after():
    assert state_at(opened(), T0 + 599.999) == OPEN
    assert state_at(opened(), T0 + 600) == HALF_OPEN


def test_half_open_is_derived_and_never_stored():
    b = opened()
    assert b.state == OPEN and state_at(b, T0 + 10_000) == HALF_OPEN


def test_a_clock_stepping_backwards_keeps_an_open_breaker_open():
    assert state_at(opened(), T0 - 3600) == OPEN


def test_a_straggler_failure_while_open_does_not_push_half_open_back():
    # a run admitted before the breaker opened ends after it did
    b, transition = fail(opened(), T0 + 100)
    assert transition is None
    assert (b.state, b.opens_until, b.failures) == (OPEN, T0 + 600, 4)


# --- half-open ---------------------------------------------------------------------------

def test_half_open_admits_one_trial_run_with_a_lease():
    admission, after = admit(opened(), SETTINGS, T0 + 600, LEASE)
    assert admission == Admission(True, trial=True)
    assert after.leases == [T0 + 600 + LEASE]


def test_half_open_skips_a_second_run_while_the_trial_holds_its_lease():
    _, with_trial = admit(opened(), SETTINGS, T0 + 600, LEASE)
    admission, _ = admit(with_trial, SETTINGS, T0 + 601, LEASE)
    assert admission == Admission(False, retry_at=T0 + 600 + LEASE)


def test_half_open_runs_sets_how_many_trials_run_at_once():
    wider = {**SETTINGS, "half_open_runs": 2}
    b = opened()
    first, b = admit(b, wider, T0 + 600, LEASE)
    second, b = admit(b, wider, T0 + 601, LEASE)
    third, b = admit(b, wider, T0 + 602, LEASE)
    assert (first.trial, second.trial, third.allowed) == (True, True, False)
    assert third.retry_at == T0 + 600 + LEASE


def test_an_expired_lease_frees_its_slot_for_a_new_trial():
    _, with_trial = admit(opened(), SETTINGS, T0 + 600, LEASE)
    admission, after = admit(with_trial, SETTINGS, T0 + 600 + LEASE + 1, LEASE)
    assert admission.trial
    assert after.leases == [T0 + 600 + LEASE + 1 + LEASE]  # the dead trial's lease is gone


def test_a_trial_success_closes_the_breaker():
    _, with_trial = admit(opened(), SETTINGS, T0 + 600, LEASE)
    after, transition = succeed(with_trial, T0 + 610, trial=True)
    assert after == Breaker("api")
    assert transition == (HALF_OPEN, CLOSED)


def test_a_trial_failure_reopens_it_with_a_fresh_reset_after():
    _, with_trial = admit(opened(), SETTINGS, T0 + 600, LEASE)
    after, transition = fail(with_trial, T0 + 610, trial=True)
    assert transition == (HALF_OPEN, OPEN)
    assert (after.state, after.opened_at, after.opens_until, after.leases) == (OPEN, T0 + 610, T0 + 1210, [])
    assert admit(after, SETTINGS, T0 + 1209, LEASE)[0] == Admission(False, retry_at=T0 + 1210)


def test_a_second_trial_failing_after_the_first_reopened_it_renews_the_wait_quietly():
    wider = {**SETTINGS, "half_open_runs": 2}
    b = opened()
    _, b = admit(b, wider, T0 + 600, LEASE)
    _, b = admit(b, wider, T0 + 601, LEASE)
    b, first = fail(b, T0 + 610, trial=True, settings=wider)
    b, second = fail(b, T0 + 620, trial=True, settings=wider)
    assert (first, second) == ((HALF_OPEN, OPEN), None)
    assert b.opens_until == T0 + 1220


def test_a_crashed_trial_reaped_as_a_plain_failure_reopens_it_too():
    _, with_trial = admit(opened(), SETTINGS, T0 + 600, LEASE)
    after, transition = fail(with_trial, T0 + 700, trial=False)
    assert transition == (HALF_OPEN, OPEN) and after.opens_until == T0 + 1300


def test_after_closing_it_needs_the_full_count_of_failures_to_open_again():
    closed, _ = succeed(admit(opened(), SETTINGS, T0 + 600, LEASE)[1], T0 + 610, trial=True)
    assert failed_times(2, closed, T0 + 620).state == CLOSED
    assert failed_times(3, closed, T0 + 620).state == OPEN


# --- the state machine -------------------------------------------------------------------

class Model:
    """The breaker as SPEC tells it, written plainly."""

    def __init__(self, settings):
        self.s = settings
        self.open = False
        self.failures = 0
        self.until = None
        self.leases: list[float] = []

    def state(self, now):
        if not self.open:
            return CLOSED
        return HALF_OPEN if now >= self.until else OPEN

    def admit(self, now):
        state = self.state(now)
        if state == CLOSED:
            return True, False
        if state == OPEN:
            return False, False
        self.leases = [t for t in self.leases if t > now]
        if len(self.leases) < self.s["half_open_runs"]:
            self.leases.append(now + LEASE)
            return True, True
        return False, False

    def record(self, now, ok, trial):
        before = self.state(now)
        if ok:
            self.open, self.failures, self.until, self.leases = False, 0, None, []
            return
        self.failures += 1
        if trial or before == HALF_OPEN or (before == CLOSED and self.failures >= self.s["failures"]):
            self.open, self.until, self.leases = True, now + self.s["reset_after"], []


class BreakerMachine(RuleBasedStateMachine):
    runs = Bundle("runs")

    @initialize(failures=st.integers(1, 4), reset_after=st.sampled_from([1.0, 60.0, 600.0]),
                half_open_runs=st.integers(1, 3))
    def setup(self, failures, reset_after, half_open_runs):
        self.settings = {"failures": failures, "reset_after": reset_after,
                         "half_open_runs": half_open_runs}
        self.model = Model(self.settings)
        self.breaker = Breaker("api")
        self.now = T0

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 30.0, 59.0, 60.0, 61.0, 360.0, 600.0, 3600.0]))
    def time_passes(self, seconds):
        self.now += seconds

    @rule(seconds=st.sampled_from([0.5, 60.0, 3600.0]))
    def the_clock_steps_backwards(self, seconds):
        self.now -= seconds

    @precondition(lambda self: self.breaker.state == OPEN and self.now < self.breaker.opens_until)
    @rule()
    def time_passes_until_it_half_opens(self):
        self.now = self.breaker.opens_until

    @rule(target=runs)
    def a_run_asks_to_start(self):
        admission, self.breaker = admit(self.breaker, self.settings, self.now, LEASE)
        allowed, trial = self.model.admit(self.now)
        assert (admission.allowed, admission.trial) == (allowed, trial)
        if not admission.allowed:
            assert admission.retry_at is not None and admission.retry_at > self.now
        return (admission.allowed, admission.trial)

    @rule(run=consumes(runs), ok=st.booleans())
    def a_run_ends(self, run, ok):
        allowed, trial = run
        if not allowed:
            return  # a skipped run never reaches record
        before = state_at(self.breaker, self.now)
        self.breaker, transition = record(self.breaker, self.settings, self.now, ok, trial)
        self.model.record(self.now, ok, trial)
        after = state_at(self.breaker, self.now)
        assert transition == ((before, after) if before != after else None)

    @invariant()
    def it_agrees_with_the_model(self):
        if not hasattr(self, "model"):
            return
        assert state_at(self.breaker, self.now) == self.model.state(self.now)
        assert (self.breaker.state == OPEN) == self.model.open
        assert self.breaker.opens_until == self.model.until
        if self.breaker.state == CLOSED:
            assert self.breaker.failures == self.model.failures < self.settings["failures"]

    @invariant()
    def live_trials_never_exceed_half_open_runs(self):
        if hasattr(self, "settings"):
            live = [t for t in self.breaker.leases if t > self.now]
            assert len(live) <= self.settings["half_open_runs"]


BreakerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
TestBreakerMachine = BreakerMachine.TestCase
