"""Named kill points, for tests of exactly-once under crashes.

`SAMCLIP_KILL_AT=after_data_before_commit` makes the process SIGKILL itself the first time it
reaches that point; `NAME:N` the N-th time. Unset (always, outside tests), `kill_point` is a no-op.

Points: `during_teacher` (the driver has received the first targets of a unit from the teacher
stage), `after_data_before_commit` (a unit's data files are written, its commit record is not).
"""
from __future__ import annotations

import os
import signal

ENV = "SAMCLIP_KILL_AT"
_seen: dict[str, int] = {}


def kill_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
