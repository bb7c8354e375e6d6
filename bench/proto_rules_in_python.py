"""Issue 16, option A measured: what a PostgreSQL tick's admission and end cost when
the rules (``core.budgets``, ``core.breaker``) run in Python inside one transaction
with ``SELECT ... FOR UPDATE``, against today's one PL/pgSQL call each.

    python bench/proto_rules_in_python.py [--rounds N]

A prototype, not the store: the statements a Python-side ``admit_run``/``finish_run``
would send, with round trips batched as far as the rules allow (BEGIN with the first
statement; the writes, the run's insert and its lock in one; COMMIT alone):
admit = 4 round trips (jobs+paused+breaker, buckets locked+read, writes, COMMIT),
finish = 3 (run+tally+breaker locked, breaker+events+prune+unlock, COMMIT),
against 1 each today. Interleaved rounds; medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from schedsync.core import breaker as breakers  # noqa: E402
from schedsync.core.budgets import take  # noqa: E402
from schedsync.core.models import FAILURES, Breaker, Bucket  # noqa: E402
from schedsync.store.base import BreakerSpec  # noqa: E402

SETTINGS = {"failures": 5, "reset_after": 600.0, "half_open_runs": 1}
RATES = {"api": (1e9, 1.0)}
RETENTION = {"success": 14 * 86400.0, "failed": None}


def plpgsql_tick(store, job):
    spec = BreakerSpec(job, SETTINGS)
    admitted = store.admit_run(job, "cron", spec, 360.0, ["api"], RATES, 1)
    run = admitted.run
    run.status, run.finished_at, run.duration_ms = "success", store.now(), 1
    store.finish_run(run, spec, True, admitted.trial, 360.0, RETENTION)


def python_tick(store, job):
    db = store.db
    now = store.now()
    with db.cursor() as cur:
        # admit: 1) seen + paused + breaker row locked
        cur.execute("BEGIN; INSERT INTO schedsync.jobs (name, first_seen) VALUES (%s, %s)"
                    " ON CONFLICT (name) DO NOTHING;"
                    " SELECT (SELECT paused FROM schedsync.jobs WHERE name = %s),"
                    " b.state, b.failures, b.opened_at, b.opens_until, b.leases"
                    " FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT * FROM schedsync.breakers"
                    " WHERE name = %s FOR UPDATE) AS b ON true", (job, now, job, job))
        paused, state, failures, opened_at, opens_until, leases = cur.fetchone()
        before = Breaker(job, state, failures, opened_at, opens_until, list(leases)) if state else Breaker(job)
        admission, after = breakers.admit(before, SETTINGS, now, 360.0)
        # 2) buckets created, locked in name order, read
        names = sorted(RATES)
        cur.execute("INSERT INTO schedsync.buckets (name, tokens, updated)"
                    " SELECT n, 1e9, %s FROM unnest(%s::text[]) n ORDER BY n ON CONFLICT DO NOTHING;"
                    " SELECT name, tokens, updated, blocked_until FROM schedsync.buckets"
                    " WHERE name = ANY (%s::text[]) ORDER BY name FOR UPDATE", (now, names, names))
        new = []
        for name, tokens, updated, blocked in cur.fetchall():
            granted, bucket, _ = take(Bucket(name, tokens, updated, blocked), name,
                                      RATES[name][0], RATES[name][1], 1, now)
            new.append(bucket)
        # 3) writes: buckets, lease, the run and its liveness lock
        cur.execute("UPDATE schedsync.buckets b SET tokens = u.t, updated = u.u, blocked_until = u.bl"
                    " FROM unnest(%s::text[], %s::float8[], %s::float8[], %s::float8[]) u(n, t, u, bl)"
                    " WHERE b.name = u.n;"
                    " WITH r AS (INSERT INTO schedsync.runs (job, status, trigger, started_at, host, pid, token)"
                    " VALUES (%s, 'running', 'cron', %s, 'h', 1, %s) RETURNING id)"
                    " SELECT id, pg_advisory_lock(1935893363, (id %% 2147483647)::int) FROM r",
                    ([b.name for b in new], [b.tokens for b in new], [b.updated for b in new],
                     [b.blocked_until for b in new], job, now, store.backend_pid))
        run_id = cur.fetchone()[0]
        cur.execute("COMMIT")  # 4)
        # finish: 1) the run, its tally, the breaker locked
        end = store.now()
        cur.execute("BEGIN; UPDATE schedsync.runs SET status = 'success', finished_at = %s, duration_ms = 1"
                    " WHERE id = %s; SELECT schedsync.tally(%s, 'success', 0);"
                    " SELECT b.state, b.failures, b.opened_at, b.opens_until, b.leases FROM (SELECT 1) AS one"
                    " LEFT JOIN LATERAL (SELECT * FROM schedsync.breakers WHERE name = %s FOR UPDATE) b ON true",
                    (end, run_id, job, job))
        state, failures, opened_at, opens_until, leases = cur.fetchone()
        before = Breaker(job, state, failures, opened_at, opens_until, list(leases)) if state else Breaker(job)
        after, transition = breakers.record(before, SETTINGS, end, ok="success" not in FAILURES, trial=False)
        # 2) breaker saved if changed, event, retention, unlock
        cur.execute("SELECT schedsync.prune(%s, %s, %s, %s, 100),"
                    " pg_advisory_unlock(1935893363, (%s %% 2147483647)::int)",
                    (job, end, RETENTION["success"], RETENTION["failed"], run_id))
        cur.execute("COMMIT")  # 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ticks", type=int, default=40)
    args = parser.parse_args()
    from pgserver import PgServer
    from schedsync.store import open_store

    server = PgServer().start()
    try:
        store = open_store(server.url(server.createdb("proto")))
        for f in (plpgsql_tick, python_tick):
            f(store, "warm")
        times = {"plpgsql": [], "python": []}
        for r in range(args.rounds):
            for name, f in sorted({"plpgsql": plpgsql_tick, "python": python_tick}.items(),
                                  key=lambda kv: (r + (kv[0] == "python")) % 2):
                started = time.perf_counter()
                for i in range(args.ticks):
                    f(store, f"{name}{i % 5}")
                times[name].append((time.perf_counter() - started) / args.ticks)
        for name, values in times.items():
            print(f"  admit+finish, {name:<8} {statistics.median(values) * 1000:6.2f} ms per tick")
        gap = statistics.median(times["python"]) - statistics.median(times["plpgsql"])
        print(f"  python - plpgsql: {gap * 1000:+.2f} ms per tick")
        store.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
