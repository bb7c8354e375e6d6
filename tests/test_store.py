"""The Store contract: what every backend must do. A PostgreSQL backend adds
itself to ``BACKENDS`` and must pass this file unchanged."""

from __future__ import annotations

import pytest

from schedsync.core.models import Breaker, Bucket, Notification, Run
from schedsync.store import open_store

T0 = 1_790_000_000.0  # a pinned "now"


def sqlite_store(tmp_path):
    return open_store(str(tmp_path / "state.db"))


BACKENDS = [sqlite_store]


@pytest.fixture(params=BACKENDS, ids=lambda make: make.__name__)
def store(request, tmp_path):
    opened = request.param(tmp_path)
    yield opened
    opened.close()


def started(store, job="a", at=T0, status="running", **fields) -> Run:
    run = Run(0, job, status, "cron", at, "host", 4242, **fields)
    with store.transaction():
        store.start_run(run)
    return run


def finished(store, job="a", at=T0, status="success", **fields) -> Run:
    run = started(store, job, at)
    run.status, run.finished_at, run.duration_ms = status, at + 1, 1000
    for key, value in fields.items():
        setattr(run, key, value)
    with store.transaction():
        store.finish_run(run)
    return run


class TestRuns:
    def test_it_keeps_every_field_of_a_finished_run(self, store):
        run = finished(store, status="partial", attempts=2, requests=7, items_processed=5,
                       items_failed=1, exit_code=0, error="1 item had no id", retry_at=T0 + 60,
                       output="tail", reason="rate_limited")
        [back] = store.runs("a")
        assert back == Run(run.id, "a", "partial", "cron", T0, "host", 4242, "rate_limited",
                           T0 + 1, 1000, 2, 7, 5, 1, 0, "1 item had no id", T0 + 60, "tail")

    def test_it_lists_runs_newest_first_with_a_limit_and_a_failed_filter(self, store):
        for i, status in enumerate(["success", "failed", "skipped", "timeout", "crashed"]):
            finished(store, at=T0 + i, status=status)
        assert [r.status for r in store.runs("a")] == ["crashed", "timeout", "skipped", "failed", "success"]
        assert [r.status for r in store.runs("a", limit=2)] == ["crashed", "timeout"]
        assert [r.status for r in store.runs("a", failed_only=True)] == ["crashed", "timeout", "failed"]
        assert store.runs("other") == []

    def test_a_running_run_is_crashed_once_however_many_readers_race(self, store):
        run = started(store)
        assert [r.id for r in store.running_runs("a")] == [run.id]
        with store.transaction():
            assert store.mark_crashed(run.id, T0 + 5, "gone") is True
            assert store.mark_crashed(run.id, T0 + 6, "gone") is False
        [back] = store.runs("a")
        assert (back.status, back.duration_ms, back.error) == ("crashed", 5000, "gone")
        assert store.running_runs() == []

    def test_job_states_give_what_health_needs(self, store):
        finished(store, at=T0, status="success")
        finished(store, at=T0 + 10, status="partial")
        finished(store, at=T0 + 20, status="failed")
        with store.transaction():
            store.see_job("a", T0 - 100)
        state = store.job_states(["a", "never"], recent=2)
        assert [r.status for r in state["a"].recent] == ["failed", "partial"]
        assert (state["a"].first_seen, state["a"].last_success_at, state["a"].last_started_at) == (
            T0 - 100, T0 + 10, T0 + 20)
        assert (state["never"].recent, state["never"].last_success_at) == ([], None)

    def test_the_failure_streak_counts_failures_since_the_last_success(self, store):
        finished(store, at=T0, status="failed")
        finished(store, at=T0 + 1, status="success")
        for i, status in enumerate(["failed", "skipped", "timeout", "crashed"]):
            finished(store, at=T0 + 2 + i, status=status)
        assert store.failure_streak("a") == 3
        assert store.failure_streak("a", before=T0 + 3) == 1


class TestRetention:
    def test_prune_removes_old_successes_and_skips_but_keeps_failures_forever(self, store):
        day = 86400.0
        finished(store, at=T0 - 30 * day, status="success")
        finished(store, at=T0 - 29 * day, status="skipped")
        finished(store, at=T0 - 28 * day, status="failed")
        finished(store, at=T0 - 20 * day, status="success")
        finished(store, at=T0 - 1 * day, status="skipped")
        with store.transaction():
            removed = store.prune("a", T0, keep_success=14 * day, keep_failed=None)
        # The newest success stays even though it is older than 14 days.
        assert removed == 2
        assert [r.status for r in store.runs("a")] == ["skipped", "success", "failed"]

    def test_prune_removes_old_skips_even_after_an_old_newest_success(self, store):
        day = 86400.0
        finished(store, at=T0 - 99 * day, status="success")
        for age in range(98, 40, -1):
            finished(store, at=T0 - age * day, status="skipped")
        with store.transaction():
            assert store.prune("a", T0, keep_success=14 * day, keep_failed=None) == 58
        assert [r.status for r in store.runs("a")] == ["success"]

    def test_prune_all_applies_each_jobs_policy(self, store):
        finished(store, "a", at=T0 - 100, status="failed")
        finished(store, "b", at=T0 - 100, status="failed")
        assert store.prune_all({"a": (10.0, 10.0), "b": (10.0, None)}, T0) == 1
        assert (len(store.runs("a")), len(store.runs("b"))) == (0, 1)


class TestJobsBudgetsBreakers:
    def test_first_seen_is_kept_and_pause_round_trips(self, store):
        with store.transaction():
            store.see_job("a", T0)
            store.see_job("a", T0 + 50)
        assert store.job_states(["a"])["a"].first_seen == T0
        store.set_paused("a", True, T0)
        assert store.is_paused("a") and not store.is_paused("b")
        store.set_paused("a", False, T0)
        assert not store.is_paused("a")

    def test_buckets_and_breakers_round_trip(self, store):
        assert store.load_bucket("api") is None
        assert store.load_breaker("api") == Breaker("api")
        with store.transaction():
            store.save_bucket(Bucket("api", 3.5, T0))
            store.save_bucket(Bucket("api", 2.5, T0 + 1))
            store.save_breaker(Breaker("api", "open", 5, T0, T0 + 600, [T0 + 30]))
            store.record_transition("api", T0, "closed", "open", "run 3 failed")
        assert store.load_bucket("api") == Bucket("api", 2.5, T0 + 1)
        assert store.load_breaker("api") == Breaker("api", "open", 5, T0, T0 + 600, [T0 + 30])
        assert store.transitions("api") == [(T0, "closed", "open", "run 3 failed")]

    def test_an_exception_rolls_the_whole_transaction_back_even_when_nested(self, store):
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.save_bucket(Bucket("api", 1.0, T0))
                with store.transaction():
                    store.save_bucket(Bucket("other", 1.0, T0))
                raise RuntimeError("boom")
        assert store.load_bucket("api") is None and store.load_bucket("other") is None


class TestAlerts:
    def test_notifications_are_kept_newest_first_and_bounded(self, store):
        store.record_notifications([Notification("a", "failure", f"https://h/{i}", T0 + i, i % 2 == 0,
                                                  "HTTP 204", i) for i in range(5)], keep=3)
        assert [n.run_id for n in store.notifications("a")] == [4, 3, 2]

    def test_an_alert_is_claimed_once_per_mark(self, store):
        assert store.claim_alert("a", "late", T0) is True
        assert store.claim_alert("a", "late", T0) is False
        assert store.claim_alert("a", "late", T0 + 60) is True


def test_the_job_lock_excludes_a_second_holder(store):
    first, second = store.job_lock("a"), store.job_lock("a")
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


class TestCounters:
    """Run and request counters for `rate()`: bumped by finishes, skips and crashes, never
    lowered by pruning."""

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
        skip = Run(0, "a", "skipped", "cron", T0, "host", 4242, reason="locked", finished_at=T0, duration_ms=0)
        with store.transaction():
            store.start_run(skip)
        run = started(store, "a", T0 + 1)
        with store.transaction():
            assert store.mark_crashed(run.id, T0 + 5, "gone")
            assert not store.mark_crashed(run.id, T0 + 6, "gone")  # counted once
        assert store.counters() == {"a": {"skipped": (1, 0), "crashed": (1, 0)}}

    def test_pruning_does_not_lower_them(self, store):
        for k in range(5):
            finished(store, "a", T0 + k, "success", requests=1)
        with store.transaction():
            assert store.prune("a", T0 + 86400, keep_success=3600, keep_failed=None) == 4
        assert store.counters() == {"a": {"success": (5, 5)}}


class TestAdhocJobs:
    def test_settings_are_remembered_by_name_and_replaced(self, store):
        assert store.adhoc_jobs() == {}
        with store.transaction():
            store.see_job("listed", T0)
            store.set_adhoc("backup", '{"timeout": 60}', T0)
            store.set_adhoc("backup", '{"timeout": 90}', T0 + 1)
        assert store.adhoc_jobs() == {"backup": '{"timeout": 90}'}


def test_migration_3_seeds_the_counters_from_the_runs_already_recorded(tmp_path):
    import sqlite3

    from schedsync.store.sqlite import MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:2]:  # a state written before the counters existed
        migration(db)
    db.execute("PRAGMA user_version = 2")
    rows = [("a", "success", 2), ("a", "success", 1), ("a", "failed", 0), ("b", "running", 0)]
    db.executemany("INSERT INTO runs (job, status, trigger, started_at, host, pid, requests)"
                   " VALUES (?, ?, 'cron', 0, 'h', 1, ?)", rows)
    db.close()
    store = open_store(str(path))
    try:
        assert store.counters() == {"a": {"success": (2, 3), "failed": (1, 0)}}
    finally:
        store.close()
