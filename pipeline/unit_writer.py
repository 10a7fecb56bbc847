"""Writing one unit's files and, last, its commit record (shared by the CLIP and SAM sides).

    writer = UnitWriter(storage, "clip", source, shard, unit)   # removes stale files of the unit
    writer.write_table(layout.data_path(...), table)
    record = writer.commit(input_ref, n_input, errors, rows, policy_hash)

Every file is written whole (temporary name + replace, or one PUT), and the record lists each
with size and sha256. Until the record exists the unit does not count, so a crash anywhere before
it leaves at most files that readers ignore and a rerun overwrites.
"""
from __future__ import annotations

import pyarrow as pa

from storage_schemas.faults import kill_point
from storage_schemas import layout
from storage_schemas.commit import CommitRecord, InputRef, write_commit
from storage_schemas.storage import FileEntry, Storage
from storage_schemas.store import TABLE_SUFFIX
from storage_schemas.tables import ERRORS_SCHEMA, parquet_bytes


class UnitWriter:
    def __init__(self, storage: Storage, kind: str, source: str, shard: str, unit: str):
        self.storage, self.kind, self.source, self.shard, self.unit = storage, kind, source, shard, unit
        self.files: list[FileEntry] = []
        self.remove_stale()

    def stale_paths(self) -> list[str]:
        """Every path this unit may own, whether or not an earlier attempt wrote it."""
        data = [layout.data_path(self.kind, self.source, self.unit, sfx)
                for (k, _), sfx in TABLE_SUFFIX.items() if k == self.kind]
        return data + [layout.errors_path(self.kind, self.source, self.unit)]

    def remove_stale(self) -> None:
        for rel in self.stale_paths():
            self.storage.remove(rel)

    def write_table(self, rel: str, table: pa.Table) -> FileEntry:
        entry = self.storage.write_bytes(rel, parquet_bytes(table))
        self.files.append(entry)
        return entry

    def write_bytes(self, rel: str, data: bytes) -> FileEntry:
        entry = self.storage.write_bytes(rel, data)
        self.files.append(entry)
        return entry

    def add_tree(self, rel_dir: str) -> None:
        """List every file already written under `rel_dir` (a Zarr group) in the record."""
        self.files += [self.storage.file_entry(p) for p in self.storage.list_files(rel_dir)]

    def commit(self, input_ref: InputRef, n_input: int, errors: list[dict], rows: dict[str, int],
               policy_hash: str) -> CommitRecord:
        if errors:
            table = pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA)
            self.write_table(layout.errors_path(self.kind, self.source, self.unit), table)
        record = CommitRecord(
            kind=self.kind, source=self.source, shard=self.shard, unit=self.unit, input=input_ref,
            n_input=n_input, n_stored=n_input - len(errors), n_errors=len(errors),
            rows={**rows, "errors": len(errors)}, files=list(self.files), policy_hash=policy_hash,
        )
        kill_point("after_data_before_commit")
        write_commit(self.storage, record)
        return record
