"""``${VAR}`` expansion at use time (cron's environment is not the shell's), and the
secrets a job's expanded values hold."""

from __future__ import annotations

import os

from schedsync.core import Pattern
from schedsync.core.errors import ConfigError
from schedsync.core.redact import Secrets, environment_secrets, in_query_or_userinfo, secret_name

VAR = Pattern(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(job, config_path: str, environ=os.environ) -> tuple:
    """``job`` (a ``Job``) with every ``${VAR}`` replaced from ``environ``, and the secrets it used.

    Every variable of ``environ`` whose name says it is a secret is one too, named in
    jobs.yaml or not: a python job may read it from ``os.environ`` (SPEC: Secrets).
    """
    from schedsync.kinds import kind

    secrets = Secrets()
    environment_secrets(environ, secrets)
    own = kind(job.kind)
    section = f"job.{job.kind}"
    # Where every ${VAR} is a secret regardless of its name (SPEC: Secrets).
    places = tuple(f"{section}.{p}" for p in own.secret_places)
    urls = tuple(f"{section}.{u}" for u in own.secret_urls)

    def sub(value, path):
        if isinstance(value, dict):
            return {k: sub(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value

        def one(match):
            name, default = match.group(1), match.group(2)
            got = environ.get(name)
            if got is None and own.shell_text and path == section:
                got = job.env.get(name)  # the job's own env: sets it for sh to expand
            if got is None or (got == "" and default is not None):
                if default is None:
                    line = job.lines.get(path.split(".", 1)[1] if "." in path else path)
                    where = f"{config_path}:{line}" if line else config_path
                    raise ConfigError(
                        f"{where} jobs.{job.name}.{path.split('.', 1)[1]}: environment variable "
                        f"{name} is not set",
                        f"export {name} (cron has its own environment: set it in the crontab) "
                        f"or write ${{{name}:-default}}")
                got = default
            # A run's params (``SCHEDSYNC_PARAM_<NAME>``) are not secrets by place: the run's
            # record shows them (one named like a secret still is one).
            secret_place = not name.startswith("SCHEDSYNC_PARAM_") and (
                (path.startswith(places) if places else False)
                or (path in urls and in_query_or_userinfo(value, match.start())))
            if secret_name(name) or secret_place:
                secrets.add(got)
            return got

        return VAR.sub(one, value)

    fields = {"section": sub(job.section, section)}
    for key in ("env", "cwd", "notify", "ping"):
        fields[key] = sub(getattr(job, key), f"job.{key}")
    if own.shell_text and isinstance(job.section, str):
        # /bin/sh expands ${VAR} and ${VAR:-default} itself, from the environment the
        # command inherits; pasting values into the text would re-parse them as shell
        # code (a ; in a password runs a command). sub() above still checked and
        # collected them.
        fields["section"] = job.section
    for target in fields["notify"]:
        # A Slack webhook's URL is its credential, and so is the SMTP password, whatever
        # their variables are called: never in a record, an error or the output.
        if target.get("slack"):
            secrets.add(target["slack"])
        if (target.get("smtp") or {}).get("password"):
            secrets.add(target["smtp"]["password"])
    for key, value in fields["env"].items():
        if secret_name(key):
            secrets.add(value)
    from schedsync.core.records import replace

    return replace(job, **fields), secrets
