"""``load(path)``: jobs.yaml read, bounded, parsed and validated, or taken from the cache.

The validated form is cached (marshal, keyed on the file's path, size, mtime
and inode) because ``schedsync run`` pays for PyYAML and cronsim on every cron
tick otherwise. Bump ``CACHE_VERSION`` whenever the cached shape changes.
"""

from __future__ import annotations

import marshal
import os
import stat

from schedsync.config.model import Config, Jobs
from schedsync.config.state import resolve_config
from schedsync.core.errors import ConfigError

CACHE_VERSION = 14  # 5: the cache holds `defaults`; 6: a job's plain form is Job.to_dict's; 7: `environ`;
# 8: run_by; 9: catchup, retry_later; 10: `log`; 11: `limits`, a job's `limits`; 12: a job's `params`;
# 13: after, requires, downstream, fails_when; 14: `fresh`
MAX_BYTES = 4 * 1024 * 1024


def load(path: str | os.PathLike, every: bool = False) -> Config:
    """The validated config at ``path``, from the cache when the file is unchanged.

    With ``every`` (``schedsync validate``), an invalid file raises ``ConfigErrors``
    holding every error found instead of the first one.
    """
    shown = str(path)
    real = os.path.abspath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError as exc:
        raise ConfigError(f"{shown}: no such file",
                          "pass --config PATH, set SCHEDSYNC_CONFIG, or cd to the folder of jobs.yaml") from exc
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read ({exc.strerror})", "check the file's permissions") from exc
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block every cron tick; a device never ends
        raise ConfigError(f"{shown}: not a regular file ({_kind(st.st_mode)})",
                          "point --config or $SCHEDSYNC_CONFIG at the jobs.yaml file itself")
    if st.st_size > MAX_BYTES:
        raise _too_big(shown)
    key = (CACHE_VERSION, real, st.st_size, st.st_mtime_ns, st.st_ino)
    cache = _cache_path(real)
    if cache:
        try:
            with open(cache, "rb") as f:
                # loads of the whole file: load(f) reads it piece by piece through the file
                # object, some 10x slower (a 500-job registry: tens of ms of every tick)
                cached_key, data = marshal.loads(f.read())
            if tuple(cached_key) == key and all(os.environ.get(k) == v for k, v in (data.get("environ") or {}).items()):
                # the schedules' ${VAR}s read the same values (else: parsed again, as written)
                return Config(path=shown, **{**data, "jobs": Jobs(data["jobs"])})
        except (OSError, ValueError, EOFError, TypeError):
            pass
    try:
        # O_NONBLOCK: a file swapped for a FIFO since stat reads as empty instead of blocking.
        with open(os.open(real, os.O_RDONLY | os.O_NONBLOCK), encoding="utf-8") as f:
            text = f.read(MAX_BYTES + 1)  # a file that grew since stat
    except (OSError, UnicodeDecodeError) as exc:
        from schedsync.config.checks import _short  # errors only: not on a cron tick's path

        raise ConfigError(f"{shown}: cannot read ({_short(str(exc), 200)})", "check the file") from exc
    if len(text) > MAX_BYTES:
        raise _too_big(shown)
    from schedsync.config.validate import parse

    config = parse(text, shown, os.path.dirname(real), every=every)
    if cache:
        _write_cache(cache, key, config)
    return config


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def _too_big(shown: str) -> ConfigError:
    return ConfigError(f"{shown}: larger than {MAX_BYTES // (1024 * 1024)} MiB",
                       "a registry this large is not a jobs.yaml; split it or check the file")


def _cache_path(real: str) -> str | None:
    if os.environ.get("SCHEDSYNC_NO_CACHE"):
        return None
    from schedsync import paths

    base = paths.cache_dir()
    # The cached key holds the full path, so a shortened name that collides only misses.
    return os.path.join(base, real.strip("/").replace("/", "%")[-180:] + ".config")


def _write_cache(cache: str, key: tuple, config: Config) -> None:
    data = {k: getattr(config, k) for k in ("dir", "state", "timezone", "budgets", "defaults", "environ", "log",
                                         "limits")}
    data["jobs"] = config.jobs.plain()
    try:
        os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
        tmp = f"{cache}.{os.getpid()}"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            marshal.dump((key, data), f)
        os.replace(tmp, cache)
    except (OSError, ValueError):
        pass  # a cache we cannot write only costs speed


def optional_registry(cli_config: str | None) -> Config | None:
    """The registry, or None when none was named (no -c, no $SCHEDSYNC_CONFIG) and there is
    no ./jobs.yaml. A registry that was named must exist."""
    path = resolve_config(cli_config)
    named = cli_config or os.environ.get("SCHEDSYNC_CONFIG")
    return load(path) if named or os.path.lexists(path) else None
