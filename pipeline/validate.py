"""`python -m pipeline.validate ROOT [--sizes-only] [--gc [--grace 24h]] [--uncommit-damaged] [--json FILE]`:
is this store sound?

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
A path without a manifest is not a store: refused, nothing read or removed.

Files the store's writers make (part files, errors tables, claims: by their names, under a kind's
folders) that no record lists are orphans. `--gc` removes those of committed units (a committed
record, read back, does not list them: they can never count), and those of uncommitted units only
once older than `--grace` by the store's clock (a job may still be writing them); it never touches
a unit whose record is damaged, nor any file of another name. It is safe while jobs run.

`--uncommit-damaged` moves the records of damaged units (missing files, other sizes or checksums,
wrong row counts or content, a record that does not parse or was made under another policy) to
`_quarantine/`, never deleting them; the next materialize job redoes exactly those units.

Exit status 0 when no problem is found (or every damaged unit was moved aside), 1 otherwise, with
one line per problem naming the file.
"""

from __future__ import annotations

import argparse
import datetime
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from storage_schemas.plumbing.errors import ConfigError, StoreError, run_cli
from storage_schemas.store import TargetStore, layout, listed, table_files
from storage_schemas.store.commit import CommitRecord, read_commit
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
    orphans: list[str] = field(default_factory=list)  # the store's own files no record lists
    removed: list[str] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=dict)  # why gc left an orphan -> the orphans
    damaged: dict[str, list[str]] = field(default_factory=dict)  # record path -> its unit's problems
    quarantined: list[str] = field(default_factory=list)  # where damaged units' records went
    committed: set[tuple[str, str, str]] = field(default_factory=set)  # (kind, source, unit) with a sound record
    record_bytes: dict[str, bytes] = field(default_factory=dict)  # each record as the scan read it

    def add(self, where: str, what: str, record: str | None = None) -> None:
        self.problems.append((where, what))
        if record is not None:
            self.damaged.setdefault(record, []).append(f"{where}: {what}")

    def to_dict(self) -> dict:
        return {
            "ok": not self.problems,
            "units": self.units,
            "files": self.files,
            "bytes": self.bytes,
            "problems": [{"path": p, "problem": w} for p, w in self.problems],
            "orphans": self.orphans,
            "removed": self.removed,
            "kept": self.kept,
            "damaged_units": sorted(self.damaged),
            "quarantined": self.quarantined,
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
        data = storage.read_bytes(rel)  # retried: a connection reset is no damage
        try:
            parts.append(pq.read_table(pa.BufferReader(data), columns=columns))
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
    """Check every kind with a manifest; refuses (StoreError) a path where no kind has one."""
    kinds = [k for k in layout.KINDS if storage.exists(layout.manifest_path(k))]
    if not kinds:
        records = len(storage.list_files(layout.COMMITS_DIR))
        raise StoreError(
            f"{storage.url} is not a target store: it has no {' or '.join(map(layout.manifest_path, layout.KINDS))}"
            + (f" (but {records} files under {layout.COMMITS_DIR}/: restore its manifests)" if records else "")
        )
    report = ValidationReport()
    listed: set[str] = set()
    unreadable: set[tuple[str, str, str]] = set()  # units whose record does not parse: their files are no orphans
    for kind in layout.KINDS:
        rel_m = layout.manifest_path(kind)
        record_paths = [p for p in storage.list_files(f"{layout.COMMITS_DIR}/{kind}") if p.endswith(".json")]
        if kind not in kinds:
            if record_paths:
                report.add(rel_m, f"missing, while {len(record_paths)} units of {kind} are committed")
            continue
        try:
            manifest = read_manifest(storage, kind)
        except StoreError as e:  # damaged, or another schema version: none of the kind's files is judged
            report.add(rel_m, str(e).removeprefix(f"{storage.url_of(rel_m)}: "))
            continue
        records = []
        for rel in record_paths:
            listed.add(rel)
            try:
                report.record_bytes[rel] = storage.read_bytes(rel)
                record = CommitRecord.from_json(report.record_bytes[rel])
            except (ValueError, KeyError, TypeError) as e:
                what = f"commit record does not parse ({type(e).__name__}: {e}); its unit's files are kept"
                report.add(rel, what, rel)
                unreadable.add(_unit_of_record(rel))
                continue
            if record.path != rel:
                report.add(rel, f"commit record of {record.kind}/{record.source}/{record.unit} at the wrong path", rel)
            elif record.policy_hash != manifest.policy_hash:
                report.add(rel, "made under another policy than the manifest's (readers ignore the unit)", rel)
            else:
                report.committed.add((kind, record.source, record.unit))
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
                for where, what in found:
                    report.add(where, what, record.path)
        own = (kind, *(f"{top}/{kind}" for top in (layout.ERRORS_DIR, layout.CLAIMS_DIR, layout.COMMITS_DIR)))
        report.orphans += [
            p
            for top in own
            for p in storage.list_files(top)
            if p not in listed and (found := layout.store_file(p)) and found[1:] not in unreadable
        ]
    return report


def collect_garbage(storage: StoreRoot, report: ValidationReport, grace_s: float) -> None:
    """Remove orphans that can never count: those of committed units; those of uncommitted units
    (claims included) once older than `grace_s` by the store's clock. A unit not committed at the
    scan has its record read again just before: a job may have committed it since, and what that
    record lists stays. Units whose record is damaged keep theirs. What stays is in `report.kept`
    with the reason; files that vanish meanwhile (jobs clean up too) are passed over."""
    now = storage.store_now()
    damaged_units = {_unit_of_record(rel) for rel in report.damaged}
    by_unit: dict[tuple[str, str, str], list[str]] = {}
    for rel in report.orphans:
        by_unit.setdefault(layout.store_file(rel)[1:], []).append(rel)

    def keep(why: str, files: list[str]) -> None:
        report.kept.setdefault(why, []).extend(files)

    def age(rel: str) -> float:
        try:
            return now - storage.modified(rel)
        except FileNotFoundError:
            return -1.0  # gone already

    remove: list[str] = []
    for unit, files in sorted(by_unit.items()):
        claims = [rel for rel in files if layout.store_file(rel)[0] == "claim"]
        data = [rel for rel in files if rel not in claims]
        if unit in damaged_units:
            keep("its unit's commit record is damaged", files)
            continue
        if unit not in report.committed:
            record = read_commit(storage, *unit)
            if record is not None:  # committed since the scan
                data = [rel for rel in data if not listed(record, rel)]
            elif any(age(rel) <= grace_s for rel in claims):
                keep(f"a claim renewed within {grace_s:.0f} s (its job may be running)", files)
                continue
            else:
                young = [rel for rel in data if age(rel) <= grace_s]
                keep(
                    f"its unit is not committed and it is younger than {grace_s:.0f} s (a job may be writing it)", young
                )
                data = [rel for rel in data if rel not in young]
        remove += data + claims
    # Probe files of jobs killed while probing the store (create-if-absent, its clock).
    remove += [rel for rel in storage.list_files(layout.PROBES_DIR) if age(rel) > grace_s]
    for rel in remove:
        try:
            storage.remove(rel)
        except FileNotFoundError:
            continue
        report.removed.append(rel)
    report.kept = {why: files for why, files in report.kept.items() if files}


def uncommit_damaged(storage: StoreRoot, report: ValidationReport) -> None:
    """Move the records of damaged units to `_quarantine/` (a copy created first, then the record
    removed): the units count as not committed, and the next job redoes them."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for rel in sorted(report.damaged):
        data = storage.read_bytes(rel)
        if data != report.record_bytes.get(rel, data):
            continue  # another validate moved it, or it changed since the scan: not what was judged
        target = layout.quarantine_path(rel, stamp)
        storage.write_bytes(target, data)
        storage.delete(rel)
        report.quarantined.append(target)


def indexes_over(storage: StoreRoot, units: set[tuple[str, str]]) -> dict[str, int]:
    """Gallery indexes (pipeline.transfer.gallery_index) covering any of the CLIP `units` (source, unit):
    name -> how many."""
    out = {}
    for rel in storage.list_files(layout.INDEXES_DIR):
        if rel.endswith("/index.json"):
            covered = {(u["source"], u["unit"]) for u in json.loads(storage.read_bytes(rel))["units"]}
            if covered & units:
                out[rel.split("/")[1]] = len(covered & units)
    return out


def _unit_of_record(rel: str) -> tuple[str, str, str]:
    kind, source, unit = rel[len(layout.COMMITS_DIR) + 1 : -len(".json")].split("/", 2)
    return kind, source, unit


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `30m`, `24h`, `2d` -> seconds."""
    number, unit = (text[:-1], text[-1]) if text and text[-1] in DURATION_UNITS else (text, "s")
    try:
        seconds = float(number) * DURATION_UNITS[unit]
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise ConfigError(f"--grace {text!r}: expected a duration such as 3600, 90m, 24h or 2d")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.validate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", help="the store's URL (credentials from the environment)")
    parser.add_argument("--sizes-only", action="store_true", help="compare sizes, not checksums (no full read)")
    parser.add_argument("--gc", action="store_true", help="remove the store's files no commit record lists (see above)")
    parser.add_argument(
        "--grace",
        type=parse_duration,
        default="24h",
        help="--gc leaves files of uncommitted units younger than this (default 24h)",
    )
    parser.add_argument(
        "--uncommit-damaged", action="store_true", help="move damaged units' records to _quarantine/ (see above)"
    )
    parser.add_argument("--workers", type=int, default=8, help="units checked in parallel")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    storage = StoreRoot(args.root)
    storage.check_reachable()
    report = validate(storage, hashes=not args.sizes_only, workers=args.workers)
    if args.uncommit_damaged and report.damaged:
        uncommit_damaged(storage, report)
    if args.gc:
        collect_garbage(storage, report, args.grace)
    print(
        f"store {storage.url}: {report.units} units, {report.files} files, {report.bytes / 1e6:.2f} MB checked"
        f"{' (sizes only)' if args.sizes_only else ''}"
    )
    for rel, what in report.problems:
        print(f"  PROBLEM {rel}: {what}")
    if report.quarantined:
        print(f"  {len(report.quarantined)} damaged units uncommitted (records moved to {layout.QUARANTINE_DIR}/):")
        for rel in sorted(report.damaged):
            print(f"    {'/'.join(_unit_of_record(rel))}")
        print("  the next materialize job of their sources redoes exactly these units")
        stale = indexes_over(storage, {(s, u) for k, s, u in map(_unit_of_record, report.damaged) if k == "clip"})
        for name, n in sorted(stale.items()):
            print(f"  index {name} covers {n} of them: stale until rebuilt (pipeline.transfer_set --rebuild-index)")
    elif report.damaged:
        print(f"  {len(report.damaged)} units damaged; --uncommit-damaged moves their records aside for a rerun")
    if args.gc:
        shown = ", ".join(report.removed[:5]) + (" ..." if len(report.removed) > 5 else "")
        print(f"  {len(report.removed)} files removed{': ' + shown if report.removed else ''}")
        for why, files in report.kept.items():
            print(f"  {len(files)} file{'s' if len(files) != 1 else ''} left: {why}")
    elif report.orphans:
        print(
            f"  {len(report.orphans)} files not listed by any commit record (--gc removes those that can never count): "
            + ", ".join(report.orphans[:5])
            + (" ..." if len(report.orphans) > 5 else "")
        )
    unit_problems = sum(len(found) for found in report.damaged.values()) if report.quarantined else 0
    print("ok: no problem found" if not report.problems else f"{len(report.problems)} problems")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return 0 if len(report.problems) == unit_problems else 1


if __name__ == "__main__":
    run_cli(main)
