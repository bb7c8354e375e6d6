"""One rule set on both backends.

SQLite runs the pure rules (``core.budgets``, ``core.breaker``, retention) in Python
inside ``BEGIN IMMEDIATE``; PostgreSQL runs them as PL/pgSQL (``store/postgres_sql.py``).
The state machines here drive the same random sequences (same operations, same
injected ``now``) through ``open_store`` on a SQLite file and on a real PostgreSQL at
once, and check every answer against the other backend and against the pure core:
same grants, same ready times and levels (float tolerance), same breaker states
and transitions, same runs kept by retention.

Hypothesis and fixtures: the stores are opened once per test (``sqlite_and_pg``) and
handed to the machine as class attributes; each example uses names of its own, so
examples never see each other's buckets, breakers or runs.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from schedsync.core import breaker as core_breaker
from schedsync.core.budgets import block_until, refill, take
from schedsync.core.models import CRASHED, FAILED, FAILURES, PARTIAL, RUNNING, SKIPPED, SUCCESS, TIMEOUT, Breaker, Run
from schedsync.core.records import replace
from schedsync.store import open_store
from schedsync.store.base import BreakerSpec

T0 = 1_715_000_000.0
LEASE = 360.0
FEW = settings(max_examples=40, stateful_step_count=25, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
_names = itertools.count()


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def close(a, b, what):
    if a is None or b is None or math.isinf(a) or math.isinf(b):
        assert a == b, what
    else:
        assert a == pytest.approx(b, rel=1e-12, abs=1e-9), what


@pytest.fixture
def sqlite_and_pg(tmp_path, pg_url):
    stores = open_store(str(tmp_path / "state.db")), open_store(pg_url)
    yield stores
    for store in stores:
        store.close()


# --- defaults and the failed-status list: one place ------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_breaker_given_no_settings_uses_the_configured_defaults(backend, sqlite_and_pg):
    # PostgreSQL used to fall back to failures=1, reset_after=0: one failure opened it.
    from schedsync.config import BUILTIN

    defaults = BUILTIN["breaker"]  # what jobs.yaml documents
    store = sqlite_and_pg[backend == "postgresql"]
    spec = BreakerSpec("api", {})
    for i in range(defaults["failures"]):
        admitted = store.admit_run("job", "cron", spec, LEASE, [], {}, 0, now=T0 + i)
        assert admitted.run is not None
        run = admitted.run
        run.status, run.finished_at, run.duration_ms = FAILED, T0 + i, 0
        transition = store.finish_run(run, spec, True, admitted.trial, LEASE, {}, now=T0 + i)
        opened = i + 1 == defaults["failures"]
        assert (transition is not None) == opened, i
    [after] = store.breakers(["api"]).values()
    assert after.state == "open"
    assert after.opens_until == T0 + defaults["failures"] - 1 + defaults["reset_after"]


def test_config_defaults_are_the_cores():
    from schedsync.config import BUILTIN

    assert BUILTIN["breaker"] == core_breaker.DEFAULTS


def test_the_statuses_in_the_postgresql_functions_are_core_models():
    """The PL/pgSQL names statuses as literals: they must be the ones core.models names."""
    from schedsync.store.postgres_sql import MIGRATIONS

    sql = "\n".join(MIGRATIONS)
    lists = {frozenset(re.findall(r"'(\w+)'", m)) for m in re.findall(r"status IN \(([^)]*)\)", sql)}
    # failed runs; finished runs kept for `success`; the newest success (kept however old)
    assert lists == {frozenset(FAILURES), frozenset((SUCCESS, PARTIAL, SKIPPED)), frozenset((SUCCESS, PARTIAL))}
    assert set(re.findall(r"status = '(\w+)'", sql)) <= {RUNNING, SUCCESS, PARTIAL, CRASHED}
    assert set(FAILURES) == {FAILED, TIMEOUT, CRASHED}


# --- token buckets ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_spend_denied_by_one_budget_spends_nothing_from_one_with_a_future_time(backend, sqlite_and_pg):
    # Found by BucketsOnBoth: SQLite saved the clamped bucket with the cost taken off.
    store = sqlite_and_pg[backend == "postgresql"]
    rates = {"a": (10.0, 60.0), "b": (1.0, 60.0)}
    assert store.spend(["a", "b"], rates, 1, T0) is None  # stored at T0; b now empty
    assert store.spend(["a", "b"], rates, 1, T0 - 30) is not None  # the clock stepped back: b denies
    assert store.budget_levels(rates, T0 - 30)["a"] == 9.0  # clamped, and unspent



class BucketsOnBoth(RuleBasedStateMachine):
    """Spends and Retry-After pauses on two buckets, through both stores and the pure core."""

    stores: tuple = ()

    @initialize(a=st.tuples(st.integers(1, 100), st.sampled_from([1.0, 60.0, 900.0, 86400.0])),
                b=st.tuples(st.integers(1, 100), st.sampled_from([1.0, 60.0, 3600.0])))
    def setup(self, a, b):
        self.names = [fresh("a"), fresh("b")]
        self.rates = {self.names[0]: (float(a[0]), a[1]), self.names[1]: (float(b[0]), b[1])}
        self.core = {n: None for n in self.names}  # the pure buckets
        self.now = T0
        self.denied = None

    @rule(seconds=st.floats(0, 7200, allow_nan=False))
    def time_passes(self, seconds):
        self.now += seconds
        self.denied = None

    @rule(seconds=st.floats(0.001, 7200, allow_nan=False))
    def the_clock_steps_backwards(self, seconds):
        self.now -= seconds
        self.denied = None

    def _core_spend(self, names, cost):
        taken, ready = {}, None
        for name in names:
            granted, bucket, at = take(self.core[name], name, *self.rates[name], cost, self.now)
            taken[name] = bucket
            if not granted:
                ready = max(self.now if ready is None else ready, math.inf if at is None else at)
        if ready is None:
            self.core.update(taken)
        else:  # all or none: a denial spends nothing, and keeps a clamped time only
            for name in names:
                bucket = self.core[name]
                if bucket is not None and bucket.updated > self.now:
                    self.core[name] = refill(bucket, *self.rates[name], self.now)
        return ready

    @rule(which=st.sampled_from([(0,), (1,), (0, 1)]), cost=st.integers(1, 60))
    def a_run_spends(self, which, cost):
        names = [self.names[i] for i in which]
        expected = self._core_spend(names, cost)
        got = [store.spend(names, self.rates, cost, self.now) for store in self.stores]
        for answer in got:
            close(answer, expected, f"spend {names} {cost} at {self.now}")
        self.denied = (names, cost, got) if expected is not None and not math.isinf(expected) else None

    @precondition(lambda self: self.denied is not None)
    @rule()
    def a_denied_run_comes_back_when_each_backend_said(self):
        names, cost, readies = self.denied
        self.denied = None
        for store, ready in zip(self.stores, readies, strict=True):
            assert ready >= self.now
            # the promise holds on each backend at the time it gave (never a hair short)
            assert store.spend(names, self.rates, cost, ready) is None, store
        self.now = max(readies)
        for name in names:  # the core follows at the later time; levels then agree within tolerance
            self.core[name] = take(self.core[name], name, *self.rates[name], cost, self.now)[1]

    @rule(which=st.sampled_from([(0,), (1,), (0, 1)]), seconds=st.floats(0, 3 * 86400, allow_nan=False))
    def an_upstream_says_retry_after(self, which, seconds):
        names = [self.names[i] for i in which]
        until = self.now + seconds
        for name in names:
            self.core[name] = block_until(self.core[name], name, until, *self.rates[name], self.now)
        for store in self.stores:
            store.block_budgets(names, until, self.rates, self.now)
        self.denied = None

    @invariant()
    def both_backends_hold_the_cores_levels(self):
        if not getattr(self, "names", None) or self.denied is not None:
            return
        for store in self.stores:
            levels = store.budget_levels(self.rates, self.now)
            for name in self.names:
                capacity, per = self.rates[name]
                bucket = self.core[name]
                want = capacity if bucket is None else take(bucket, name, capacity, per, 0, self.now)[1].tokens
                assert levels[name] == pytest.approx(want, rel=1e-9, abs=1e-6), (store, name)


def test_buckets_agree_on_both_backends(sqlite_and_pg):
    BucketsOnBoth.stores = sqlite_and_pg
    run_state_machine_as_test(BucketsOnBoth, settings=FEW)


# --- circuit breakers ------------------------------------------------------------------------

class BreakerOnBoth(RuleBasedStateMachine):
    """Runs admitted, ended and reaped through both stores and the pure core."""

    stores: tuple = ()
    runs = Bundle("runs")

    @initialize(failures=st.integers(1, 4), reset_after=st.sampled_from([1.0, 60.0, 600.0]),
                half_open_runs=st.integers(1, 3))
    def setup(self, failures, reset_after, half_open_runs):
        self.job = fresh("job")
        self.spec = BreakerSpec(fresh("api"), {"failures": failures, "reset_after": reset_after,
                                               "half_open_runs": half_open_runs})
        self.core = Breaker(self.spec.name)
        self.now = T0
        self.events = 0

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 30.0, 60.0, 61.0, 360.0, 600.0, 3600.0]))
    def time_passes(self, seconds):
        self.now += seconds

    @rule(seconds=st.sampled_from([0.5, 60.0, 3600.0]))
    def the_clock_steps_backwards(self, seconds):
        self.now -= seconds

    @precondition(lambda self: hasattr(self, "core") and self.core.state == "open"
                  and self.now < self.core.opens_until)
    @rule()
    def time_passes_until_it_half_opens(self):
        self.now = self.core.opens_until

    @rule(target=runs)
    def a_run_asks_to_start(self):
        admission, self.core = core_breaker.admit(self.core, self.spec.settings, self.now, LEASE)
        got = [store.admit_run(self.job, "cron", self.spec, LEASE, [], {}, 0, now=self.now)
               for store in self.stores]
        for admitted in got:
            assert (admitted.run is not None, admitted.trial) == (admission.allowed, admission.trial)
            if not admission.allowed:
                assert admitted.reason == "breaker_open"
                close(admitted.retry_at, admission.retry_at, "retry_at")
        return (admission.trial, [a.run for a in got]) if admission.allowed else None

    @rule(run=consumes(runs), status=st.sampled_from([SUCCESS, PARTIAL, FAILED, TIMEOUT]))
    def a_run_ends(self, run, status):
        if run is None:
            return
        trial, runs = run
        before = core_breaker.state_at(self.core, self.now)
        self.core, expected = core_breaker.record(self.core, self.spec.settings, self.now,
                                                  ok=status not in FAILURES, trial=trial)
        for store, r in zip(self.stores, runs, strict=True):
            r.status, r.finished_at, r.duration_ms = status, self.now, 0
            got = store.finish_run(r, self.spec, True, trial, LEASE, {}, now=self.now)
            assert (got[:2] if got else None) == expected, (store, before)
        self.events += expected is not None

    @rule(run=consumes(runs))
    def a_run_is_reaped_as_crashed(self, run):
        if run is None:
            return
        _, runs = run
        self.core, expected = core_breaker.record(self.core, self.spec.settings, self.now,
                                                  ok=False, trial=False)
        for store, r in zip(self.stores, runs, strict=True):
            assert store.mark_crashed(r, "gone", self.spec, True, now=self.now)
        self.events += expected is not None

    @rule(run=consumes(runs))
    def a_trial_hands_its_lease_back(self, run):
        if run is None:
            return
        trial, runs = run
        end = runs[0].started_at + LEASE
        if trial and end in self.core.leases:
            leases = list(self.core.leases)
            leases.remove(end)  # one: two trials admitted at one instant hold equal leases
            self.core = replace(self.core, leases=leases)
        for store, r in zip(self.stores, runs, strict=True):
            r.status, r.finished_at, r.duration_ms = SKIPPED, self.now, 0
            assert store.finish_run(r, self.spec, False, trial, LEASE, {}, now=self.now) is None

    @invariant()
    def both_backends_hold_the_cores_breaker(self):
        if not hasattr(self, "core"):
            return
        for store in self.stores:
            [stored] = store.breakers([self.spec.name]).values()
            assert (stored.state, stored.failures, stored.opens_until) == (
                self.core.state, self.core.failures, self.core.opens_until), store
            assert sorted(stored.leases) == pytest.approx(sorted(self.core.leases))
            assert len(store.transitions(self.spec.name, limit=1000)) == self.events


def test_breakers_agree_on_both_backends(sqlite_and_pg):
    BreakerOnBoth.stores = sqlite_and_pg
    run_state_machine_as_test(BreakerOnBoth, settings=FEW)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_trial_handed_back_frees_one_lease_when_two_started_at_one_instant(backend, sqlite_and_pg):
    # Found by BreakerOnBoth: PostgreSQL's array_remove freed both equal leases.
    store = sqlite_and_pg[backend == "postgresql"]
    spec = BreakerSpec("api", {"failures": 1, "reset_after": 60.0, "half_open_runs": 2})
    first = store.admit_run("job", "cron", spec, LEASE, [], {}, 0, now=T0).run
    first.status, first.finished_at, first.duration_ms = FAILED, T0, 0
    assert store.finish_run(first, spec, True, False, LEASE, {}, now=T0)[:2] == ("closed", "open")
    trials = [store.admit_run("job", "cron", spec, LEASE, [], {}, 0, now=T0 + 60) for _ in range(2)]
    assert [t.trial for t in trials] == [True, True]
    run = trials[0].run
    run.status, run.finished_at, run.duration_ms = SKIPPED, T0 + 60, 0
    assert store.finish_run(run, spec, False, True, LEASE, {}, now=T0 + 60) is None
    assert store.admit_run("job", "cron", spec, LEASE, [], {}, 0, now=T0 + 60).trial
    assert store.admit_run("job", "cron", spec, LEASE, [], {}, 0, now=T0 + 60).reason == "breaker_open"


# --- retention -------------------------------------------------------------------------------

STATUSES = [SUCCESS, PARTIAL, SKIPPED, FAILED, TIMEOUT, CRASHED]


def test_retention_keeps_the_same_runs_on_both_backends(sqlite_and_pg):
    keep = st.one_of(st.none(), st.sampled_from([60.0, 3600.0, 86400.0]))

    @given(runs=st.lists(st.tuples(st.sampled_from(STATUSES), st.floats(0, 2 * 86400)), max_size=25),
           keep_success=keep, keep_failed=keep, later=st.floats(0, 2 * 86400))
    @FEW
    def agree(runs, keep_success, keep_failed, later):
        job = fresh("job")
        retention = {"success": keep_success, "failed": keep_failed}
        kept = []
        for store in sqlite_and_pg:
            for status, at in sorted(runs, key=lambda r: r[1]):
                run = Run(0, job, status, "cron", T0 + at, "h", 1, finished_at=T0 + at, duration_ms=0)
                store.record_skip(run, retention)
            store.prune_all({job: (keep_success, keep_failed)}, now=T0 + 2 * 86400 + later)
            kept.append(sorted((r.status, r.started_at) for r in store.runs(job, limit=1000)))
        assert kept[0] == kept[1]

    agree()
