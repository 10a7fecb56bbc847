"""The student's CLIP training step on one GPU fed by the trainer's loaders against fed from memory,
and how many loader workers one GPU needs. One prepared script, under 8 minutes, no Ray.

    python bench/gpu_student.py [--batch 64] [--steps 60] [--workers 2 4 8 16] [--tiny]

data:    a synthetic store (pipeline/sample/synthetic_store.py: 384-512 px JPEGs, K = 10 views of D = 768
         targets), written first with storage_schemas' own writers.
step:    the ViT-B student (SAM ViT-B backbone + CLIP head, random init) on a CLIP batch at 224 px,
         bf16 autocast, L_CLIP, backward, AdamW; everything trainable (the joint stage's CLIP half).
memory:  the step on one batch already on the GPU, --steps times: images/s per GPU.
loaders: the same step pulling every batch from the trainer's Stream (student.data.batches) with W
         workers (streams = 16), after a warm-up of 5 steps, within one epoch; its images/s and
         the ratio to memory (target >= 0.95); the smallest W that reaches it is what one GPU needs.
--tiny:  the tiny SAM config on CPU with a small store: checks the script, measures nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from pipeline.sample.synthetic_store import write_clip_store
from storage_schemas.models.sam_models import build_sam
from storage_schemas.store import open_store
from student.data.batches import ClipBatchMaker, Stream
from student.data.pieces import split_filter, unit_pieces
from student.losses import clip_loss
from student.modeling.model import SamClip

STREAMS = 16


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="CLIP images per step at 224 px (paper: 2048 / 32 GPUs)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    arch, dim = ("tiny", 64) if args.tiny else ("vit_b", 768)
    units, samples, part = (4, 64, 16) if args.tiny else (16, 512, 128)
    if args.tiny:
        args.batch, args.workers = 4, [2]
    steps = 3 if args.tiny else args.steps
    tmp = tempfile.TemporaryDirectory()
    t = time.perf_counter()
    store = open_store(write_clip_store(tmp.name, units=units, samples=samples, part=part, views=10, dim=dim))
    print(f"store: {units} x {samples} samples written in {time.perf_counter() - t:.0f} s; device {device}")
    keep = split_filter(0.01, "train")
    pieces = [unit_pieces(store, r, keep) for r in store.commits("clip")]
    model = SamClip(build_sam(arch), dim).to(device).train()
    model.prompt_encoder.requires_grad_(False)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
    dtype = torch.bfloat16 if cuda else torch.float32

    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            loss = clip_loss(model(clip_images=images)["clip"], targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def rate(batches, n: int) -> float:
        for _ in range(min(5, n)):  # warm-up: workers start, allocator settles
            step(*next(batches))
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            step(*next(batches))
        if cuda:
            torch.cuda.synchronize()
        return n * args.batch / (time.perf_counter() - t)

    def clip_stream(workers: int) -> Stream:
        return Stream(
            "clip",
            pieces,
            ClipBatchMaker(store=store, keep=keep, seed=0, view_choice="random", views=None),
            sizes={224: args.batch},
            seed=0,
            world_size=1,
            rank=0,
            streams=STREAMS,
            workers=workers,
        )

    def from_stream(stream):
        for b in stream:
            yield b["images"].to(device, non_blocking=True), b["targets"].to(device, non_blocking=True)

    first = next(clip_stream(0))
    fixed = first["images"].to(device), first["targets"].to(device)

    def repeat():
        while True:
            yield fixed

    memory = rate(repeat(), steps)
    print(
        f"memory: {memory:8.1f} images/s per GPU (ViT-B student, {args.batch} images at 224 px, "
        f"{'bf16' if cuda else 'fp32'})"
    )
    need = None
    for w in [w for w in args.workers if STREAMS % w == 0]:
        stream = clip_stream(w)
        if len(stream.plan.batches) < steps + 5:
            raise SystemExit(f"the store gives {len(stream.plan.batches)} batches an epoch; raise its size")
        live = rate(from_stream(stream), steps)
        print(f"loaders, {w:2d} workers: {live:8.1f} images/s per GPU = {live / memory:.3f} of memory")
        if need is None and live >= 0.95 * memory:
            need = w
    needed = need if need is not None else f"more than {max(args.workers)}"
    print(f"workers one GPU needs (>= 0.95 of memory): {needed}")


if __name__ == "__main__":
    main()
