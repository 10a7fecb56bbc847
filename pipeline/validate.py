"""`python -m pipeline.validate ROOT [--sizes-only] [--gc] [--json FILE]`: is this store sound?

Checks, per kind, everything a reader relies on:
  - the manifest parses, and every commit record parses, sits at its own path and carries the
    manifest's policy;
  - every file a record lists exists with the recorded size and sha256 (`--sizes-only` skips the
    hashing, which reads the whole store);
  - row counts: the tables hold the rows the record says, K views per CLIP sample, one images row
    per stored SAM image, errors rows = n_errors, stored + errors = input;
  - shapes: embeddings of the manifest's width, logits arrays [images, P x rounds, M, 256, 256];
  - content: embeddings finite and unit norm (fp16 tolerance), logits finite in every slot a
    prompt occupies.
Files under the store that no record lists (leftovers of killed attempts; readers never see them)
are listed as orphans; `--gc` deletes them (never the files of a unit whose record is damaged).
Run `--gc` only while no job writes to the store: an attempt in flight has not written its record yet.

Exit status 0 when no problem is found, 1 otherwise, with one line per problem naming the file.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from storage_schemas.plumbing.errors import StoreError, run_cli
from storage_schemas.store import TargetStore, layout, table_files
from storage_schemas.store.commit import CommitRecord
from storage_schemas.store.manifest import Manifest, read_manifest
from storage_schemas.store.mask_logits import decode_logits
from storage_schemas.store.root import StoreRoot

NORM_TOLERANCE = 1e-2  # fp16 embeddings of unit vectors are within ~1e-3 of norm 1


@dataclass
class ValidationReport:
    problems: list[tuple[str, str]] = field(default_factory=list)  # (ROOT-relative path, what is wrong)
    units: int = 0
    files: int = 0
    bytes: int = 0
    orphans: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.problems.append((where, what))

    def to_dict(self) -> dict:
        return {
            "ok": not self.problems,
            "units": self.units,
            "files": self.files,
            "bytes": self.bytes,
            "problems": [{"path": p, "problem": w} for p, w in self.problems],
            "orphans": self.orphans,
            "removed": self.removed,
        }


def check_files(storage: StoreRoot, record: CommitRecord, hashes: bool) -> list[tuple[str, str]]:
    out = []
    for entry in record.files:
        if not storage.exists(entry.path):
            out.append(
                (
                    entry.path,
                    f"missing: listed by the commit record of unit {record.kind}/{record.source}/{record.unit}",
                )
            )
            continue
        if hashes:
            actual = storage.file_entry(entry.path)
            size, digest = actual.size, actual.sha256
        else:
            size, digest = int(storage.fs.info(storage.full(entry.path))["size"]), entry.sha256
        if size != entry.size:
            out.append((entry.path, f"size {size}, the commit record says {entry.size}"))
        elif digest != entry.sha256:
            out.append((entry.path, f"sha256 {digest[:12]}..., the commit record says {entry.sha256[:12]}..."))
    return out


class UnreadableTable(Exception):
    def __init__(self, rel: str, error: Exception):
        super().__init__(f"cannot be read as Parquet ({type(error).__name__}: {error})")
        self.rel = rel


def _table(storage: StoreRoot, record: CommitRecord, table: str, columns: list[str] | None = None):
    """(where, the unit's table over its listed parts or None); `where` names the first file."""
    rels = [rel for rel in table_files(record, table) if record.file(rel) is not None and storage.exists(rel)]
    where = rels[0] if rels else table_files(record, table)[0]
    if not rels:
        return where, None
    parts = []
    for rel in rels:
        try:
            with storage.fs.open(storage.full(rel), "rb") as f:
                parts.append(pq.read_table(f, columns=columns))
        except Exception as e:  # damaged bytes fail in many ways inside Arrow
            raise UnreadableTable(rel, e) from None
    return where, pa.concat_tables(parts, promote_options="permissive")


def check_counts_and_content(storage: StoreRoot, record: CommitRecord, manifest: Manifest) -> list[tuple[str, str]]:
    out = []
    rows = dict(record.rows)
    rel, errors = _table(storage, record, "errors", ["sample_index"])
    n_err = 0 if errors is None else errors.num_rows
    if n_err != record.n_errors or n_err != rows.get("errors", 0):
        out.append((rel, f"{n_err} error rows, the commit record says {record.n_errors}"))
    error_index = set() if errors is None else set(errors.column("sample_index").to_pylist())

    def coverage(where: str, stored: np.ndarray) -> None:
        """Stored samples and errors: disjoint, and together every sample of the unit once."""
        both = set(stored.tolist()) & error_index
        if both or set(stored.tolist()) | error_index != set(range(record.n_input)):
            out.append(
                (
                    where,
                    f"stored samples and errors do not cover samples 0..{record.n_input - 1} once "
                    f"({len(both)} in both)",
                )
            )

    mm = manifest.must_match
    if record.kind == "clip":
        rel, views = _table(storage, record, "views", ["sample_index", "view", "embedding"])
        if views is None:  # a listed file that is missing is reported by check_files
            unlisted = not any(record.file(r) for r in table_files(record, "views")) and record.n_stored
            return out + ([(rel, "no views table for a unit with stored samples")] if unlisted else [])
        k, width = int(mm["policy"]["views"]), int(mm["teacher"]["output"]["embed_dim"])
        index = views.column("sample_index").to_numpy()
        coverage(rel, index)
        samples = len(np.unique(index))
        if views.num_rows != rows.get("views") or samples != record.n_stored or views.num_rows != samples * k:
            out.append(
                (
                    rel,
                    f"{views.num_rows} rows over {samples} samples; the commit record says "
                    f"{rows.get('views')} rows, {record.n_stored} samples, {k} views each",
                )
            )
        emb = views.column("embedding").combine_chunks()
        if emb.type.list_size != width:
            out.append((rel, f"embeddings of width {emb.type.list_size}, the manifest says {width}"))
            return out
        e = np.asarray(emb.values, np.float32).reshape(-1, width)
        finite = np.isfinite(e).all(axis=1)
        if not finite.all():
            out.append((rel, f"{int((~finite).sum())} embeddings are not finite"))
        off = np.abs(np.linalg.norm(e[finite], axis=1) - 1.0) > NORM_TOLERANCE
        if off.any():
            out.append((rel, f"{int(off.sum())} embeddings are not unit norm (|norm - 1| > {NORM_TOLERANCE})"))
        return out
    rel, images = _table(storage, record, "images", ["sample_index"])
    n_images = 0 if images is None else images.num_rows
    coverage(rel, np.zeros(0, np.int64) if images is None else images.column("sample_index").to_numpy())
    if n_images != record.n_stored or n_images != rows.get("images", 0):
        out.append((rel, f"{n_images} image rows, the commit record says {record.n_stored} stored images"))
    rel_p, prompts = _table(storage, record, "prompts", ["sample_index", "slot"])
    if (0 if prompts is None else prompts.num_rows) != rows.get("prompts", 0):
        out.append(
            (
                rel_p,
                f"{0 if prompts is None else prompts.num_rows} prompt rows, the commit record says "
                f"{rows.get('prompts', 0)}",
            )
        )
    if images is None or prompts is None:
        return out
    policy = mm["policy"]
    trailing = (int(policy["prompts"]) * int(policy["rounds"]), int(policy["num_masks"]), 256, 256)
    groups = table_files(record, "logits")
    try:
        array = TargetStore(storage).open_logits(record)
    except Exception as e:  # a damaged group: say which, go on with the other units
        return out + [(groups[0], f"logits array cannot be opened ({type(e).__name__}: {e})")]
    for rel, a, n in zip(groups, array.arrays, array.part_sizes):
        if tuple(a.shape) != (n, *trailing):
            return out + [
                (rel, f"logits shape {tuple(a.shape)}, expected {(n, *trailing)} (its images table has {n} rows)")
            ]
    images = images.sort_by("sample_index")  # the image axis of the unit's logits is in sample order
    index = images.column("sample_index").to_numpy()
    p_index, p_slot = prompts.column("sample_index").to_numpy(), prompts.column("slot").to_numpy()
    for n, sample in enumerate(index):
        rel_z = groups[array.where(n)[0]]
        slots = np.unique(p_slot[p_index == sample])
        try:
            logits = decode_logits(array[n, slots] if len(slots) else np.zeros((0,)), mm["precision"])
        except Exception as e:
            out.append((rel_z, f"image {n}: chunk cannot be read ({type(e).__name__}: {e})"))
            continue
        if not np.isfinite(logits).all():
            out.append(
                (rel_z, f"image {n}: {int((~np.isfinite(logits)).sum())} logits in prompted slots are not finite")
            )
    return out


def validate(storage: StoreRoot, hashes: bool = True, workers: int = 8) -> ValidationReport:
    report = ValidationReport()
    listed: set[str] = set()
    kept: list[str] = []  # path prefixes of units whose record is damaged: never orphans
    for kind in layout.KINDS:
        rel_m = layout.manifest_path(kind)
        record_paths = [p for p in storage.list_files(f"{layout.COMMITS_DIR}/{kind}") if p.endswith(".json")]
        try:
            manifest = read_manifest(storage, kind)
        except StoreError:
            report.add(rel_m, "manifest does not parse")
            continue
        if manifest is None:
            if record_paths:
                report.add(rel_m, f"missing, while {len(record_paths)} units of {kind} are committed")
            continue
        listed.add(rel_m)
        records = []
        for rel in record_paths:
            listed.add(rel)
            try:
                record = CommitRecord.from_json(storage.read_bytes(rel))
            except (ValueError, KeyError, TypeError) as e:
                report.add(rel, f"commit record does not parse ({type(e).__name__}: {e}); its unit's files are kept")
                source, _, unit = rel[len(f"{layout.COMMITS_DIR}/{kind}/") : -len(".json")].partition("/")
                kept += [
                    layout.unit_data_path(kind, source, unit, "."),
                    layout.unit_dir(kind, source, unit) + "/",
                    layout.errors_path(kind, source, unit),
                ]
                continue
            if record.path != rel:
                report.add(rel, f"commit record of {record.kind}/{record.source}/{record.unit} at the wrong path")
            elif record.policy_hash != manifest.policy_hash:
                report.add(rel, "made under another policy than the manifest's (readers ignore the unit)")
            records.append(record)
            listed.update(f.path for f in record.files)

        def check(record: CommitRecord) -> list[tuple[str, str]]:
            found = check_files(storage, record, hashes)
            try:
                return found + check_counts_and_content(storage, record, manifest)
            except UnreadableTable as e:
                return found + [(e.rel, str(e))]

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for record, found in zip(
                records, tqdm(pool.map(check, records), total=len(records), desc=f"{kind} units checked", unit="unit")
            ):
                report.units += 1
                report.files += len(record.files)
                report.bytes += sum(f.size for f in record.files)
                report.problems.extend(found)
    for top in [*layout.KINDS, layout.ERRORS_DIR, layout.COMMITS_DIR]:
        report.orphans += [p for p in storage.list_files(top) if p not in listed and not p.startswith(tuple(kept))]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.validate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", help="the store's URL (credentials from the environment)")
    parser.add_argument("--sizes-only", action="store_true", help="compare sizes, not checksums (no full read)")
    parser.add_argument("--gc", action="store_true", help="delete files no commit record lists")
    parser.add_argument("--workers", type=int, default=8, help="units checked in parallel")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    storage = StoreRoot(args.root)
    storage.check_reachable()
    report = validate(storage, hashes=not args.sizes_only, workers=args.workers)
    if args.gc:
        for rel in report.orphans:
            storage.remove(rel)
            report.removed.append(rel)
    print(
        f"store {storage.url}: {report.units} units, {report.files} files, {report.bytes / 1e6:.2f} MB checked"
        f"{' (sizes only)' if args.sizes_only else ''}"
    )
    for rel, what in report.problems:
        print(f"  PROBLEM {rel}: {what}")
    verb = "removed" if args.gc else "not listed by any commit record (--gc removes them)"
    if report.orphans:
        print(
            f"  {len(report.orphans)} files {verb}: "
            + ", ".join(report.orphans[:5])
            + (" ..." if len(report.orphans) > 5 else "")
        )
    print("ok: no problem found" if not report.problems else f"{len(report.problems)} problems")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return 0 if not report.problems else 1


if __name__ == "__main__":
    run_cli(main)
