"""Per-unit commit records: the last file written for a unit, and what makes the unit count.

A record lists every file of the unit with size and sha256, its parts (schema version 2: the part
files teacher actors wrote, disjoint sample sets that together with the errors cover the unit),
the row counts, the input it was made from (URL, size, ETag on object stores, the sample range for
a unit cut from a shard), the policy hash of the manifest in force and the id of the job attempt that
made it. Readers consider a unit only through its record; a record that does not parse counts as
absent, so a half-written one (impossible with atomic writes, but cheap to guard) means "not
committed".

A record is created only if absent (`StoreRoot.create`): when several jobs commit one unit, the
first record wins and is never overwritten; the others read it back and learn they lost.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field

from storage_schemas.store import layout
from storage_schemas.store.manifest import now_utc
from storage_schemas.store.root import FileEntry, StoreRoot
from storage_schemas.store.tables import SCHEMA_VERSION

log = logging.getLogger(__name__)


def new_attempt_id() -> str:
    """A job attempt's id: one per driver start, in the name of every file the attempt writes.
    48 random bits: two of 100k attempts share one with odds of 2e-5."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class InputRef:
    """The input shard a unit was made from; the student refuses an input that has changed."""

    url: str  # without credentials
    size: int
    etag: str | None = None  # object stores only
    sample_start: int = 0  # this unit's samples are [sample_start, sample_stop) of the shard
    sample_stop: int | None = None
    shard_samples: int | None = None  # samples in the whole shard, where the unit reached its end
    unit_size: int = 0  # the source's unit_size when committed (0: whole shard); later jobs must match


def input_change(ref: InputRef, size: int, etag: str | None) -> str | None:
    """How an input's current size/ETag differ from those a unit was made from, or None."""
    if size != ref.size or (ref.etag and etag and etag != ref.etag):
        return f"size {ref.size} -> {size}, etag {ref.etag} -> {etag}"
    return None


@dataclass(frozen=True)
class CommitRecord:
    kind: str
    source: str
    shard: str
    unit: str
    input: InputRef
    n_input: int  # samples of the input this unit covers
    n_stored: int  # distinct samples with targets
    n_errors: int  # samples in the errors table; n_stored + n_errors == n_input
    rows: dict[str, int]  # row count per table, e.g. {"views": 3000, "errors": 2}
    files: list[FileEntry]
    policy_hash: str
    parts: list[str]  # part names in sample order
    attempt_id: str = field(default_factory=lambda: new_attempt_id())  # the job attempt that made the unit
    created_at: str = field(default_factory=now_utc)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.n_stored + self.n_errors != self.n_input:
            raise ValueError(
                f"unit {self.kind}/{self.source}/{self.unit}: {self.n_stored} stored + "
                f"{self.n_errors} errors != {self.n_input} input samples"
            )

    @property
    def path(self) -> str:
        return layout.commit_path(self.kind, self.source, self.unit)

    def file(self, rel: str) -> FileEntry | None:
        """The listed file at ROOT-relative `rel`, if the record lists it."""
        return next((f for f in self.files if f.path == rel), None)

    def to_json(self) -> str:
        # Written on the driver for every unit and listing every part file: built by hand, as
        # dataclasses.asdict deep-copies, and compact (a 313-part record: 2.4 ms -> 0.4 ms).
        d = {**self.__dict__, "input": dict(self.input.__dict__), "files": [dict(f.__dict__) for f in self.files]}
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(text: str | bytes) -> "CommitRecord":
        d = json.loads(text)
        d["input"] = InputRef(**d["input"])
        d["files"] = [FileEntry(**f) for f in d["files"]]
        return CommitRecord(**d)


def create_commit(storage: StoreRoot, record: CommitRecord) -> CommitRecord | None:
    """Create the unit's record if it has none; from this moment the unit counts. Returns the record
    the store holds, read back: `record` itself, another job's (it committed the unit first), or
    None when what is there does not parse (a damaged record: the unit stays uncommitted)."""
    storage.create(record.path, record.to_json().encode())
    return read_commit(storage, record.kind, record.source, record.unit)


def read_commit(storage: StoreRoot, kind: str, source: str, unit: str) -> CommitRecord | None:
    """The unit's record, or None if absent or unreadable (which means: not committed)."""
    rel = layout.commit_path(kind, source, unit)
    try:
        data = storage.read_bytes(rel)
    except FileNotFoundError:
        return None
    try:
        return CommitRecord.from_json(data)
    except (ValueError, KeyError, TypeError) as e:
        log.warning("%s: commit record does not parse (%s); the unit counts as not committed", storage.url_of(rel), e)
        return None
