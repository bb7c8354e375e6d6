"""The data sink's interface: ``Sink``, ``SinkError``, ``key_columns``, ``since_text``, and the
column rule both backends share (``column_name``, ``fold``, ``PageColumns``).

What each operation promises is documented in ``store.sink`` (the port users open with
``open_sink``); backends (``sink_sqlite``, ``sink_postgres``) inherit from ``Sink`` here,
so that they never import the module that chooses between them.
"""

from __future__ import annotations

NAME_BYTES = 63  # PostgreSQL's identifier length; the rule is the same on SQLite
_FOLD = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


class SinkError(Exception):
    """The sink could not store or read; str() is a one-line reason."""


class Sink:
    """The interface every data sink provides (what each operation promises: ``store.sink``)."""

    def upsert(self, table: str, pk, rows: list) -> tuple[int, int]:
        raise NotImplementedError

    def max_value(self, table: str, column: str) -> str | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def key_columns(pk) -> tuple[str, ...]:
    """``pk`` (a name or a list of names) as a tuple of column names."""
    return (pk,) if isinstance(pk, str) else tuple(pk)


def since_text(value) -> str | None:
    """A stored maximum as ``since`` sends it: None stays None, 1700000000.0 becomes 1700000000."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def fold(name: str) -> str:
    """``name`` as columns are compared: ASCII letters in lower case (as SQLite compares them)."""
    return name.translate(_FOLD)


def column_name(key: str) -> str:
    """The column an item's ``key`` is stored in, on every backend: the key itself, with a NUL
    as U+FFFD; a key over 63 UTF-8 bytes is cut to 54 bytes (at a character's edge) and
    given ``_`` and the first 8 hex digits of its SHA-256, so long keys with one prefix stay apart."""
    if "\0" in key:
        key = key.replace("\0", "\ufffd")
    if len(key) <= NAME_BYTES // 4:
        return key
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) <= NAME_BYTES:
        return key
    import hashlib

    head = raw[:NAME_BYTES - 9].decode("utf-8", "ignore")
    return f"{head}_{hashlib.sha256(raw).hexdigest()[:8]}"


class PageColumns:
    """The columns of one page whose keys (in order) are ``keys``.

    ``columns`` holds one name per column (the first key's spelling); ``of`` is None when each
    key is its own column (the common case, nothing to do per item), else {key: column}:
    keys that ``fold`` to one name (``Name``, ``name``) share a column, and ``merge`` turns an
    item into {column: value}, or None when the item has two keys for one column.
    """

    __slots__ = ("columns", "of")

    def __init__(self, keys: tuple):
        names = tuple(map(column_name, keys))
        first: dict[str, str] = {}
        for name in names:
            first.setdefault(fold(name), name)
        if names == keys and len(first) == len(keys):
            self.columns, self.of = keys, None
        else:
            self.columns = tuple(first.values())
            self.of = {key: first[fold(name)] for key, name in zip(keys, names)}

    def merge(self, row: dict) -> dict | None:
        of = self.of
        merged = {of[key]: value for key, value in row.items()}
        return merged if len(merged) == len(row) else None


def clashing_keys(row: dict) -> tuple[str, str] | None:
    """Two keys of ``row`` that the column rule stores in one column, if it has such keys."""
    seen: dict[str, str] = {}
    for key in row:
        other = seen.setdefault(fold(column_name(key)), key)
        if other is not key:
            return other, key
    return None
