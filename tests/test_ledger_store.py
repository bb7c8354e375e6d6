"""The slot ledger's store contract (issue 17), on both backends through the port alone:
once-per-slot claims, skips and missed slots on the ledger, the queue (enqueue,
claim_due, stale claims, release), the tick's two steps, retention, and a race of real
processes claiming the same work. Same fixtures as ``test_store.py``."""

from __future__ import annotations

import pytest

import test_store
from schedsync.core.models import SKIPPED, Run
from schedsync.store.base import CLAIM_STALE
from test_store import API, KEEP_ALL, T0, _race

store_factory, store = test_store.store_factory, test_store.store  # the contract's fixtures


def admit(store, job="a", at=T0, slot=None, item=None, budgets=(), cost=0, trigger="cron"):
    rates = {b: (1.0, 3600.0) for b in budgets}
    return store.admit_run(job, trigger, API, 60.0, list(budgets), rates, cost, now=at, slot=slot, item=item)


def finish(store, run, at):
    run.status, run.finished_at, run.duration_ms = "success", at, 1000
    store.finish_run(run, API, True, False, 60.0, KEEP_ALL, now=at)


def skip(store, job, at, reason, slot=None, item=None):
    run = Run(0, job, SKIPPED, "cron", at, "h", 1, reason=reason, finished_at=at, duration_ms=0, slot=slot)
    store.record_skip(run, KEEP_ALL, item=item)
    return run


def states(store, job="a"):
    return [(s.slot, s.kind, s.state) for s in store.slots(job)]


class TestCronClaims:
    def test_a_slot_is_claimed_once_and_the_run_records_it(self, store):
        first = admit(store, slot=T0 - 60)
        assert first.run.slot == T0 - 60 and first.run.retry_number == 0
        again = admit(store, slot=T0 - 60, at=T0 + 1)
        assert again.run is None and again.reason == "already_ran" and "--force-slot" in again.error
        assert states(store) == [(T0 - 60, "cron", "ran")]
        assert store.slots("a")[0].run_id == first.run.id
        finish(store, first.run, T0 + 2)
        assert store.runs("a")[0].slot == T0 - 60

    def test_a_rate_limited_claim_leaves_the_slot_skipped_and_claimable(self, store):
        assert admit(store, budgets=["api"], cost=1, slot=T0 - 120).run is not None
        denied = admit(store, budgets=["api"], cost=1, slot=T0 - 60, at=T0 + 1)
        assert denied.reason == "rate_limited"
        skip(store, "a", T0 + 1, "rate_limited", slot=T0 - 60)
        assert (T0 - 60, "cron", "skipped") in states(store)
        assert store.slots("a")[0].reason == "rate_limited"
        assert admit(store, budgets=["api"], cost=1, slot=T0 - 60, at=T0 + 3601).run is not None
        assert (T0 - 60, "cron", "ran") in states(store)

    def test_an_already_ran_skip_leaves_the_slot_as_it_was(self, store):
        admit(store, slot=T0)
        skip(store, "a", T0 + 1, "already_ran", slot=T0)
        assert states(store) == [(T0, "cron", "ran")]

    def test_a_clock_that_stepped_back_replays_no_slot(self, store):
        assert admit(store, slot=T0).run is not None
        back = admit(store, slot=T0 - 3600, at=T0 - 3590)
        assert back.reason == "already_ran" and "stepped back" in back.error

    def test_a_person_claims_no_slot(self, store):
        admit(store, slot=T0)
        assert admit(store, at=T0 + 1).run.slot is None
        assert len(store.slots("a")) == 1


class TestQueue:
    def test_enqueue_is_idempotent_and_claims_are_oldest_first_one_per_job(self, store):
        ids = store.enqueue("a", [{"slot": T0 - 120, "kind": "catchup", "due_at": T0 - 10},
                                  {"slot": T0 - 180, "kind": "catchup", "due_at": T0 - 20}])
        assert store.enqueue("a", [{"slot": T0 - 120, "kind": "catchup", "due_at": T0}]) == ids[:1]
        store.enqueue("b", [{"slot": None, "kind": "retry", "due_at": T0 - 5, "retry_of": 7,
                             "retry_number": 1}])
        store.enqueue("c", [{"slot": T0, "kind": "backfill", "due_at": T0 + 100}])  # not due yet
        assert store.queued("a") == 2
        got = store.claim_due(["a", "b", "c"], 10, "h:1", now=T0)
        assert [(i.job, i.slot, i.state, i.claimed_by) for i in got] == [
            ("a", T0 - 180, "claimed", "h:1"), ("b", None, "claimed", "h:1")]
        assert got[1].retry_of == 7 and got[1].retry_number == 1
        assert store.claim_due(["a", "b", "c"], 10, "h:2", now=T0 + 1) == []  # a's first is being started
        run = admit(store, at=T0 + 1, item=got[0].id, trigger="catchup").run
        assert store.claim_due(["a", "b", "c"], 10, "h:2", now=T0 + 1) == []  # and now it runs
        finish(store, run, T0 + 2)
        assert store.claim_due(["a", "b", "c"], 10, "h:2", now=T0 + 3)[0].slot == T0 - 120

    def test_a_claim_whose_run_never_started_returns_to_the_queue(self, store):
        [item] = store.enqueue("a", [{"slot": T0, "kind": "backfill", "due_at": T0}])
        assert [i.id for i in store.claim_due(["a"], 5, "h:1", now=T0)] == [item]
        assert store.claim_due(["a"], 5, "h:2", now=T0 + CLAIM_STALE - 1) == []
        again = store.claim_due(["a"], 5, "h:2", now=T0 + CLAIM_STALE + 1)
        assert [(i.id, i.claimed_by) for i in again] == [(item, "h:2")]

    def test_a_run_of_an_item_marks_it_ran_once(self, store):
        [item] = store.enqueue("a", [{"slot": T0 - 60, "kind": "catchup", "due_at": T0}])
        store.claim_due(["a"], 1, "h:1", now=T0)
        admitted = admit(store, at=T0 + 1, item=item, trigger="catchup")
        assert admitted.run.slot == T0 - 60 and admitted.run.trigger == "catchup"
        got = store.item(item)
        assert got.state == "ran" and got.run_id == admitted.run.id
        second = admit(store, at=T0 + 2, item=item, trigger="catchup")
        assert second.reason == "already_ran" and f"work item {item} is ran" in second.error
        assert admit(store, at=T0 + 3, item=99999).reason == "already_ran"

    def test_an_item_run_not_admitted_goes_back_or_is_skipped(self, store):
        [back] = store.enqueue("a", [{"slot": T0 - 60, "kind": "catchup", "due_at": T0}])
        [cron] = store.enqueue("a", [{"slot": T0, "kind": "cron", "due_at": T0}])
        skip(store, "a", T0, "rate_limited", item=back)
        skip(store, "a", T0, "breaker_open", item=cron)
        assert (store.item(back).state, store.item(back).reason) == ("queued", "rate_limited")
        assert (store.item(cron).state, store.item(cron).reason) == ("skipped", "breaker_open")

    def test_release_cancel_and_missed_counts(self, store):
        ids = store.enqueue("a", [{"slot": T0 - 60 * i, "kind": "catchup", "due_at": T0} for i in range(1, 4)])
        assert store.release_item(ids[0], "missed", "window closed")
        assert not store.release_item(ids[0], "queued")  # not claimed or queued any more
        assert store.release_item(ids[1], "skipped", "superseded")
        assert store.cancel_queued("a", "backfill") == 0 and store.cancel_queued("a") == 1
        assert store.queued("a") == 0
        assert store.record_slots("a", [T0 - 600, T0 - 540], "missed") == 2
        assert store.record_slots("a", [T0 - 600], "missed") == 0
        assert store.slot_counters() == {"a": 3}


class TestTick:
    def test_the_two_steps_of_a_tick(self, store):
        store.see_jobs(["a"], now=T0 - 3600)
        look, items = store.begin_tick("h1", "h1:10", {"a": "k1", "b": "k1"}, 10, now=T0)
        assert look == {"a": (None, T0 - 3600), "b": (None, None)} and items == []
        assert store.last_tick().host == "h1" and store.last_tick().error is None
        claimed = store.settle_slots(
            [{"job": "a", "key": "k1", "until": T0 - 300, "next_at": T0 + 60, "missed": [T0 - 360, T0 - 300],
              "claim": T0},
             {"job": "b", "key": "k1", "until": None, "next_at": T0 + 600, "missed": [], "claim": None}],
            "h1:10", now=T0)
        assert [(i.job, i.slot, i.state, i.kind) for i in claimed] == [("a", T0, "claimed", "cron")]
        assert store.settle_slots([{"job": "a", "key": "k1", "until": T0 - 300, "next_at": T0 + 60,
                                    "missed": [], "claim": T0}], "h2:1", now=T0) == []
        assert states(store) == [(T0, "cron", "claimed"), (T0 - 300, "cron", "missed"),
                                 (T0 - 360, "cron", "missed")]
        assert store.slot_counters() == {"a": 2}
        look, _ = store.begin_tick("h2", "h2:1", {"a": "k1", "b": "k1"}, 10, now=T0 + 30)
        assert look == {}  # nothing to look at before next_at
        look, _ = store.begin_tick("h2", "h2:1", {"a": "k2", "b": "k1"}, 10, now=T0 + 30)
        assert look == {"a": (None, T0 - 3600)}  # the schedule changed
        look, _ = store.begin_tick("h2", "h2:1", {"a": "k1", "b": "k1"}, 10, now=T0 + 60)
        assert look == {"a": (T0 - 300, T0 - 3600)}
        # a claimed cron item is started by ``run --item`` like any item
        admitted = admit(store, at=T0 + 61, item=claimed[0].id)
        assert admitted.run.slot == T0 and store.item(claimed[0].id).state == "ran"

    def test_the_tick_claims_no_slot_older_than_one_that_ran(self, store):
        admit(store, slot=T0)
        assert store.settle_slots([{"job": "a", "key": "k", "until": None, "next_at": None,
                                    "missed": [], "claim": T0 - 3600}], "h:1", now=T0 - 3590) == []

    def test_a_tick_noted_with_an_error(self, store):
        store.note_tick("h1", error="jobs.yaml:3: bad", now=T0)
        tick = store.last_tick()
        assert (tick.host, tick.at, tick.error) == ("h1", T0, "jobs.yaml:3: bad")


def test_the_ledger_is_pruned_with_the_runs_but_keeps_the_newest_slot(store):
    for i in range(5):
        finish(store, admit(store, slot=T0 + 60 * i, at=T0 + 60 * i).run, T0 + 60 * i + 1)
    store.enqueue("a", [{"slot": T0 - 86400, "kind": "backfill", "due_at": T0}])
    store.prune_all({"a": (10.0, None)}, now=T0 + 86400)
    assert states(store) == [(T0 + 240, "cron", "ran"), (T0 - 86400, "backfill", "queued")]


@pytest.mark.parametrize("n", [20])
def test_processes_racing_for_queued_work_claim_each_item_once(store_factory, n):
    store = store_factory()
    for job in ("a", "b", "c"):
        store.enqueue(job, [{"slot": T0 - 60 * i, "kind": "backfill", "due_at": T0 - i} for i in range(5)])
    outs = _race(store_factory.target, """\
        got = []
        for _ in range(10):
            got += [i.id for i in store.claim_due(["a", "b", "c"], 2, "h:" + sys.argv[4], now=T0)]
        print(" ".join(map(str, got)))
    """, list(range(n)))
    claimed = [int(i) for out in outs for i in out.split()]
    # each item at most once, and one item per job in flight however many claimers
    assert len(claimed) == 3 and {store.item(i).job for i in claimed} == {"a", "b", "c"}


# --- api items (issue 18: ``schedsync trigger``) ---------------------------------------------

def test_an_api_item_is_queued_once_per_params_until_its_run_starts(store):
    first, deduped = store.enqueue_api("a", '{"x":"1"}', T0)
    assert not deduped and store.enqueue_api("a", '{"x":"1"}', T0 + 5) == (first, True)
    other, _ = store.enqueue_api("a", '{"x":"2"}', T0)
    none, _ = store.enqueue_api("a", None, T0)
    assert len({first, other, none}) == 3 and store.enqueue_api("a", None, T0) == (none, True)
    assert store.enqueue_api("b", '{"x":"1"}', T0)[0] not in (first, other, none)  # per job
    item = store.item(first)
    assert (item.kind, item.state, item.slot, item.params, item.due_at) == ("api", "queued", None, '{"x":"1"}', T0)
    # claimed by a tick: still waiting to start, still the same item
    claimed = store.claim_due(["a"], 1, "h:1", now=T0 + 1)
    assert [c.id for c in claimed] == [first] and store.enqueue_api("a", '{"x":"1"}', T0) == (first, True)
    # a skipped start hands it back, queued
    skip(store, "a", T0 + 2, "locked", item=first)
    assert store.item(first).state == "queued" and store.enqueue_api("a", '{"x":"1"}', T0) == (first, True)
    got = admit(store, item=first, at=T0 + 3, trigger="api")
    assert got.run is not None and store.item(first).state == "ran"
    # once its run started, the same params queue a new item, however many ran before
    again, deduped = store.enqueue_api("a", '{"x":"1"}', T0 + 4)
    assert again != first and not deduped
    finish(store, got.run, T0 + 5)
    assert store.runs("a")[0].trigger == "api"


def test_a_run_stores_its_params(store):
    got = store.admit_run("a", "api", API, 60.0, [], {}, 0, now=T0, params='{"final":"1"}')
    assert got.run.params == '{"final":"1"}'
    finish(store, got.run, T0 + 1)
    run = skip(store, "a", T0 + 2, "paused")
    assert [r.params for r in store.runs("a")] == [None, '{"final":"1"}'] and run.params is None
    assert store.run("a", got.run.id).params == '{"final":"1"}'


def test_processes_racing_to_trigger_the_same_params_queue_one_item(store_factory):
    store = store_factory()
    outs = _race(store_factory.target, """\
        item, deduped = store.enqueue_api("a", '{"x":"1"}', T0)
        print(item, deduped)
    """, list(range(20)))
    ids = {out.split()[0] for out in outs}
    assert len(ids) == 1 and sorted(out.split()[1] for out in outs) == ["False"] + ["True"] * 19
    assert [s.kind for s in store.slots("a")] == ["api"]
