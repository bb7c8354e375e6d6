"""jobs.yaml: loading (``load``, cached), the typed model (``Registry`` alias ``Config``, ``Job``), ``${VAR}``
expansion with secrets (``expand``), and where the state and the registry are.

The package's parts: ``load`` (reading, bounds on the file, the marshal cache),
``walk`` (the bounded YAML walker), ``validate`` (jobs.yaml to the model),
``checks`` (small value checks the job kinds share), ``model``, ``secrets`` and
``state``. Only what a cron tick needs is imported here; the validator's names load
on first use (``schedsync run`` with a warm cache never parses YAML).
"""

from __future__ import annotations

from schedsync.config.load import CACHE_VERSION, MAX_BYTES, load, optional_registry
from schedsync.config.model import BUILTIN, NO_REGISTRY, Config, Job, Jobs, Registry, no_registry, unknown_job
from schedsync.config.secrets import VAR, expand
from schedsync.config.state import default_state_path, resolve_config, resolve_state
from schedsync.core.errors import ConfigError

# Secrets live with the rest of redaction; imported here for ``from schedsync.config import Secrets``.
from schedsync.core.redact import Secrets

_LAZY = {
    "schedsync.config.checks": ("NAME", "NAME_MAX", "TABLE_MAX"),
    "schedsync.config.walk": ("ConfigErrors", "MAX_EVENTS", "MAX_DEPTH", "ALIAS_NODES"),
    "schedsync.config.validate": ("parse", "adhoc", "TOP_KEYS", "SETTINGS", "JOB_KEYS", "RETRY_KEYS",
                                  "BREAKER_KEYS", "RETENTION_KEYS", "NOTIFY_KEYS", "EVENTS",
                                  "CATCHUP_KEYS", "RETRY_LATER_KEYS"),
    "schedsync.kinds.http": ("HTTP_KEYS", "INTO_KEYS"),
}


def __getattr__(name: str):
    for module, names in _LAZY.items():
        if name in names:
            return getattr(__import__(module, fromlist=[name]), name)
    raise AttributeError(f"module 'schedsync.config' has no attribute {name!r}")


__all__ = ["BUILTIN", "CACHE_VERSION", "MAX_BYTES", "NO_REGISTRY", "VAR",
           "Config", "ConfigError", "Job", "Jobs", "Registry", "Secrets", "default_state_path", "expand", "load",
           "no_registry", "optional_registry", "resolve_config", "resolve_state", "unknown_job",
           *(n for names in _LAZY.values() for n in names)]
