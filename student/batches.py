"""Training batches: one rank's epoch planned up front, then streamed by loader workers.

    plan = plan_epoch(units, counts, world, rank, seed, epoch, sizes={224: 64, 448: 16}, tag="clip")
    loader = make_loader(BatchStream(plan, start_batch, ClipBatchMaker(store, ...)), workers=4)

The plan fixes, before any image is read, which units this rank streams (no unit on two ranks),
how many samples every rank takes (the smallest rank's count, so step counts are equal) and each
batch's resolution and size (the variable-batch sampler of CVNets: the batch shrinks as the
resolution grows; the resolution sequence is a stable hash of (seed, epoch, batch), the same on
every rank). Batch b of the plan goes to loader worker (b - start) mod W, which is the order a
DataLoader collects from its workers, so the sequence of batches is the plan's whatever W is.
Every worker streams the rank's shards and decodes only its own batches' samples. A resumed
epoch starts at `start_batch`: earlier samples are skipped unread where a whole unit lies before
it, and undecoded otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from storage_schemas.commit import CommitRecord
from storage_schemas.errors import StoreError
from storage_schemas.identity import stable_hash64
from storage_schemas.store import TargetStore
from storage_schemas.views import render_view
from student.data import (ClipSample, Keep, SamSample, choose_prompts, choose_view, iter_clip_unit, iter_sam_unit,
                          split_units, unit_id)
from student.model import PromptBatch


def batch_sizes(base: int, resolutions: list[int]) -> dict[int, int]:
    """Per-resolution batch sizes from the batch at the smallest one: base * (r0 / r)^2, at least 1."""
    r0 = min(resolutions)
    return {r: max(1, int(base * (r0 / r) ** 2)) for r in resolutions}


@dataclass(frozen=True)
class EpochPlan:
    epoch: int
    units: list[CommitRecord]  # this rank's units, in reading order
    counts: list[int]  # samples each unit gives in the split read
    batches: list[tuple[int, int]]  # (resolution px, samples) per batch, identical on every rank

    @property
    def samples(self) -> int:
        return sum(n for _, n in self.batches)


def plan_epoch(units: list[CommitRecord], counts: dict[tuple[str, str, str], int], world_size: int, rank: int,
               seed: int, epoch: int, sizes: dict[int, int], tag: str) -> EpochPlan:
    mine, n_samples = split_units(units, counts, world_size, rank, seed, epoch)
    resolutions = sorted(sizes)
    batches, used = [], 0
    while True:
        res = resolutions[stable_hash64("batch-resolution", tag, seed, epoch, len(batches)) % len(resolutions)]
        if used + sizes[res] > n_samples:
            break  # drop the last partial batch (other samples miss out next epoch, by the unit shuffle)
        batches.append((res, sizes[res]))
        used += sizes[res]
    return EpochPlan(epoch, mine, [counts[unit_id(u)] for u in mine], batches)


class BatchMaker(Protocol):
    """Reads units and turns samples into batches (pickled to loader workers)."""

    def samples(self, record: CommitRecord) -> Iterator[Any]: ...

    def item(self, sample: Any, resolution: int, epoch: int) -> dict[str, Any]: ...

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]: ...


class BatchStream(IterableDataset):
    """The plan's batches from `start_batch` on; with W loader workers, worker w makes batches
    start + w, start + w + W, ... Each batch dict carries `batch` (its index in the epoch)."""

    def __init__(self, plan: EpochPlan, start_batch: int, maker: BatchMaker):
        self.plan, self.start, self.maker = plan, start_batch, maker

    def __len__(self) -> int:
        return max(0, len(self.plan.batches) - self.start)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        plan = self.plan
        ends = np.cumsum([n for _, n in plan.batches])  # sample offset where each batch ends
        mine = lambda b: b >= self.start and (b - self.start) % workers == worker  # noqa: E731
        offset, batch, items = 0, 0, []
        for record, count in zip(plan.units, plan.counts):
            if batch >= len(plan.batches):
                return
            last = min(int(np.searchsorted(ends, offset + count - 1, side="right")), len(plan.batches) - 1)
            if not any(mine(b) for b in range(batch, last + 1)):
                offset += count  # nothing of this unit is ours: not even read
                batch = int(np.searchsorted(ends, offset, side="right"))
                continue
            seen = 0
            for sample in self.maker.samples(record):
                seen += 1
                if batch >= len(plan.batches):
                    return
                if mine(batch):
                    items.append(self.maker.item(sample, plan.batches[batch][0], plan.epoch))
                offset += 1
                if offset == ends[batch]:
                    if mine(batch):
                        yield {**self.maker.collate(items), "batch": batch, "resolution": plan.batches[batch][0]}
                    items, batch = [], batch + 1
            if seen != count:
                raise RuntimeError(f"unit {record.source}/{record.unit} gave {seen} samples, its key column {count}")


def make_loader(stream: BatchStream, workers: int) -> DataLoader:
    """Batches come whole from the workers (batch_size=None), in plan order."""
    return DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


@dataclass
class ClipBatchMaker:
    """CLIP batches: uint8 views [B, 3, S, S] rendered from the stored crops, teacher targets [B, D]."""

    store: TargetStore
    keep: Keep
    seed: int
    view_choice: str
    views: int | None  # only the first N stored views
    storage_options: dict | None = None

    def samples(self, record: CommitRecord) -> Iterator[ClipSample]:
        return iter_clip_unit(self.store, record, self.keep, self.storage_options)

    def item(self, sample: ClipSample, resolution: int, epoch: int) -> dict[str, Any]:
        k = min(self.views or len(sample.crops), len(sample.crops))
        v = choose_view(self.seed, epoch, sample.identity, k, self.view_choice)
        pixels = render_view(sample.image(resolution), sample.crops[v], bool(sample.flips[v]), resolution)
        return {"image": torch.from_numpy(pixels).permute(2, 0, 1), "target": torch.tensor(sample.embeddings[v]),
                "id": "/".join(sample.identity) + f"#{v}"}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"images": torch.stack([i["image"] for i in items]),
                "targets": torch.stack([i["target"] for i in items]).float(), "ids": [i["id"] for i in items]}


@dataclass
class SamBatchMaker:
    """SAM batches: images at 1024 px, P' prompts each drawn from the stored ones, teacher logits."""

    store: TargetStore
    keep: Keep
    seed: int
    prompts: int  # P'
    storage_options: dict | None = None

    def samples(self, record: CommitRecord) -> Iterator[SamSample]:
        return iter_sam_unit(self.store, record, self.keep, self.storage_options)

    def item(self, sample: SamSample, resolution: int, epoch: int) -> dict[str, Any]:
        return sam_item(sample, choose_prompts(self.seed, epoch, sample.identity, len(sample.prompts.structure),
                                               self.prompts))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_sam(items)


def sam_item(sample: SamSample, chosen: np.ndarray) -> dict[str, Any]:
    image, hw = sample.sam_input()
    boxes, points = sample.prompts_1024(chosen)
    return {"image": torch.from_numpy(image).permute(2, 0, 1), "input_hw": torch.tensor(hw),
            "structure": torch.from_numpy(sample.prompts.structure[chosen]), "boxes": torch.from_numpy(boxes),
            "points": torch.from_numpy(points), "labels": torch.from_numpy(sample.prompts.labels[chosen]),
            "target_logits": torch.from_numpy(sample.logits()[chosen]),
            "target_iou": torch.from_numpy(sample.prompts.iou[chosen]), "id": "/".join(sample.identity)}


def collate_sam(items: list[dict[str, Any]]) -> dict[str, Any]:
    """-> images uint8 [B, 3, 1024, 1024], input_hw [B, 2], prompts (N over the batch),
    target_logits [N, M, 256, 256], target_iou [N, M]."""
    cat = lambda key: torch.cat([i[key] for i in items])  # noqa: E731
    index = torch.cat([torch.full((len(i["structure"]),), b, dtype=torch.long) for b, i in enumerate(items)])
    return {"images": torch.stack([i["image"] for i in items]), "input_hw": torch.stack([i["input_hw"] for i in items]),
            "prompts": PromptBatch(index, cat("structure"), cat("boxes"), cat("points"), cat("labels")),
            "target_logits": cat("target_logits"), "target_iou": cat("target_iou"), "ids": [i["id"] for i in items]}


class Stream:
    """One rank's endless sequence of batches of one kind, epoch after epoch, from a data position
    (epoch, batch); `epoch` and `batch` always name the next batch it gives."""

    def __init__(self, kind: str, units: list[CommitRecord], counts: dict[tuple[str, str, str], int],
                 maker: BatchMaker, sizes: dict[int, int], seed: int, world_size: int, rank: int, workers: int,
                 epoch: int = 0, batch: int = 0):
        self.kind, self.units, self.counts, self.maker, self.sizes = kind, units, counts, maker, sizes
        self.seed, self.world_size, self.rank, self.workers = seed, world_size, rank, workers
        self.epoch, self.batch = epoch, batch
        self.plan = self._plan(epoch)
        if not self.plan.batches:
            raise StoreError(f"{kind}: {sum(self.plan.counts)} training samples on this rank make no batch of "
                             f"{min(sizes.values())} per process; lower data.{kind}.batch_size or add data")
        self._it: Iterator[dict[str, Any]] | None = None

    def _plan(self, epoch: int) -> EpochPlan:
        return plan_epoch(self.units, self.counts, self.world_size, self.rank, self.seed, epoch, self.sizes, self.kind)

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> dict[str, Any]:
        if self.batch >= len(self.plan.batches):
            self.epoch, self.batch, self._it = self.epoch + 1, 0, None
            self.plan = self._plan(self.epoch)
        if self._it is None:
            self._it = iter(make_loader(BatchStream(self.plan, self.batch, self.maker), self.workers))
        out = next(self._it)
        assert out["batch"] == self.batch, (out["batch"], self.batch)
        self.batch += 1
        return out
