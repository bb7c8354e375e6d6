"""One home for the places schedsync reads and writes by default.

- the state: ``$XDG_STATE_HOME/schedsync/state.db`` (``~/.local/state/...``);
- the spool of runs that could not reach a PostgreSQL state: ``$SCHEDSYNC_SPOOL``, else
  ``$XDG_STATE_HOME/schedsync/spool``;
- the config cache: ``$SCHEDSYNC_CACHE_DIR``, else ``$XDG_CACHE_HOME/schedsync``
  (``~/.cache/schedsync``);
- the data database of http and python jobs: ``data.db`` beside a state file, or,
  when the state is a ``postgresql://`` URL, that same database.

Only ``os`` is imported: ``schedsync run`` loads this on every cron tick.
"""

from __future__ import annotations

import os

URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(location: str) -> bool:
    """Whether a state or data location is a database URL rather than a file path."""
    return location.startswith(URL_SCHEMES)


def absolute(location: str) -> str:
    """``location`` made absolute when it is a file path; a URL is left untouched."""
    return location if is_url(location) else os.path.abspath(location)


def default_state() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "schedsync", "state.db")


def spool_dir() -> str:
    """This host's spool of runs that could not reach a database state (``store.spool``):
    ``$SCHEDSYNC_SPOOL``, else ``$XDG_STATE_HOME/schedsync/spool``."""
    return os.environ.get("SCHEDSYNC_SPOOL") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "schedsync", "spool")


def cache_dir() -> str:
    """The folder of the validated-config cache."""
    return os.environ.get("SCHEDSYNC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "schedsync")


def default_data(state: str) -> str:
    """Where http and python jobs store items when ``into.db`` is not set."""
    if is_url(state):
        return state  # the same PostgreSQL database holds the job's tables
    return os.path.join(os.path.dirname(os.path.abspath(state)), "data.db")
