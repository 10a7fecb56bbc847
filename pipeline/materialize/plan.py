"""`python -m pipeline.plan CONFIG [--set k=v ...]`: what a materialize job would do, checked.

Validates the config, reaches the store, expands every source's shards (each must exist), loads
the teachers to fingerprint them, compares the fingerprints and policies with the store's
manifests, and lists committed and pending units. Writes nothing but the store's root directory;
a bad config, path, teacher or a store made under other must-match fields stops here with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field

import torch

from pipeline.config import JobConfig, SourceConfig, load_job_config
from pipeline.materialize.job_manifests import clip_manifest, resolve_compute_dtype, sam_manifest
from pipeline.materialize.sources import InputShard, expand_source
from pipeline.teachers import load_clip_teacher, load_sam_teacher
from storage_schemas.plumbing.errors import ConfigError, run_cli
from storage_schemas.plumbing.identity import stable_hash64
from storage_schemas.plumbing.typed_config import add_config_arguments
from storage_schemas.store import TargetStore, layout
from storage_schemas.store.commit import CommitRecord
from storage_schemas.store.manifest import Manifest, check_compatible, read_manifest
from storage_schemas.store.root import StoreRoot

# Samples per unit for a source whose config leaves `unit_size` unset, in a store that has no unit
# of it yet. A driver crash redoes the teacher work of the units open at that moment: about one per
# read task (2 per teacher actor) plus the tails still in the actors. At the reference scale (64
# GPU actors, 128 read tasks) and target rates that is
#   CLIP: 128 x 4,000 = 512k samples, ~30 s of the cluster's 15-19k images/s (~1 min with tails);
#   SAM:  58 SA-1B tars read at once x 1,000 = 58k images, ~40-60 s of its 1,000-1,500 images/s.
DEFAULT_UNIT_SIZE = {"clip": 4000, "sam": 1000}


@dataclass(frozen=True)
class Partition:
    """`--partition i/N`: the shards whose (source, shard name) hash to i modulo N. A hash, not a
    range, because a source's shard list is only known when it is expanded and grows with new shards."""

    index: int
    count: int

    @staticmethod
    def parse(text: str) -> "Partition":
        i, _, n = text.partition("/")
        if not (i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
            raise ConfigError(f"--partition {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
        return Partition(int(i), int(n))

    def holds(self, source: str, shard: str) -> bool:
        return stable_hash64("partition", source, shard) % self.count == self.index


@dataclass
class KindPlan:
    manifest: Manifest  # the job's; equal in must-match fields to the store's if that exists
    manifest_exists: bool
    shards: list[InputShard] = field(default_factory=list)
    committed: dict[str, list[CommitRecord]] = field(default_factory=dict)  # shard url -> its committed units


@dataclass
class JobPlan:
    config: JobConfig
    storage: StoreRoot
    kinds: dict[str, KindPlan]
    dtype_guessed: bool = False  # an `auto` compute dtype for a device not known yet: not compared


def make_plan(
    cfg: JobConfig,
    device: str | None = None,
    partition: Partition | None = None,
    storage: StoreRoot | None = None,
    device_known: bool = True,
) -> JobPlan:
    """What the job would do: its shards (of `partition` only, if given), the teachers' manifests
    checked against the store's, and every unit committed so far. `storage`: the store as the job
    opened it (default: the config's). `device_known=False`: `device` is a guess (a cluster not yet
    joined), so a compute dtype chosen by `auto` is not compared with the store's."""
    storage = storage or StoreRoot(cfg.store.url, cfg.store.storage_options)
    storage.check_reachable(create=True)
    shards = [s for i, src in enumerate(cfg.sources) for s in expand_source(i, src)]
    if partition is not None:
        shards = [s for s in shards if partition.holds(s.source, s.name)]
    has_gpu = torch.cuda.is_available() if device is None else device.startswith("cuda")
    device = device or ("cuda" if has_gpu else "cpu")
    dtype = resolve_compute_dtype(cfg.compute_dtype, has_gpu)
    kinds: dict[str, KindPlan] = {}
    store = TargetStore(storage)
    for kind in sorted({s.kind for s in shards}):
        if kind == "clip":
            fp = load_clip_teacher(cfg.clip.teacher, cfg.store.storage_options).fingerprint
            manifest = clip_manifest(cfg, fp, dtype, device)
        else:
            fp = load_sam_teacher(cfg.sam.teacher, cfg.store.storage_options).fingerprint
            manifest = sam_manifest(cfg, fp, dtype, device)
        stored = read_manifest(storage, kind)
        if stored is not None:
            guessed = () if device_known or cfg.compute_dtype != "auto" else ("compute_dtype",)
            check_compatible(storage.url, stored, manifest, guessed)
        plan = KindPlan(manifest, stored is not None, [s for s in shards if s.kind == kind])
        for shard in plan.shards:
            plan.committed[shard.url] = []
        by_shard = {(s.source, s.name): s.url for s in plan.shards}
        for record in store.commits(kind) if stored else []:
            url = by_shard.get((record.source, record.shard))
            if url is not None:
                plan.committed[url].append(record)
        plan.shards = resolve_unit_sizes(kind, plan.shards, plan.committed, cfg.sources, read_cuts(storage, kind))
        kinds[kind] = plan
    return JobPlan(cfg, storage, kinds, dtype_guessed=not device_known and cfg.compute_dtype == "auto")


def resolve_unit_sizes(
    kind: str,
    shards: list[InputShard],
    committed: dict[str, list[CommitRecord]],
    sources: list[SourceConfig],
    cuts: dict[str, int],
) -> list[InputShard]:
    """Each shard's `unit_size`. A source the store has cut before (`cuts`: its `_cuts/` record, see
    `record_cuts`) keeps that cut: a config that sets another is refused, an unset one takes it.
    Otherwise an unset `unit_size` is the one the shard's own committed units, then the source's,
    were cut with (stores made before cut records), else DEFAULT_UNIT_SIZE of the kind."""
    by_source: dict[str, int] = {}
    for shard in shards:
        for r in committed[shard.url]:
            by_source.setdefault(shard.source, r.input.unit_size)
    out = []
    for shard in shards:
        i, source = next((i, s) for i, s in enumerate(sources) if (s.name, s.kind) == (shard.source, kind))
        cut = cuts.get(shard.source)
        if cut is not None and source.unit_size is not None and source.unit_size != cut:
            raise ConfigError(
                f"config key 'sources.{i}.unit_size': this store's units of source '{shard.source}' are cut at "
                f"{_samples(cut)}, this job has {_samples(source.unit_size)}; keep the store's unit_size "
                "(or leave it unset)"
            )
        if source.unit_size is None:
            own = committed[shard.url]
            fallback = cut if cut is not None else by_source.get(shard.source, DEFAULT_UNIT_SIZE[kind])
            shard = dataclasses.replace(shard, unit_size=(own[0].input.unit_size if own else fallback) or None)
        out.append(shard)
    return out


def _samples(unit_size: int) -> str:
    return f"{unit_size} samples" if unit_size else "0 (whole shards)"


def read_cuts(storage: StoreRoot, kind: str) -> dict[str, int]:
    """source -> the unit size its `_cuts/KIND/SOURCE.json` record fixes (0: whole shards)."""
    out = {}
    for rel in storage.list_files(f"{layout.CUTS_DIR}/{kind}"):
        if rel.endswith(".json"):
            out[rel.rsplit("/", 1)[1][: -len(".json")]] = int(json.loads(storage.read_bytes(rel))["unit_size"])
    return out


def record_cuts(plan: JobPlan) -> None:
    """Fix each source's cut in the store before any unit of it is made, created only if absent:
    two jobs cutting one shard differently would both commit (the same name means other samples
    under another cut), so the second to record another cut is refused here, before any work."""
    for kind, kp in plan.kinds.items():
        for source in sorted({s.source for s in kp.shards}):
            shards = [s for s in kp.shards if s.source == source]
            new = [s for s in shards if not kp.committed[s.url]] or shards
            size = new[0].unit_size or 0
            rel = layout.cut_path(kind, source)
            body = json.dumps({"kind": kind, "source": source, "unit_size": size}, sort_keys=True).encode()
            if not plan.storage.create(rel, body):
                stored = int(json.loads(plan.storage.read_bytes(rel))["unit_size"])
                i = next(i for i, s in enumerate(plan.config.sources) if (s.name, s.kind) == (source, kind))
                raise ConfigError(
                    f"config key 'sources.{i}.unit_size': another job has just cut source '{source}' at "
                    f"{_samples(stored)} in this store, this job at {_samples(size)}; keep the store's"
                )


def describe(plan: JobPlan) -> str:
    lines = [f"store {plan.storage.url}"]
    if not plan.kinds:
        lines.append("  no sources")
    for kind, kp in plan.kinds.items():
        must = kp.manifest.must_match
        teacher = must["teacher"]
        state = "matches the store's" if kp.manifest_exists else "absent: the first commit creates it"
        if kp.manifest_exists and plan.dtype_guessed:
            state += " (compute dtype: checked by the job where it runs)"
        lines.append(
            f"  {kind}: teacher {teacher['arch']} (weights {teacher['weights_sha256'][:12]}), "
            f"compute {must['compute_dtype']}, policy {kp.manifest.policy_hash[:12]}; manifest {state}"
        )
        for source in sorted({s.source for s in kp.shards}):
            shards = [s for s in kp.shards if s.source == source]
            done = sum(1 for s in shards if kp.committed[s.url])
            units = sum(len(kp.committed[s.url]) for s in shards)
            size = sum(s.size for s in shards)
            cut = sorted({s.unit_size or 0 for s in shards})
            lines.append(
                f"    source {source}: {len(shards)} shards ({size / 1e6:.1f} MB), units of "
                f"{' / '.join(str(c) if c else 'a whole shard' for c in cut)} samples, "
                f"{done} with committed units ({units} units), {len(shards) - done} untouched"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    parser.add_argument("--partition", type=Partition.parse, help="only the shards of partition I of N (I/N)")
    args = parser.parse_args(argv)
    # Where the job will run is not known here: an `auto` compute dtype is checked by the job itself.
    cfg = load_job_config(args.config, args.overrides)
    print(describe(make_plan(cfg, partition=args.partition, device_known=False)))
    return 0


if __name__ == "__main__":
    run_cli(main)
