"""The trainer's loaders on a pinned synthetic corpus: images/s per worker against the decode + render
floor on the same samples, bytes read per trained sample against its budget, units per batch.

    python bench/loader.py [--clip-units 16] [--clip-samples 128] [--sam-units 4] [--sam-images 16] [--workers 1 2]
                          [--kinds clip sam]

Corpus (pipeline/sample/synthetic_store.py, fixed seed): CLIP shards of 384-512 px JPEGs (K = 10 views of
D = 768 targets per sample), SA-1B-like shards of ~1500 px short-side JPEGs with 400 kB JSONs and
64 stored prompts of SAM-like logits per image in uint8_sigmoid (jobs/merged41m.yaml's store), of
which a batch draws 32. For each setting (CLIP at 224, 448 and 1024 px, SAM at 1024 px, 32 prompts):
- floor:   the worker's per-sample CPU alone: `maker.item` (decode + render, SAM's resize + pad)
           on samples already in memory, in W forked processes at once for W workers (so both
           sides share the cores alike); the fetching alone (parts, ranged tar reads, SAM's Zarr
           chunks) is timed too. Logits cross in their stored dtype and are decoded on the
           trainer's device (student.data.batches.target_logits), so neither side decodes them;
- loader:  one epoch through the trainer's DataLoader (`Loader(BatchStream(...))`) with W
           workers, timed from its first batch, as images/s per worker; its ratio to the floor;
- gap:     where a worker's shortfall goes: the same DataLoader (1 worker) over the samples in
           memory, collating each batch and handing it to the trainer, then handing off nothing;
           and the fetch's CPU per sample (all threads' process time) against a sample's floor
           time, which the loader spends beside the decode on the same cores;
- bytes:   everything read through fsspec in the epoch (storage_schemas/plumbing/counting_fs.py) per trained sample,
           against the budget: the trained samples' whole tar bytes (image, .txt/.json, headers),
           the part files of their pieces and the tar indexes (SAM reads less: the student never
           needs SA-1B's JSON, so it skips it); and against the images + targets + indexes alone;
- mixing:  distinct units per batch (min and mean).
Two cores here: with W = 2 the workers also share them with the main process and their fetch
threads, which the floor does not; the absolute rates mean something only on the training nodes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from pipeline.sample.synthetic_store import write_clip_store, write_sam_store
from storage_schemas.plumbing.counting_fs import counting_reads, read_log
from storage_schemas.store import open_store
from storage_schemas.store.unit_tar import unit_tar
from student.data.batches import BatchStream, ClipBatchMaker, Loader, SamBatchMaker
from student.data.epoch_plan import plan_epoch
from student.data.pieces import split_filter, unit_pieces
from student.data.stream_reader import StreamReader

STREAMS = 2  # divisible by every worker count benchmarked
ROUNDS = 3


def in_memory(plan, maker) -> list:
    """Every sample of the epoch, fetched as the loader fetches them (untimed)."""
    pool = ThreadPoolExecutor(2)
    out = []
    for s in range(len(plan.streams)):
        reader = StreamReader(
            plan,
            s,
            source=maker,
            store=maker.store,
            storage_options=None,
            read_run=maker.read_run,
            mix_window=maker.mix_window,
            start=0,
            pool=pool,
        )
        out += reader.take(plan.stream_samples(s))
    pool.shutdown()
    return out


def floor_rate(maker, samples, resolution: int, epoch: int) -> float:
    t = time.perf_counter()
    for s in samples:
        maker.item(s, resolution, epoch)
    return len(samples) / (time.perf_counter() - t)


_FORKED: tuple = ()  # (maker, samples, resolution) for the floor's forked processes


def _floor_share(i: int, processes: int) -> float:
    maker, samples, resolution = _FORKED
    return floor_rate(maker, samples[i::processes], resolution, 0)


def parallel_floor(maker, samples, resolution: int, processes: int) -> float:
    """The floor per process with `processes` of them decoding at once, as W loader workers do: on
    a machine with few cores, W workers' per-worker rate is held to this, not to one process's.
    Forked even for one, as the workers are: in this process, after the earlier settings' work,
    the same decode ran up to 25% slower (SAM: 19.8 against 25-27 images/s when run alone)."""
    global _FORKED
    _FORKED = (maker, samples, resolution)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return statistics.mean(pool.starmap(_floor_share, [(i, processes) for i in range(processes)]))


def tar_span_bytes(store, plan, trained: set[str]) -> int:
    """The trained samples' bytes in their tars: every member with its header and padding."""
    from storage_schemas.store.tar_index import read_tar_index

    total = 0
    records = {su.unit.record.unit: su.unit.record for st in plan.streams for su in st}
    for record in records.values():
        index = read_tar_index(store.storage, record.kind, record.source, record.shard, record.input.size, None)
        t = index.table.to_pydict()
        for key, size in zip(t["key"], t["size"]):
            if f"{record.source}/{record.shard}/{key}" in trained:
                total += 512 + -(-size // 512) * 512
    return total


def images_of(store, plan, trained: set[str]) -> int:
    """The trained samples' image members alone."""
    total = 0
    for st in plan.streams:
        for su in st:
            tar = unit_tar(store, su.unit.record)
            for key, (_, size) in zip(tar.keys, tar.spans.tolist()):
                total += size if f"{su.unit.record.source}/{su.unit.record.shard}/{key}" in trained else 0
    return total


class _FromMemory(torch.utils.data.IterableDataset):
    """The worker's decode, render and collate on samples in memory; each batch handed to the
    trainer with its size `n` (`hand_off`), or its size alone."""

    def __init__(self, maker, samples, resolution: int, batch: int, hand_off: bool):
        self.maker, self.samples, self.resolution = maker, samples, resolution
        self.batch, self.hand_off = batch, hand_off

    def __iter__(self):
        for a in range(0, len(self.samples) - self.batch + 1, self.batch):
            items = [self.maker.item(x, self.resolution, 0) for x in self.samples[a : a + self.batch]]
            out = self.maker.collate(items)
            yield {**out, "n": len(items)} if self.hand_off else {"n": len(items)}


def from_memory_rate(maker, samples, resolution: int, batch: int, hand_off: bool) -> float:
    """Images/s of one loader worker on samples in memory, timed from its first batch."""
    n, first = 0, None
    for b in Loader(_FromMemory(maker, samples, resolution, batch, hand_off), workers=1):
        if first is None:
            first = time.perf_counter()
        else:
            n += b["n"]
    return n / (time.perf_counter() - first)


def run_loader(plan, maker, workers: int, log: str) -> tuple[float, int, list[list[str]], list]:
    with counting_reads(log):
        t0, first, ids = time.perf_counter(), None, []
        for b in Loader(BatchStream(plan, 0, maker), workers):
            if first is None:
                first, skipped = time.perf_counter(), len(b["ids"])
            ids.append(b["ids"])
        wall = time.perf_counter() - (first if first is not None else t0)
    n = sum(map(len, ids)) - skipped
    reads = read_log(log)
    os.unlink(log)
    return n / wall / max(1, workers), sum(r[3] for r in reads), ids, reads


def bench(name: str, store_root: str, maker_of, resolution: int, workers: list[int], tmp: str) -> None:
    store = open_store(store_root)
    keep = split_filter(0.01, "train")
    maker = maker_of(store, keep)
    kind = "clip" if isinstance(maker, ClipBatchMaker) else "sam"
    units = [unit_pieces(store, r, keep) for r in store.commits(kind)]
    batch = 64 if kind == "clip" else 1  # per process: paper.yaml's 2048 CLIP / 32 SAM over 32 GPUs
    sizes = {resolution: max(1, int(batch * (224 / resolution) ** 2))} if kind == "clip" else {1024: 1}
    plan = plan_epoch(units, world_size=1, rank=0, streams=STREAMS, seed=0, epoch=0, sizes=sizes, tag=kind)
    t, cpu = time.perf_counter(), time.process_time()
    samples = in_memory(plan, maker)
    fetch, fetch_cpu = (time.perf_counter() - t) / len(samples), (time.process_time() - cpu) / len(samples)
    # Part files read whole (Parquet); SAM's logits are read per image through Zarr, not through
    # fsspec, so neither side of the ratio counts them.
    parts = sum(f.size for st in plan.streams for su in st for f in su.unit.record.files if f.path.endswith(".parquet"))
    floors, rates = {w: [] for w in workers}, {w: [] for w in workers}
    gap: dict[bool, list[float]] = {True: [], False: []}
    ones = []  # the floor of one process, each round
    for _ in range(ROUNDS):  # interleaved: this machine's load drifts between the figures otherwise
        for w in workers:
            floors[w].append(parallel_floor(maker, samples, resolution, max(1, w)))
            rate, read, ids, reads = run_loader(plan, maker, w, f"{tmp}/reads-{w}.tsv")
            rates[w].append(rate)
        one = floors[1][-1] if 1 in floors else parallel_floor(maker, samples, resolution, 1)
        for hand_off in gap:
            gap[hand_off].append(from_memory_rate(maker, samples, resolution, sizes[resolution], hand_off) / one)
        ones.append(one)
    print(
        f"\n{name}: {plan.samples} samples in {len(plan.batches)} batches of {sizes[resolution]}; fetching alone "
        f"(pieces, tar ranges{', logits' if kind == 'sam' else ''}, 2 threads) {1 / fetch:.0f} samples/s"
    )
    trained = {i.split("#")[0] for b in ids for i in b}
    tars = tar_span_bytes(store, plan, trained)
    indexes = sum(r[3] for r in reads if "/_tar_index/" in r[1])
    budget = tars + parts + indexes
    n = len(trained)
    units_per = [len(Counter(i.split("/")[1] for i in b)) for b in ids if len(b) == sizes[resolution]]
    for w in workers:
        rate, floor = statistics.median(rates[w]), statistics.median(floors[w])
        print(
            f"  workers {w}: {rate:7.1f} images/s per worker, floor {floor:6.1f} (decode + render, {max(1, w)} "
            f"process(es) at once) -> {rate / floor:.3f} of the floor (runs "
            f"{', '.join(f'{r / f:.3f}' for r, f in zip(rates[w], floors[w]))})"
        )
    print(
        f"  gap, 1 worker: from memory {statistics.median(gap[True]):.3f} of the floor handing each batch to the "
        f"trainer, {statistics.median(gap[False]):.3f} handing off nothing; the fetch's CPU "
        f"{fetch_cpu * 1e3:.1f} ms/sample = {fetch_cpu * statistics.median(ones):.3f} of a sample's floor time"
    )
    print(
        f"  read {read / n / 1e3:.1f} kB/sample = {read / budget:.3f} of the budget ({tars / n / 1e3:.1f} kB of the "
        f"samples' tar bytes + {parts / n / 1e3:.1f} kB targets + {indexes / n / 1e3:.2f} kB index) and "
        f"{read / (images_of(store, plan, trained) + parts + indexes):.3f} of images + targets + index (the same "
        f"for every worker count); units per batch min {min(units_per)}, mean {statistics.mean(units_per):.1f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip-units", type=int, default=16)
    p.add_argument("--clip-samples", type=int, default=128)
    p.add_argument("--sam-units", type=int, default=4)
    p.add_argument("--sam-images", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--kinds", nargs="+", choices=["clip", "sam"], default=["clip", "sam"])
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        if "clip" in args.kinds:
            clip = write_clip_store(
                f"{tmp}/clip", units=args.clip_units, samples=args.clip_samples, part=64, views=10, dim=768
            )
        if "sam" in args.kinds:
            sam = write_sam_store(
                f"{tmp}/sam",
                units=args.sam_units,
                images=args.sam_images,
                part=4,
                prompts=64,
                precision="uint8_sigmoid",
            )
        print(f"corpus written in {time.perf_counter() - t:.0f} s")
        for res in (224, 448, 1024) if "clip" in args.kinds else ():
            bench(
                f"CLIP {res} px",
                clip,
                lambda s, k: ClipBatchMaker(store=s, keep=k, seed=0, view_choice="random", views=None),
                res,
                args.workers,
                tmp,
            )
        if "sam" in args.kinds:
            bench(
                "SAM 1024 px, 32 of 64 prompts",
                sam,
                lambda s, k: SamBatchMaker(store=s, keep=k, seed=0, prompts=32),
                1024,
                args.workers,
                tmp,
            )


if __name__ == "__main__":
    main()
