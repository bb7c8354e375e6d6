"""A Jepsen-style test: three hosts under faults, judged by the jobs' own log.

Three simulated hosts (network, pid, mount and hostname namespaces of their own) start
``schedsync run`` for three jobs (runs of 1-2 s, 1.5-3 s and 10-20 s) every one to two
and a half seconds, like a fast cron, against PostgreSQL over TCP through veth links,
while a nemesis kill -9s schedsync, SIGSTOPs it for seconds, cuts a host's link
(sometimes with its schedsync paused), and restarts the server (``pg_ctl restart -m
fast``), for two minutes. A fourth host samples ``status --json`` meanwhile. The jobs
append start, tick and end lines to one file with O_APPEND: that log, not schedsync's
records, is the truth. Harness and checker: tests/faults.py (docs/development.md says
what it checks). SCHEDSYNC_FAULTS_SEED=N replays a nemesis' choices (not their timing);
SCHEDSYNC_FAULTS_SECONDS=N shortens the chaos when trying things (the checks need 120).
"""

from __future__ import annotations

import os
import time

import pytest

from faults import Cluster, available, check, overlaps, parse_log

CHAOS = float(os.environ.get("SCHEDSYNC_FAULTS_SECONDS") or 120)  # then a calm spell: every host runs again
CALM = 12.0


@pytest.mark.skipif(available() is not None, reason=str(available()))
def test_three_hosts_under_kills_pauses_cuts_and_server_restarts_never_run_a_job_twice(project):
    seed = int(os.environ.get("SCHEDSYNC_FAULTS_SEED") or time.time_ns() % 1_000_000)
    cluster = Cluster(project, {"alpha": 2.0, "beta": 3.0, "gamma": 20.0}, seed)
    try:
        cluster.start()
        begin = time.time()
        cluster.run_hosts(until=begin + CHAOS + CALM, every=(1.0, 2.5))
        cluster.observe(until=begin + CHAOS)
        cluster.nemesis(CHAOS)
        codes = cluster.wait_hosts(timeout=CALM + 90)
        assert all(code == 0 for code in codes.values()), (codes, [
            (cluster.dir / f"{h}.err").read_text()[-2000:] for h in codes])
        cluster.tick()  # each host's next tick replays what it could not record
        final = cluster.status()  # reaps what is left: every lease has lapsed by now
        verdict = check(cluster)
        print(verdict.summary(cluster, CHAOS))
    finally:
        cluster.close()
    assert final.code in (0, 1), final  # 1: a job is FAILING, which faults may well cause
    assert verdict.finished >= 20, "the hosts hardly ran anything: the test proves nothing"
    assert cluster.counts["restarts"] >= 3 and cluster.counts["kills"] >= 3
    problems = verdict.problems()
    assert not problems, "\n" + problems


def test_the_checker_reads_the_jobs_log_as_the_truth():
    """What the checker makes of a log: a killed run counts until its last line, runs of
    one job that intersect are an overlap (by how much), other jobs' runs never are."""
    log = """start a h1 10 1.0 100.0
tick a h1 10 1.1 100.1
start b h2 11 1.2 100.2
start a h2 12 1.3 100.35
tick a h1 10 1.5 100.5
term a h1 10 1.6 100.6
end b h2 11 1.7 100.7
end a h2 12 2.0 101.0
start a h3 13 2.1 101.0
tick a h3 13 2.2 101.1
"""
    runs = parse_log(log)
    first = runs[("a", "h1", 10)]
    assert (first.start, first.last, first.ended, first.termed) == (100.0, 100.6, None, True)
    assert runs[("b", "h2", 11)].ended == 100.7
    assert runs[("a", "h3", 13)].last == 101.1  # no end: killed, or still going
    found = overlaps(runs)
    assert [(a.host, b.host, round(d, 2)) for a, b, d in found] == [("h1", "h2", 0.25)]
