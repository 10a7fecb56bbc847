"""A store ROOT on any fsspec filesystem, with the write primitives the commit protocol needs.

`StoreRoot` pickles as (url, storage_options) and builds its filesystem lazily in whichever process
uses it: fsspec's async loop is not fork-safe, so a filesystem must never travel from the driver
to a Ray worker. Credentials belong in the environment or in `storage_options`; neither is ever
written into the store.

Every operation is retried on transient errors (connection resets, timeouts, throttling: OSErrors
other than "not found" and "permission denied") with exponential backoff and jitter; each retry is
logged and counted in `StoreRoot.retries`, which the job reports. An error that stays, or a
permanent one, raises `StorageFailure` naming the operation and the path; "not found" stays a
`FileNotFoundError`, which callers use to mean absent.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from storage_schemas.plumbing.errors import StoreError
from storage_schemas.store.layout import PROBES_DIR

log = logging.getLogger(__name__)
T = TypeVar("T")
PERMANENT = (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
CREATE_TRIES = 5  # a create whose file keeps being removed by other jobs between the tries gives up
# What os.link fails with where a filesystem has no hard links (FUSE mounts, some NFS set-ups).
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}

# Object-store protocols whose fsspec filesystem creates a file atomically only if it is absent
# (`pipe_file(..., mode="create")`); local paths use hard links. GCS (`ifGenerationMatch=0`) and
# Azure (`If-None-Match: *`) offer the primitive too; their fsspec filesystems are not wired here.
CREATE_IF_ABSENT_PROTOCOLS = {"s3", "s3a"}


def register_create_if_absent(protocol: str) -> None:
    """Declare that `protocol`'s fsspec filesystem implements `pipe_file(..., mode="create")`
    atomically, as s3fs does with a conditional PUT."""
    CREATE_IF_ABSENT_PROTOCOLS.add(protocol)


def _cause(e: BaseException) -> str:
    return str(e.__cause__ or e) if isinstance(e, CreateUnsupported) else str(e)


def _local_temp_file(path: str, data: bytes) -> str:
    """`data` written and synced to a fresh temporary name next to `path`; returns that name."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _link_new(url: str, path: str, data: bytes, tries: int = 5) -> None:
    """Create `path` holding `data` by hard-linking a complete temporary file to it (FileExistsError
    if it exists). Its folder may be removed meanwhile by another job (a unit's claims go when it
    commits): the temporary file vanishes with it, and the create starts over."""
    for _ in range(tries):
        try:
            tmp = _local_temp_file(path, data)
        except FileNotFoundError:
            continue
        try:
            os.link(tmp, path)
            return
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno in NO_HARD_LINKS:  # not transient: not retried
                raise CreateUnsupported(f"os.link on {url}: {type(e).__name__}: {e}") from e
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    raise FileNotFoundError(errno.ENOENT, f"its folder kept vanishing ({tries} tries)", path)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # tries per operation, the first included
    base_delay: float = 0.2  # seconds before the first retry; doubles each time, with jitter
    max_delay: float = 10.0


class CreateUnsupported(StoreError):
    """The store's filesystem cannot create a file only if absent (no hard links)."""


class StorageFailure(StoreError):
    """A store operation that failed for good: a permanent error, or transient past the retries."""

    def __init__(self, op: str, url: str, error: BaseException, attempts: int):
        kind = "permanent" if isinstance(error, PERMANENT) else f"still failing after {attempts} attempts"
        super().__init__(f"{op} {url}: {type(error).__name__}: {error} ({kind})")
        self.op, self.url, self.error = op, url, error


@dataclass(frozen=True)
class FileEntry:
    """A file of a unit as its commit record lists it; `path` is relative to ROOT."""

    path: str
    size: int
    sha256: str


class StoreRoot:
    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        retry: RetryPolicy = RetryPolicy(),
        single_writer: bool = False,
    ):
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.retry = retry
        self.single_writer = single_writer  # no other job writes this store: `create` need not be atomic
        self.retries: Counter = Counter()  # operation -> transient errors retried, in this process
        self._lock = threading.Lock()  # threads of one teacher actor share a StoreRoot
        self._local = threading.local()
        self._fs: fsspec.AbstractFileSystem | None = None
        self._root: str | None = None
        self._pid: int | None = None

    def __reduce__(self):
        return (StoreRoot, (self.url, self.storage_options, self.retry, self.single_writer))

    def _retrying(self, op: str, rel: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return fn()
            except FileNotFoundError:
                raise
            except PERMANENT as e:
                raise StorageFailure(op, self.url_of(rel), e, attempt) from e
            except (OSError, ConnectionError, TimeoutError) as e:
                if attempt == self.retry.attempts:
                    raise StorageFailure(op, self.url_of(rel), e, attempt) from e
                delay = min(self.retry.max_delay, self.retry.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                self._count_retry(op)
                log.warning(
                    "%s %s: %s: %s; retry %d of %d in %.1f s",
                    op,
                    self.url_of(rel),
                    type(e).__name__,
                    e,
                    attempt,
                    self.retry.attempts - 1,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _count_retry(self, op: str) -> None:
        with self._lock:
            self.retries[op] += 1
        self.thread_retries[op] += 1

    @property
    def thread_retries(self) -> Counter:
        """Transient errors retried by the calling thread: what one of several concurrent teacher
        calls reports for its part, without the other call's."""
        if not hasattr(self._local, "retries"):
            self._local.retries = Counter()
        return self._local.retries

    def __repr__(self) -> str:
        return f"StoreRoot({self.url!r})"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        # Rebuilt in each process: a forked loader worker must not reuse its parent's async S3
        # client (fsspec's event loop is not fork-safe).
        with self._lock:
            if self._fs is None or self._pid != os.getpid():
                try:
                    # No listings cache: what other processes and jobs write must show in every
                    # listing (claims, a unit's parts), as s3fs would otherwise answer from its own.
                    options = {"use_listings_cache": False, **self.storage_options}
                    self._fs, self._root = fsspec.core.url_to_fs(self.url, **options)
                except (ImportError, ValueError, TypeError) as e:
                    raise StoreError(f"store URL '{self.url}': cannot open its filesystem ({e})") from None
                self._pid = os.getpid()
            return self._fs

    @property
    def root(self) -> str:
        _ = self.fs
        return self._root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def full(self, rel: str) -> str:
        """The filesystem path of `rel` (no protocol), as `fs` methods take it."""
        return f"{self.root}/{rel}" if rel else self.root

    def url_of(self, rel: str) -> str:
        """The full URL of `rel`, as DuckDB, Polars or pyarrow take it."""
        return f"{self.url}/{rel}"

    def check_reachable(self, create: bool = False) -> None:
        """Fail with one line if ROOT cannot be listed (or, with `create`, made)."""
        try:
            if create and self.is_local:
                os.makedirs(self.root, exist_ok=True)
            if self.is_local and not os.path.isdir(self.root):
                raise FileNotFoundError(self.root)
            if not self.is_local:
                bucket = self.root.split("/", 1)[0]
                if not self.fs.exists(bucket):
                    raise FileNotFoundError(f"bucket '{bucket}' does not exist or its endpoint does not answer")
                if self.fs.exists(self.root):
                    self.fs.ls(self.root)  # listing proves the credentials can read it
        except StoreError:
            raise
        except Exception as e:  # any filesystem's "cannot reach": one line, not a traceback
            wanted = "a directory or bucket you can write to" if create else "an existing store you can read"
            raise StoreError(
                f"store URL '{self.url}' cannot be reached ({type(e).__name__}: {e}); expected {wanted}"
            ) from None

    def exists(self, rel: str) -> bool:
        return self._retrying("exists", rel, lambda: self.fs.exists(self.full(rel)))

    def read_bytes(self, rel: str) -> bytes:
        return self._retrying("read", rel, lambda: self.fs.cat_file(self.full(rel)))

    def write_bytes(self, rel: str, data: bytes) -> FileEntry:
        """Write a whole file so that readers never see it half-written.

        Locally: a temporary name, then `os.replace`. On object stores a single PUT (or a
        multipart upload) only becomes visible once complete.
        """
        self._retrying("write", rel, lambda: self._put(self.full(rel), data))
        return FileEntry(rel, len(data), hashlib.sha256(data).hexdigest())

    def _put(self, path: str, data: bytes) -> None:
        if self.is_local:
            os.replace(_local_temp_file(path, data), path)
        else:
            self.fs.pipe_file(path, data)

    def create(self, rel: str, data: bytes) -> bool:
        """Create `rel` holding `data` only if it is absent: True if this call created it, False if
        another writer's file is there. Never overwrites, whatever the timing.

        Locally: a hard link of a complete temporary file (`os.link` fails if the name exists). On
        S3: a conditional PUT (`If-None-Match: *`), answered 412 when the key exists. A retried
        create whose first try had landed (the connection dropped after the store took it) meets
        its own file: told apart from another writer's by reading it back (records and claims carry
        their attempt id; two identical manifests are one manifest). With `single_writer` the store
        is trusted to have no other writer: an existence check, then a plain write.
        """
        path = self.full(rel)

        def attempt() -> bool:
            for _ in range(CREATE_TRIES):
                try:
                    if self.single_writer:
                        if self.fs.exists(path):
                            raise FileExistsError(path)
                        self._put(path, data)
                    elif self.is_local:
                        _link_new(self.url, path, data)
                    else:
                        self.fs.pipe_file(path, data, mode="create")
                    return True
                except FileExistsError:
                    try:
                        return self.fs.cat_file(path) == data
                    except FileNotFoundError:  # removed between the two (a unit's claims when it commits)
                        continue
            raise FileNotFoundError(errno.ENOENT, f"created and removed {CREATE_TRIES} times over", path)

        return self._retrying("create", rel, attempt)

    def check_create_if_absent(self) -> None:
        """Start-up probe: fail with one line unless `create` is atomic on this store (or the user
        said `single_writer`). Catches local filesystems without hard links (some FUSE mounts and
        NFS set-ups), object stores this project has no conditional write for, and S3-compatible
        endpoints that ignore `If-None-Match` (a second create of the probe succeeds there)."""
        if self.single_writer:
            return
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        if not self.is_local and protocol not in CREATE_IF_ABSENT_PROTOCOLS:
            raise StoreError(
                f"store URL '{self.url}': several jobs can write one store only where commits are "
                f"create-if-absent, which this project does on local disks and S3 "
                f"({', '.join(sorted(CREATE_IF_ABSENT_PROTOCOLS))}), not {protocol}://; run one job "
                "at a time on it with --single-writer"
            )
        probe = f"{PROBES_DIR}/create-{uuid.uuid4().hex}"
        try:
            first = self.create(probe, b"1")
            second = self.create(probe, b"2")
        except (CreateUnsupported, StorageFailure) as e:
            raise StoreError(
                f"store URL '{self.url}': create-if-absent failed ({_cause(e)}); on a filesystem "
                "without hard links run one job at a time on it with --single-writer"
            ) from None
        finally:
            self.delete(probe)
        if not first or second:
            raise StoreError(
                f"store URL '{self.url}': the store overwrote a file created with If-None-Match "
                "(its endpoint ignores conditional writes), so jobs could overwrite each other's "
                "commits; run one job at a time on it with --single-writer"
            )

    def modified(self, rel: str) -> float:
        """When `rel` was last written, in POSIX seconds of the store's own clock (mtime on a
        filesystem, LastModified on S3): compare it only with `store_now`, never with this host's clock."""
        info = self._retrying("stat", rel, lambda: self.fs.info(self.full(rel)))
        for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
            value = info.get(key)
            if value is None:
                continue
            if isinstance(value, datetime.datetime):
                return value.timestamp()
            if isinstance(value, str):
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            return float(value)
        raise StorageFailure("stat", self.url_of(rel), OSError("the store gives no modification time"), 1)

    def store_now(self) -> float:
        """The store's clock now: the modification time of a probe file written for the purpose."""
        probe = f"{PROBES_DIR}/clock-{uuid.uuid4().hex}"
        self.write_bytes(probe, b"")
        try:
            return self.modified(probe)
        finally:
            self.delete(probe)

    def file_entry(self, rel: str) -> FileEntry:
        """Size and sha256 of a file already in the store (reads it back)."""

        def digest() -> FileEntry:
            h = hashlib.sha256()
            size = 0
            with self.fs.open(self.full(rel), "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    size += len(chunk)
            return FileEntry(rel, size, h.hexdigest())

        return self._retrying("read", rel, digest)

    def list_files(self, rel_dir: str) -> list[str]:
        """Every file under `rel_dir`, recursively, as ROOT-relative paths (sorted)."""
        base = self.full(rel_dir)
        if not self.exists(rel_dir):
            return []
        root = self.root + "/"
        out = []
        for p in self._retrying("list", rel_dir, lambda: self.fs.find(base)):
            p = p.rstrip("/")
            out.append(p[len(root) :] if p.startswith(root) else p)
        return sorted(out)

    def delete(self, rel: str) -> None:
        """Remove one file (one request on object stores); absent already is fine."""
        try:
            self._retrying("remove", rel, lambda: self.fs.rm_file(self.full(rel)))
        except FileNotFoundError:
            pass

    def remove(self, rel: str) -> None:
        """Remove a file or directory tree if present."""
        if self.exists(rel):
            self._retrying("remove", rel, lambda: self.fs.rm(self.full(rel), recursive=True))
