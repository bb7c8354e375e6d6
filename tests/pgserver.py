"""A throwaway PostgreSQL server for tests and benchmarks: Debian's binaries,
``initdb`` in a temp dir as the ``postgres`` user (when we are root), listening
only on a unix socket in that dir (``listen_addresses=''``), stopped on exit.

Roles: ``postgres`` (trust, the superuser tests connect as) and ``app`` with a
password (scram), for the password tests; ``create_role`` makes more (same password),
e.g. a hostile second role.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

APP_PASSWORD = "app-Secret-pw-42"


def binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1]) if found else None


def _as_owner(argv: list[str], owner: str | None, env: dict | None = None,
              **kwargs) -> subprocess.CompletedProcess:
    if env:
        kwargs["env"] = {**os.environ, **env}
    if owner:
        user = pwd.getpwnam(owner)

        def demote():
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

        kwargs["preexec_fn"] = demote
        kwargs["env"] = {**kwargs.get("env", os.environ), "HOME": user.pw_dir, "USER": owner}
    return subprocess.run(argv, capture_output=True, text=True, check=True, **kwargs)


class PgServer:
    def __init__(self):
        self.bin = binaries()
        if not self.bin:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.dir = tempfile.mkdtemp(prefix="schedsync-pg-")
        self.data = os.path.join(self.dir, "data")
        self.owner = "postgres" if os.geteuid() == 0 else None
        if self.owner:
            user = pwd.getpwnam(self.owner)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            os.chmod(self.dir, 0o755)
        self.started = False
        self.count = 0

    def start(self, max_connections: int = 200, listen: str = "", wrap: tuple = (),
              env: dict | None = None) -> PgServer:
        """``listen``: TCP addresses besides the socket (trust from 10.0.0.0/8 then);
        ``wrap``: a prefix for pg_ctl, e.g. ``("ip", "netns", "exec", NAME)``;
        ``env``: more environment for the server (e.g. ``LOCPATH``)."""
        _as_owner([f"{self.bin}/initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
                   "--auth-host=reject", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], self.owner)
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all postgres trust\nlocal all all scram-sha-256\n")
            if listen:
                f.write("host all postgres 10.0.0.0/8 trust\n")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"listen_addresses = '{listen}'\nunix_socket_directories = '{self.dir}'\n"
                    f"max_connections = {max_connections}\nfsync = off\n"
                    "synchronous_commit = off\nfull_page_writes = off\n"
                    "shared_buffers = 64MB\nlog_min_messages = fatal\n")
        start = [f"{self.bin}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"),
                 "-w", "-t", "60", "start"]
        if wrap:  # entering a namespace needs root: drop to the owner inside it
            user = ["runuser", "-u", self.owner, "--"] if self.owner else []
            _as_owner([*wrap, *user, *start], None)
        else:
            _as_owner(start, self.owner, env)
        self.started = True
        self.psql("postgres", f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'")
        return self

    def psql(self, db: str, sql: str, user: str = "postgres") -> str:
        """Run ``sql`` as ``user`` (a role from ``create_role``, or the superuser)."""
        env = {**os.environ, "PGPASSWORD": APP_PASSWORD}
        return subprocess.run([f"{self.bin}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                               "-h", self.dir, "-U", user, "-d", db, "-c", sql],
                              capture_output=True, text=True, check=True, env=env).stdout

    def create_role(self, prefix: str = "role") -> str:
        """A new login role (unique name, password ``APP_PASSWORD``), no other rights."""
        self.count += 1
        name = f"{prefix}_{os.getpid()}_{self.count}"
        self.psql("postgres", f"CREATE ROLE {name} LOGIN PASSWORD '{APP_PASSWORD}'")
        return name

    def createdb(self, name: str | None = None, owner: str = "postgres") -> str:
        self.count += 1
        name = name or f"t{os.getpid()}_{self.count}"
        self.psql("postgres", f'CREATE DATABASE "{name}" OWNER {owner}')
        return name

    def url(self, db: str, user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}/{db}?host={self.dir}"

    def halt(self) -> None:
        """Stop the server (``-m fast``: every session ends), keeping its data for ``resume``."""
        _as_owner([f"{self.bin}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop"],
                  self.owner)

    def resume(self) -> None:
        _as_owner([f"{self.bin}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"),
                   "-w", "-t", "60", "start"], self.owner)

    def stop(self) -> None:
        if self.started:
            try:
                _as_owner([f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"],
                          self.owner)
            except subprocess.CalledProcessError:
                pass
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":  # a server for trying things by hand: prints its URL; Ctrl-C or kill stops it
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill PID` stops the server too
    server = PgServer()
    try:
        server.start()
        print(server.url(server.createdb("schedsync")), flush=True)
        signal.pause()
    finally:
        server.stop()
