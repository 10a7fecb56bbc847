"""A local filesystem that logs every byte range read through fsspec: the instrument of the
loader benchmark (bench/loader.py) and of the data-path accounting test.

    with counting_reads(log_path):      # `file` paths open through CountingFileSystem meanwhile
        ...                             # forked loader workers inherit it and log too
    reads = read_log(log_path)          # [(pid, path, offset, nbytes)]
"""

import contextlib
import os

import fsspec
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem


class CountingOpener(LocalFileOpener):
    def _log(self, at: int, n: int) -> None:
        fd = os.open(CountingFileSystem.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{os.getpid()}\t{self.path}\t{at}\t{n}\n".encode())
        finally:
            os.close(fd)

    def read(self, *args, **kwargs):
        at = self.f.tell()
        data = self.f.read(*args, **kwargs)
        self._log(at, len(data))
        return data

    def readinto(self, b):
        at = self.f.tell()
        n = self.f.readinto(b)
        self._log(at, n or 0)
        return n


class CountingFileSystem(LocalFileSystem):
    log_path: str = ""
    cachable = False

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        if "r" not in mode:
            return super()._open(path, mode, block_size, **kwargs)
        return CountingOpener(self._strip_protocol(path), mode, fs=self, **kwargs)


@contextlib.contextmanager
def counting_reads(log_path):
    CountingFileSystem.log_path = str(log_path)
    fsspec.register_implementation("file", CountingFileSystem, clobber=True)
    try:
        yield
    finally:
        fsspec.register_implementation("file", LocalFileSystem, clobber=True)


def read_log(log_path) -> list[tuple[int, str, int, int]]:
    lines = open(log_path).read().splitlines() if os.path.exists(log_path) else []
    return [(int(p), path, int(a), int(n)) for p, path, a, n in (line.split("\t") for line in lines)]
