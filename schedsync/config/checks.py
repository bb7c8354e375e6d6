"""Small checks of jobs.yaml values, shared by the validator and the job kinds.

Each takes the value, its key path and ``doc`` (a ``walk._Doc``: the line for the message),
and raises a one-line ``ConfigError`` naming the fix.
"""

from __future__ import annotations

from schedsync.core import Pattern
from schedsync.core.durations import parse_duration

NAME = Pattern(r"[a-z0-9][a-z0-9_.-]*")  # used with fullmatch: `$` would let "ab\n" in
# A job or breaker name becomes a lock file `NAME.lock`, a crontab line and a status
# column; 100 keeps every derived file name far inside NAME_MAX (255) and rows readable.
NAME_MAX = 100
# PostgreSQL cuts identifiers at 63 bytes (NAMEDATALEN - 1), so a longer table name
# would silently become another table there.
TABLE_MAX = 63
SHOWN = 60  # characters of a value quoted in an error line


def _short(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, control characters shown escaped."""
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    if any(c < " " or c == "\x7f" for c in text):
        text = "".join(c if c >= " " and c != "\x7f" else repr(c)[1:-1] for c in text)
    return text


def _q(value) -> str:
    """``repr(value)``, bounded: error lines never quote a whole 6 MB value."""
    if isinstance(value, str) and len(value) > SHOWN:
        return repr(value[:SHOWN]) + "…"
    text = repr(value) if not isinstance(value, (dict, list)) or len(value) <= 20 else (
        f"<a {'mapping' if isinstance(value, dict) else 'list'} of {len(value)} items>")
    return _short(text, SHOWN + 20)


def _known(mapping: dict, allowed, path: str, doc) -> None:
    for key in mapping:
        if key not in allowed:
            import difflib

            where = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), allowed, n=1)
            fix = f"did you mean {close[0]!r}?" if close else f"allowed here: {', '.join(allowed)}"
            doc.fail(doc.error(where, "unknown key", fix))  # unknown keys are otherwise ignored


def _only(mapping: dict, allowed) -> list:
    """The known keys' items: an unknown key has had its one error from ``_known``."""
    return [(key, item) for key, item in mapping.items() if key in allowed]


def _check_name(name, path: str, doc) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise doc.error(path, f"{_q(name)} is not a valid name",
                        "use lowercase letters, digits and _ . - (starting with a letter or digit)")
    if len(name) > NAME_MAX:
        raise doc.error(path, f"{_q(name)} is {len(name)} characters long",
                        f"use at most {NAME_MAX}: the name becomes a lock file name")


def _str(value, path: str, doc) -> str:
    if not isinstance(value, str):
        raise doc.error(path, f"{_q(value)} must be a string")
    return value


def _whole(value, path: str, doc, least: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise doc.error(path, f"{_q(value)} must be a whole number of {least} or more")
    return value


def _duration(value, path: str, doc) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise doc.error(path, str(exc)) from exc


_URL = Pattern(r"^(https?://|\$\{)")


def _url(value, path: str, doc) -> str:
    if not isinstance(value, str) or not _URL.match(value):
        raise doc.error(path, f"{_q(value)} is not an http(s) URL")
    return value



def _is_url(location: str) -> bool:
    from schedsync.paths import is_url

    return is_url(location)


def no_into(spec: dict, path: str, doc) -> None:
    if "into" in spec:
        raise doc.error(f"{path}.into", "only http jobs store into a table")
    if "fresh" in spec:
        raise doc.error(f"{path}.fresh", "is for http jobs: it reads the time field of the items they store",
                        "drop it, or make this an http job")
