"""A job's ``params:``, as a run reads them: tiny, imported only by a run that has params
(a job that declares some, or a triggered item that carries some), never by a plain one.

A run's params are ``{NAME: value}`` (text), stored as canonical JSON (``encode``) on the
ledger's ``api`` item and on the run, and reach the job as ``SCHEDSYNC_PARAM_<NAME>``
(upper-cased) in its environment: a command's own, an http job's ``${...}`` values, and a
python job's ``ctx.params`` (the dict).
"""

from __future__ import annotations

MAX_VALUE = 1024  # bytes (UTF-8) a param's value may hold
PREFIX = "SCHEDSYNC_PARAM_"


def encode(params: dict) -> str:
    """Canonical JSON text: equal params are equal text (the dedupe compares it)."""
    import json

    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode(text: str | None) -> dict:
    """A stored params text back to ``{NAME: value}``; {} for none (or a broken one)."""
    if not text:
        return {}
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def run_params(declared: dict | None, stored: str | None) -> dict:
    """The params a run runs with: the job's defaults, then what its item carries."""
    out = {name: spec["default"] for name, spec in (declared or {}).items() if spec.get("default") is not None}
    out.update(decode(stored))
    return out


def param_environ(params: dict) -> dict:
    """``{SCHEDSYNC_PARAM_<NAME>: value}`` for a run's environment."""
    return {PREFIX + name.upper(): value for name, value in params.items()}
