"""``command:``: an argv list, or one string for /bin/sh."""

from __future__ import annotations

from schedsync.kinds import JobKind


class Command(JobKind):
    key = "command"
    runner = "command:run_command"
    shell_text = True
    own_stderr = True
    stores_items = False

    def validate(self, spec: dict, path: str, doc, folder: str) -> dict:
        from schedsync.config.checks import no_into  # validating only: not on a cron tick's path

        command = spec[self.key]
        where = f"{path}.{self.key}"
        if isinstance(command, list):
            if not command or not all(isinstance(a, (str, int, float)) for a in command):
                raise doc.error(where, "must be a non-empty list of strings, or one shell string")
            command = [str(a) for a in command]
        elif not (isinstance(command, str) and command.strip()):
            raise doc.error(where, "must be a list of arguments or a shell string")
        no_into(spec, path, doc)
        return {"section": command}


KIND = Command()
