"""Starting queued work: ``schedsync run JOB --item ID`` detached, as the tick starts the
items it claimed and a finished run starts the chain's items its end queued (``after:``).
Imports nothing of ``app.run``, so both may use it."""

from __future__ import annotations

import os
import sys

from schedsync.config import Config

PAUSE = "SCHEDSYNC_TEST_TICK_PAUSE"  # tests: seconds the tick waits between claiming and starting
CHAIN_PAUSE = "SCHEDSYNC_TEST_CHAIN_PAUSE"  # tests: seconds a run waits between its end and its chain's start


def host() -> str:
    return os.uname().nodename


def registry_path(config: Config) -> str:
    """jobs.yaml as a child process finds it, whatever its working directory."""
    return os.path.join(config.dir, os.path.basename(config.path))


def starter(config_path: str, state: str, environ=None):
    """A function that starts ``schedsync run JOB --item ID`` for an item, detached: a new
    session (cron's SIGHUP or the starter's end does not reach it), stdin from /dev/null,
    the starter's output; it returns the ``Popen``. The state is passed in the
    environment, never on a command line others can read; the tests' pauses are not."""
    import subprocess

    env = dict(os.environ if environ is None else environ)
    env.pop(PAUSE, None)
    env.pop(CHAIN_PAUSE, None)
    env["SCHEDSYNC_STATE"] = state
    command = [sys.executable, "-m", "schedsync", "-c", config_path, "run"]

    def start(item):
        return subprocess.Popen([*command, item.job, "--item", str(item.id)], stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, close_fds=True)

    return start


def start_chained(config, store, names: list[str]) -> list:
    """Claim the due items of ``names`` (one per job, oldest first: the chain's just queued,
    unless an older one waits) and start each detached, on the state in use. The tick's
    rules hold: a job whose run is going, or whose item is being started, gets none now
    (the tick starts it later); a breaker open or a budget empty leaves it queued. Returns
    the items started."""
    from schedsync.app.later import Gate

    state = config.state_in_use
    if not names or not state or not store.writable:
        return []
    if os.environ.get(CHAIN_PAUSE):
        import time

        time.sleep(float(os.environ[CHAIN_PAUSE]))
    now = store.now()
    items = store.claim_due(names, len(names), f"{host()}:{os.getpid()}", now=now)
    gate = Gate(config, store, now)
    go = []
    for item in items:
        why = gate(item)
        if why is None:
            go.append(item)
        else:
            store.release_item(item.id, *why)
    begin = starter(registry_path(config), state)
    for item in go:
        begin(item)
    return go
