"""The data sink: where http jobs put the items they fetch.

A sink is opened on a *target* (today a SQLite file path: ``into.db``, or the default
data database; a PostgreSQL URL later) and offers three operations:

``upsert(table, pk, rows) -> (stored, failed)``
    Insert or update ``rows`` (decoded JSON items) in ``table``, keyed on ``pk`` (a
    column name, or a list of them), all in one transaction: a page is stored whole or
    not at all. Rows that are not JSON objects or lack a part of the key (missing, null,
    NaN, a list or an object) are not stored and are counted ``failed``. The table is created on first use
    and gains a column for each new key (schema work only when a page brings a key the
    table lacks), named by ``sink_base.column_name`` and matched ASCII case-insensitively
    (``sink_base.fold``); a row with two keys for one column is counted ``failed``. A
    key that another row of the same page has but this row lacks is stored as NULL;
    columns the page does not mention keep their values; of rows sharing a key, the
    last wins. Lists and objects are stored as JSON text, everything else as it is (a
    backend that cannot hold a NUL in text stores U+FFFD).
``write(table, pk, rows, load) -> Counts``
    ``upsert`` generalised by a ``sink_base.Load`` (``into.mode``, ``into.delete``,
    ``into.lineage``): ``merge`` is the upsert above; ``append`` inserts every object into a
    table without a key (``pk`` optional, not enforced); ``replace`` writes into
    ``staging(table)`` (merge with a pk, append without). Items whose ``delete`` field equals
    its value delete the row with their pk (``soft``: stored with ``_deleted_at`` set, others
    with it NULL). ``Counts`` holds stored, failed, inserted (new keys), updated and deleted.
``begin_replace(table, pk)`` / ``swap(table)``
    A replace: drop any staging table left by a killed run and create it with ``table``'s
    columns; once every page is stored, put it in ``table``'s place in one transaction with
    ``table``'s indexes (readers see the old table or the new one, never neither).
    backend that cannot hold a NUL in text stores U+FFFD). A page that would give a table
    more than ``MAX_COLUMNS`` (1,000) columns is a SinkError, and nothing of it is stored.
``store_page(table, pk, rows, children=None, load=None) -> Counts``
    What an http job writes for one page (``store.shape`` made ``rows`` and ``children``):
    ``write`` (with ``load``), and in the same transaction, for each child table in ``children``
    ({table: (parent keys, child rows)}), each listed parent's rows there deleted and its
    child rows upserted (keyed on ``_parent_PK``… and ``_idx``). When the database refuses
    a value for its column's type (PostgreSQL's data errors: ``"abc"`` for a bigint), the
    page is sent again one item (its row and its children) at a time in savepoints: those
    refused count ``failed``, their reasons in ``rejected``, the others are stored.
``pin(table, types)``, ``known_columns(table)``
    Columns created from then on with ``into.types``' types; the table's columns as they
    compare (``fold``), none when it does not exist.
``max_value(table, column) -> str | None``
    The largest value stored in ``column`` as text (a whole float as an integer), for
    incremental ``since``; None when the table or the column does not exist yet or
    holds no value.
``close()``

Every failure to store is a ``SinkError`` whose text is one line, free of secrets,
fit to follow "cannot store items into TABLE in TARGET: ". A backend must keep memory
flat in the number of rows it has stored (a page in, a page out) and should write a
page with one batched statement (``executemany``, ``COPY``).
"""

from __future__ import annotations

from schedsync.store.sink_base import Counts, Sink, SinkError, SQLSink, clashing_keys, key_columns

__all__ = ["Counts", "Sink", "SinkError", "clashing_keys", "key_columns", "open_sink"]


def open_sink(target: str) -> SQLSink:
    """The sink for ``target``: a ``postgresql://`` URL is a PostgreSQL database (the state's
    own by default, with a PostgreSQL state); a path is a SQLite database, created private."""
    from schedsync.paths import is_url

    if is_url(target):
        from schedsync.store.sink_postgres import PostgresSink

        return PostgresSink(target)
    from schedsync.store.sink_sqlite import SQLiteSink

    return SQLiteSink(target)
