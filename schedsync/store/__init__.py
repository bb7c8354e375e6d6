"""The one interface to persisted state: ``Store`` (``store.base``), a port of
atomic domain operations, and ``open_store``, which picks the backend. Every SQL
string lives in a backend module (``store.sqlite``, ``store.postgres``), and one
contract suite (``tests/test_store.py``) runs against each.
"""

from __future__ import annotations

from schedsync.paths import is_url
from schedsync.store.base import Admitted, BreakerSpec, Liveness, Lock, Locks, Store

__all__ = ["Admitted", "BreakerSpec", "Liveness", "Lock", "Locks", "Store", "open_store"]


def open_store(target: str, write: bool = True, create: bool | None = None) -> Store:
    """The store at ``target``: created (``create``; default ``write``), private to the
    user and migrated on open. Without ``create`` a missing state is a ``StateError``
    ("no state at PATH yet"), never an empty new one.

    ``write=False`` (read commands): a state this user can read but not write opens
    read-only (``store.writable`` is False) instead of failing, and no step waits on
    another process's write transaction: the optional writes (first-seen, a crashed
    run, a ``late`` alert) raise ``StateBusy`` instead and are made by a later read.

    A ``postgresql://`` or ``postgres://`` URL selects the PostgreSQL backend (the
    ``postgres`` extra; its driver is imported only then); anything else is the path
    of a SQLite file.
    """
    if is_url(target):
        from schedsync.store.postgres import PostgresStore

        return PostgresStore(target, write=write, create=create)
    from schedsync.store.sqlite import SQLiteStore

    return SQLiteStore(target, write=write, create=create)
