"""The teacher stages on one GPU, without Ray: views/s and images/s per GPU against the bare
teachers, and how busy the GPU was. One prepared script, under 8 minutes, that makes its own data.

    python bench/gpu_teachers.py [--seconds 40] [--clip-batch 256] [--sam-batch 4] [--render-threads 8]
                                 [--corpus DIR] [--tiny]

data:   the built-in sample corpus (pipeline.sample_data; built in a temporary directory unless
        --corpus names one): CLIP shards of 384-512 px JPEGs and SA-1B-style pairs (320-640 px
        JPEG + COCO-RLE JSON), cycled to fill the time.
CLIP:   open_clip ViT-L/14 at full size from a random init (seed 0), bf16 autocast, K=10 views.
        stage = ClipTeacherStage called from 2 threads as Ray calls it (`ray.calls_per_actor: 2`),
        on the read stage's own rows (JPEG bytes): the render pool decodes and renders into
        pinned memory, the teacher embeds chunk by chunk, each part is written to local disk.
        bare  = the same model's normalise + encode on views already on the GPU.
SAM:    segment-anything ViT-H from a random init, bf16 autocast, P=64 prompts, 1 round.
        stage = SamTeacherStage likewise (decode + prompts on the pool, encoder + decoder,
        quantisation on the device, Zarr encoding and the writes outside the GPU lock).
        bare  = predict_image_device on inputs already decoded, synchronised per image.
        Also: decode + resize of a 2250x1500 JPEG (SA-1B's size) on one CPU thread, to size the pool.
busy:   the GPU's utilisation sampled every 100 ms (NVML through torch.cuda.utilization, where
        pynvml is installed), mean over the stage's run; and stage rate / bare rate.
--tiny: the tiny registry configs on CPU, a few seconds each: checks the script, measures nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from pipeline.config import ClipTeacherConfig, SamConfig, SamTeacherConfig, ViewPolicy
from pipeline.materialize.clip_targets import ClipTeacherStage, RenderSpec, read_clip_shard
from pipeline.materialize.sam_targets import PromptSpec, SamTeacherStage, predict_inputs, prepare_image, read_sam_shard
from pipeline.materialize.sources import InputShard
from pipeline.materialize.units import OK, shard_task
from pipeline.sample.corpus import CorpusSpec, build_sample_corpus, encode_jpeg, load_photo, random_variant
from storage_schemas.pixels.decode import DEFAULT_MAX_PIXELS, decode_image
from storage_schemas.pixels.sam_transforms import sam_input_image
from storage_schemas.plumbing.identity import SampleId
from storage_schemas.store.root import StoreRoot


class BusyMeter:
    """Samples the GPU's utilisation (percent) in a thread while it runs; None without NVML."""

    def __init__(self):
        self.samples: list[float] = []
        self.stop = threading.Event()

    def __enter__(self):
        def sample():
            while not self.stop.wait(0.1):
                try:
                    self.samples.append(float(torch.cuda.utilization()))
                except Exception:  # no pynvml or no GPU: the figure is n/a
                    return

        if torch.cuda.is_available():
            threading.Thread(target=sample, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rows_of(kind: str, url: str, storage: StoreRoot) -> list[dict]:
    task = shard_task(
        InputShard("bench", kind, url, os.path.basename(url)[:-4], os.path.getsize(url), None, {}, None),
        [],
        storage,
        write_index=False,
    )
    return [r for r in (read_clip_shard if kind == "clip" else read_sam_shard)(task) if r["status"] == OK]


def as_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows as Ray's numpy batch format gives them to an actor."""
    return {
        c: np.array([r[c] for r in rows], dtype=object if isinstance(rows[0][c], (bytes, str)) else None)
        for c in rows[0]
    }


def run_for(seconds: float, calls: int, fn) -> tuple[int, float]:
    """fn() -> items, called from `calls` threads until `seconds` pass -> (items, wall seconds)."""
    done, t0 = [], time.perf_counter()

    def loop():
        while time.perf_counter() - t0 < seconds:
            done.append(fn())

    with ThreadPoolExecutor(calls) as pool:
        for f in [pool.submit(loop) for _ in range(calls)]:
            f.result()
    sync()
    return sum(done), time.perf_counter() - t0


def bench_clip(args, corpus: str, out: str, dtype: str) -> None:
    arch = "samclip-tiny-clip" if args.tiny else "ViT-L-14"
    teacher = ClipTeacherConfig(arch=arch, pretrained=None, init_seed=0)
    k = 10
    stage = ClipTeacherStage(
        teacher, None, StoreRoot(out), dtype, threads=args.render_threads, render_threads=args.render_threads
    )
    spec = stage.spec = RenderSpec.of(stage.teacher.fingerprint.preprocess, 0, k, ViewPolicy(), DEFAULT_MAX_PIXELS)
    rows = [
        r
        for shard in sorted(os.listdir(f"{corpus}/clip"))
        if shard.endswith(".tar")
        for r in rows_of("clip", f"{corpus}/clip/{shard}", stage.storage)
    ]
    batch = as_batch([rows[i % len(rows)] for i in range(args.clip_batch)])
    stage(batch)  # warm-up: cuDNN/cuBLAS plans, the pinned buffers
    with BusyMeter() as busy:
        n, seconds = run_for(args.seconds, 2, lambda: (stage(batch), args.clip_batch * k)[1])
    stage_rate = n / seconds
    views = torch.randint(0, 255, (args.clip_batch * k, spec.size, spec.size, 3), dtype=torch.uint8).to(stage.device)
    stage.embed_async(views)
    n, seconds = run_for(args.seconds, 1, lambda: (stage.embed_async(views), sync(), len(views))[2])
    bare_rate = n / seconds
    print(
        f"CLIP {arch} random init, {dtype}, K={k}, batch {args.clip_batch} samples, "
        f"{args.render_threads} render threads"
    )
    print(f"  bare teacher       {bare_rate:10.1f} views/s")
    print(
        f"  teacher stage      {stage_rate:10.1f} views/s = {stage_rate / k:.1f} samples/s "
        f"({stage_rate / bare_rate:.3f} of bare); GPU busy {fmt(busy.mean)}"
    )


def bench_sam(args, corpus: str, out: str, dtype: str) -> None:
    model = "tiny" if args.tiny else "vit_h"
    cfg = SamConfig(teacher=SamTeacherConfig(model=model), prompts=64)
    spec = PromptSpec(0, cfg, DEFAULT_MAX_PIXELS)
    stage = SamTeacherStage(
        spec, StoreRoot(out), dtype, threads=args.render_threads, render_threads=args.render_threads
    )
    rows = [
        r
        for shard in sorted(os.listdir(f"{corpus}/sam"))
        if shard.endswith(".tar")
        for r in rows_of("sam", f"{corpus}/sam/{shard}", stage.storage)
    ]
    per_batch = args.sam_batch
    batch = as_batch([rows[i % len(rows)] for i in range(per_batch)])
    stage(batch)
    with BusyMeter() as busy:
        n, seconds = run_for(args.seconds, 2, lambda: (stage(batch), per_batch)[1])
    stage_rate = n / seconds
    prepared = [prepare_image(spec, SampleId("bench", r["shard"], r["key"]), r["image"], r["annotation"]) for r in rows]
    for p in prepared:
        p["image"] = np.ascontiguousarray(p["image"])
    i = iter(range(10**9))

    def one():
        p = prepared[next(i) % len(prepared)]
        stage.predict_image_device(p["image"], **predict_inputs(p))
        sync()
        return 1

    one()
    n, seconds = run_for(args.seconds, 1, one)
    bare_rate = n / seconds
    big = encode_jpeg(random_variant(load_photo("astronaut"), np.random.default_rng(0), (2250, 2250))[:1500], 90)
    t0 = time.perf_counter()
    for _ in range(5):
        sam_input_image(np.asarray(decode_image(big).image))
    prep_ms = (time.perf_counter() - t0) / 5 * 1e3
    print(f"SAM {model} random init, {dtype}, P=64, 1 round, {per_batch} images a batch")
    print(f"  bare teacher       {bare_rate:10.2f} images/s")
    print(
        f"  teacher stage      {stage_rate:10.2f} images/s ({stage_rate / bare_rate:.3f} of bare); "
        f"GPU busy {fmt(busy.mean)}"
    )
    print(
        f"  decode + resize of a 2250x1500 JPEG: {prep_ms:.1f} ms on one thread "
        f"({1e3 / prep_ms:.1f} images/s per pool thread)"
    )


def fmt(percent: float | None) -> str:
    return "n/a (no NVML)" if percent is None else f"{percent:.0f}%"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40, help="per measurement (4 of them)")
    parser.add_argument("--clip-batch", type=int, default=256)
    parser.add_argument("--sam-batch", type=int, default=4, help="SA-1B images per stage call")
    parser.add_argument("--render-threads", type=int, default=8)
    parser.add_argument("--corpus", help="an existing sample corpus (python -m pipeline.sample_data DIR)")
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU: checks the script only")
    args = parser.parse_args(argv)
    if args.tiny:
        args.seconds, args.clip_batch, args.sam_batch, args.render_threads = min(args.seconds, 3), 8, 2, 2
    elif not torch.cuda.is_available():
        sys.exit("no GPU: this benchmark measures the teachers on one (use --tiny to check the script on CPU)")
    dtype = "bf16" if torch.cuda.is_available() else "fp32"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{device}; torch {torch.__version__}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as work:
        corpus = args.corpus or f"{work}/corpus"
        if not args.corpus:
            build_sample_corpus(corpus, CorpusSpec(eval_per_class=1))
        bench_clip(args, corpus, f"{work}/clip-out", dtype)
        bench_sam(args, corpus, f"{work}/sam-out", dtype)


if __name__ == "__main__":
    main()
