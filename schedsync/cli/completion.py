"""Shell completion: ``schedsync completion bash|zsh|fish`` prints a script to source, and
``schedsync __complete jobs [--config PATH]`` (what the scripts call on every <TAB>) prints
the job names of the active jobs.yaml, one a line.

The scripts are built from the typer app, so new commands and options complete without
editing them. Job names are read without typer, rich, the run stack or the validator
(``cli.main`` routes ``__complete`` here first): from the validated cache when it matches
the file (marshal: no YAML at all), else with the same bounded YAML walk the validator
uses (libyaml's C parser, event and depth limits: a hostile file costs no more than
``validate``). Nothing is printed for a file that cannot be read: completion stays quiet.
"""

from __future__ import annotations

import os
import sys

SHELLS = ("bash", "zsh", "fish")
# Options whose value is a job name; every other option that takes a value completes files.
JOB_OPTIONS = ("--job",)


def complete(args: list[str]) -> int:
    """``__complete jobs [--config PATH | -c PATH]``: exit 0 whatever happens."""
    if not args or args[0] != "jobs":
        return 0
    config = None
    rest = args[1:]
    while rest:
        flag = rest.pop(0)
        if flag in ("-c", "--config") and rest:
            config = rest.pop(0)
        elif flag.startswith("--config="):
            config = flag.partition("=")[2]
    try:
        names = job_names(config)
    except Exception:  # noqa: BLE001 - a <TAB> must never print a traceback into the prompt
        return 0
    if names:
        sys.stdout.write("\n".join(names) + "\n")
    return 0


def job_names(cli_config: str | None) -> list[str]:
    """The job names of the registry ``--config``/``$SCHEDSYNC_CONFIG``/``./jobs.yaml`` names."""
    import stat

    path = cli_config or os.environ.get("SCHEDSYNC_CONFIG") or "jobs.yaml"  # config.resolve_config's order
    real = os.path.abspath(os.path.expanduser(path))
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        return []
    names = _cached(real, st)
    if names is not None:
        return names
    # No cache for this very file: the validator's bounded walk (libyaml), not the validator.
    from schedsync.config.checks import NAME, NAME_MAX
    from schedsync.config.load import MAX_BYTES
    from schedsync.config.walk import _Doc, read_tree

    if st.st_size > MAX_BYTES:
        return []
    with open(os.open(real, os.O_RDONLY | os.O_NONBLOCK), encoding="utf-8") as f:
        text = f.read(MAX_BYTES + 1)
    raw = read_tree(text, real, _Doc(real))
    jobs = raw.get("jobs") if isinstance(raw, dict) else None
    if not isinstance(jobs, dict):
        return []
    return [name for name in map(str, jobs) if len(name) <= NAME_MAX and NAME.fullmatch(name)]


def _cached(real: str, st) -> list[str] | None:
    """The names in ``config.load``'s cache when it holds this very file (path, size, mtime,
    inode: its key after the version), else None. Read here, not through ``config.load``:
    importing the ``schedsync.config`` package would double this command's cost. The names
    were validated when the cache was written. ``tests/test_completion.py`` checks this path
    is taken (no YAML imported), so a change to the cache's place or key shows there."""
    if os.environ.get("SCHEDSYNC_NO_CACHE"):
        return None
    import marshal

    from schedsync.paths import cache_dir

    cache = os.path.join(cache_dir(), real.strip("/").replace("/", "%")[-180:] + ".config")
    try:
        with open(cache, "rb") as f:
            key, data = marshal.loads(f.read())  # not load(f): piece by piece, some 10x slower
        if tuple(key)[1:] == (real, st.st_size, st.st_mtime_ns, st.st_ino):
            return [str(name) for name in data["jobs"]]
    except (OSError, ValueError, EOFError, TypeError, KeyError, IndexError):
        pass
    return None


# --- the scripts ------------------------------------------------------------------------

def tree(root) -> dict:
    """{command: (options taking no value, options taking a value, takes a job, subcommands)}
    from ``root`` (the app's click group), ``""`` for the global options."""

    def options(command) -> tuple[list[str], list[str]]:
        flags, valued = ["--help"], []
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden:
                names = [*param.opts, *param.secondary_opts]
                (flags if param.is_flag or param.count else valued).extend(names)
        return flags, valued

    def job_arg(command) -> bool:
        return any(p.param_type_name == "argument" and p.name in ("job", "name") for p in command.params)

    out: dict = {"": (*options(root), False, sorted(c for c in root.commands if not c.startswith("_")))}
    for name, command in sorted(root.commands.items()):
        if command.hidden:
            continue
        if hasattr(command, "commands"):  # a group: `breaker`, `state`
            out[name] = (["--help"], [], False, sorted(command.commands))
            for sub, subcommand in command.commands.items():
                out[f"{name} {sub}"] = (*options(subcommand), job_arg(subcommand), [])
        else:  # an argument with a fixed set of values says so in its metavar: `bash|zsh|fish`
            choices = [c for p in command.params if p.param_type_name == "argument" and "|" in (p.metavar or "")
                       for c in p.metavar.split("|")]
            out[name] = (*options(command), job_arg(command), choices)
    return out


def script(shell: str, root) -> str:
    """The script for ``shell``; ``root`` is the typer app as click sees it."""
    commands = tree(root)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](commands)


def _bash(commands: dict) -> str:
    cases = [f'        "{name}") words="{" ".join(subs + flags + valued)}"; job={int(job)} ;;'
             for name, (flags, valued, job, subs) in commands.items() if name]
    return _fill(BASH, commands, cases)


def _fill(template: str, commands: dict, cases: list[str]) -> str:
    flags, valued, _, top = commands[""]
    valued_all = sorted({v for _, options, _, _ in commands.values() for v in options} - {"-c", "--config"})
    return (template.replace("@GLOBAL_WORDS@", " ".join(top + flags + valued))
            .replace("@GROUPS@", "|".join(n for n, v in commands.items() if v[3] and n))
            .replace("@VALUED@", "|".join(valued_all))
            .replace("@JOB_OPTIONS@", "|".join(JOB_OPTIONS))
            .replace("@CASES@", "\n".join(cases)))


BASH = r'''# schedsync completion for bash. Load it with:  source <(schedsync completion bash)
# or save it as /etc/bash_completion.d/schedsync. Job names come from the jobs.yaml that
# -c/--config on the line, else $SCHEDSYNC_CONFIG, else ./jobs.yaml names.
_schedsync() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" word cmd="" config="" words="" job=0
    local -i i positionals=0
    (( COMP_CWORD > 0 )) && prev="${COMP_WORDS[COMP_CWORD-1]}"
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${COMP_WORDS[i]}"
        case "$word" in
            -c|--config) config="${COMP_WORDS[i+1]}"; (( i++ )) ;;
            --config=*) config="${word#--config=}" ;;
            @VALUED@) (( i++ )) ;;
            -*) ;;
            *) if [[ -z "$cmd" ]]; then cmd="$word"
               elif [[ "$cmd" == @(@GROUPS@) && "$cmd" != *" "* ]]; then cmd="$cmd $word"
               else (( positionals++ )); fi ;;
        esac
    done
    COMPREPLY=()
    case "$prev" in
        @JOB_OPTIONS@) _schedsync_jobs "$config"; return ;;
        -c|--config|@VALUED@) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    case "$cmd" in
        "") words="@GLOBAL_WORDS@" ;;
@CASES@
        *) return ;;
    esac
    if [[ "$cur" != -* && $job == 1 && $positionals == 0 ]]; then
        _schedsync_jobs "$config"
        return
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
_schedsync_jobs() {
    local line
    COMPREPLY=()
    while IFS= read -r line; do
        [[ "$line" == "$cur"* ]] && COMPREPLY+=("$line")
    done < <("${COMP_WORDS[0]}" __complete jobs ${1:+--config "$1"} 2>/dev/null)
}
complete -F _schedsync schedsync
'''


def _zsh(commands: dict) -> str:
    cases = [f'        ("{name}") candidates=({" ".join(subs + flags + valued)}); job={int(job)} ;;'
             for name, (flags, valued, job, subs) in commands.items() if name]
    return _fill(ZSH, commands, cases)


ZSH = r'''#compdef schedsync
# schedsync completion for zsh. Load it with:  source <(schedsync completion zsh)
# (after compinit), or save it as _schedsync in a folder of $fpath.
_schedsync() {
    local cur="${words[CURRENT]}" prev="${words[CURRENT-1]}" word cmd="" config="" job=0
    local -a candidates
    local -i i positionals=0
    for (( i = 2; i < CURRENT; i++ )); do
        word="${words[i]}"
        case "$word" in
            (-c|--config) config="${words[i+1]}"; (( i++ )) ;;
            (--config=*) config="${word#--config=}" ;;
            (@VALUED@) (( i++ )) ;;
            (-*) ;;
            (*) if [[ -z "$cmd" ]]; then cmd="$word"
                elif [[ "$cmd" == (@GROUPS@) ]]; then cmd="$cmd $word"
                else (( positionals++ )); fi ;;
        esac
    done
    case "$prev" in
        (@JOB_OPTIONS@) _schedsync_jobs "$config"; return ;;
        (-c|--config|@VALUED@) _files; return ;;
    esac
    case "$cmd" in
        ("") candidates=(@GLOBAL_WORDS@) ;;
@CASES@
        (*) return 1 ;;
    esac
    if [[ "$cur" != -* && $job == 1 && $positionals == 0 ]]; then
        _schedsync_jobs "$config"
        return
    fi
    compadd -- "${candidates[@]}"
}
_schedsync_jobs() {
    local -a names config
    [[ -n "$1" ]] && config=(--config "$1")
    names=("${(@f)$("${words[1]}" __complete jobs "${config[@]}" 2>/dev/null)}")
    compadd -- "${(@)names:#}"
}
if (( $+functions[compdef] )); then
    compdef _schedsync schedsync
fi
'''


def _fish(commands: dict) -> str:
    lines = ["# schedsync completion for fish. Load it with:  schedsync completion fish | source",
             "# or save it as ~/.config/fish/completions/schedsync.fish.",
             "function __schedsync_jobs",
             "    set -l tokens (commandline -opc)",
             "    set -l config",
             "    for i in (seq (count $tokens))",
             "        switch $tokens[$i]",
             "            case -c --config",
             "                set config --config $tokens[(math $i + 1)]",
             "            case '--config=*'",
             "                set config --config (string replace -- --config= '' $tokens[$i])",
             "        end",
             "    end",
             "    $tokens[1] __complete jobs $config 2>/dev/null",
             "end",
             "complete -c schedsync -f"]
    top = commands[""][3]
    lines.append(f"complete -c schedsync -n '__fish_use_subcommand' -a '{' '.join(top)}'")
    for name, (flags, valued, job, subs) in commands.items():
        words = name.split()
        if not words:
            condition = "__fish_use_subcommand"
        elif len(words) == 1:
            condition = f"__fish_seen_subcommand_from {words[0]}"
        else:
            condition = f"__fish_seen_subcommand_from {words[0]}; and __fish_seen_subcommand_from {words[1]}"
        if subs:
            lines.append(f"complete -c schedsync -n '{condition}' -a '{' '.join(subs)}'")
        if job:
            lines.append(f"complete -c schedsync -n '{condition}' -a '(__schedsync_jobs)'")
        for option in flags + valued:
            if option == "--help" and name:
                continue
            spec = f"-l {option[2:]}" if option.startswith("--") else f"-s {option[1:]}"
            value = ""
            if option in valued or option in ("-c", "--config"):
                value = " -x -a '(__schedsync_jobs)'" if option in JOB_OPTIONS else " -r -F"
            lines.append(f"complete -c schedsync -n '{condition}' {spec}{value}")
    return "\n".join(lines) + "\n"
