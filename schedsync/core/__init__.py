"""The pure core: rules and records, no clock, files or network."""

from __future__ import annotations


class Pattern:
    """``re.compile(*args)`` on first use: every cron tick imports the modules that hold
    these, and compiling a pattern a run never uses costs a fraction of a millisecond."""

    __slots__ = ("_args", "_compiled")

    def __init__(self, *args) -> None:
        self._args = args
        self._compiled: object | None = None

    def __getattr__(self, name: str):
        if self._compiled is None:
            import re

            self._compiled = re.compile(*self._args)
        return getattr(self._compiled, name)
