"""The data sink's interface: ``Sink``, ``SinkError``, ``key_columns``, ``since_text``.

What each operation promises is documented in ``store.sink`` (the port users open with
``open_sink``); backends (``sink_sqlite``, ``sink_postgres``) inherit from ``Sink`` here,
so that they never import the module that chooses between them.
"""

from __future__ import annotations


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
