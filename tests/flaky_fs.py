"""`flaky://`: a local directory behind a filesystem that fails on purpose, for storage-fault tests.

Registered with fsspec on import, and in every Ray worker of the test session by the session
fixture's `worker_process_setup_hook` (teacher actors write parts through it too).
"""

import os
import uuid

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from storage_schemas.store.root import register_create_if_absent


class FlakyFileSystem(DirFileSystem):
    """A local directory behind a filesystem that fails the first `fail_writes` writes and
    `fail_reads` reads with a connection reset, and every write to a path containing `deny` with
    "permission denied"."""

    protocol = "flaky"
    cachable = False

    def __init__(self, root: str, fail_writes: int = 0, fail_reads: int = 0, deny: str = "", **kwargs):
        super().__init__(path=root, fs=LocalFileSystem(auto_mkdir=True), **kwargs)
        self.left = {"write": fail_writes, "read": fail_reads}
        self.deny = deny
        self.failed = {"write": 0, "read": 0}

    def _fault(self, op: str, path: str) -> None:
        if op == "write" and self.deny and self.deny in path:
            raise PermissionError(13, "permission denied (test)", path)
        if self.left[op] > 0:
            self.left[op] -= 1
            self.failed[op] += 1
            raise ConnectionResetError(104, "connection reset by peer (test)", path)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self._fault("write", path)
        if mode != "create":
            return super().pipe_file(path, value, **kwargs)
        # Create-if-absent as the local store does it, so that this filesystem may hold a store
        # several jobs write: a hard link of a complete temporary file.
        final = self._join(path)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.pipe_file(tmp, value)
        try:
            os.link(tmp, final)
        finally:
            os.remove(tmp)

    def cat_file(self, path, *args, **kwargs):
        self._fault("read", path)
        return super().cat_file(path, *args, **kwargs)


def register() -> None:
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    register_create_if_absent("flaky")


register()
