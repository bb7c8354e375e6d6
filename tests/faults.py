"""The harness of the fault test (tests/test_cluster_faults.py): simulated hosts, a
nemesis, and a checker that trusts only the jobs' own log.

Layout (every participant in a namespace the harness creates; nothing of RANGE is
ever reached from the root namespace, where a blackhole route for it goes first):

- ``srv``: the PostgreSQL server (tests/pgserver.py), listening on one address per link;
- ``h1``..``h3``: the hosts, each its own network namespace joined to ``srv`` by a veth
  pair (10.213.79.4i+1 on the server's side, .4i+2 on the host's), and its own pid,
  mount and hostname namespace (``unshare``), where tests/faults_host.py (pid 1) starts
  ``schedsync run JOB`` like cron;
- ``obs``: a fourth host, never cut, that samples ``status --json`` during the chaos.

The root namespace reads the database only over the server's unix socket (psql).
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pgserver import PgServer

RANGE = "10.213.79.0/24"
HERE = Path(__file__).resolve().parent
HOSTS = ("h1", "h2", "h3")
OBSERVER = "obs"


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def link_ips(i: int) -> tuple[str, str]:
    """(server side, host side) of host number ``i`` (1-based)."""
    return f"10.213.79.{4 * i + 1}", f"10.213.79.{4 * i + 2}"


class Namespaces:
    """The network namespaces; ``close`` deletes them and the blackhole route."""

    def __init__(self):
        tag = f"sf{os.getpid() % 100000}"
        self.names = {name: f"{tag}{name}" for name in ("srv", *HOSTS, OBSERVER)}
        self.routed = False

    def create(self) -> None:
        sh("ip", "route", "add", "blackhole", RANGE)  # first: nothing for this range leaves the root ns
        self.routed = True
        for name in self.names.values():
            sh("ip", "netns", "add", name)
        srv = self.names["srv"]
        sh("ip", "netns", "exec", srv, "ip", "link", "set", "lo", "up")
        for i, host in enumerate((*HOSTS, OBSERVER), start=1):
            ns = self.names[host]
            server_ip, host_ip = link_ips(i)
            sh("ip", "netns", "exec", srv, "ip", "link", "add", f"s{i}", "type", "veth", "peer", "name", "vc",
               "netns", ns)
            sh("ip", "netns", "exec", srv, "ip", "addr", "add", f"{server_ip}/30", "dev", f"s{i}")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{host_ip}/30", "dev", "vc")
            sh("ip", "netns", "exec", srv, "ip", "link", "set", f"s{i}", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "vc", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def server_ips(self) -> str:
        return ",".join(link_ips(i)[0] for i in range(1, len(HOSTS) + 2))

    def inode(self, host: str) -> int:
        return os.stat(f"/var/run/netns/{self.names[host]}").st_ino

    def link(self, host: str, up: bool) -> None:
        sh("ip", "netns", "exec", self.names[host], "ip", "link", "set", "vc", "up" if up else "down")

    def close(self) -> None:
        for name in self.names.values():
            sh("ip", "netns", "del", name, check=False)
        if self.routed:
            sh("ip", "route", "del", "blackhole", RANGE, check=False)


def in_host(ns: str, hostname: str, argv: list[str]) -> list[str]:
    """``argv`` in network namespace ``ns``, in a new pid, mount and hostname namespace whose
    pid 1 it is; ``--kill-child``: if unshare dies, so does the namespace's every process."""
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
    return ["ip", "netns", "exec", ns, "unshare", "--uts", "--pid", "--fork", "--kill-child",
            "--mount-proc", "sh", "-c", f"hostname {hostname} && exec {quoted}"]


# --- processes, as the root namespace sees them ------------------------------------------

def argv_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def inner_pid(pid: int) -> int:
    """The pid as its own (innermost) pid namespace sees it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        pass
    return 0


def has_children(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return bool(f.read().strip())
    except OSError:
        return False


def schedsync_runs(inode: int) -> list[int]:
    """The ``schedsync run`` processes a host's driver started (not their keepers), by
    their pid in the root namespace."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != inode:
                continue
        except OSError:
            continue
        argv = argv_of(pid)
        if "schedsync" not in argv or "run" not in argv:
            continue
        if any(a.endswith("faults_host.py") for a in argv_of(parent_of(pid))):
            found.append(pid)
    return found


# --- the cluster ---------------------------------------------------------------------------

@dataclass
class Sample:
    before: float
    after: float
    code: int
    shown: list = field(default_factory=list)  # (job, run id, status) of each job's last run


class Cluster:
    def __init__(self, project, jobs: dict[str, float], seed: int):
        self.project = project
        self.jobs = jobs  # name -> longest run in seconds (each run lasts half of it to all of it)
        self.long_job = max(jobs, key=jobs.get)  # the one a paused and cut holder is running, if it can
        self.rng = random.Random(seed)
        self.seed = seed
        self.ns = Namespaces()
        self.server = PgServer()
        self.dir = project.path / "faults"
        self.log = self.dir / "jobs.log"
        self.drivers: dict[str, subprocess.Popen] = {}
        self.files: list = []
        self.stopped: set[int] = set()
        self.cut: set[str] = set()
        self.mutex = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.counts = {"kills": 0, "stops": 0, "cuts": 0, "stopcuts": 0, "restarts": 0}
        self.killed: set[tuple[str, int]] = set()  # (host, schedsync pid) the nemesis killed -9
        self.pauses: list[tuple[str, int, float, float]] = []  # (host, schedsync pid, stopped, resumed)
        self.samples: list[Sample] = []
        self.nemesis_log: list[str] = []
        self.poke = threading.Event()
        self.db = ""

    # setup and teardown

    def start(self) -> None:
        self.dir.mkdir()
        os.chmod(self.dir, 0o777)
        self.ns.create()
        self.server.start(listen=self.ns.server_ips(), wrap=("ip", "netns", "exec", self.ns.names["srv"]))
        self.db = self.server.createdb()
        lines = ["jobs:"]
        for name, longest in self.jobs.items():
            argv = [sys.executable, "-S", str(HERE / "faults_job.py"), str(self.log), name, str(longest)]
            lines += [f"  {name}:", f"    command: {json.dumps(argv)}", "    timeout: 1m", "    overlap: skip"]
        self.project.write("\n".join(lines) + "\n")

    def url(self, i: int) -> str:
        return f"postgresql://postgres@{link_ips(i)[0]}/{self.db}"

    def env(self, host: str, i: int) -> dict:
        """Host ``host``'s environment: the state over its own link, and a local state folder
        of its own (where a run that cannot reach the database leaves its trace)."""
        return {**self.project.env, "SCHEDSYNC_STATE": self.url(i),
                "XDG_STATE_HOME": str(self.dir / f"state-{host}")}

    def tick(self) -> None:
        """A last cron tick on every host (``status``): each replays what its runs left in its
        local state while the database was away."""
        for i, host in enumerate(HOSTS, start=1):
            self.cli_in(host, i, "status")

    def run_hosts(self, until: float, every: tuple[float, float]) -> None:
        for i, host in enumerate(HOSTS, start=1):
            err = (self.dir / f"{host}.err").open("w")  # noqa: SIM115 (closed by close())
            self.files.append(err)
            settings = {"argv": self.project.argv(), "jobs": list(self.jobs), "until": until,
                        "every": list(every), "events": str(self.dir / "events.log"),
                        "output": str(self.dir / f"{host}.out")}
            self.drivers[host] = subprocess.Popen(
                in_host(self.ns.names[host], host,
                        [sys.executable, str(HERE / "faults_host.py"), json.dumps(settings)]),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                cwd=self.project.path, env=self.env(host, i))

    def wait_hosts(self, timeout: float) -> dict[str, int | None]:
        end = time.time() + timeout
        codes = {}
        for host, proc in self.drivers.items():
            try:
                codes[host] = proc.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                codes[host] = None
        return codes

    def keep(self) -> None:
        """With SCHEDSYNC_FAULTS_KEEP=DIR: the logs (jobs, hosts' output, nemesis, records)
        copied to DIR/seed-N, for a look after the fact."""
        where = os.environ.get("SCHEDSYNC_FAULTS_KEEP")
        if not where:
            return
        (self.dir / "nemesis.log").write_text("".join(f"{line}\n" for line in self.nemesis_log))
        try:
            (self.dir / "records.json").write_text(json.dumps(self.records(), indent=0))
        except subprocess.CalledProcessError:
            pass
        shutil.copytree(self.dir, Path(where) / f"seed-{self.seed}", dirs_exist_ok=True)

    def close(self) -> None:
        try:
            self.keep()
        except OSError:
            pass
        with self.mutex:
            stopped = list(self.stopped)
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for proc in self.drivers.values():  # unshare --kill-child: its namespace's processes die with it
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

        for f in self.files:
            f.close()
        try:
            self.server.stop()
        finally:
            self.ns.close()

    # what the observer sees

    def cli_in(self, host: str, i: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(in_host(self.ns.names[host], host, self.project.argv(*args)),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              cwd=self.project.path, env=self.env(host, i))

    def status(self) -> Sample:
        before = time.time()
        try:
            result = self.cli_in(OBSERVER, len(HOSTS) + 1, "status", "--json")
        except subprocess.TimeoutExpired:
            return Sample(before, time.time(), -1)
        sample = Sample(before, time.time(), result.returncode)
        if result.returncode == 0:
            for job in json.loads(result.stdout)["jobs"]:
                last = job.get("last_run") or {}
                if last:
                    sample.shown.append((job["name"], last.get("id"), last.get("status")))
        return sample

    def observe(self, until: float, every: float = 1.5) -> None:
        def loop():
            while time.time() < until:
                self.samples.append(self.status())
                self.poke.wait(every)  # at once after a server restart: when reapers are busiest
                self.poke.clear()

        self._spawn(loop)

    # the nemesis

    def note(self, what: str) -> None:
        self.nemesis_log.append(f"{time.time():.6f} {what}")

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _victim(self, hosts=HOSTS, job: str | None = None) -> tuple[str, int] | None:
        """A random ``schedsync run`` of one of ``hosts``, preferably one whose job is going
        (and is ``job``)."""
        found = [(host, pid) for host in hosts for pid in schedsync_runs(self.ns.inode(host))]
        with self.mutex:
            found = [(h, p) for h, p in found if p not in self.stopped]
        busy = [(h, p) for h, p in found if has_children(p)]
        that = [(h, p) for h, p in busy if argv_of(p)[-1:] == [job]]
        return self.rng.choice(that or busy or found) if found else None

    def kill(self) -> None:
        victim = self._victim()
        if victim:
            host, pid = victim
            inner = inner_pid(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            self.killed.add((host, inner))
            self.counts["kills"] += 1
            self.note(f"kill {host} {inner} {' '.join(argv_of(pid)[-1:])}")

    def _pause(self, victim: tuple[str, int], seconds: float, cut: bool = False) -> None:
        """SIGSTOP a schedsync for ``seconds`` (with its host's link cut meanwhile: ``cut``)."""
        host, pid = victim
        inner, job = inner_pid(pid), " ".join(argv_of(pid)[-1:])
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            with self.mutex:
                if cut:
                    self.cut.discard(host)
            return
        stopped_at = time.time()
        self.note(f"stop {host} {inner} {job} for {seconds:.1f}s" + (", link cut" if cut else ""))
        with self.mutex:
            self.stopped.add(pid)
        try:
            if cut:
                self.ns.link(host, up=False)
            time.sleep(seconds)
            if cut:
                self.ns.link(host, up=True)
        finally:
            if cut:
                with self.mutex:
                    self.cut.discard(host)
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.pauses.append((host, inner, stopped_at, time.time()))
            self.note(f"cont {host} {inner} {job}" + (", link up" if cut else ""))
            with self.mutex:
                self.stopped.discard(pid)

    def paused_after(self, host: str, pid: int, since: float) -> float:
        """How long the nemesis kept that schedsync stopped after ``since``."""
        return sum(max(0.0, end - max(start, since)) for h, p, start, end in self.pauses
                   if (h, p) == (host, pid))

    def stop(self) -> None:
        victim = self._victim()
        if victim:
            self.counts["stops"] += 1
            self._spawn(self._pause, victim, self.rng.uniform(2, 7))

    def _free_host(self) -> str | None:
        with self.mutex:
            free = [h for h in HOSTS if h not in self.cut]
            if not free:
                return None
            host = self.rng.choice(free)
            self.cut.add(host)
            return host

    def cut_link(self) -> None:
        host = self._free_host()
        if host is None:
            return
        self.counts["cuts"] += 1

        def cut(seconds: float) -> None:
            self.ns.link(host, up=False)
            self.note(f"cut {host} for {seconds:.1f}s")
            time.sleep(seconds)
            self.ns.link(host, up=True)
            self.note(f"link up {host}")
            with self.mutex:
                self.cut.discard(host)

        self._spawn(cut, self.rng.uniform(4, 12))

    def stop_and_cut(self) -> None:
        """A holder's schedsync paused while its host's link is cut, long enough for the
        server to give its job to another host (preferably a holder of the long job, which
        outlasts the pause)."""
        with self.mutex:
            free = [h for h in HOSTS if h not in self.cut]
        victim = self._victim(free, self.long_job)
        if victim is None:
            return
        host = victim[0]
        with self.mutex:
            if host in self.cut:
                return
            self.cut.add(host)
        self.counts["stopcuts"] += 1
        self._spawn(self._pause, victim, self.rng.uniform(9, 14), True)

    def restart(self) -> None:
        user = ["runuser", "-u", self.server.owner, "--"] if self.server.owner else []
        sh("ip", "netns", "exec", self.ns.names["srv"], *user, f"{self.server.bin}/pg_ctl", "-D",
           self.server.data, "-l", os.path.join(self.server.dir, "log"), "-m", "fast", "-w", "-t", "60",
           "restart")
        self.note("restarted the server")
        self.counts["restarts"] += 1
        self.poke.set()

    def nemesis(self, seconds: float) -> None:
        actions = [self.restart, self.kill, self.stop, self.kill, self.cut_link, self.stop_and_cut]
        end = time.time() + seconds
        while time.time() < end:
            round_ = list(actions)
            self.rng.shuffle(round_)
            for action in round_:
                if time.time() >= end:
                    break
                action()
                time.sleep(self.rng.uniform(1.5, 3.5))
        for thread in self.threads:
            thread.join(timeout=30)

    # reading back

    def records(self) -> list[dict]:
        names = ",".join(f"'{n}'" for n in self.jobs)
        rows = self.server.psql(
            self.db, "SELECT id, job, status, coalesce(reason, ''), host, pid, started_at,"
            " coalesce(finished_at, 'NaN'::float8), coalesce(duration_ms, -1),"
            " replace(coalesce(error, ''), E'\\n', ' ')"
            f" FROM schedsync.runs WHERE job IN ({names}) ORDER BY id")
        out = []
        for line in rows.splitlines():
            id_, job, status, reason, host, pid, started, finished, took, error = line.split("|", 9)
            out.append({"id": int(id_), "job": job, "status": status, "reason": reason, "host": host,
                        "pid": int(pid), "started_at": float(started), "finished_at": float(finished),
                        "duration_ms": int(took), "error": error})
        return out

    def launches(self) -> list[tuple[str, str, int, int | None]]:
        """(job, host, pid, exit code or None) of every ``schedsync run`` the hosts started."""
        path = self.dir / "events.log"
        started, codes = [], {}
        for line in (path.read_text() if path.exists() else "").splitlines():
            parts = line.split()
            if parts[0] == "launch":  # launch JOB PID HOST TIME
                started.append((parts[1], parts[3], int(parts[2])))
            elif parts[0] == "exit":  # exit JOB PID CODE HOST TIME
                codes[(parts[1], parts[4], int(parts[2]))] = int(parts[3])
        return [(job, host, pid, codes.get((job, host, pid))) for job, host, pid in started]

    def truth(self) -> dict:
        return parse_log(self.log.read_text() if self.log.exists() else "")


# --- the checker ---------------------------------------------------------------------------

@dataclass
class Interval:
    job: str
    host: str
    pid: int  # its schedsync's, in its host's pid namespace
    start: float
    last: float  # its last line: its end, or no earlier than a tick before its death
    ended: float | None = None  # the ``end`` line: the job finished
    termed: bool = False


def parse_log(text: str) -> dict[tuple[str, str, int], Interval]:
    runs: dict[tuple[str, str, int], Interval] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 6:
            continue
        event, job, host, pid, _mono, real = parts
        key, at = (job, host, int(pid)), float(real)
        if event == "start":
            if key in runs:  # no schedsync found (pid 0), or a pid reused: keep both
                runs[(job, host, -len(runs))] = runs.pop(key)
            runs[key] = Interval(job, host, int(pid), at, at)
            continue
        run = runs.get(key)
        if run is None:
            continue
        run.last = max(run.last, at)
        if event == "end":
            run.ended = at
        elif event == "term":
            run.termed = True
    return runs


def overlaps(runs: dict) -> list[tuple[Interval, Interval, float]]:
    """Pairs of runs of one job whose [start, last line] intervals intersect, with by how much."""
    found = []
    by_job: dict[str, list[Interval]] = {}
    for run in runs.values():
        by_job.setdefault(run.job, []).append(run)
    for intervals in by_job.values():
        intervals.sort(key=lambda r: r.start)
        for i, a in enumerate(intervals):
            for b in intervals[i + 1:]:
                if b.start >= a.last:
                    break  # sorted by start: no later b starts before a ends
                found.append((a, b, min(a.last, b.last) - b.start))
    return found


@dataclass
class Verdict:
    started: int
    finished: int
    overlaps: list
    left_running: list
    not_recorded: list  # (interval, record or None): the job wrote ``end`` but its record is wrong
    live_crashed: list  # (interval, record): marked crashed while its job still ran
    observer_live_crashed: list  # (sample, interval): status showed crashed, the job ran on after
    tracebacks: int
    lag: float  # the longest a finished run's finished_at trailed its job's end (recording late)
    # (job, host, pid, exit code) of a `schedsync run` that left no record at all: measured
    # and printed, not yet required (a connection lost before admission leaves no trace)
    untraced: list

    def problems(self) -> str:
        """Every violation, one line each, for an assertion's message."""
        def run(r: Interval) -> str:
            return f"{r.job} on {r.host} (schedsync pid {r.pid}) {r.start:.2f}..{r.last:.2f}"

        def rec(r: dict | None) -> str:
            if r is None:
                return "no record"
            return f"record {r['id']} {r['status']} at {r['finished_at']:.2f} ({r['error'][:80]})"

        lines = [f"overlap {d:.2f}s: {run(a)} and {run(b)}" for a, b, d in self.overlaps]
        lines += [f"left running: record {r['id']} of {r['job']} on {r['host']}" for r in self.left_running]
        lines += [f"finished at {r.ended:.2f} but {rec(x)}: {run(r)}" for r, x in self.not_recorded]
        lines += [f"marked crashed while live: {run(r)}, {rec(x)}" for r, x in self.live_crashed]
        lines += [f"shown crashed at {s.after:.2f} while live: {run(r)}" for s, r in self.observer_live_crashed]
        if self.tracebacks:
            lines.append(f"{self.tracebacks} tracebacks in the hosts' output")
        return "\n".join(lines)

    def summary(self, cluster: Cluster, seconds: float) -> str:
        c = cluster.counts
        worst = max((o[2] for o in self.overlaps), default=0.0)
        crashed = sum(1 for _, r in self.not_recorded if r and r["status"] == "crashed")
        return (f"faults (seed {cluster.seed}, {seconds:.0f}s of chaos): {c['kills']} kills, {c['stops']} stops, "
                f"{c['cuts']} cuts, {c['stopcuts']} stop+cuts, {c['restarts']} restarts; "
                f"{self.started} runs started, {self.finished} finished; "
                f"{len(self.overlaps)} overlaps (worst {worst:.2f}s), {len(self.left_running)} left running, "
                f"{len(self.not_recorded)} finished but not recorded with their end ({crashed} crashed; "
                f"finished_at up to {self.lag:.1f}s after the end), "
                f"{len(self.live_crashed)} live runs marked crashed, "
                f"{len(self.observer_live_crashed)} shown crashed to the observer while live "
                f"({len(cluster.samples)} samples), {self.tracebacks} tracebacks; "
                f"{len(self.untraced)} of {len(cluster.launches())} `schedsync run`s left no record "
                f"(exit codes {sorted(collections.Counter(u[3] for u in self.untraced).items(), key=str)})")


def check(cluster: Cluster, slack: float = 5.0, early: float = 2.0) -> Verdict:
    """``slack``: how long after its job's ``end`` a run's recorded end may be, besides the
    time the nemesis kept its schedsync stopped after that end (it notices only then).
    ``early``: how long before. The recorded end is ``finished_at`` or ``started_at`` plus
    the duration, whichever is closer: ``finished_at`` is the server's clock when the finish
    statement arrives (seconds late when it crossed a link cut), the other the server's start
    plus this host's monotonic duration since the admission's answer (early by that answer's
    delay); the summary reports how far ``finished_at`` trails."""
    runs = cluster.truth()
    every = cluster.records()
    records = [r for r in every if r["status"] != "skipped"]
    traced = {(r["job"], r["host"], r["pid"]) for r in every}
    untraced = [launch for launch in cluster.launches()
                if launch[:3] not in traced and launch[1:3] not in cluster.killed]
    by_owner = {}
    for record in records:
        by_owner.setdefault((record["job"], record["host"], record["pid"]), []).append(record)

    def record_of(run: Interval):
        candidates = by_owner.get((run.job, run.host, run.pid), [])
        return min(candidates, key=lambda r: abs(r["started_at"] - run.start), default=None)

    not_recorded, live_crashed, lags = [], [], []
    for run in runs.values():
        record = record_of(run)
        if run.ended is None or (run.host, run.pid) in cluster.killed:
            pass
        elif record is None or record["status"] != "success" or not any(
                run.ended - early <= end <= run.ended + slack + cluster.paused_after(run.host, run.pid, run.ended)
                for end in (record["finished_at"], record["started_at"] + record["duration_ms"] / 1000)):
            not_recorded.append((run, record))
        else:
            lags.append(record["finished_at"] - run.ended)
        if record and record["status"] == "crashed" and run.last > record["finished_at"] + 0.5:
            live_crashed.append((run, record))
    by_id = {r["id"]: r for r in records}
    by_record = {}
    for run in runs.values():
        record = record_of(run)
        if record:
            by_record[record["id"]] = run
    observer = []
    for sample in cluster.samples:
        for _job, run_id, status in sample.shown:
            run = by_record.get(run_id)
            if status == "crashed" and run_id in by_id and run and run.last > sample.after:
                observer.append((sample, run))
    tracebacks = sum((cluster.dir / f"{h}.out").read_text(errors="replace").count("Traceback")
                     for h in HOSTS if (cluster.dir / f"{h}.out").exists())
    return Verdict(len(runs), sum(1 for r in runs.values() if r.ended is not None), overlaps(runs),
                   [r for r in records if r["status"] == "running"], not_recorded, live_crashed, observer,
                   tracebacks, max(lags, default=0.0), untraced)


def available() -> str | None:
    """Why the fault test cannot run here, or None."""
    if os.geteuid() != 0:
        return "network, pid and hostname namespaces need root"
    for tool in ("ip", "unshare", "runuser"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    from pgserver import binaries

    if not binaries():
        return "PostgreSQL is not installed (apt-get install postgresql)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "the postgres extra is not installed (pip install -e '.[postgres]')"
    return None
