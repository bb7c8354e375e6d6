"""Where the state and the registry are: --state/--config, the environment, the default."""

from __future__ import annotations

import os


def default_state_path() -> str:
    from schedsync.paths import default_state

    return default_state()


def choose_state(cli_state: str | None, registry_state: str | None) -> str:
    """--state, else $SCHEDSYNC_STATE, else the registry's ``state:``, else the default."""
    return cli_state or os.environ.get("SCHEDSYNC_STATE") or registry_state or default_state_path()


def resolve_state(cli_state: str | None, config=None, remember: bool = True) -> str:
    """--state, else $SCHEDSYNC_STATE, else the registry's ``state:``, else the default.

    A ``postgresql://`` URL is returned untouched. The choice is remembered on
    ``config``, so each job's ``data_target`` (data.db beside a state file, or the
    same database for a URL) follows the state this process opened.
    """
    chosen = choose_state(cli_state, config.state if config else None)
    if config is not None and remember:
        config.state_in_use = chosen
    return chosen


def resolve_config(cli_config: str | None) -> str:
    return cli_config or os.environ.get("SCHEDSYNC_CONFIG") or "jobs.yaml"
