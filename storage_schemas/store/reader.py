"""Reading a target store: committed units only, their files, tables and arrays.

    store = open_store("s3://bucket/targets/v1", storage_options={...})
    store.manifest("clip").must_match["teacher"]["embed_dim"]
    views = store.read_table("clip", "views")            # every committed unit, one Arrow table
    urls = store.committed_files("clip", "views")        # hand these to DuckDB or Polars
    logits = store.open_logits(store.commits("sam")[0])  # [n, slots, M, 256, 256] over the unit's parts

A unit is one or more parts, each a file per table. A file that no commit record lists (a leftover
of a killed attempt) is never returned.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from storage_schemas.plumbing.errors import StoreError
from storage_schemas.store import layout
from storage_schemas.store.commit import CommitRecord, read_commit
from storage_schemas.store.manifest import Manifest, read_manifest
from storage_schemas.store.mask_logits import UnitLogits, open_logits
from storage_schemas.store.root import StoreRoot

log = logging.getLogger(__name__)

# (kind, table) -> file suffix of the unit's data file; "errors" lives under _errors/ instead.
TABLE_SUFFIX = {
    ("clip", "views"): ".parquet",
    ("sam", "prompts"): ".parquet",
    ("sam", "images"): ".images.parquet",
    ("sam", "logits"): ".zarr",
}


def table_files(record: CommitRecord, table: str) -> list[str]:
    """ROOT-relative paths of `table`'s files for a committed unit, one per part, in sample order."""
    if table == "errors":
        # Per attempt (`UNIT/ATTEMPT.parquet`), or the one name stores had before attempts: the record says.
        named = [
            layout.errors_path(record.kind, record.source, record.unit, attempt)
            for attempt in (record.attempt_id, None)
        ]
        return [next((rel for rel in named if record.file(rel) is not None), named[0])]
    try:
        suffix = TABLE_SUFFIX[(record.kind, table)]
    except KeyError:
        tables = [t for k, t in TABLE_SUFFIX if k == record.kind] + ["errors"]
        raise ValueError(f"{record.kind} has no table {table!r}; expected one of {', '.join(tables)}") from None
    return [layout.part_path(record.kind, record.source, record.unit, p, suffix) for p in record.parts]


def listed(record: CommitRecord, rel: str) -> bool:
    """Whether the record lists the file `rel`, or files under it (a Zarr group)."""
    return any(f.path == rel or f.path.startswith(rel + "/") for f in record.files)


# Commit records are small and many: read them concurrently (an S3 GET is ~20-50 ms).
READ_THREADS = 32


@dataclass
class StoreConfig:
    """Where a store lives: the `store:` section of job and training configs."""

    url: str  # store ROOT: a local path or any fsspec URL
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options; keep secrets in the environment


class TargetStore:
    def __init__(self, storage: StoreRoot):
        self.storage = storage

    @property
    def url(self) -> str:
        return self.storage.url

    def manifest(self, kind: str) -> Manifest | None:
        return read_manifest(self.storage, kind)

    def sources(self, kind: str) -> list[str]:
        prefix = f"{layout.COMMITS_DIR}/{kind}"
        return sorted({p[len(prefix) + 1 :].split("/", 1)[0] for p in self.storage.list_files(prefix)})

    def commits(self, kind: str, sources: Iterable[str] | None = None) -> list[CommitRecord]:
        """Committed units of `kind` (sorted by source, unit) whose policy matches the manifest."""
        manifest = self.manifest(kind)
        if manifest is None:
            return []
        prefix = f"{layout.COMMITS_DIR}/{kind}/"
        wanted = set(sources) if sources is not None else None
        names = []
        for rel in self.storage.list_files(prefix.rstrip("/")):
            source, _, unit = rel[len(prefix) : -len(".json")].partition("/")
            if rel.endswith(".json") and (wanted is None or source in wanted):
                names.append((rel, source, unit))
        with ThreadPoolExecutor(READ_THREADS) as pool:
            records = list(pool.map(lambda n: read_commit(self.storage, kind, n[1], n[2]), names))
        out = []
        for (rel, _, _), record in sorted(zip(names, records), key=lambda nr: (nr[0][1], nr[0][2])):
            if record is None:
                continue
            if record.policy_hash != manifest.policy_hash:
                log.warning("%s: made under another policy than the manifest's; ignored", self.storage.url_of(rel))
                continue
            out.append(record)
        return out

    def shard_commits(self, kind: str, source: str, shard: str) -> list[CommitRecord]:
        """The committed units of one input shard (the shard itself, or its cuts `SHARD.pNNN`)."""
        prefix = f"{layout.COMMITS_DIR}/{kind}/{source}/"
        units = [
            rel[len(prefix) : -len(".json")]
            for rel in self.storage.list_files(prefix.rstrip("/"))
            if rel.endswith(".json") and "/" not in rel[len(prefix) :]
        ]
        units = [u for u in units if u == shard or (u.startswith(f"{shard}.p") and u[len(shard) + 2 :].isdigit())]
        with ThreadPoolExecutor(READ_THREADS) as pool:
            records = list(pool.map(lambda u: self.commit(kind, source, u), units))
        return [r for r in records if r is not None]

    def commit(self, kind: str, source: str, unit: str) -> CommitRecord | None:
        record = read_commit(self.storage, kind, source, unit)
        manifest = self.manifest(kind)
        if record is None or manifest is None or record.policy_hash != manifest.policy_hash:
            return None
        return record

    def committed_files(self, kind: str, table: str) -> list[str]:
        """Full URLs of `table`'s files over every committed unit (only those that hold rows)."""
        return [
            self.storage.url_of(rel)
            for record in self.commits(kind)
            for rel in table_files(record, table)
            if listed(record, rel)
        ]

    def read_unit_table(self, record: CommitRecord, table: str, columns: list[str] | None = None) -> pa.Table | None:
        """One unit's table over its parts, part after part (parts in the order of their first
        sample; sort by `sample_index` for sample order), only `columns` if given; None when the
        unit has no such file."""
        parts = []
        for rel in table_files(record, table):
            if record.file(rel) is not None:
                with self.storage.fs.open(self.storage.full(rel), "rb") as f:
                    parts.append(pq.read_table(f, columns=columns))
        return pa.concat_tables(parts, promote_options="permissive") if parts else None

    def read_table(self, kind: str, table: str, sources: Iterable[str] | None = None) -> pa.Table | None:
        """`table` over every committed unit of `kind`, concatenated (None if no unit has it)."""
        parts = [t for r in self.commits(kind, sources) if (t := self.read_unit_table(r, table)) is not None]
        return pa.concat_tables(parts, promote_options="permissive") if parts else None

    def open_logits(self, record: CommitRecord) -> UnitLogits:
        """The unit's mask logits, image axis in sample order: [n_stored, slots, M, 256, 256]."""
        if record.kind != "sam":
            raise ValueError(f"unit {record.unit} is {record.kind}, not sam: it has no mask logits")
        arrays, indexes = [], []
        for group, images in zip(table_files(record, "logits"), table_files(record, "images")):
            if listed(record, group):
                arrays.append(open_logits(self.storage, group))
                with self.storage.fs.open(self.storage.full(images), "rb") as f:
                    indexes.append(pq.read_table(f, columns=["sample_index"]).column("sample_index").to_numpy())
        return UnitLogits(arrays, indexes)

    def text_names(self) -> list[str]:
        return [
            p.rsplit("/", 1)[1][: -len(".parquet")]
            for p in self.storage.list_files(layout.TEXT_DIR)
            if p.endswith(".parquet")
        ]

    def read_text(self, name: str) -> pa.Table:
        rel = layout.text_path(name)
        if not self.storage.exists(rel):
            raise StoreError(
                f"store {self.url} has no text table '{name}' (has: {', '.join(self.text_names()) or 'none'})"
            )
        with self.storage.fs.open(self.storage.full(rel), "rb") as f:
            return pq.read_table(f)

    def summary(self) -> dict[str, Any]:
        """Per kind: units, samples, errors, rows; the figures a user checks first."""
        out: dict[str, Any] = {"url": self.url}
        for kind in layout.KINDS:
            manifest = self.manifest(kind)
            if manifest is None:
                continue
            commits = self.commits(kind)
            rows: dict[str, int] = {}
            for c in commits:
                for name, n in c.rows.items():
                    rows[name] = rows.get(name, 0) + n
            out[kind] = {
                "teacher": manifest.must_match["teacher"].get("arch"),
                "policy_hash": manifest.policy_hash[:12],
                "units": len(commits),
                "samples_in": sum(c.n_input for c in commits),
                "samples_stored": sum(c.n_stored for c in commits),
                "samples_errors": sum(c.n_errors for c in commits),
                "rows": rows,
                "bytes": sum(f.size for c in commits for f in c.files),
            }
        return out


def open_store(url: str, storage_options: dict[str, Any] | None = None) -> TargetStore:
    """Open the store at `url` for reading; fails with one line if it cannot be reached."""
    storage = StoreRoot(url, storage_options)
    storage.check_reachable()
    return TargetStore(storage)
