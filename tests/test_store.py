"""The Store contract: what every backend must do, through the interface alone
(``schedsync.store.base.Store``), contention included, as real processes.

A backend plugs in by adding one param to ``BACKENDS``: a function of pytest's
``request`` and ``tmp_path`` that returns a fresh, empty store target (a path, a
URL) that ``open_store`` opens. It must then pass this file unchanged.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from schedsync.core.models import AuditEntry, Breaker, Notification, Run
from schedsync.store import Admitted, BreakerSpec, Store, open_store

T0 = 1_790_000_000.0  # a pinned "now"
SETTINGS = {"name": "api", "failures": 3, "reset_after": 600.0, "half_open_runs": 1}
API = BreakerSpec("api", SETTINGS)
KEEP_ALL: dict = {}


def sqlite_target(request, tmp_path) -> str:
    return str(tmp_path / "state.db")


def postgres_target(request, tmp_path) -> str:
    """A fresh database on the test process's throwaway PostgreSQL (conftest's pg_url)."""
    return request.getfixturevalue("pg_url")


BACKENDS = [sqlite_target, postgres_target]


@pytest.fixture(params=BACKENDS, ids=lambda make: make.__name__.replace("_target", ""))
def store_factory(request, tmp_path):
    """A fresh store target, and a function that opens it (each call: one more connection)."""
    target = request.param(request, tmp_path)
    opened = []

    def make(target=target):
        store = open_store(target)
        opened.append(store)
        return store

    make.target = target
    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory) -> Store:
    return store_factory()


def started(store, job="a", at=T0, breaker=API) -> Run:
    admitted = store.admit_run(job, "cron", breaker, 60.0, [], {}, 0, now=at)
    assert admitted.run is not None, admitted
    return admitted.run


def finished(store, job="a", at=T0, status="success", evidence=True, **fields) -> Run:
    run = started(store, job, at)
    run.status, run.finished_at, run.duration_ms = status, at + 1, 1000
    for key, value in fields.items():
        setattr(run, key, value)
    store.finish_run(run, API, evidence, False, 60.0, KEEP_ALL, now=at + 1)
    return run


def test_the_interface_exposes_no_transaction_path_or_lock_of_its_backend(store):
    assert isinstance(store, Store)
    for name in ("transaction", "path", "job_lock", "load_bucket", "save_bucket",
                 "load_breaker", "save_breaker", "start_run", "see_job"):
        assert not hasattr(Store, name) and not hasattr(store, name), name
    assert abs(store.now() - time.time()) < 60


class TestRuns:
    def test_it_keeps_every_field_of_a_finished_run(self, store):
        run = finished(store, status="partial", attempts=2, requests=7, items_processed=5,
                       items_failed=1, exit_code=0, error="1 item had no id", retry_at=T0 + 60,
                       output="tail", reason="rate_limited")
        [back] = store.runs("a")
        host, pid, _ = store.liveness.owner()
        assert back == Run(run.id, "a", "partial", "cron", T0, host, pid, "rate_limited",
                           T0 + 1, 1000, 2, 7, 5, 1, 0, "1 item had no id", T0 + 60, "tail")
        assert store.run("a") == back and store.run("a", run.id) == back
        assert store.run("a", run.id + 99) is None and store.run("other") is None

    def test_it_lists_runs_newest_first_with_a_limit_and_a_failed_filter(self, store):
        for i, status in enumerate(["success", "failed", "skipped", "timeout", "crashed"]):
            finished(store, at=T0 + i, status=status)
        assert [r.status for r in store.runs("a")] == ["crashed", "timeout", "skipped", "failed", "success"]
        assert [r.status for r in store.runs("a", limit=2)] == ["crashed", "timeout"]
        assert [r.status for r in store.runs("a", failed_only=True)] == ["crashed", "timeout", "failed"]
        assert store.runs("other") == []

    def test_a_running_run_is_crashed_once_however_many_readers_race(self, store):
        run = started(store)
        assert [r.id for r in store.running_runs(["a"])] == [run.id]
        assert store.liveness.gone(store.running_runs()) == []  # this process is alive
        [again] = store.running_runs()
        assert store.mark_crashed(run, "gone", API, False, now=T0 + 5) is True
        assert store.mark_crashed(again, "gone", API, False, now=T0 + 6) is False
        [back] = store.runs("a")
        assert (back.status, back.duration_ms, back.error) == ("crashed", 5000, "gone")
        assert store.running_runs() == []

    def test_a_crash_that_is_not_evidence_leaves_the_breaker_alone(self, store):
        for i in range(5):
            store.mark_crashed(started(store, at=T0 + i), "gone", API, False, now=T0 + i)
        assert store.breakers(["api"])["api"] == Breaker("api")

    def test_a_skip_is_recorded_finished_and_notes_the_job_as_seen(self, store):
        host, pid, _ = store.liveness.owner()
        run = Run(0, "a", "skipped", "cron", T0, host, pid, reason="locked", finished_at=T0,
                  duration_ms=0, error="the previous run is still going")
        store.record_skip(run, KEEP_ALL)
        assert run.id and store.runs("a") == [run]
        assert store.job_states(["a"])["a"].first_seen == T0

    def test_job_states_give_what_health_needs(self, store):
        store.see_jobs(["a"], T0 - 100)
        finished(store, at=T0, status="success")
        finished(store, at=T0 + 10, status="partial")
        finished(store, at=T0 + 20, status="failed")
        state = store.job_states(["a", "never"], recent=2)
        assert [r.status for r in state["a"].recent] == ["failed", "partial"]
        assert (state["a"].first_seen, state["a"].last_success_at, state["a"].last_started_at) == (
            T0 - 100, T0 + 10, T0 + 20)
        assert (state["never"].recent, state["never"].last_success_at) == ([], None)

    def test_the_failure_streak_counts_failures_since_the_last_success(self, store):
        finished(store, at=T0, status="failed")
        finished(store, at=T0 + 1, status="success")
        for i, status in enumerate(["failed", "skipped", "timeout", "crashed"]):
            finished(store, at=T0 + 2 + i, status=status, evidence=False)
        assert store.failure_streak("a") == 3
        assert store.failure_streak("a", before=T0 + 3) == 1


class TestAdmission:
    def test_a_paused_job_is_not_admitted_and_nothing_is_spent(self, store):
        store.set_paused("a", True, T0)
        admitted = store.admit_run("a", "cron", API, 60.0, ["b"], {"b": (1.0, 60.0)}, 1, now=T0)
        assert (admitted.run, admitted.reason) == (None, "paused")
        assert store.budget_levels({"b": (1.0, 60.0)}, T0) == {"b": 1.0}
        assert store.running_runs() == []
        store.set_paused("a", False, T0)
        assert store.admit_run("a", "cron", API, 60.0, ["b"], {"b": (1.0, 60.0)}, 1, now=T0).run
        assert store.budget_levels({"b": (1.0, 60.0)}, T0) == {"b": 0.0}

    def test_an_empty_budget_says_when_it_allows_again(self, store):
        rates = {"b": (2.0, 60.0)}
        for _ in range(2):
            assert store.admit_run("a", "cron", API, 60.0, ["b"], rates, 1, now=T0).run
        admitted = store.admit_run("a", "cron", API, 60.0, ["b"], rates, 1, now=T0)
        assert admitted.reason == "rate_limited" and admitted.retry_at == pytest.approx(T0 + 30)
        assert admitted.error == "budget b is empty"

    def test_failures_open_the_breaker_the_last_one_says_so_and_then_runs_are_skipped(self, store):
        transitions = []
        for i in range(3):
            run = started(store, at=T0 + i)
            run.status, run.finished_at = "failed", T0 + i
            transitions.append(store.finish_run(run, API, True, False, 60.0, KEEP_ALL, now=T0 + i))
        assert transitions[:2] == [None, None]
        old, new, breaker = transitions[2]
        assert (old, new, breaker.failures, breaker.opens_until) == ("closed", "open", 3, T0 + 2 + 600)
        assert store.transitions("api")[0][1:3] == ("closed", "open")
        skipped = store.admit_run("a", "cron", API, 60.0, [], {}, 0, now=T0 + 10)
        assert skipped == Admitted(reason="breaker_open", retry_at=T0 + 602, error="breaker api is open")

    def test_a_half_open_trial_that_proved_nothing_hands_its_lease_back(self, store):
        for i in range(3):
            finished(store, at=T0 + i, status="failed")
        later = T0 + 3 + 600
        trial = store.admit_run("a", "cron", API, 60.0, [], {}, 0, now=later)
        assert trial.trial
        assert store.admit_run("a", "cron", API, 60.0, [], {}, 0, now=later).reason == "breaker_open"
        trial.run.status, trial.run.reason, trial.run.finished_at = "failed", "cancelled", later
        trial.run.error = "cancelled by SIGINT"
        assert store.finish_run(trial.run, API, False, True, 60.0, KEEP_ALL, now=later) is None
        assert store.breakers(["api"])["api"].leases == []
        assert store.admit_run("a", "cron", API, 60.0, [], {}, 0, now=later).trial

    def test_a_breaker_reset_by_hand_closes_it_once(self, store):
        for i in range(3):
            finished(store, at=T0 + i, status="failed")
        assert store.reset_breaker("api", "reset by hand", T0 + 5) == "open"
        assert store.reset_breaker("api", "reset by hand", T0 + 6) is None
        assert store.breakers(["api", "other"]) == {"api": Breaker("api"), "other": Breaker("other")}
        assert store.transitions("api")[0] == (T0 + 5, "open", "closed", "reset by hand")


class TestRetention:
    def test_a_finished_run_prunes_old_successes_and_skips_but_keeps_failures_forever(self, store):
        day = 86400.0
        finished(store, at=T0 - 30 * day, status="success")
        finished(store, at=T0 - 29 * day, status="skipped")
        finished(store, at=T0 - 28 * day, status="failed")
        finished(store, at=T0 - 20 * day, status="success")
        finished(store, at=T0 - 1 * day, status="skipped")
        run = started(store, at=T0)
        run.status, run.finished_at = "skipped", T0
        store.finish_run(run, API, True, False, 60.0, {"success": 14 * day}, now=T0)
        # The newest success stays even though it is older than 14 days.
        assert [r.status for r in store.runs("a")] == ["skipped", "skipped", "success", "failed"]

    def test_prune_all_applies_each_jobs_policy_and_keeps_the_newest_success(self, store):
        day = 86400.0
        finished(store, "a", at=T0 - 99 * day, status="success")
        for age in range(98, 40, -1):
            finished(store, "a", at=T0 - age * day, status="skipped")
        finished(store, "b", at=T0 - 100, status="failed")
        finished(store, "c", at=T0 - 100, status="failed")
        assert store.prune_all({"a": (14 * day, None), "b": (10.0, 10.0), "c": (10.0, None)}, T0) == 59
        assert [r.status for r in store.runs("a")] == ["success"]
        assert (len(store.runs("b")), len(store.runs("c"))) == (0, 1)


class TestJobsBudgets:
    def test_first_seen_is_kept_and_pause_round_trips(self, store):
        store.see_jobs(["a"], T0)
        store.see_jobs(["a", "b"], T0 + 50)
        states = store.job_states(["a", "b"])
        assert (states["a"].first_seen, states["b"].first_seen) == (T0, T0 + 50)
        store.set_paused("a", True, T0)
        assert store.job_states(["a", "b"])["a"].paused and not store.job_states(["b"])["b"].paused
        store.set_paused("a", False, T0)
        assert not store.job_states(["a"])["a"].paused

    def test_spend_takes_from_every_bucket_or_from_none(self, store):
        rates = {"api": (15.0, 900.0), "search": (2.0, 60.0)}
        assert store.spend(["search"], rates, 1.5, T0) is None
        ready = store.spend(["api", "search"], rates, 1, T0)
        assert ready == pytest.approx(T0 + 15)  # search needs half a token at 2 a minute
        assert store.budget_levels(rates, T0) == {"api": 15.0, "search": pytest.approx(0.5)}
        assert store.spend(["search"], rates, 3, T0) == float("inf")

    def test_a_retry_after_pauses_the_buckets_and_keeps_their_tokens(self, store):
        rates = {"api": (60.0, 3600.0)}
        assert store.spend(["api"], rates, 1, T0) is None
        store.block_budgets(["api"], T0 + 5, rates, T0)
        assert store.spend(["api"], rates, 1, T0 + 1) == pytest.approx(T0 + 5)
        assert store.spend(["api"], rates, 1, T0 + 5) is None
        assert store.budget_levels(rates, T0 + 5)["api"] == pytest.approx(58 + 5 / 60)

    def test_a_bucket_time_later_than_now_is_clamped_not_trusted(self, store):
        rates = {"api": (24.0, 86400.0)}  # one token an hour
        assert store.spend(["api"], rates, 24, T0 + 86400) is None  # a clock a day ahead
        # back to the true time: the hours from now on refill as usual, not from tomorrow
        assert store.budget_levels(rates, T0)["api"] == 0
        assert store.spend(["api"], rates, 1, T0) == pytest.approx(T0 + 3600)
        assert store.spend(["api"], rates, 1, T0 + 3600) is None


class TestAlerts:
    def test_notifications_are_kept_newest_first_and_bounded(self, store):
        store.record_notifications([Notification("a", "failure", f"https://h/{i}", T0 + i, i % 2 == 0,
                                                  "HTTP 204", i) for i in range(5)], keep=3)
        assert [n.run_id for n in store.notifications("a")] == [4, 3, 2]

    def test_audit_entries_are_kept_newest_first_bounded_per_job_and_found_by_breaker(self, store):
        ids = [store.record_audit(AuditEntry(T0 + i, "trigger", "a", "token", "127.0.0.1", item_id=i,
                                             params='{"n": "1"}', reason=f"r{i}"), keep=3) for i in range(5)]
        assert ids == sorted(ids) and len(set(ids)) == 5
        assert [e.item_id for e in store.audit("a")] == [4, 3, 2]  # the two oldest pruned
        newest = store.audit("a", limit=1)[0]
        assert (newest.at, newest.action, newest.who, newest.client, newest.params, newest.reason, newest.id) == \
            (T0 + 4, "trigger", "token", "127.0.0.1", '{"n": "1"}', "r4", ids[4])
        store.record_audit(AuditEntry(None, "breaker_reset", None, "basic:ops", "::1", breaker="api"), keep=3)
        store.record_audit(AuditEntry(T0 + 9, "pause", "b", "basic:ops", "::1"), keep=3)
        assert [e.action for e in store.audit("a", "api")] == ["breaker_reset", "trigger", "trigger", "trigger"]
        assert [e.action for e in store.audit("b", "other")] == ["pause"]
        assert store.audit("a", "api")[0].at > T0  # None: the store's clock

    def test_an_alert_is_claimed_once_per_mark(self, store):
        assert store.claim_alert("a", "late", T0) is True
        assert store.claim_alert("a", "late", T0) is False
        assert store.claim_alert("a", "late", T0 + 60) is True

    def test_a_repeat_claim_is_granted_once_the_mark_is_older_than_every(self, store):
        """``repeat:``: the first failure of a streak claims plainly, later ones with ``every``."""
        assert store.claim_alert("a", "failure:slack:0", T0) is True
        assert store.claim_alert("a", "failure:slack:0", T0 + 59, every=60) is False
        assert store.claim_alert("a", "failure:slack:0", T0 + 60, every=60) is True
        assert store.claim_alert("a", "failure:slack:0", T0 + 100, every=60) is False
        assert store.claim_alert("b", "failure:slack:0", T0, every=60) is True  # no mark yet


def test_the_job_lock_excludes_a_second_holder(store):
    first, second = store.locks.lock("a"), store.locks.lock("a")
    assert first.acquire() and not second.acquire()
    # SQLite's lock is a descriptor the job inherits; PostgreSQL's is a lease row (none)
    assert first.held() and (first.pass_fds or store.claims_slots)
    first.release()
    assert second.acquire()
    second.release()


class TestCounters:
    """Run and request counters for `rate()`: bumped by finishes, skips and crashes in the
    same step as the run's row, never lowered by pruning."""

    def test_finished_runs_are_counted_by_job_and_status_with_their_requests(self, store):
        finished(store, "a", T0, "success", requests=3)
        finished(store, "a", T0 + 10, "success", requests=2)
        finished(store, "a", T0 + 20, "failed")
        finished(store, "b", T0, "timeout", requests=1)
        assert store.counters() == {"a": {"success": (2, 5), "failed": (1, 0)}, "b": {"timeout": (1, 1)}}

    def test_a_running_run_is_not_counted_until_it_finishes(self, store):
        started(store, "a", T0)
        assert store.counters() == {}

    def test_skips_and_crashes_are_counted(self, store):
        host, pid, _ = store.liveness.owner()
        skip = Run(0, "a", "skipped", "cron", T0, host, pid, reason="locked", finished_at=T0, duration_ms=0)
        store.record_skip(skip, KEEP_ALL)
        run = started(store, "a", T0 + 1)
        [again] = store.running_runs(["a"])
        assert store.mark_crashed(run, "gone", API, False, now=T0 + 5)
        assert not store.mark_crashed(again, "gone", API, False, now=T0 + 6)  # counted once
        assert store.counters() == {"a": {"skipped": (1, 0), "crashed": (1, 0)}}

    def test_a_crash_keeps_and_counts_the_requests_spend_stored_as_the_run_went(self, store):
        rates = {"api": (2.0, 3600.0)}
        run = started(store, "a", T0)
        assert store.spend([], {}, 1, T0, count=(run.id, 1)) is None  # no budget: counted anyway
        assert store.spend(["api"], rates, 1, T0, count=(run.id, 2)) is None
        assert store.spend(["api"], rates, 1, T0, count=(run.id, 3)) is None
        assert store.spend(["api"], rates, 1, T0, count=(run.id, 4)) is not None  # denied: not sent
        [running] = store.running_runs(["a"])
        assert running.requests == 3
        assert store.mark_crashed(running, "gone", API, False, now=T0 + 5)
        assert store.run("a", run.id).requests == 3
        assert store.spend([], {}, 1, T0, count=(run.id, 9)) is None  # too late: the row is final
        assert store.run("a", run.id).requests == 3
        assert store.counters() == {"a": {"crashed": (1, 3)}}

    def test_pruning_does_not_lower_them(self, store):
        for k in range(5):
            finished(store, "a", T0 + k, "success", requests=1)
        assert store.prune_all({"a": (3600.0, None)}, now=T0 + 86400) == 4
        assert len(store.runs("a")) == 1
        assert store.counters() == {"a": {"success": (5, 5)}}


class TestRunTotals:
    """run_totals(): the histogram, items and retries of schedsync_run_duration_seconds,
    schedsync_items_total and schedsync_retries_total."""

    def test_each_finished_run_is_counted_in_its_bucket_with_items_and_retries(self, store):
        for k, (ms, attempts, processed, failed) in enumerate(
                ((50, 1, 10, 0), (100, 3, 5, 2), (2500, 2, 0, 0), (4_000_000, 1, 1, 1))):
            finished(store, "a", T0 + k, "success" if k % 2 == 0 else "failed", duration_ms=ms,
                     attempts=attempts, items_processed=processed, items_failed=failed)
        totals = store.run_totals()["a"]
        assert totals["buckets"] == {0.1: 2, 5.0: 1}  # 0.1 holds 0.1 itself; over 1 h: no bucket
        assert (totals["runs"], totals["processed"], totals["failed"], totals["deleted"], totals["retries"]) == \
            (4, 16, 3, 0, 3)
        assert totals["seconds"] == pytest.approx(4002.65)

    def test_skips_and_crashes_are_not_runs_of_the_histogram(self, store):
        host, pid, _ = store.liveness.owner()
        skip = Run(0, "a", "skipped", "cron", T0, host, pid, reason="locked", finished_at=T0, duration_ms=0)
        store.record_skip(skip, KEEP_ALL)
        finished(store, "a", T0 + 1, "skipped", evidence=False, duration_ms=0)  # an http job's empty budget
        run = started(store, "a", T0 + 2)
        assert store.mark_crashed(run, "gone", API, False, now=T0 + 5)
        assert store.run_totals() == {}

    def test_pruning_does_not_lower_them(self, store):
        for k in range(5):
            finished(store, "a", T0 + k, "success", duration_ms=200, attempts=2, items_processed=3)
        assert store.prune_all({"a": (3600.0, None)}, now=T0 + 86400) == 4
        totals = store.run_totals()["a"]
        assert (totals["runs"], totals["buckets"], totals["processed"], totals["retries"]) == (5, {0.5: 5}, 15, 5)


class TestAdhocJobs:
    def test_settings_are_remembered_by_name_and_replaced(self, store):
        assert store.adhoc_jobs() == {}
        store.see_jobs(["listed"], T0)
        store.set_adhoc("backup", '{"timeout": 60}', T0)
        store.set_adhoc("backup", '{"timeout": 90}', T0 + 1)
        assert store.adhoc_jobs() == {"backup": '{"timeout": 90}'}
        assert store.job_states(["backup"])["backup"].first_seen == T0  # noted as seen

    def test_none_forgets_them(self, store):
        store.set_adhoc("backup", '{"timeout": 60}', T0)
        store.set_adhoc("backup", None, T0 + 1)
        assert store.adhoc_jobs() == {}


# --- contention: real processes, each with its own connection -----------------------------

def _race(target: str, body: str, args: list) -> list[str]:
    """One process per item of ``args`` (its ``sys.argv[4]``) running ``body`` against
    ``target``, all released at one instant; their outputs (one line each)."""
    script = textwrap.dedent("""\
        import os, sys, time
        from schedsync.store import open_store, BreakerSpec
        store = open_store(sys.argv[1])
        API = BreakerSpec("api", {"name": "api", "failures": 3, "reset_after": 600.0, "half_open_runs": 1})
        T0 = float(sys.argv[2])
        while time.time() < float(sys.argv[3]):
            time.sleep(0.001)
    """) + textwrap.dedent(body)
    go = time.time() + 2 + 0.1 * len(args)  # every process started and connected first
    procs = [subprocess.Popen([sys.executable, "-c", script, target, repr(T0), repr(go), str(arg)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for arg in args]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outs.append(out.strip())
    return outs


def test_a_hundred_processes_on_a_fifteen_token_budget_get_exactly_fifteen(store_factory):
    store = store_factory()  # created and migrated once, as the first cron run would
    outs = _race(store_factory.target, """\
        print(store.spend(["up"], {"up": (15.0, 86400.0)}, 1, T0) is None)
    """, list(range(100)))
    assert outs.count("True") == 15 and outs.count("False") == 85
    assert store.budget_levels({"up": (15.0, 86400.0)}, T0) == {"up": 0.0}


def test_a_hundred_processes_racing_for_one_half_open_probe_make_one_trial(store_factory):
    store = store_factory()
    for i in range(3):
        finished(store, at=T0 + i, status="failed")
    outs = _race(store_factory.target, """\
        admitted = store.admit_run("a", "cron", API, 60.0, [], {}, 0, now=T0 + 700)
        print("trial" if admitted.trial else admitted.reason)
    """, list(range(100)))
    assert outs.count("trial") == 1 and outs.count("breaker_open") == 99
    assert len(store.running_runs(["a"])) == 1


def test_concurrent_finish_run_on_one_breaker_loses_no_failure(store_factory):
    store = store_factory()
    runs = [started(store, at=T0 + i) for i in range(50)]
    outs = _race(store_factory.target, """\
        spec = BreakerSpec("api", {"name": "api", "failures": 1000, "reset_after": 600.0,
                                   "half_open_runs": 1})
        [run] = [r for r in store.running_runs(["a"]) if r.id == int(sys.argv[4])]
        run.status, run.finished_at = "failed", T0 + 50
        print(store.finish_run(run, spec, True, False, 60.0, {}, now=T0 + 50))
    """, [run.id for run in runs])
    assert outs == ["None"] * 50
    assert store.breakers(["api"])["api"].failures == 50
    assert store.running_runs() == []


def test_a_retry_later_counts_as_a_retry_on_both_backends(store):
    """schedsync_retries_total: attempts after the first, plus one for a run a retry later
    started, alike on SQLite and PostgreSQL (a command job's attempts may be 0)."""
    [item] = store.enqueue("a", [{"slot": T0, "kind": "retry", "due_at": T0, "retry_of": 1, "retry_number": 1}])
    run = store.admit_run("a", "retry", API, 60.0, [], {}, 0, now=T0 + 1, item=getattr(item, "id", item)).run
    run.status, run.finished_at, run.duration_ms, run.attempts = "success", T0 + 2, 1000, 0
    store.finish_run(run, API, True, False, 60.0, KEEP_ALL, now=T0 + 2)
    assert store.run_totals()["a"]["retries"] == 1


# --- resume points and freshness watermarks (http.resume, fresh:) -----------------------

def test_a_resume_point_is_saved_replaced_ended_and_a_watermark_only_grows(store):
    assert store.resume_point("sync") is None
    store.save_resume("sync", 7, '{"page": 2}', 100.0, now=1000.0)
    store.save_resume("sync", 7, '{"page": 3}', 100.0, now=1010.0)
    point = store.resume_point("sync")
    assert (point.point, point.saved_at, point.run_id, point.began_at, point.done_run) == \
        ('{"page": 3}', 1010.0, 7, 100.0, None)
    store.end_resume("sync", done_run=8, began_at=100.0, now=1020.0)  # a resumed sync completed
    point = store.resume_point("sync")
    assert (point.point, point.run_id, point.done_run, point.done_began) == (None, None, 8, 100.0)
    store.save_resume("sync", 9, '{"page": 2}', 200.0)  # a new sync keeps what the last one noted
    assert (store.resume_point("sync").done_run, store.resume_point("sync").done_began) == (8, 100.0)
    assert abs(store.resume_point("sync").saved_at - store.now()) < 60  # the store's clock
    store.end_resume("sync")
    assert store.resume_point("sync") is None

    assert store.note_watermark("sync", None) is None
    assert store.note_watermark("sync", 500.0) == 500.0
    assert store.note_watermark("sync", 400.0) == 500.0  # older values never lower it
    assert store.note_watermark("sync", 600.5) == 600.5
    assert store.watermarks(["sync", "other"]) == {"sync": 600.5}
    assert store.watermarks([]) == {}
