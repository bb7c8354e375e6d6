"""Fencing across a real link cut: network namespaces joined by a veth pair.

Every participant lives in a namespace this test creates: the server (ns "srv",
10.213.77.1), the host that loses its link (ns "cut", 10.213.77.2, its own host
name and pid space too) and the host that takes over (ns "other", no network: it
reaches the server over the unix socket, which no link cut touches). Before
anything, a blackhole route for 10.213.77.0/24 goes into the root namespace, and
nothing here connects to that range from the root namespace; everything is
deleted afterwards. So no packet of this test can leave the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from pgserver import PgServer
from schedsync.store.postgres import LEASE, RECONNECT_FOR

RANGE, SERVER_IP, HOST_IP = "10.213.77.0/24", "10.213.77.1", "10.213.77.2"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"),
                                reason="network namespaces need root, ip and unshare")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@pytest.fixture
def namespaces():
    tag = f"ss{os.getpid() % 100000}"
    names = {"srv": f"{tag}srv", "cut": f"{tag}cut", "other": f"{tag}oth"}
    sh("ip", "route", "add", "blackhole", RANGE)  # first: nothing for this range leaves the root ns
    try:
        for name in names.values():
            sh("ip", "netns", "add", name)
        srv, cut = names["srv"], names["cut"]
        sh("ip", "netns", "exec", srv, "ip", "link", "add", "vs", "type", "veth", "peer", "name", "vc",
           "netns", cut)
        sh("ip", "netns", "exec", srv, "ip", "addr", "add", f"{SERVER_IP}/30", "dev", "vs")
        sh("ip", "netns", "exec", cut, "ip", "addr", "add", f"{HOST_IP}/30", "dev", "vc")
        for ns, dev in ((srv, "vs"), (cut, "vc")):
            sh("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", names["other"], "ip", "link", "set", "lo", "up")
        yield names
    finally:
        for name in names.values():
            sh("ip", "netns", "del", name, check=False)
        sh("ip", "route", "del", "blackhole", RANGE, check=False)


def test_a_host_that_loses_its_link_stops_its_job_before_another_host_starts_it(namespaces, project):
    server = PgServer()
    try:
        server.start(listen=SERVER_IP, wrap=("ip", "netns", "exec", namespaces["srv"]))
        db = server.createdb()
        tcp_url = f"postgresql://postgres@{SERVER_IP}/{db}"
        socket_url = server.url(db)
        marks = project.path / "marks"
        marks.mkdir()
        os.chmod(marks, 0o777)
        loop = (f"echo start $(date +%s.%N) >> {marks}/$(hostname);"
                f" while true; do date +%s.%N > {marks}/$(hostname).alive; sleep 0.1; done")
        project.write(f"""
            jobs:
              long:
                command: ["sh", "-c", "{loop}"]
                timeout: 10m
        """)
        argv = " ".join(f"'{a}'" for a in project.argv("run", "long"))
        cut_host = subprocess.Popen(
            ["ip", "netns", "exec", namespaces["cut"], "unshare", "--uts", "--pid", "--fork", "--mount-proc",
             "sh", "-c", f"hostname cut && exec {argv}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            cwd=project.path, env={**project.env, "SCHEDSYNC_STATE": tcp_url}, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline and not (marks / "cut.alive").exists():
            time.sleep(0.1)
        assert (marks / "cut.alive").exists(), cut_host.stderr.read() if cut_host.poll() is not None else ""
        # The cut: the host's side of the link goes away; the server's socket just stops hearing.
        sh("ip", "netns", "exec", namespaces["cut"], "ip", "link", "set", "vc", "down")
        cut_at = time.time()
        took_over = None
        while time.time() - cut_at < LEASE + 30:
            other = subprocess.run(
                ["ip", "netns", "exec", namespaces["other"], "unshare", "--uts", "--pid", "--fork",
                 "--mount-proc", "sh", "-c", f"hostname other && exec timeout 10 {argv}"],
                capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=project.path,
                env={**project.env, "SCHEDSYNC_STATE": socket_url})
            if (marks / "other").exists():
                took_over = float((marks / "other").read_text().split()[1])
                break
            assert other.returncode == 75, other.stderr  # locked: the cut host's session still holds it
            time.sleep(0.2)
        # changed on purpose (leases): after fencing, the cut host tries RECONNECT_FOR seconds
        # to record the run's end before it gives up
        out, err = cut_host.communicate(timeout=RECONNECT_FOR + 40)
        assert took_over is not None, "the other host never got the lock"
        last_alive = float((marks / "cut.alive").read_text())
        assert "stopping the job so that no other host runs it" in err
        assert last_alive < took_over, (last_alive, took_over)  # never two copies at once
        assert took_over - cut_at < LEASE + 10  # the lease lapsed in seconds, not hours
    finally:
        server.stop()
