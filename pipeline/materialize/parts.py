"""Teacher actors write part files; what they return to the driver is metadata only.

A teacher actor's batch holds sample rows of one or more units (`pipeline.materialize.units` row protocol).
For each unit present, `teacher_batch_output` calls the kind's `write_part` on that unit's `ok`
rows, which decodes them, runs the teacher and writes the part's files straight to the store, and
returns one `part` row per unit: the part's name, its sample indexes (int32 bytes, 4 bytes a
sample), its files with size and sha256, and its row counts; a sample the actor could not decode
becomes an `error` row. `error`, `end` and `unit_failed` rows pass through without their heavy
columns. An exception while making one unit's part turns into a `teacher_failed` row for that
unit: the driver fails the unit, the job goes on.

Output columns (every row):
    source, shard, unit, unit_start, status, sample_index, key, members, reason, detail,
    n_in_unit, shard_samples,     as in pipeline.materialize.units
    storage_retries
    part                          part name ("" unless status is `part`)
    part_samples                  int32 sample indexes of the part, as bytes
    part_files                    JSON [{path, size, sha256}, ...]
    part_rows                     JSON {table: rows}
A part row's storage_retries: {operation: transient errors retried while writing it}.
"""

from __future__ import annotations

import json
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from pipeline.materialize.units import ERROR, OK, PART, PROTOCOL_COLUMNS, TEACHER_FAILED
from storage_schemas.plumbing.faults import kill_point
from storage_schemas.plumbing.identity import SampleId
from storage_schemas.store import layout
from storage_schemas.store.root import FileEntry, StorageFailure, StoreRoot


@dataclass
class PartWritten:
    """What a kind's `write_part` did with one unit's rows."""

    files: list[FileEntry]  # empty when no row decoded: then nothing was written
    rows: dict[str, int]  # rows per table
    failed: dict[int, tuple[str, str]] = field(default_factory=dict)  # row -> (reason, detail): not in the part


# (kind's writer) rows: the batch's columns restricted to one unit's ok rows, in sample order;
# part_rel: the part's path prefix (ROOT-relative, no suffix)
WritePart = Callable[[dict[str, np.ndarray], str], PartWritten]


# The part columns and their value on rows that are not parts.
PART_COLUMNS = {"part": "", "part_samples": b"", "part_files": "[]", "part_rows": "{}"}


def row_sample_id(rows: dict[str, np.ndarray], i: int) -> SampleId:
    """The identity of row i of a teacher batch's columns."""
    return SampleId(str(rows["source"][i]), str(rows["shard"][i]), str(rows["key"][i]))


def new_part_name(first_sample: int, attempt: str) -> str:
    """A part's name: its first sample, the job attempt's id and a fresh id per call (Ray may run
    one batch twice in one attempt; each run writes its own files)."""
    return layout.part_name(first_sample, attempt, uuid.uuid4().hex[:8])


def teacher_batch_output(
    kind: str, batch: dict[str, np.ndarray], write_part: WritePart, storage: StoreRoot, attempt: str
) -> dict[str, np.ndarray]:
    """The metadata rows for one teacher batch, after writing one part per unit with `ok` rows
    through `storage` (whose retries are reported per part), named for the job `attempt`."""
    status = batch["status"]
    out: list[dict] = []
    for i in np.flatnonzero(status != OK):  # errors, end rows, read failures: passed on as they are
        out.append({c: batch[c][i] for c in PROTOCOL_COLUMNS})
    ok = np.flatnonzero(status == OK)
    units = {}
    for i in ok:
        units.setdefault((batch["source"][i], batch["unit"][i]), []).append(i)
    for (source, unit), rows in units.items():
        rows = np.asarray(rows)
        rows = rows[np.argsort(batch["sample_index"][rows], kind="stable")]
        # A run of consecutive rows (the usual case: one unit, no errors) is taken as a view, not copied.
        take = slice(rows[0], rows[-1] + 1) if (np.diff(rows) == 1).all() else rows
        first = {c: batch[c][rows[0]] for c in PROTOCOL_COLUMNS}
        part = new_part_name(int(batch["sample_index"][rows[0]]), attempt)
        retried = storage.thread_retries.copy()
        try:
            kill_point("teacher_batch", str(unit))
            written = write_part(
                {c: v[take] for c, v in batch.items()}, layout.part_path(kind, str(source), str(unit), part, "")
            )
        except Exception as e:  # this unit fails, the batch's other units and the job go on
            where = traceback.extract_tb(e.__traceback__)[-1]
            # The reason names the error; a storage failure's detail keeps its type (PermissionError ...).
            reason, detail = (
                ("storage_failed", f"{type(e).__name__}: {e}")
                if isinstance(e, StorageFailure)
                else (type(e).__name__, str(e))
            )
            out.append(
                {
                    **first,
                    "status": TEACHER_FAILED,
                    "sample_index": -1,
                    "key": "",
                    "members": "[]",
                    "reason": reason,
                    "detail": f"{detail} (in {where.name}, {where.filename}:{where.lineno})",
                }
            )
            continue
        for j, (reason, detail) in sorted(written.failed.items()):
            out.append(
                {
                    **{c: batch[c][rows[j]] for c in PROTOCOL_COLUMNS},
                    "status": ERROR,
                    "reason": reason,
                    "detail": detail,
                }
            )
        if not written.files:
            continue
        kill_point("after_part_written", str(unit))
        kept = np.delete(rows, list(written.failed))
        out.append(
            {
                **first,
                "status": PART,
                "sample_index": -1,
                "key": "",
                "members": "[]",
                "part": part,
                "part_samples": batch["sample_index"][kept].astype(np.int32).tobytes(),
                "part_files": json.dumps([asdict(f) for f in written.files]),
                "part_rows": json.dumps(written.rows),
                "storage_retries": json.dumps(dict(storage.thread_retries - retried)),
            }
        )
    columns = {c: [r[c] for r in out] for c in PROTOCOL_COLUMNS}
    columns |= {c: [r.get(c, empty) for r in out] for c, empty in PART_COLUMNS.items()}
    return {c: np.asarray(v, dtype=object if c == "part_samples" else None) for c, v in columns.items()}
