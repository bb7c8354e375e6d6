"""A throwaway PgBouncer (Debian's ``pgbouncer``) in ``pool_mode = transaction`` in front
of a ``pgserver.PgServer``: a temp folder with its config and auth_file, listening on a
free loopback port, run as the server's owner (PgBouncer refuses to run as root),
stopped by its pid and removed on ``stop``.

The config is the one docs/several-hosts.md recommends: transaction pooling,
``ignore_startup_parameters = options`` (schedsync sends its keepalive and
search_path settings as startup options; through a pooler it sets them per transaction).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from pgserver import APP_PASSWORD, PgServer


def binary() -> str | None:
    return shutil.which("pgbouncer") or (os.path.exists("/usr/sbin/pgbouncer") and "/usr/sbin/pgbouncer") or None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgBouncer:
    def __init__(self, server: PgServer, pool_size: int = 20, max_clients: int = 2000,
                 ignore_options: bool = True):
        """``ignore_options=False``: PgBouncer's default, which refuses a client's startup
        ``options`` (schedsync then connects without them)."""
        self.server = server
        self.ignore = "options, extra_float_digits" if ignore_options else "extra_float_digits"
        self.pool_size, self.max_clients = pool_size, max_clients
        self.dir = tempfile.mkdtemp(prefix="schedsync-pgbouncer-")
        self.port = 0
        self.pid: int | None = None

    def start(self) -> PgBouncer:
        exe = binary()
        if not exe:
            raise RuntimeError("PgBouncer is not installed (apt-get install pgbouncer)")
        owner = self.server.owner
        if owner:
            user = pwd.getpwnam(owner)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        with open(os.path.join(self.dir, "userlist.txt"), "w") as f:
            f.write(f'"postgres" ""\n"app" "{APP_PASSWORD}"\n')
        for attempt in range(5):  # a free port can be taken between the probe and the bind
            self.port = _free_port()
            ini = os.path.join(self.dir, "pgbouncer.ini")
            with open(ini, "w") as f:
                f.write(f"[databases]\n* = host={self.server.dir} port=5432\n\n[pgbouncer]\n"
                        f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
                        f"auth_type = trust\nauth_file = {self.dir}/userlist.txt\n"
                        f"pool_mode = transaction\ndefault_pool_size = {self.pool_size}\n"
                        f"max_client_conn = {self.max_clients}\n"
                        f"ignore_startup_parameters = {self.ignore}\n"
                        f"logfile = {self.dir}/log\npidfile = {self.dir}/pid\n"
                        "server_login_retry = 1\nlog_connections = 0\nlog_disconnections = 0\n")
            if owner:
                os.chown(ini, user.pw_uid, user.pw_gid)
            argv = [exe, "-q", ini] + (["-u", owner] if owner else [])
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    self.pid = proc.pid
                    self._proc = proc
                    return self
                except OSError:
                    time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if attempt == 4:
                raise RuntimeError(f"pgbouncer did not start: {err.strip()[-300:]}")
        raise AssertionError("unreachable")

    def url(self, db: str, user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self._proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.kill(self.pid, signal.SIGKILL)
                self._proc.wait(10)
            if self._proc.stderr:
                self._proc.stderr.close()
            self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)
