"""Named fault points, for tests of exactly-once under crashes and of failures that stay local.

`SAMCLIP_KILL_AT=after_data_before_commit` makes the process SIGKILL itself the first time it
reaches that point; `NAME:N` the N-th time; `NAME@SCOPE` only where the point's scope (a unit
name) is SCOPE. With `SAMCLIP_KILL_ONCE=PATH` as well, only the first process to get there dies
(it creates PATH): a teacher actor that Ray restarts after the kill does not kill itself again.
`SAMCLIP_RAISE_AT=NAME[@SCOPE]` raises `InjectedFault` there instead, every time.
`SAMCLIP_WAIT_AT=NAME[@SCOPE]` with `SAMCLIP_WAIT_FOR=DIR:N` makes the point a barrier across
processes: each arrival leaves a file in DIR and waits (up to 5 minutes) until DIR holds N, so that
two jobs reach, say, their commit of one unit at the same moment. Unset (always, outside tests),
`kill_point` is a no-op.

Points: `during_teacher` (the driver has received the first part of a unit from the teacher
stage), `teacher_batch` (in a teacher actor, before it runs the teacher on a unit's rows; scoped
by unit), `after_part_written` (in a teacher actor: a part's files are written, its metadata has
not reached the driver; scoped by unit), `after_data_before_commit` (on the driver: a unit's parts
and errors are written, its commit record is not; scoped by unit), `train_step` (the trainer, after
an optimiser step), `checkpoint_written` (the trainer: a checkpoint's files are written, its folder
not yet renamed; scoped `stop` once the process got a stop signal, else `periodic`).
"""

from __future__ import annotations

import os
import signal
import time

KILL_ENV = "SAMCLIP_KILL_AT"
KILL_ONCE_ENV = "SAMCLIP_KILL_ONCE"
RAISE_ENV = "SAMCLIP_RAISE_AT"
WAIT_ENV = "SAMCLIP_WAIT_AT"
WAIT_FOR_ENV = "SAMCLIP_WAIT_FOR"
FAULT_ENVS = (KILL_ENV, KILL_ONCE_ENV, RAISE_ENV, WAIT_ENV, WAIT_FOR_ENV)
BARRIER_TIMEOUT_S = 300
_seen: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """Raised by a fault point a test asked for."""


def _matches(spec: str, name: str, scope: str) -> tuple[bool, int]:
    target, _, nth = spec.partition(":")
    target, _, want_scope = target.partition("@")
    return target == name and want_scope in ("", scope), int(nth or 1)


def _barrier(spec: str) -> None:
    folder, _, n = spec.rpartition(":")
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, f"{os.getpid()}-{time.monotonic_ns()}"), "w").close()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(os.listdir(folder)) < int(n) and time.monotonic() < deadline:
        time.sleep(0.05)


def kill_point(name: str, scope: str = "") -> None:
    wait_spec = os.environ.get(WAIT_ENV)
    if wait_spec and _matches(wait_spec, name, scope)[0]:
        _barrier(os.environ[WAIT_FOR_ENV])
    raise_spec = os.environ.get(RAISE_ENV)
    if raise_spec and _matches(raise_spec, name, scope)[0]:
        raise InjectedFault(f"fault injected at {name}{'@' + scope if scope else ''} ({RAISE_ENV})")
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    match, nth = _matches(spec, name, scope)
    if not match:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] != nth:
        return
    once = os.environ.get(KILL_ONCE_ENV)
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
