"""What a finished ``run`` or ``exec`` prints, and its exit code (cron mails what we print)."""

from __future__ import annotations

import sys


def report_run(result, job_name: str, interactive: bool) -> int:
    """What cron mails (nothing on success) and a terminal sees; the exit code (``run``, ``exec``)."""
    from schedsync.app.runner import summary

    for message in result.messages:
        print(message, file=sys.stderr)
    if result.run.status in ("success", "partial", "skipped"):
        if interactive:
            print(summary(result), file=sys.stderr)
        return int(result.exit_code)
    if result.held_output and not interactive:
        sys.stdout.write(result.held_output if result.held_output.endswith("\n")
                         else result.held_output + "\n")
        sys.stdout.flush()
    print(f"error: {summary(result)} — see `schedsync history {job_name}`", file=sys.stderr)
    return int(result.exit_code)
