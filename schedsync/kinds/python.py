"""``python: module:function``: a function called in this process with a ``ctx``."""

from __future__ import annotations

import re

from schedsync.config.checks import _q, no_into
from schedsync.kinds import JobKind


class Python(JobKind):
    key = "python"
    runner = "python:run_python"
    needs_last_success = True

    def validate(self, spec: dict, path: str, doc, folder: str) -> dict:
        target = spec[self.key]
        if not isinstance(target, str) or not re.match(r"^[\w.]+:[\w]+$", target):
            raise doc.error(f"{path}.{self.key}", f"{_q(target)} is not module:function",
                            'write e.g. python: "myapp.sync:points"')
        no_into(spec, path, doc)
        return {"section": target}


KIND = Python()
