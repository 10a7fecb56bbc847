"""`python -m pipeline.verify ROOT --config JOB.yaml --sample N [--seed S]`: does the teacher still say
what the store says?

Draws N committed samples of each kind at random (a unit, then a sample in it), reads their images
from the input shards the commit records name, and runs the teacher of JOB.yaml from scratch:
  - CLIP: every stored view re-rendered from its stored crop and flip (its pixel hash must match),
    embedded, and compared with the stored embedding (cosine, max abs difference);
  - SAM: the image's stored prompts (boxes, points, labels, both rounds) decoded again and the low-res
    logits compared with the stored ones (max abs logit difference, and for uint8 storage the
    probability difference against its 0.5/255 bound).
The teacher must be the store's: its weights' sha256 must equal the manifest's. Exit 0 when every
figure is within tolerance (--min-cosine, --max-logit-diff), 1 otherwise; 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.config import JobConfig, load_job_config
from pipeline.materialize.clip_targets import ClipTeacherStage, RenderSpec
from pipeline.materialize.sam_targets import PromptSpec, SamTeacherStage
from storage_schemas.pixels.decode import decode_image, draft_side_for
from storage_schemas.pixels.sam_transforms import pad_image, sam_input_image
from storage_schemas.pixels.tar_samples import iter_tar_samples
from storage_schemas.pixels.views import render_view, view_hash
from storage_schemas.plumbing.errors import ManifestMismatch, StoreError, run_cli
from storage_schemas.plumbing.identity import stable_hash64
from storage_schemas.plumbing.typed_config import add_set_argument
from storage_schemas.store import TargetStore, open_store
from storage_schemas.store.clip_views import ClipViews
from storage_schemas.store.commit import CommitRecord
from storage_schemas.store.mask_logits import UINT8_MAX_PROB_ERROR, decode_logits
from storage_schemas.store.sam_tables import prompts_by_image


@dataclass
class KindResult:
    samples: int = 0
    items: int = 0  # views or prompts compared
    pixel_hash_matches: int = 0
    min_cosine: float = 1.0
    max_abs_diff: float = 0.0
    max_prob_diff: float = 0.0
    mismatched: list[str] = field(default_factory=list)  # sample ids with a figure out of tolerance


def choose(store: TargetStore, kind: str, n: int, seed: int) -> list[tuple[CommitRecord, int]]:
    """n distinct (unit, row) draws (all stored samples where there are fewer): a unit uniformly
    among the committed ones, then a stored sample in it, a draw already made drawn again."""
    records = [r for r in store.commits(kind) if r.n_stored > 0]
    n = min(n, sum(r.n_stored for r in records))
    out, seen, i = [], set(), 0
    while len(out) < n:
        record = records[stable_hash64("verify-unit", seed, kind, i) % len(records)]
        row = stable_hash64("verify-sample", seed, kind, i) % record.n_stored
        if (record.unit, row) not in seen:
            seen.add((record.unit, row))
            out.append((record, row))
        i += 1
    return out


def read_samples(record: CommitRecord, indices: set[int], storage_options: dict) -> dict[int, bytes]:
    """sample_index (in the unit) -> image bytes, from the unit's input shard."""
    start = record.input.sample_start
    found = {}
    for s in iter_tar_samples(record.input.url, storage_options, lambda i: (i - start) in indices):
        if (s.index - start) in indices and s.image() is not None:
            found[s.index - start] = s.image()[1]
        if len(found) == len(indices):
            break
    return found


def check_teacher(store: TargetStore, kind: str, fingerprint_sha: str) -> None:
    want = store.manifest(kind).must_match["teacher"]["weights_sha256"]
    if want != fingerprint_sha:
        raise ManifestMismatch(
            f"store {store.url}: the {kind} targets come from weights {want[:12]}..., the config's "
            f"teacher has {fingerprint_sha[:12]}...; verify needs the store's own teacher"
        )


def verify_clip(store: TargetStore, cfg: JobConfig, draws, min_cosine: float) -> KindResult:
    must = store.manifest("clip").must_match
    stage = ClipTeacherStage(
        cfg.clip.teacher, RenderSpec.of_job(cfg, must), store.storage, must["compute_dtype"], torch.get_num_threads()
    )
    check_teacher(store, "clip", stage.teacher.fingerprint.weights_sha256)
    pp = must["teacher"]["preprocess"]
    size, interpolation = int(pp["size"][0]), pp["interpolation"]
    result = KindResult()
    for record in {r.unit: r for r, _ in draws}.values():
        rows = sorted({i for r, i in draws if r.unit == record.unit})
        views = ClipViews.from_table(store.read_unit_table(record, "views"))
        wanted = {int(views.sample_index[i]): i for i in rows}
        images = read_samples(record, set(wanted), cfg.store.storage_options)
        for sample_index, n in wanted.items():
            decoded = decode_image(images[sample_index], must["policy"]["max_image_pixels"], draft_side_for(size)).image
            pixels = np.stack(
                [render_view(decoded, c, f, size, interpolation) for c, f in zip(views.crops[n], views.flips[n])]
            )
            hashes = [view_hash(p) for p in pixels]
            got = stage.embed(pixels).astype(np.float32)
            want = views.embeddings[n].astype(np.float32)
            cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
            matches = sum(a == b for a, b in zip(hashes, views.pixel_hashes[n]))
            result.samples += 1
            result.items += len(pixels)
            result.pixel_hash_matches += matches
            result.min_cosine = min(result.min_cosine, float(cos.min()))
            result.max_abs_diff = max(result.max_abs_diff, float(np.abs(got - want).max()))
            if matches < len(pixels) or cos.min() < min_cosine:
                result.mismatched.append(f"{record.source}/{record.shard}/{views.keys[n]}")
    return result


def verify_sam(store: TargetStore, cfg: JobConfig, draws, max_logit_diff: float) -> KindResult:
    must = store.manifest("sam").must_match
    stage = SamTeacherStage(
        PromptSpec(cfg.seed, cfg.sam, cfg.max_image_pixels),
        store.storage,
        must["compute_dtype"],
        torch.get_num_threads(),
    )
    check_teacher(store, "sam", stage.teacher.fingerprint.weights_sha256)
    policy, precision = must["policy"], must["precision"]
    result = KindResult()
    for record in {r.unit: r for r, _ in draws}.values():
        rows = sorted({i for r, i in draws if r.unit == record.unit})
        images_t = store.read_unit_table(record, "images").sort_by("sample_index")
        prompts = prompts_by_image(store.read_unit_table(record, "prompts"), int(policy["points_per_prompt"]))
        array = store.open_logits(record)
        index = images_t.column("sample_index").to_numpy()
        wanted = {int(index[i]): i for i in rows}
        data = read_samples(record, set(wanted), cfg.store.storage_options)
        for sample_index, row in wanted.items():
            image = images_t.slice(row, 1).to_pylist()[0]
            n_prompts = int(image["n_prompts"])
            rgb = np.asarray(decode_image(data[sample_index], policy["max_image_pixels"]).image)
            resized = sam_input_image(rgb)
            p = prompts[sample_index]
            logits, _ = stage.predict_image(
                pad_image(resized),
                input_hw=resized.shape[:2],
                original_hw=rgb.shape[:2],
                structure=p.structure,
                boxes=p.boxes,
                points=p.points,
                labels=p.labels,
                n_prompts=n_prompts,
            )
            slots = [r * int(policy["prompts"]) + p for r in range(int(policy["rounds"])) for p in range(n_prompts)]
            stored = decode_logits(array[row][slots], precision)
            got = logits[slots]
            diff = float(np.abs(got - stored).max()) if slots else 0.0
            prob = float(np.abs(1 / (1 + np.exp(-got)) - 1 / (1 + np.exp(-stored))).max()) if slots else 0.0
            result.samples += 1
            result.items += len(slots)
            result.max_abs_diff = max(result.max_abs_diff, diff)
            result.max_prob_diff = max(result.max_prob_diff, prob)
            bad = prob > UINT8_MAX_PROB_ERROR + 1e-3 if precision == "uint8_sigmoid" else diff > max_logit_diff
            if bad:
                result.mismatched.append(f"{record.source}/{record.shard}/{image['key']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.verify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", help="the store's URL")
    parser.add_argument(
        "--config", required=True, help="job config YAML naming the teachers (its store is replaced by ROOT)"
    )
    add_set_argument(parser)
    parser.add_argument("--sample", type=int, default=8, help="samples of each kind to recompute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-cosine", type=float, default=0.999, help="CLIP: worst cosine accepted")
    parser.add_argument("--max-logit-diff", type=float, default=0.05, help="SAM fp16: worst logit difference accepted")
    parser.add_argument("--json", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, [*args.overrides, f"store.url={args.root}"])
    store = open_store(args.root, cfg.store.storage_options)
    results = {}
    for kind, run, tol in (("clip", verify_clip, args.min_cosine), ("sam", verify_sam, args.max_logit_diff)):
        draws = choose(store, kind, args.sample, args.seed)
        if draws:
            results[kind] = run(store, cfg, draws, tol)
    if not results:
        raise StoreError(f"store {store.url} has no committed samples to verify")
    for kind, r in results.items():
        line = f"{kind}: {r.samples} samples, {r.items} {'views' if kind == 'clip' else 'prompt slots'}"
        if kind == "clip":
            line += f", pixel hashes {r.pixel_hash_matches}/{r.items}, min cosine {r.min_cosine:.6f}"
        else:
            line += f", max |logit diff| {r.max_abs_diff:.4g}, max |probability diff| {r.max_prob_diff:.4g}"
        print(line + f", max |diff| {r.max_abs_diff:.4g}" * (kind == "clip"))
        for m in r.mismatched:
            print(f"  MISMATCH {kind} {m}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: vars(v) for k, v in results.items()}, f, indent=2)
    ok = not any(r.mismatched for r in results.values())
    print("ok: the teacher agrees with the store" if ok else "the store disagrees with the teacher (see MISMATCH)")
    return 0 if ok else 1


if __name__ == "__main__":
    run_cli(main)
