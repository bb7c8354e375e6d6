"""The one interface to persisted state: ``Store`` (``store.base``), a port of
atomic domain operations, and ``open_store``, which picks the backend. Every SQL
string lives in a backend module (``store.sqlite`` now, PostgreSQL next), and one
contract suite (``tests/test_store.py``) runs against each.
"""

from __future__ import annotations

from schedsync.store.base import Admitted, BreakerSpec, Liveness, Lock, Locks, Store

__all__ = ["Admitted", "BreakerSpec", "Liveness", "Lock", "Locks", "Store", "open_store"]


def open_store(target: str, write: bool = True) -> Store:
    """The store at ``target``: created, private to the user and migrated on open.

    ``write=False`` (read-only commands): a state this user can read but not write
    opens read-only (``store.writable`` is False) instead of failing.
    """
    # Backends by target: a ``postgresql://`` URL selects the PostgreSQL backend here
    # (store.postgres); anything else is the path of a SQLite file.
    from schedsync.store.sqlite import SQLiteStore

    return SQLiteStore(target, write=write)
