"""Job kinds: the one place that knows what ``command``, ``http`` and ``python`` mean.

A job kind is a module ``schedsync.kinds.<key>`` holding ``KIND``, a ``JobKind``: its
key in jobs.yaml, the validation of its own section, two facts the runner needs,
how its ``${VAR}`` are expanded, and which function of ``schedsync.jobs`` runs it. The
registry imports a kind's module only when a job uses it, and ``app.runner`` imports
the kind's runner only when it runs, so ``schedsync run`` of a command job imports
nothing of http. Kinds belong with ``config`` (the validator asks them about their
sections); they never import ``jobs``, which sits above ``config``.

A new kind (say one that runs a SQL query) is a new module here and its key added to
``KEYS`` (docs/job-kinds.md).
"""

from __future__ import annotations

# Every kind's key, in the order jobs.yaml's errors list them. A job has exactly one.
KEYS = ("command", "http", "python")


class JobKind:
    key = ""  # the job's key in jobs.yaml that names its kind and holds its section
    # The job's `cost` is taken from its budgets when the run is admitted. False: the
    # kind spends as it goes (an http job, one token per request).
    spends_at_start = True
    needs_last_success = False  # ctx.last_success_at is read before it runs
    # ${VAR} expansion: section paths (under the section) where every value is a secret,
    # and keys holding a URL whose query or userinfo values are secrets.
    secret_places: tuple[str, ...] = ()
    secret_urls: tuple[str, ...] = ()
    shell_text = False  # a string section is /bin/sh's to expand (checked, never pasted)
    own_stderr = False  # its run has a stderr of its own (fails_when.stderr)
    stores_items = True  # its runs store or report items (fails_when.items_below)

    def validate(self, spec: dict, path: str, doc, folder: str) -> dict:
        """The job's fields this kind owns, from ``spec`` (the job's mapping in jobs.yaml):
        at least ``section``, maybe ``into``. Raises ``doc.error(...)`` on a bad value."""
        raise NotImplementedError

    # "module:function" in schedsync.jobs that does the work of one admitted run,
    # function(job, ctx) -> Outcome (app.runner imports it when the job runs)
    runner = ""


_loaded: dict[str, JobKind] = {}


def kind(key: str) -> JobKind:
    """The kind named ``key`` (one of ``KEYS``), its module imported on first use."""
    found = _loaded.get(key)
    if found is None:
        if key not in KEYS:
            raise KeyError(key)
        # __import__, not importlib: importing importlib costs a cron tick half a millisecond
        found = _loaded[key] = __import__(f"{__name__}.{key}", fromlist=["KIND"]).KIND
    return found
