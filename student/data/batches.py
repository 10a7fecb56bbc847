"""Training batches: one rank's epoch planned up front (student.data.epoch_plan), then read by loader workers.

    plan = plan_epoch(units, world, rank, streams=8, seed=seed, epoch=epoch, sizes={224: 64, 448: 16}, tag="clip")
    loader = Loader(BatchStream(plan, start_batch, ClipBatchMaker(store=store, ...)), workers=4)

Batch b comes from stream b mod S of the plan, and a DataLoader with W workers collects batch b
from worker (b - start) mod W; W divides S, so worker w owns the streams s = start + w (mod W) and
reads each of them alone, through a `StreamReader` (student.data.stream_reader): every piece and image
of the rank is read once an epoch, by one worker, and the sequence of batches is the plan's
whatever W is. A resumed epoch starts at `start_batch`: each stream skips the samples of its
earlier batches unread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from storage_schemas.pixels.views import render_view
from storage_schemas.plumbing.errors import StoreError, UserError
from storage_schemas.plumbing.identity import SampleId
from storage_schemas.store import TargetStore
from storage_schemas.store.commit import CommitRecord
from storage_schemas.store.mask_logits import decode_logits
from storage_schemas.store.sam_tables import SamPrompts
from storage_schemas.store.subsets import Subset
from student.data.epoch_plan import EpochPlan, Piece, UnitPieces, plan_epoch
from student.data.pieces import ClipPieceTargets, Keep, SamPieceTargets, ViewChoice, load_clip_piece, load_sam_piece
from student.data.stream_reader import SampleSource, StreamReader, new_pool
from student.data.unit_samples import ClipSample, SamSample, choose_prompts
from student.modeling.model import PromptBatch
from student.preemption import ignore_stop_signals


class BatchMaker(SampleSource, Protocol):
    """Reads a kind's pieces and turns samples into batches (pickled to loader workers)."""

    read_run: int  # training samples per coalesced ranged read
    mix_window: int  # samples a group interleaves (student.data.epoch_plan)
    storage_options: dict | None

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
        if info is None:
            yield from self._batches(0, 1)
            return
        try:
            yield from self._batches(info.id, info.num_workers)
        except UserError as e:
            # The DataLoader would re-raise it in the trainer wrapped in the worker's traceback;
            # Loader raises it there as itself, one line naming the input or unit.
            yield {USER_ERROR: (type(e), str(e))}

    def _batches(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        plan, streams = self.plan, len(self.plan.streams)
        if streams % workers:
            raise ValueError(f"{workers} loader workers do not divide {streams} streams")
        pool = new_pool()
        readers: dict[int, StreamReader] = {}
        try:
            for b in range(self.start, len(plan.batches)):
                if (b - self.start) % workers != worker:
                    continue
                s = plan.stream_of(b)
                if s not in readers:
                    done = sum(plan.batches[e][1] for e in plan.stream_batches(s) if e < self.start)
                    readers[s] = StreamReader(
                        plan,
                        s,
                        source=self.maker,
                        store=self.maker.store,
                        storage_options=self.maker.storage_options,
                        read_run=self.maker.read_run,
                        mix_window=self.maker.mix_window,
                        start=done,
                        pool=pool,
                    )
                res, n = plan.batches[b]
                items = [self.maker.item(x, res, plan.epoch) for x in readers[s].take(n)]
                yield {**self.maker.collate(items), "batch": b, "resolution": res}
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


USER_ERROR = "user_error"  # a worker's UserError, as (class, message): its __init__ may take other arguments


class Loader:
    """The batches of a BatchStream through a DataLoader with `workers` worker processes (0: in
    this process), whole (batch_size=None) and in plan order. A UserError in a worker is raised
    here as itself: same class, same one-line message. Workers ignore the stop signals, which a
    scheduler sends to every process: their training process decides when to stop."""

    def __init__(self, stream: IterableDataset, workers: int):
        self.loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=2 if workers else None,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=ignore_stop_signals,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            if USER_ERROR in batch:
                cls, message = batch[USER_ERROR]
                raise cls.__new__(cls, message)  # args = (message,), str() the worker's line
            yield batch


@dataclass
class ClipTrainSample:
    identity: SampleId
    data: bytes = field(repr=False)  # the encoded image
    view: int
    crop: np.ndarray  # float32 [4]
    flip: bool
    embedding: np.ndarray  # float16 [D]


@dataclass(kw_only=True)
class ClipBatchMaker:
    """CLIP batches: uint8 views [B, 3, S, S] rendered from the stored crops, teacher targets [B, D]."""

    store: TargetStore
    keep: Keep
    seed: int
    view_choice: str
    views: int | None  # only the first N stored views
    storage_options: dict | None = None
    read_run: int = 16
    mix_window: int = 512
    subset: Subset | None = None  # a transfer set: its samples train on their retrieved views

    @property
    def read_gaps(self) -> bool:
        return self.subset is None  # a subset's neighbours in the tar are mostly samples outside it

    def load_piece(self, record: CommitRecord, piece: Piece, epoch: int) -> ClipPieceTargets:
        return load_clip_piece(
            self.store,
            record,
            piece,
            self.keep,
            ViewChoice(self.seed, epoch, self.view_choice, self.views, self.subset),
        )

    def make(self, record: CommitRecord, t: ClipPieceTargets, i: int, data: bytes, epoch: int) -> ClipTrainSample:
        return ClipTrainSample(
            SampleId(record.source, record.shard, t.keys[i]),
            data,
            int(t.views[i]),
            t.crops[i],
            bool(t.flips[i]),
            t.embeddings[i],
        )

    def item(self, sample: ClipTrainSample, resolution: int, epoch: int) -> dict[str, Any]:
        image = ClipSample.decode(sample.data, resolution)
        pixels = render_view(image, sample.crop, sample.flip, resolution)
        return {
            "image": pixels,
            "target": torch.tensor(sample.embedding),
            "id": "/".join(sample.identity) + f"#{sample.view}",
        }

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "images": stack_images([i["image"] for i in items]),
            "targets": torch.stack([i["target"] for i in items]).float(),
            "ids": [i["id"] for i in items],
        }


@dataclass(kw_only=True)
class SamBatchMaker:
    """SAM batches: images at 1024 px, P' prompts each drawn from the stored ones, teacher logits."""

    store: TargetStore
    keep: Keep
    seed: int
    prompts: int  # P'
    storage_options: dict | None = None
    read_run: int = 1
    mix_window: int = 4

    read_gaps = True

    def __post_init__(self):
        manifest = self.store.manifest("sam")
        self.precision = manifest.must_match["precision"]
        self.points_per_prompt = manifest.must_match["policy"]["points_per_prompt"]

    def load_piece(self, record: CommitRecord, piece: Piece, epoch: int) -> SamPieceTargets:
        return load_sam_piece(self.store, record, piece, self.keep, self.precision, self.points_per_prompt)

    def make(self, record: CommitRecord, t: SamPieceTargets, i: int, data: bytes, epoch: int) -> SamSample:
        """The image with its P' prompts of the epoch and their logits, read here (a fetch thread)."""
        identity = SampleId(record.source, record.shard, t.keys[i])
        p = t.prompts[i]
        chosen = choose_prompts(self.seed, epoch, identity, len(p.structure), self.prompts)
        stored = t.stored_logits(i)[chosen]
        subset = SamPrompts(p.structure[chosen], p.boxes[chosen], p.points[chosen], p.labels[chosen], p.iou[chosen])
        return SamSample(
            identity,
            int(t.positions[i]),
            data,
            (int(t.hw[i, 0]), int(t.hw[i, 1])),
            subset,
            lambda: stored,
            self.precision,
        )

    def item(self, sample: SamSample, resolution: int, epoch: int) -> dict[str, Any]:
        return sam_item(sample, np.arange(len(sample.prompts.structure)))  # make() drew the epoch's prompts

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_sam(items)


def stack_images(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 [H, W, 3] each -> uint8 [B, 3, H, W], channels-last in memory: stacking the arrays as
    they are is one contiguous copy (stacking CHW views of them copies element by element, ~25%
    of a 1024 px worker's time)."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def sam_item(sample: SamSample, chosen: np.ndarray) -> dict[str, Any]:
    image, hw = sample.sam_input()
    boxes, points = sample.prompts_1024(chosen)
    return {
        "image": image,
        "input_hw": torch.tensor(hw),
        "structure": torch.from_numpy(sample.prompts.structure[chosen]),
        "boxes": torch.from_numpy(boxes),
        "points": torch.from_numpy(points),
        "labels": torch.from_numpy(sample.prompts.labels[chosen]),
        "stored_logits": torch.from_numpy(sample.stored_logits()[chosen]),
        "logits_precision": sample.precision,
        "target_iou": torch.from_numpy(sample.prompts.iou[chosen]),
        "id": "/".join(sample.identity),
    }


def collate_sam(items: list[dict[str, Any]]) -> dict[str, Any]:
    """-> images uint8 [B, 3, 1024, 1024], input_hw [B, 2], prompts (N over the batch),
    stored_logits [N, M, 256, 256] in the storage dtype of logits_precision (`target_logits` decodes
    them), target_iou [N, M]."""
    cat = lambda key: torch.cat([i[key] for i in items])  # noqa: E731
    index = torch.cat([torch.full((len(i["structure"]),), b, dtype=torch.long) for b, i in enumerate(items)])
    return {
        "images": stack_images([i["image"] for i in items]),
        "input_hw": torch.stack([i["input_hw"] for i in items]),
        "prompts": PromptBatch(index, cat("structure"), cat("boxes"), cat("points"), cat("labels")),
        "stored_logits": cat("stored_logits"),
        "logits_precision": items[0]["logits_precision"],
        "target_iou": cat("target_iou"),
        "ids": [i["id"] for i in items],
    }


def target_logits(batch: dict[str, Any], device: torch.device | str) -> torch.Tensor:
    """A SAM batch's teacher logits decoded on `device`: float32 [N, M, 256, 256]."""
    return decode_logits(batch["stored_logits"].to(device, non_blocking=True), batch["logits_precision"])


MAX_EMPTY_EPOCHS = 64  # epochs in a row without a batch before a Stream gives up


class Stream:
    """One rank's endless sequence of batches of one kind, epoch after epoch, from a data position
    (epoch, batch); `epoch` and `batch` always name the next batch it gives."""

    def __init__(
        self,
        kind: str,
        units: list[UnitPieces],
        maker: BatchMaker,
        *,
        sizes: dict[int, int],
        seed: int,
        world_size: int,
        rank: int,
        streams: int,
        workers: int,
        epoch: int = 0,
        batch: int = 0,
    ):
        self.kind, self.units, self.maker, self.sizes = kind, units, maker, sizes
        self.seed, self.world_size, self.rank, self.streams, self.workers = seed, world_size, rank, streams, workers
        self.epoch, self.batch = epoch, batch
        self.plan = self._plan(epoch)
        self._skip_empty_epochs()
        self._it: Iterator[dict[str, Any]] | None = None

    def _plan(self, epoch: int) -> EpochPlan:
        return plan_epoch(
            self.units,
            world_size=self.world_size,
            rank=self.rank,
            streams=self.streams,
            seed=self.seed,
            epoch=epoch,
            sizes=self.sizes,
            tag=self.kind,
        )

    def _skip_empty_epochs(self) -> None:
        """Go on to the next epoch that has batches (student.data.epoch_plan: with few pieces, a deal can
        leave a stream short of a batch); every rank plans the same epochs, so all skip alike."""
        for _ in range(MAX_EMPTY_EPOCHS):
            if self.plan.batches:
                return
            self.epoch, self.batch = self.epoch + 1, 0
            self.plan = self._plan(self.epoch)
        raise StoreError(
            f"{self.kind}: {sum(u.count for u in self.units)} training samples over {self.world_size} "
            f"process(es) x {self.streams} streams make no batch of {min(self.sizes.values())} in "
            f"{MAX_EMPTY_EPOCHS} epochs; lower data.{self.kind}.batch_size or data.streams, or add data"
        )

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> dict[str, Any]:
        if self.batch >= len(self.plan.batches):
            self.epoch, self.batch, self._it = self.epoch + 1, 0, None
            self.plan = self._plan(self.epoch)
            self._skip_empty_epochs()
        if self._it is None:
            self._it = iter(Loader(BatchStream(self.plan, self.batch, self.maker), self.workers))
        out = next(self._it)
        assert out["batch"] == self.batch, (out["batch"], self.batch)
        self.batch += 1
        return out
