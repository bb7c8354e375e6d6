"""Token buckets: the pure arithmetic at pinned times, the store operations on a real
SQLite file, and a Hypothesis state machine against an exact reference model."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from schedsync.core.budgets import EPSILON, block_until, refill, take
from schedsync.core.models import Bucket
from schedsync.store import open_store

T0 = 1_715_000_000.0  # 2024-05-06 12:53:20 UTC: epoch-scale, where float rounding bites
CAPACITY, PER = 15.0, 900.0  # "15/15m": one token a minute


def bucket(tokens: float, updated: float = T0) -> Bucket:
    return Bucket("api", tokens, updated)


def take_one(b: Bucket | None, now: float, cost: float = 1, capacity: float = CAPACITY,
             per: float = PER):
    return take(b, "api", capacity, per, cost, now)


# --- refill ------------------------------------------------------------------------------

def test_a_bucket_never_used_starts_full():
    granted, after, ready = take_one(None, T0)
    assert granted and ready == T0
    assert after == Bucket("api", CAPACITY - 1, T0)


def test_it_refills_continuously_not_in_steps():
    assert refill(bucket(0), CAPACITY, PER, T0 + 30).tokens == pytest.approx(0.5)
    assert refill(bucket(0), CAPACITY, PER, T0 + 90).tokens == pytest.approx(1.5)
    assert refill(bucket(0), CAPACITY, PER, T0 + 450).tokens == pytest.approx(7.5)


def test_refill_moves_updated_to_now():
    assert refill(bucket(0), CAPACITY, PER, T0 + 30).updated == T0 + 30


def test_it_never_refills_past_capacity():
    assert refill(bucket(14), CAPACITY, PER, T0 + 10 * PER).tokens == CAPACITY


def test_lowering_capacity_in_jobs_yaml_clamps_the_level_to_the_new_capacity():
    assert refill(bucket(12), 5, PER, T0).tokens == 5
    assert refill(bucket(12), 5, PER, T0 + 60).tokens == 5


def test_raising_capacity_keeps_the_level_and_refills_towards_the_new_capacity():
    assert refill(bucket(3), 60, 3600, T0).tokens == 3  # no free top-up on a config change
    assert refill(bucket(3), 60, 3600, T0 + 60).tokens == pytest.approx(4)
    assert refill(bucket(3), 60, 3600, T0 + 3600).tokens == 60


# --- the clock stepping backwards -------------------------------------------------------
# A stored time later than now is never trusted: it is clamped to now. (It used to be
# kept, so a clock that ran a day ahead and stepped back starved the bucket for a day.)

def test_a_clock_stepping_backwards_mints_nothing():
    after = refill(bucket(2), CAPACITY, PER, T0 - 3600)
    assert after.tokens == 2


def test_a_stored_time_later_than_now_is_clamped_to_now():
    assert refill(bucket(2), CAPACITY, PER, T0 - 3600).updated == T0 - 3600


def test_time_after_a_backwards_step_refills_from_the_clamped_time():
    stepped_back = refill(bucket(0), CAPACITY, PER, T0 - 600)
    # the stored T0 came from a clock 10 minutes ahead: the 11 minutes since are real time
    assert refill(stepped_back, CAPACITY, PER, T0 + 60).tokens == pytest.approx(11)


def test_a_denial_while_the_clock_is_behind_counts_from_now_not_from_the_future():
    granted, _, ready = take_one(bucket(0), T0 - 600)
    assert not granted
    assert ready == pytest.approx(T0 - 540)


def test_a_clock_a_day_ahead_then_back_does_not_starve_the_bucket():
    ahead = take_one(None, T0 + 86400, cost=CAPACITY)[1]  # all spent at "tomorrow"
    granted, _, ready = take_one(ahead, T0)
    assert not granted and ready == pytest.approx(T0 + 60)  # a minute, not a day


# --- take -------------------------------------------------------------------------------

def test_it_grants_the_cost_and_keeps_the_rest():
    granted, after, ready = take_one(bucket(5), T0, cost=3)
    assert (granted, after, ready) == (True, bucket(2), T0)


def test_it_grants_the_last_whole_token():
    granted, after, _ = take_one(bucket(1), T0)
    assert granted and after.tokens == 0


def test_an_empty_bucket_says_when_the_next_token_is_there():
    granted, after, ready = take_one(bucket(0.25), T0)
    assert not granted
    assert after == bucket(0.25)  # a denial spends nothing
    assert ready == pytest.approx(T0 + 45)


def test_a_denial_for_several_tokens_waits_for_all_of_them():
    granted, _, ready = take_one(bucket(1), T0, cost=4)
    assert not granted and ready == pytest.approx(T0 + 180)


def test_the_tokens_are_there_at_the_ready_time_it_gave_even_at_a_high_rate():
    # 1000/s at epoch scale: the sum now + wait rounds, and must not round short
    granted, after, ready = take_one(bucket(0.3), T0, capacity=1000, per=1)
    assert not granted
    granted, _, _ = take_one(after, ready, capacity=1000, per=1)
    assert granted


def test_a_cost_above_capacity_is_never_granted_even_when_full():
    granted, _, ready = take_one(bucket(CAPACITY), T0, cost=16)
    assert (granted, ready) == (False, None)


def test_a_cost_just_above_capacity_is_not_granted_by_the_rounding_allowance():
    granted, _, ready = take_one(bucket(2.0), T0, cost=2.0 + EPSILON / 2, capacity=2.0)
    assert (granted, ready) == (False, None)


def test_a_cost_of_exactly_capacity_is_granted_when_full():
    granted, after, _ = take_one(None, T0, cost=15)
    assert granted and after.tokens == 0


# --- block_until (an upstream's Retry-After) ----------------------------------------------
# A 429's Retry-After pauses the bucket and keeps its tokens (it used to empty it: a
# 60/1h budget with 59 left then waited an hour instead of five seconds).

def block(b, until, now=T0):
    return block_until(b, "api", until, CAPACITY, PER, now)


def test_a_retry_after_pauses_the_bucket_and_keeps_its_tokens():
    assert block(bucket(9), T0 + 120) == Bucket("api", 9, T0, T0 + 120)


def test_a_paused_bucket_grants_nothing_until_the_retry_after_has_passed():
    blocked = block(bucket(9), T0 + 120)
    granted, _, ready = take_one(blocked, T0 + 119)
    assert not granted and ready == pytest.approx(T0 + 120)
    granted, after, _ = take_one(blocked, T0 + 120)
    assert granted and after.tokens == pytest.approx(10)  # 9 kept, 2 refilled meanwhile, 1 spent


def test_an_empty_paused_bucket_is_ready_when_both_the_pause_and_a_token_are_there():
    granted, _, ready = take_one(block(bucket(0), T0 + 30), T0)
    assert not granted and ready == pytest.approx(T0 + 60)


def test_a_shorter_retry_after_does_not_cut_a_longer_one_short():
    longer = block(bucket(9), T0 + 600)
    assert block(longer, T0 + 60).blocked_until == T0 + 600


def test_a_retry_after_on_a_bucket_never_used_keeps_it_full():
    assert block(None, T0 + 60) == Bucket("api", CAPACITY, T0, T0 + 60)


def test_a_pause_is_at_most_a_day_and_one_from_a_stepped_back_clock_is_dropped():
    assert block(bucket(9), T0 + 7200).blocked_until == T0 + 7200  # longer than PER: honoured
    assert block(bucket(9), T0 + 3 * 86400).blocked_until == T0 + 86400
    from_the_future = Bucket("api", 9, T0, T0 + 2 * 86400)
    assert take_one(from_the_future, T0)[0]


# --- on the store ------------------------------------------------------------------------
# (the operations themselves are in the store contract suite, tests/test_store.py)

RATES = {"api": [CAPACITY, PER], "search": [2.0, 60.0]}


@pytest.fixture
def store(tmp_path):
    s = open_store(str(tmp_path / "state.db"))
    yield s
    s.close()


def test_spend_takes_from_the_stored_bucket(store):
    assert store.spend(["api"], RATES, 1, T0) is None
    assert store.budget_levels({"api": RATES["api"]}, T0) == {"api": 14}


def test_spend_of_a_shared_budget_is_seen_by_every_job(store):
    for _ in range(15):
        assert store.spend(["api"], RATES, 1, T0) is None
    assert store.spend(["api"], RATES, 1, T0) == pytest.approx(T0 + 60)


def test_spend_from_several_budgets_takes_from_all_or_from_none(store):
    assert store.spend(["search"], RATES, 1.5, T0) is None
    ready = store.spend(["api", "search"], RATES, 1, T0)
    assert ready == pytest.approx(T0 + 15)  # search needs half a token at 2 a minute
    # api was not charged for the denied run
    assert store.budget_levels(RATES, T0) == {"api": 15.0, "search": pytest.approx(0.5)}


def test_spend_waits_for_the_slowest_of_several_budgets(store):
    assert store.spend(["api"], RATES, 15, T0) is None
    assert store.spend(["search"], RATES, 2, T0) is None
    assert store.spend(["api", "search"], RATES, 1, T0) == pytest.approx(T0 + 60)


def test_spend_denies_a_run_whose_wait_rounds_to_nothing(store):
    # a hair short of a token at 15/s: the wait is below the clock's resolution at T0
    fast = {"fast": [15.0, 1.0]}
    assert store.spend(["fast"], fast, 14 + 2 * EPSILON, T0) is None
    before = store.budget_levels(fast, T0)
    ready = store.spend(["fast"], fast, 1, T0)
    assert ready is not None and ready >= T0
    assert store.budget_levels(fast, T0) == before


def test_spend_of_more_than_capacity_is_never_ready(store):
    assert store.spend(["search"], RATES, 3, T0) == math.inf


def test_block_pauses_every_named_bucket(store):
    store.block_budgets(["api", "search"], T0 + 60, RATES, T0)
    assert store.spend(["api"], RATES, 1, T0 + 30) == pytest.approx(T0 + 60)
    assert store.spend(["search"], RATES, 1, T0 + 30) == pytest.approx(T0 + 60)
    assert store.budget_levels(RATES, T0 + 60) == {"api": 15.0, "search": 2.0}


def test_levels_show_a_bucket_never_used_as_full_and_others_refilled(store):
    assert store.spend(["search"], RATES, 2, T0) is None
    assert store.budget_levels(RATES, T0 + 30) == {"api": 15.0, "search": pytest.approx(1.0)}


# --- the state machine -------------------------------------------------------------------

class BucketMachine(RuleBasedStateMachine):
    """The pure bucket against an exact (Fraction) model, with a wandering clock.

    A stored time later than now is clamped to now, so every forward move of the
    clock counts (a clock that ran ahead and came back is not trusted). Over any run,
    tokens granted <= capacity + the clock's forward travel * rate. A Retry-After
    pauses the bucket (at most one refill period) and keeps its tokens.
    """

    @initialize(capacity=st.integers(1, 1000), per=st.sampled_from([1.0, 60.0, 900.0, 3600.0, 86400.0]))
    def setup(self, capacity, per):
        self.capacity, self.per = float(capacity), per
        self.rate = Fraction(capacity) / Fraction(per)
        self.now = T0
        self.bucket: Bucket | None = None
        # Both start when the bucket is first used, wherever the clock is then.
        self.model_tokens = self.model_since = None  # level, and the newest time counted up to
        self.origin = None  # first use
        self.forward = Fraction(0)  # the clock's forward travel since
        self.blocked = None
        self.granted = Fraction(0)
        self.grants = 0
        self.last_denial = None

    def _model_at(self, now: float) -> Fraction:
        now = Fraction(now)
        if self.model_since is None:
            self.model_tokens, self.model_since = Fraction(self.capacity), now
            self.origin = now
        if now < self.model_since:
            self.model_since = now  # clamped
        if self.blocked is not None and (self.blocked <= now or self.blocked > now + Fraction(max(self.per, 86400.0))):
            self.blocked = None
        if now > self.model_since:
            self.model_tokens = min(Fraction(self.capacity),
                                    self.model_tokens + (now - self.model_since) * self.rate)
            self.model_since = now
        return self.model_tokens

    def _move(self, now: float) -> None:
        if self.origin is not None and now > self.now:
            self.forward += Fraction(now) - Fraction(self.now)
        self.now = now
        self.last_denial = None

    @rule(seconds=st.floats(0, 7200, allow_nan=False))
    def time_passes(self, seconds):
        self._move(self.now + seconds)

    @rule(seconds=st.floats(0.001, 7200, allow_nan=False))
    def the_clock_steps_backwards(self, seconds):
        self._move(self.now - seconds)

    @rule(cost=st.integers(1, 50))
    def a_run_takes_tokens(self, cost):
        model = self._model_at(self.now)
        granted, self.bucket, ready = take(self.bucket, "api", self.capacity, self.per, cost, self.now)
        assert self.bucket.updated == self.now  # never a time later than now, once used
        if model >= cost + Fraction(1, 10**6) and self.blocked is None and cost <= self.capacity:
            assert granted, f"model has {float(model)} tokens for cost {cost}"
        if model < cost - Fraction(1, 10**6) or cost > self.capacity or self.blocked is not None:
            assert not granted, f"model has {float(model)} tokens for cost {cost}"
        if granted:
            self.model_tokens = max(Fraction(0), model - cost)
            self.granted += cost
            self.grants += 1
            self.last_denial = None
        else:
            assert (ready is None) == (cost > self.capacity)
            self.last_denial = (cost, ready)

    @precondition(lambda self: self.last_denial is not None and self.last_denial[1] is not None)
    @rule()
    def a_denied_run_comes_back_exactly_when_told(self):
        cost, ready = self.last_denial
        assert ready >= self.now
        self._move(ready)
        self.a_run_takes_tokens(cost)
        assert self.last_denial is None, "the tokens were not there at the promised time"

    @rule(seconds=st.floats(0, 3600, allow_nan=False))
    def an_upstream_says_retry_after(self, seconds):
        until = self.now + seconds
        self.bucket = block_until(self.bucket, "api", until, self.capacity, self.per, self.now)
        self._model_at(self.now)
        until = min(Fraction(until), Fraction(self.now) + Fraction(max(self.per, 86400.0)))
        if self.blocked is not None:
            until = max(until, self.blocked)
        self.blocked = until if until > Fraction(self.now) else None
        self.last_denial = None

    @invariant()
    def it_never_grants_more_than_capacity_plus_the_time_that_passed(self):
        if getattr(self, "origin", None) is None:
            return
        allowance = self.grants * Fraction(EPSILON) + Fraction(1, 10**6)
        counted = self.forward
        assert self.granted <= self.capacity + counted * self.rate + allowance

    @invariant()
    def the_level_stays_between_empty_and_capacity(self):
        if self.bucket is not None:
            assert 0 <= self.bucket.tokens <= self.capacity



BucketMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestBucketMachine = BucketMachine.TestCase
