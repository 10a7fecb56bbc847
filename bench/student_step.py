"""Student training step: cached targets against teachers run online, and the loader's share.

    python bench/student_step.py [--store out/store] [--arch vit_b] [--clip-batch 4] [--sam-images 1] [--prompts 8]

Without --store it writes a synthetic store first (pipeline/sample/synthetic_store.py: 384-512 px CLIP JPEGs
with D = 768 targets, ~1500 px SA-1B-like images).

Measured side by side in one process, each figure the median of --repeats steps (after one warm-up):
- cached:  the joint step as the trainer runs it (student forward on a CLIP batch at 224 px and a
           SAM batch at 1024 px, L_CLIP + 10 L_SAM, backward, AdamW), targets from the batch;
- online:  the same step preceded by what it replaces: the CLIP teacher (open_clip ViT-L-14,
           random init) on the CLIP views and the SAM teacher (vit_b, random) on the SAM image
           and prompts (timed on their own and added to the cached step); cached / online is the
           saving the store buys;
- loader:  the cached step pulling each batch from the trainer's live loaders (the store's sample
           shards, --workers worker processes each) against the step on batches already in memory,
           and how long the step waited for its batch;
- supply:  loader images/s alone against the images/s the cached step consumes.
Student and teachers at full size with random weights (CPU is fine: only ratios are reported).
The step's CLIP targets are random unit vectors of the teacher's width (the demo store's tiny
teacher has D = 64); they cost the same to use.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from itertools import islice

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from pipeline.config import ClipTeacherConfig, SamTeacherConfig
from pipeline.sample.synthetic_store import write_clip_store, write_sam_store
from pipeline.teachers import load_clip_teacher, load_sam_teacher
from storage_schemas.models.sam_models import build_sam
from storage_schemas.store import open_store
from student.config import LossConfig
from student.data.batches import ClipBatchMaker, SamBatchMaker, Stream, target_logits
from student.data.pieces import split_filter, unit_pieces
from student.losses import clip_loss, sam_loss
from student.modeling.model import SamClip


def stream(store, kind: str, maker, size: int, batch: int, workers: int) -> Stream:
    """The trainer's stream for one process (endless, epoch after epoch)."""
    units = [unit_pieces(store, r, maker.keep) for r in store.commits(kind)]
    return Stream(
        kind, units, maker, sizes={size: batch}, seed=0, world_size=1, rank=0, streams=max(1, workers), workers=workers
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="a store with CLIP and SAM targets (default: a synthetic one, written first)")
    p.add_argument("--arch", default="vit_b", help="student SAM architecture")
    p.add_argument("--clip-teacher", default="ViT-L-14")
    p.add_argument("--clip-batch", type=int, default=4)
    p.add_argument("--sam-images", type=int, default=1)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory()
    if args.store is None:
        args.store = write_clip_store(tmp.name, units=4, samples=64, part=32, views=10, dim=768)
        write_sam_store(tmp.name, units=2, images=4, part=2, prompts=max(args.prompts, 8))
    store = open_store(args.store)
    keep = split_filter(0.01, "train")
    clip_teacher = load_clip_teacher(ClipTeacherConfig(arch=args.clip_teacher, pretrained=None))
    sam_teacher = load_sam_teacher(SamTeacherConfig(model="vit_b")).sam
    embed_dim = clip_teacher.embed_dim
    student = SamClip(build_sam(args.arch), embed_dim).train()
    student.prompt_encoder.requires_grad_(False)
    opt = torch.optim.AdamW([q for q in student.parameters() if q.requires_grad], lr=1e-5)
    loss_cfg = LossConfig()
    clip_stream = stream(
        store,
        "clip",
        ClipBatchMaker(store=store, keep=keep, seed=0, view_choice="random", views=None),
        224,
        args.clip_batch,
        args.workers,
    )
    sam_stream = stream(
        store,
        "sam",
        SamBatchMaker(store=store, keep=keep, seed=0, prompts=args.prompts),
        1024,
        args.sam_images,
        args.workers,
    )
    in_memory = (next(clip_stream), next(sam_stream))

    def step(cb, sb) -> None:
        targets = F.normalize(torch.randn(len(cb["images"]), embed_dim), dim=-1)
        out = student(
            clip_images=cb["images"], sam_images=sb["images"], sam_input_hw=sb["input_hw"], prompts=sb["prompts"]
        )
        loss = (
            clip_loss(out["clip"], targets)
            + 10 * sam_loss(out["masks"], out["iou"], target_logits(sb, "cpu"), sb["target_iou"], loss_cfg)["total"]
        )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def teachers(cb, sb) -> None:
        views = F.interpolate(cb["images"].float() / 255, size=224, mode="bilinear", antialias=True)
        mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
        clip_teacher.model.encode_image((views - mean) / std)
        emb = sam_teacher.image_encoder(sam_teacher.preprocess(sb["images"].float()))
        for b in range(len(emb)):
            pr = sb["prompts"]
            idx = (pr.image_index == b).nonzero().squeeze(1)
            for code in pr.structure[idx].unique().tolist():
                j = idx[pr.structure[idx] == code]
                box = pr.boxes[j] if code != 1 else None
                pts = (pr.points[j], pr.labels[j]) if code != 0 else None
                sparse, dense = sam_teacher.prompt_encoder(points=pts, boxes=box, masks=None)
                sam_teacher.mask_decoder(
                    emb[b : b + 1], sam_teacher.prompt_encoder.get_dense_pe(), sparse, dense, False
                )

    def timed(fn, repeats: int) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    cached = timed(lambda: step(*in_memory), args.repeats)
    online = cached + timed(lambda: teachers(*in_memory), args.repeats)  # the same step, teachers first
    waits: list[float] = []

    def live_step() -> None:
        t = time.perf_counter()
        batches = next(clip_stream), next(sam_stream)
        waits.append(time.perf_counter() - t)
        step(*batches)

    live = timed(live_step, args.repeats)
    wait = statistics.median(waits[1:])  # after the warm-up, which starts the workers
    n_batches = 8
    t = time.perf_counter()
    clip_images = sum(len(b["images"]) for b in islice(clip_stream, n_batches))
    clip_rate = clip_images / (time.perf_counter() - t)
    t = time.perf_counter()
    sam_images = sum(len(b["images"]) for b in islice(sam_stream, n_batches))
    sam_rate = sam_images / (time.perf_counter() - t)
    print(
        f"student {args.arch}, CLIP teacher {args.clip_teacher} (D={embed_dim}), SAM teacher vit_b; "
        f"batch: {args.clip_batch} CLIP images at 224 px + {args.sam_images} SAM image(s) x {args.prompts} prompts; "
        f"{torch.get_num_threads()} torch threads"
    )
    print(f"  cached step (data in memory)   {cached:8.2f} s")
    print(f"  online step (teachers + step)  {online:8.2f} s")
    print(f"  cached / online                {cached / online:8.3f}")
    print(
        f"  cached step, live loaders      {live:8.2f} s   ({live / cached:.3f} of in-memory; goal <= 1.05), "
        f"of which waiting for the batch {wait:.3f} s"
    )
    step_clip, step_sam = args.clip_batch / cached, args.sam_images / cached
    print(
        f"  loader supply, {args.workers} worker(s) each: CLIP {clip_rate:7.1f} images/s vs {step_clip:.2f} consumed "
        f"({clip_rate / step_clip:.0f}x); SAM {sam_rate:6.2f} images/s vs {step_sam:.3f} consumed "
        f"({sam_rate / step_sam:.0f}x)"
    )


if __name__ == "__main__":
    main()
