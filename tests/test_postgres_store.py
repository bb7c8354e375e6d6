"""The PostgreSQL backend against the store port (store/base.py), on a real server.

Single-process contract checks first, then "hosts": separate processes with their
own host name and pid space (``unshare --uts --pid --fork --mount-proc``, as root).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import schedsync.store.postgres as pg
from schedsync.core.models import Notification, Run
from schedsync.store import open_store
from schedsync.store.base import BreakerSpec

T0 = 1_790_000_000.0
HERE = Path(__file__).resolve().parent
RATES = {"api": (2.0, 60.0), "other": (5.0, 60.0)}
SPEC = BreakerSpec("b", {"failures": 2, "reset_after": 600, "half_open_runs": 1})
KEEP = {"success": 14 * 86400.0, "failed": None}


@pytest.fixture
def url(pg_url):
    return pg_url


@pytest.fixture
def store(url):
    opened = open_store(url)
    yield opened
    opened.close()


def admit(store, job="a", at=T0, budgets=(), cost=1.0, slot=None, spec=SPEC, trigger="cron"):
    return store.admit_run(job, trigger, spec, 60.0, list(budgets), RATES, cost, now=at, slot=slot)


def finish(store, admitted, status="success", at=None, evidence=True, error=None, **fields):
    run = admitted.run
    run.status, run.error = status, error
    run.finished_at = (at if at is not None else run.started_at + 1)
    run.duration_ms = int((run.finished_at - run.started_at) * 1000)
    for key, value in fields.items():
        setattr(run, key, value)
    return store.finish_run(run, spec_of(run), evidence, admitted.trial, 60.0, KEEP, now=run.finished_at)


def spec_of(run):
    return SPEC


class TestRuns:
    def test_a_run_is_admitted_stamped_with_its_owner_and_finished_with_every_field(self, store):
        got = admit(store)
        assert got.run and got.run.status == "running" and got.reason is None
        host, pid, token = store.liveness.owner()
        assert (got.run.host, got.run.pid, got.run.pid_start) == (host, pid, token)
        assert [r.id for r in store.running_runs(["a"])] == [got.run.id]
        finish(store, got, "partial", attempts=2, requests=7, items_processed=5, items_failed=1,
               exit_code=0, output="tail", reason="rate_limited", retry_at=T0 + 60, error="1 bad")
        back = store.run("a")
        assert (back.status, back.attempts, back.requests, back.items_processed, back.items_failed,
                back.exit_code, back.output, back.reason, back.retry_at, back.error, back.duration_ms) == (
            "partial", 2, 7, 5, 1, 0, "tail", "rate_limited", T0 + 60, "1 bad", 1000)
        assert store.running_runs() == []
        assert store.run("a", back.id) == back and store.run("a", back.id + 99) is None

    def test_the_server_clock_decides_when_no_time_is_given(self, store):
        assert abs(store.now() - time.time()) < 5  # same machine: the offset is tiny
        got = store.admit_run("a", "cron", SPEC, 60.0, [], RATES, 0)
        assert abs(got.run.started_at - store.now()) < 2

    def test_a_run_lives_by_its_lease_not_its_session_and_is_crashed_once_it_lapses(
            self, url, store, monkeypatch):
        # Changed on purpose (leases, issue 21): a closed session no longer frees anything;
        # the renewer reconnects, and a run is gone only once its lease has expired.
        monkeypatch.setattr(pg, "LEASE", 3.0)
        monkeypatch.setattr(pg, "MARGIN", 1.0)
        other = open_store(url)
        mine, theirs = admit(store), admit(other, job="b")
        assert store.liveness.gone(store.running_runs()) == []
        other.db.close()  # its session ends: the renewer connects again and keeps the lease
        time.sleep(4.5)  # longer than the lease
        assert store.liveness.gone(store.running_runs()) == [] and other.locks.held()
        other.locks._stopped.set()  # its holder stops renewing (paused, dead, cut off)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not store.liveness.gone(store.running_runs()):
            time.sleep(0.05)
        assert not other.locks.held()
        assert store.mark_crashed(theirs.run, "gone", SPEC, False) is True
        assert store.mark_crashed(theirs.run, "gone", SPEC, False) is False
        assert store.run("b").status == "crashed"
        assert [r.id for r in store.running_runs()] == [mine.run.id]

    def test_skips_are_recorded_and_retention_keeps_the_newest_success(self, store):
        day = 86400.0
        old = admit(store, at=T0 - 30 * day)
        finish(store, old, "success")
        newer = admit(store, at=T0 - 20 * day)
        finish(store, newer, "success")
        skip = Run(0, "a", "skipped", "cron", T0, "h", 1, reason="locked", finished_at=T0,
                   duration_ms=0, error="busy")
        store.record_skip(skip, KEEP)
        assert skip.id and [r.status for r in store.runs("a")] == ["skipped", "success"]
        assert store.prune_all({"a": (day, None)}, T0) == 0  # the newest success stays
        assert [r.started_at for r in store.runs("a")] == [T0, T0 - 20 * day]

    def test_job_states_are_batched_for_many_jobs(self, store):
        for job in ("a", "b"):
            finish(store, admit(store, job=job, at=T0), "success")
            finish(store, admit(store, job=job, at=T0 + 10), "failed")
        states = store.job_states(["a", "b", "never"], recent=1)
        assert [r.status for r in states["a"].recent] == ["failed"]
        assert (states["b"].first_seen, states["b"].last_success_at, states["b"].last_started_at) == (
            T0, T0, T0 + 10)
        assert states["never"].recent == [] and states["never"].first_seen is None
        assert store.failure_streak("a") == 1 and store.failure_streak("a", before=T0 + 5) == 0


class TestPauseSlotsBudgets:
    def test_a_paused_job_is_not_admitted_and_nothing_changes(self, store):
        store.see_jobs(["a"], now=T0 - 5)
        store.set_paused("a", True, now=T0)
        got = admit(store, budgets=["api"])
        assert (got.run, got.reason) == (None, "paused")
        assert store.budget_levels(RATES, now=T0) == {"api": 2.0, "other": 5.0}
        store.set_paused("a", False)
        assert admit(store).run is not None
        assert store.job_states(["a"])["a"].first_seen == T0 - 5

    def test_a_slot_runs_once_and_the_skip_names_the_host_that_ran_it(self, store):
        first = admit(store, slot=T0 - 30)
        again = admit(store, slot=T0 - 30, at=T0 + 1)
        assert first.run and again.reason == "already_ran"
        assert store.liveness.owner()[0] in again.error and "--force-slot" in again.error
        assert admit(store, slot=None, at=T0 + 2).run is not None  # a person's run claims no slot
        assert admit(store, slot=T0 + 30, at=T0 + 31).run is not None

    def test_a_rate_limited_claim_gives_its_slot_back(self, store):
        assert admit(store, budgets=["api"], cost=2).run
        denied = admit(store, budgets=["api"], cost=2, slot=T0, at=T0 + 1)
        assert denied.reason == "rate_limited" and denied.retry_at > T0 + 1
        assert admit(store, budgets=["api"], cost=2, slot=T0, at=T0 + 61).run is not None

    def test_budgets_are_all_or_none_across_buckets(self, store):
        assert store.spend(["api", "other"], RATES, 2, now=T0) is None
        ready = store.spend(["api", "other"], RATES, 1, now=T0)
        assert ready == pytest.approx(T0 + 30)
        assert store.budget_levels(RATES, now=T0) == {"api": 0.0, "other": 3.0}  # other untouched
        assert store.spend(["api"], RATES, 3, now=T0) == float("inf")
        assert store.spend(["api", "other"], RATES, 1, now=ready) is None

    def test_a_clock_behind_the_stored_time_mints_nothing_and_retry_after_blocks(self, store):
        assert store.spend(["api"], RATES, 2, now=T0) is None
        assert store.spend(["api"], RATES, 1, now=T0 - 3600) is not None
        store.block_budgets(["other"], T0 + 30, RATES, now=T0)  # a Retry-After keeps the tokens
        assert store.budget_levels(RATES, now=T0 + 10)["other"] == 5.0
        assert store.spend(["other"], RATES, 1, now=T0 + 10) == pytest.approx(T0 + 30)
        assert store.spend(["other"], RATES, 1, now=T0 + 31) is None
        store.block_budgets(["other"], T0 + 999_999, RATES, now=T0 + 40)  # cut to a day
        assert store.spend(["other"], RATES, 1, now=T0 + 99) == pytest.approx(T0 + 40 + 86400)


class TestBreakers:
    def test_failures_open_it_half_open_admits_one_trial_and_success_closes_it(self, store):
        finish(store, admit(store, at=T0), "failed", error="boom")
        transition = finish(store, admit(store, at=T0 + 1), "failed", error="boom")
        assert transition[:2] == ("closed", "open") and transition[2].opens_until == T0 + 2 + 600
        shut = admit(store, at=T0 + 10)
        assert shut.reason == "breaker_open" and shut.retry_at == T0 + 602
        trial = admit(store, at=T0 + 700)
        assert trial.run and trial.trial
        second = admit(store, at=T0 + 701)
        assert second.reason == "breaker_open" and second.retry_at == T0 + 760
        assert finish(store, trial, "success", at=T0 + 702)[:2] == ("half-open", "closed")
        assert store.breakers(["b"])["b"].state == "closed"
        assert [t[1:3] for t in store.transitions("b")] == [("half-open", "closed"), ("closed", "open")]

    def test_a_trial_that_proved_nothing_hands_its_lease_back(self, store):
        for i in range(2):
            finish(store, admit(store, at=T0 + i), "failed")
        trial = admit(store, at=T0 + 700)
        assert admit(store, at=T0 + 701).reason == "breaker_open"
        assert finish(store, trial, "skipped", at=T0 + 702, evidence=False) is None
        assert admit(store, at=T0 + 703).trial

    def test_reset_by_hand_says_what_it_was(self, store):
        for i in range(2):
            finish(store, admit(store, at=T0 + i), "failed")
        assert store.reset_breaker("b", "by hand", now=T0 + 5) == "open"
        assert store.reset_breaker("b", "by hand") is None
        assert admit(store, at=T0 + 6).run is not None


class TestAlerts:
    def test_an_alert_is_claimed_once_per_mark_and_notifications_are_bounded(self, store):
        assert store.claim_alert("a", "late", T0) is True
        assert store.claim_alert("a", "late", T0) is False
        assert store.claim_alert("a", "late", T0 + 60) is True
        notes = [Notification("a", "failure", "https://x", T0 + i, i % 2 == 0, f"HTTP {i}", None)
                 for i in range(5)]
        store.record_notifications(notes, keep=3)
        assert [n.detail for n in store.notifications("a")] == ["HTTP 4", "HTTP 3", "HTTP 2"]


class TestLocks:
    def test_the_job_lease_is_cluster_wide_and_waits(self, url, store):
        # Changed on purpose: a lease is a row, not a session's lock: no descriptor to pass.
        other = open_store(url)
        try:
            mine = store.locks.lock("a")
            assert mine.acquire() and mine.held() and mine.pass_fds == ()
            assert store.locks.lock("a").acquire() is False  # this process holds it already
            theirs = other.locks.lock("a")
            started = time.monotonic()
            assert theirs.acquire(wait=0.6) is False
            assert time.monotonic() - started >= 0.5
            assert other.locks.lock("b").acquire()  # another job's lock is independent
            mine.release()
            assert theirs.acquire()
        finally:
            other.close()

    def test_a_dead_holder_s_lease_holds_until_it_expires_on_the_server_s_clock(self, url, store):
        # Changed on purpose: schedsync (here: a process) takes the lease and dies without a
        # word; its session ends at once, but the lease stands until expires_at.
        code = ("lock = store.locks.lock('a'); assert lock.acquire()\n"
                "print(__import__('json').dumps(out), flush=True); os._exit(0)\n")
        result = subprocess.run([sys.executable, str(HERE / "pg_host.py"), url, "1", "0", code],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        died = time.monotonic()
        lock = store.locks.lock("a")
        assert lock.acquire() is False
        while not lock.acquire() and time.monotonic() < died + pg.LEASE + 15:
            time.sleep(0.1)
        assert lock.taken and time.monotonic() - died > pg.LEASE - 2  # only once it lapsed


class TestSchema:
    def test_many_first_users_migrate_once(self, url):
        procs = [subprocess.Popen([sys.executable, str(HERE / "pg_host.py"), url, "1", "0",
                                   "out['v'] = store.now() > 0"], stdout=subprocess.PIPE, text=True)
                 for _ in range(6)]
        outs = [p.communicate(timeout=60)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs) and all('"v": true' in o for o in outs)

    def test_a_newer_schema_is_a_one_line_error(self, url, pg_server):
        open_store(url).close()
        pg_server.psql(url.split("/")[3].split("?")[0], "UPDATE schedsync.meta SET version = 99")
        from schedsync.core.errors import StateError

        with pytest.raises(StateError, match="newer schedsync"):
            open_store(url)

    def test_the_counters_migration_seeds_them_from_the_runs_already_recorded(self, pg_server):
        from schedsync.store.postgres_sql import MIGRATIONS

        db = pg_server.createdb()
        pg_server.psql(db, MIGRATIONS[0])  # a state written before the counters existed
        pg_server.psql(db, "INSERT INTO schedsync.runs (job, status, trigger, started_at, host, pid,"
                           " requests) VALUES ('a', 'success', 'cron', 0, 'h', 1, 2),"
                           " ('a', 'success', 'cron', 0, 'h', 1, 1), ('a', 'failed', 'cron', 0, 'h', 1, 0),"
                           " ('b', 'running', 'cron', 0, 'h', 1, 0)")
        store = open_store(pg_server.url(db))
        try:
            assert store.counters() == {"a": {"success": (2, 3), "failed": (1, 0)}}
            assert store.adhoc_jobs() == {}
        finally:
            store.close()
        assert pg_server.psql(db, "SELECT version FROM schedsync.meta").strip() == str(len(MIGRATIONS))

    def test_a_foreign_schedsync_schema_is_refused(self, pg_server):
        db = pg_server.createdb()
        pg_server.psql(db, "CREATE SCHEMA schedsync; CREATE TABLE schedsync.stuff (x int)")
        from schedsync.core.errors import StateError

        with pytest.raises(StateError, match="not a schedsync state database"):
            open_store(pg_server.url(db))


# --- hosts: own host name and pid space per host ---------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="simulated hosts need root and unshare")


def host(name: str, url: str, code: str, count: int = 1, start_at: float = 0.0) -> subprocess.Popen:
    script = f'hostname {name} && exec {sys.executable} {HERE / "pg_host.py"} "$@"'
    return subprocess.Popen(["unshare", "--uts", "--pid", "--fork", "--mount-proc",
                             "sh", "-c", script, "sh", url, str(count), str(start_at), code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def outputs(proc: subprocess.Popen, timeout: float = 120) -> list[dict]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


ADMIT_AND_FINISH = """
got = store.admit_run('sync', 'cron', spec, 60.0, ['quota'], {'quota': (15.0, 86400.0)}, 1.0)
if got.run:
    got.run.status = 'success'
    store.finish_run(got.run, spec, True, got.trial, 60.0, {}, None)
    out['ran'] = got.run.id
else:
    from schedsync.core.models import Run
    skip = Run(0, 'sync', 'skipped', 'cron', store.now(), out['host'], os.getpid(),
               reason=got.reason, finished_at=store.now(), duration_ms=0, error=got.error)
    store.record_skip(skip, {})
    out['skipped'] = got.reason
"""


@needs_root
class TestHosts:
    def test_three_hosts_of_34_processes_on_one_15_per_day_budget_run_exactly_15(self, url, store):
        start_at = time.time() + 6
        hosts = [host(f"host{i}", url, ADMIT_AND_FINISH, count=34, start_at=start_at) for i in range(3)]
        results = [r for h in hosts for r in outputs(h, timeout=240)]
        assert len(results) == 102
        ran = [r for r in results if "ran" in r]
        assert len(ran) == 15
        assert {r["skipped"] for r in results if "ran" not in r} == {"rate_limited"}
        runs = store.runs("sync", limit=500)
        assert len(runs) == 102 and sum(r.status == "success" for r in runs) == 15
        assert {r.host for r in runs} == {"host0", "host1", "host2"}

    def test_one_slot_on_three_hosts_runs_once_and_names_the_host(self, url):
        code = ("got = store.admit_run('tick', 'cron', spec, 60.0, [], {}, 0, slot=1790000040.0)\n"
                "out['ran'] = bool(got.run); out['error'] = got.error\n"
                "if got.run:\n    got.run.status = 'success'\n"
                "    store.finish_run(got.run, spec, True, got.trial, 60.0, {}, None)\n")
        results = []
        for i in range(3):  # the first finishes before the others start
            results += outputs(host(f"node{i}", url, code))
        assert [r["ran"] for r in results] == [True, False, False]
        assert all("already ran on node0" in r["error"] for r in results[1:])

    def test_kill_9_of_a_host_frees_its_lock_and_another_host_sees_the_run_crashed(self, url, store):
        holder = host("victim", url, (
            "lock = store.locks.lock('long'); assert lock.acquire()\n"
            "got = store.admit_run('long', 'cron', spec, 60.0, [], {}, 0)\n"
            "print('admitted', flush=True); time.sleep(120)\n"))
        assert holder.stdout.readline().strip() == "admitted"
        watch = ("lock = store.locks.lock('long'); out['lock'] = lock.acquire()\n"
                 "out['gone'] = [r.host for r in store.liveness.gone(store.running_runs(['long']))]\n")
        try:
            [seen] = outputs(host("watcher", url, watch))
            assert seen["lock"] is False and seen["gone"] == []  # alive elsewhere: never crashed
            os.killpg(holder.pid, signal.SIGKILL)  # the host's whole process tree
            holder.wait(timeout=10)
            killed_at = time.monotonic()
            code = (watch + "if out['lock']:\n"
                    "    for run in store.liveness.gone(store.running_runs(['long'])):\n"
                    "        out['crashed'] = store.mark_crashed(run, 'owner gone', spec, False)\n"
                    "    got = store.admit_run('long', 'cron', spec, 60.0, [], {}, 0)\n"
                    "    out['ran'] = bool(got.run)\n")
            while True:
                [seen] = outputs(host("rescuer", url, code))
                if seen["lock"] or time.monotonic() - killed_at > pg.LEASE + 15:
                    break
                time.sleep(0.2)
            assert seen["lock"] and seen["gone"] == ["victim"] and seen["crashed"] and seen["ran"]
            assert time.monotonic() - killed_at < pg.LEASE + 15  # once its lease lapsed
            assert store.runs("long")[1].status == "crashed"
        finally:
            if holder.poll() is None:
                os.killpg(holder.pid, signal.SIGKILL)

    def test_failures_on_alternating_hosts_open_the_shared_breaker(self, url):
        fail = ("got = store.admit_run('flaky', 'cron', spec, 60.0, [], {}, 0)\n"
                "out['reason'] = got.reason\n"
                "if got.run:\n    got.run.status = 'failed'; got.run.error = 'upstream 503'\n"
                "    out['transition'] = store.finish_run(got.run, spec, True, got.trial, 60.0, {}, None)"
                " is not None\n")
        results = []
        for i in range(4):  # failures: 3, on hosts a, b, a; then b is skipped
            results += outputs(host("ab"[i % 2], url, fail))
        assert [r["reason"] for r in results] == [None, None, None, "breaker_open"]
        assert [r.get("transition") for r in results[:3]] == [False, False, True]


def test_the_driver_import_leaves_ssl_importable_for_http_jobs(pg_server):
    code = ("import sys; import schedsync.store.postgres as pg; assert pg.psycopg2 is not None;"
            " assert 'ssl' not in sys.modules; import ssl; print(ssl.OPENSSL_VERSION)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "OpenSSL" in result.stdout, result.stderr
