"""Token buckets: the pure arithmetic at pinned times, the store operations on a real
SQLite file, and a Hypothesis state machine against an exact reference model."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from schedsync.core import budgets
from schedsync.core.budgets import EPSILON, block_until, refill, take
from schedsync.core.models import Bucket
from schedsync.store.sqlite import SQLiteStore

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

def test_a_clock_stepping_backwards_mints_nothing():
    after = refill(bucket(2), CAPACITY, PER, T0 - 3600)
    assert after == bucket(2)


def test_a_clock_stepping_backwards_keeps_the_newest_time_seen():
    assert refill(bucket(2), CAPACITY, PER, T0 - 3600).updated == T0


def test_time_after_a_backwards_step_is_not_counted_twice():
    stepped_back = refill(bucket(0), CAPACITY, PER, T0 - 600)
    # the clock runs from T0-600 to T0+60: only the minute past T0 is new time
    assert refill(stepped_back, CAPACITY, PER, T0 + 60).tokens == pytest.approx(1)


def test_a_denial_while_the_clock_is_behind_counts_from_the_newest_time_seen():
    granted, _, ready = take_one(bucket(0), T0 - 600)
    assert not granted
    assert ready == pytest.approx(T0 + 60)


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

def test_a_retry_after_empties_the_bucket():
    assert block_until(bucket(9), "api", T0 + 120) == bucket(0, T0 + 120)


def test_a_retry_after_refills_nothing_until_it_has_passed():
    blocked = block_until(bucket(9), "api", T0 + 120)
    assert refill(blocked, CAPACITY, PER, T0 + 119).tokens == 0
    assert refill(blocked, CAPACITY, PER, T0 + 180).tokens == pytest.approx(1)


def test_a_blocked_bucket_says_it_is_ready_a_token_after_the_retry_after():
    granted, _, ready = take_one(block_until(bucket(9), "api", T0 + 120), T0)
    assert not granted and ready == pytest.approx(T0 + 180)


def test_a_shorter_retry_after_does_not_cut_a_longer_one_short():
    longer = block_until(bucket(9), "api", T0 + 600)
    assert block_until(longer, "api", T0 + 60).updated == T0 + 600


def test_a_retry_after_on_a_bucket_never_used_creates_it_empty():
    assert block_until(None, "api", T0 + 60) == bucket(0, T0 + 60)


# --- on the store ------------------------------------------------------------------------

RATES = {"api": [CAPACITY, PER], "search": [2.0, 60.0]}


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(str(tmp_path / "state.db"))
    yield s
    s.close()


def test_spend_takes_from_the_stored_bucket(store):
    assert budgets.spend(store, RATES, ["api"], 1, T0) is None
    assert store.load_bucket("api") == bucket(14)


def test_spend_of_a_shared_budget_is_seen_by_every_job(store):
    for _ in range(15):
        assert budgets.spend(store, RATES, ["api"], 1, T0) is None
    assert budgets.spend(store, RATES, ["api"], 1, T0) == pytest.approx(T0 + 60)


def test_spend_from_several_budgets_takes_from_all_or_from_none(store):
    store.save_bucket(Bucket("search", 0.5, T0))
    ready = budgets.spend(store, RATES, ["api", "search"], 1, T0)
    assert ready == pytest.approx(T0 + 15)  # search needs half a token at 2 a minute
    assert store.load_bucket("api") is None  # api was not charged for the denied run
    assert store.load_bucket("search") == Bucket("search", 0.5, T0)


def test_spend_waits_for_the_slowest_of_several_budgets(store):
    store.save_bucket(Bucket("api", 0, T0))
    store.save_bucket(Bucket("search", 0, T0))
    assert budgets.spend(store, RATES, ["api", "search"], 1, T0) == pytest.approx(T0 + 60)


def test_spend_denies_a_run_whose_wait_rounds_to_nothing(store):
    # a hair short of a token at 15/s: the wait is below the clock's resolution at T0
    store.save_bucket(Bucket("fast", 1 - 2 * EPSILON, T0))
    ready = budgets.spend(store, {"fast": [15.0, 1.0]}, ["fast"], 1, T0)
    assert ready is not None and ready >= T0
    assert store.load_bucket("fast") == Bucket("fast", 1 - 2 * EPSILON, T0)


def test_spend_of_more_than_capacity_is_never_ready(store):
    assert budgets.spend(store, RATES, ["search"], 3, T0) == math.inf


def test_block_empties_every_named_bucket(store):
    budgets.block(store, ["api", "search"], T0 + 60)
    assert store.load_bucket("api") == bucket(0, T0 + 60)
    assert store.load_bucket("search") == Bucket("search", 0, T0 + 60)


def test_levels_show_a_bucket_never_used_as_full_and_others_refilled(store):
    store.save_bucket(Bucket("search", 0, T0))
    assert budgets.levels(store, RATES, T0 + 30) == {"api": 15.0, "search": pytest.approx(1.0)}


# --- the state machine -------------------------------------------------------------------

class BucketMachine(RuleBasedStateMachine):
    """The pure bucket against an exact (Fraction) model, with a wandering clock.

    The model keeps a high-water mark of the clock: time counts only when the
    clock passes it. Over any run, tokens granted <= capacity + counted time * rate.
    """

    @initialize(capacity=st.integers(1, 1000), per=st.sampled_from([1.0, 60.0, 900.0, 3600.0, 86400.0]))
    def setup(self, capacity, per):
        self.capacity, self.per = float(capacity), per
        self.rate = Fraction(capacity) / Fraction(per)
        self.now = T0
        self.bucket: Bucket | None = None
        # Both start when the bucket is first used, wherever the clock is then.
        self.model_tokens = self.model_since = None  # level, and the newest time counted up to
        self.origin = self.high_water = None  # first use, and the furthest the clock has been since
        self.granted = Fraction(0)
        self.grants = 0
        self.last_denial = None

    def _model_at(self, now: float) -> Fraction:
        now = Fraction(now)
        if self.model_since is None:
            self.model_tokens, self.model_since = Fraction(self.capacity), now
            self.origin = self.high_water = now
        if now > self.model_since:
            self.model_tokens = min(Fraction(self.capacity),
                                    self.model_tokens + (now - self.model_since) * self.rate)
            self.model_since = now
        return self.model_tokens

    def _move(self, now: float) -> None:
        self.now = now
        if self.high_water is not None:
            self.high_water = max(self.high_water, Fraction(now))
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
        if model >= cost + Fraction(1, 10**6):
            assert granted, f"model has {float(model)} tokens for cost {cost}"
        if model < cost - Fraction(1, 10**6) or cost > self.capacity:
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
        self.bucket = block_until(self.bucket, "api", until)
        self._model_at(self.now)
        self.model_tokens = Fraction(0)
        self.model_since = max(self.model_since, Fraction(until))
        self.last_denial = None

    @invariant()
    def it_never_grants_more_than_capacity_plus_the_time_that_passed(self):
        if getattr(self, "origin", None) is None:
            return
        allowance = self.grants * Fraction(EPSILON) + Fraction(1, 10**6)
        counted = self.high_water - self.origin
        assert self.granted <= self.capacity + counted * self.rate + allowance

    @invariant()
    def the_level_stays_between_empty_and_capacity(self):
        if self.bucket is not None:
            assert 0 <= self.bucket.tokens <= self.capacity

    @invariant()
    def updated_never_moves_backwards(self):
        if self.bucket is not None:
            assert self.bucket.updated >= getattr(self, "_last_updated", -math.inf)
            self._last_updated = self.bucket.updated


BucketMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestBucketMachine = BucketMachine.TestCase
