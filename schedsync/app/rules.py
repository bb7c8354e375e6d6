"""``fails_when:``, a job's failure rules, applied to its run's outcome before it is
recorded; imported only by the jobs that have them.

A run that exited 0 (an http or python run that succeeded) and meets a rule is
``failed``, its error naming the rule; ``exit_codes`` lists the exit codes that fail the
run, so any other exit code counts as 0 (and the other rules judge it); ``longer_than``
never stops a job: a run that ended but took longer is ``partial``. The text
``output_matches`` searches is what the run holds of the job's output (a command's last
``WINDOW`` characters, redacted), searched in a child process stopped at the run's
deadline (at least ``MIN_MATCH`` seconds): a catastrophic pattern cannot hang the run."""

from __future__ import annotations

import subprocess
import sys

from schedsync.core.models import FAILED, PARTIAL, SUCCESS
from schedsync.core.outcome import Outcome

# A command that never started (jobs.command's errors, exit 126/127) fails whatever exit_codes lists.
NOT_STARTED = ("command not found", "command not executable", "cannot run ")
WINDOW = 1 << 20  # characters of a command's output the regex sees: the last 1 MiB
MIN_MATCH = 1.0  # seconds a search may take when the run's deadline is nearer
# The child: the pattern from argv, the text on stdin; prints 1 for a match, else 0.
SEARCH = ("import re, sys\n"
          "text = sys.stdin.buffer.read().decode('utf-8', 'replace')\n"
          "sys.stdout.write('1' if re.search(sys.argv[1], text, re.MULTILINE) else '0')\n")


def judge(job, outcome: Outcome, took: float, left: float) -> Outcome:
    """``outcome`` as ``job.fails_when`` judges it: ``took`` seconds the run took, ``left``
    seconds before its deadline."""
    rules = job.fails_when or {}
    status, code = outcome.status, outcome.exit_code
    codes = rules.get("exit_codes")
    if codes and outcome.reason is None and code is not None and code >= 0:
        if code in codes:
            if status == SUCCESS:  # exit 0 listed
                return _failed(outcome, f"fails_when.exit_codes: exit {code} is listed")
            outcome.error = f"fails_when.exit_codes: exit {code} is listed" + (
                f" ({outcome.error})" if outcome.error else "")
            return outcome
        if status == FAILED and not (outcome.error or "").startswith(NOT_STARTED):  # as if it exited 0
            outcome.status, outcome.error = SUCCESS, None
            status = SUCCESS
    if status not in (SUCCESS, PARTIAL):
        return outcome
    if rules.get("stderr") and outcome.stderr is not None:
        return _failed(outcome, f"fails_when.stderr: the job wrote to stderr: {outcome.stderr}"[:300])
    pattern = rules.get("output_matches")
    if pattern:
        text = outcome.window if outcome.window is not None else (outcome.held or outcome.output or "")
        found = search(pattern, text[-WINDOW:], max(left, MIN_MATCH))
        if found is None:
            return _failed(outcome, f"fails_when.output_matches: matching {pattern!r} against the output"
                                    f" did not end within {max(left, MIN_MATCH):.0f}s (the run's timeout);"
                                    " simplify the pattern"[:300])
        if found:
            return _failed(outcome, f"fails_when.output_matches: the output matches {pattern!r}"[:300])
    if "shorter_than" in rules and took < rules["shorter_than"]:
        from schedsync.core.durations import format_duration

        return _failed(outcome, f"fails_when.shorter_than: the run took {format_duration(took)},"
                                f" less than {format_duration(rules['shorter_than'])}")
    if "items_below" in rules and outcome.items_processed < rules["items_below"]:
        return _failed(outcome, f"fails_when.items_below: {outcome.items_processed} items stored,"
                                f" fewer than {rules['items_below']}")
    if "longer_than" in rules and took > rules["longer_than"]:
        from schedsync.core.durations import format_duration

        outcome.status = PARTIAL
        note = (f"fails_when.longer_than: the run took {format_duration(took)}, more than"
                f" {format_duration(rules['longer_than'])}")
        outcome.error = f"{outcome.error}; {note}" if outcome.error else note
    return outcome


def _failed(outcome: Outcome, error: str) -> Outcome:
    outcome.status, outcome.error = FAILED, error
    return outcome


def search(pattern: str, text: str, limit: float) -> bool | None:
    """Does ``pattern`` match ``text``? None when the search did not end within ``limit``
    seconds (the child is killed)."""
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", SEARCH, pattern], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)
    try:
        out, _ = proc.communicate(text.encode("utf-8", "replace"), timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    return out.strip() == b"1"
