"""The one interface to persisted state: ``Store`` (``store.base``), a port of
atomic domain operations, and ``open_store``, which picks the backend. Every SQL
string lives in a backend module (``store.sqlite``, ``store.postgres``), and one
contract suite (``tests/test_store.py``) runs against each.
"""

from __future__ import annotations

from schedsync.store.base import Admitted, BreakerSpec, Liveness, Lock, Locks, Store

__all__ = ["Admitted", "BreakerSpec", "Liveness", "Lock", "Locks", "Store", "open_store"]

URL_SCHEMES = ("postgresql://", "postgres://")


def open_store(target: str, write: bool = True) -> Store:
    """The store at ``target``: created, private to the user and migrated on open.

    ``write=False`` (read-only commands): a state this user can read but not write
    opens read-only (``store.writable`` is False) instead of failing.

    A ``postgresql://`` or ``postgres://`` URL selects the PostgreSQL backend (the
    ``postgres`` extra; its driver is imported only then); anything else is the path
    of a SQLite file.
    """
    if target.startswith(URL_SCHEMES):
        from schedsync.store.postgres import PostgresStore

        return PostgresStore(target, write=write)
    from schedsync.store.sqlite import SQLiteStore

    return SQLiteStore(target, write=write)
