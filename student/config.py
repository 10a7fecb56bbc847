"""Training configuration: the typed form of `student/configs/*.yaml`.

    store: {url: s3://bucket/targets/v1}
    model: {sam_arch: vit_b, sam_checkpoint: s3://.../sam_vit_b_01ec64.pth}
    data:  {clip: {batch_size: 2048, resolutions: [224, 448]}, sam: {batch_size: 32, prompts: 32}}
    loss:  {focal: 20, dice: 1, iou: 1, targets: soft}
    stages: [{name: probe, epochs: 20}, {name: joint, epochs: 20, stop_epoch: 16}, {name: resadapt, epochs: 3}]

Batch sizes are global (summed over processes and accumulation steps), so a config means the
same run on 1 or 32 GPUs; the trainer divides them. Every ablation of the paper is a key here
against the same store: `stages.1.lambda_sam`, `data.clip.views`, `data.sam.prompts`,
`model.pooling`, `data.clip.resolutions`, `loss.focal`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from storage_schemas.models.sam_models import SAM_ARCHS
from storage_schemas.plumbing.errors import ConfigError
from storage_schemas.plumbing.typed_config import FieldError, load_config, to_dict
from storage_schemas.store import StoreConfig

STAGES = ("probe", "joint", "resadapt")
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # log_with name -> module
# Keys that change how a run is watched or kept, not what it trains: two configs that differ only
# here are the same run (a rerun resumes it, a sweep point keeps its folder).
NOT_TRAINING = ("output_dir", "log_with", "log_every", "log_batches", "val_every", "ckpt_every", "keep_checkpoints")


@dataclass
class ModelConfig:
    sam_arch: str = "vit_b"  # a key of storage_schemas.models.sam_models.SAM_ARCHS
    # The paper initialises the student from SAM: a path or fsspec URL, or null for a random init.
    sam_checkpoint: str | None = "sam_vit_b_01ec64.pth"
    init_seed: int = 0  # random init (tiny configs) and the CLIP head's fresh LayerNorm + MLP
    head_depth: int = 3
    pooling: Literal["max", "avg"] = "max"
    mlp_hidden: int = 1024

    def validate(self) -> None:
        if self.sam_arch not in SAM_ARCHS:
            raise FieldError("sam_arch", f"expected one of {', '.join(SAM_ARCHS)}, got {self.sam_arch!r}")


def _check_reads(read_run: int, mix_window: int) -> None:
    if read_run < 1:
        raise FieldError("read_run", f"expected at least 1, got {read_run}")
    if mix_window < read_run:
        raise FieldError("mix_window", f"expected at least read_run ({read_run}), got {mix_window}")


@dataclass
class ClipDataConfig:
    batch_size: int = 2048  # global images per step at the smallest resolution
    resolutions: list[int] = field(default_factory=lambda: [224, 448])
    # Variable batch (CVNets): a batch at resolution r holds batch_size * (r0 / r)^2 images.
    view_choice: Literal["random", "cycle"] = "random"
    views: int | None = None  # use only the first N stored views (null: all K)
    sources: list[str] | None = None  # null: every CLIP source in the store
    # A transfer set (subsets/NAME in the store, made by pipeline.transfer_set): train only on its
    # samples, each on the view(s) it was retrieved through; view_choice and views do not apply.
    subset: str | None = None
    # Reading (student.data.epoch_plan): runs of read_run consecutive samples of a unit, one ranged read
    # each, interleaved mix_window samples at a time across the stream's units.
    read_run: int = 16
    mix_window: int = 512

    def validate(self) -> None:
        _check_reads(self.read_run, self.mix_window)
        if self.batch_size < 1:
            raise FieldError("batch_size", f"expected at least 1, got {self.batch_size}")
        if not self.resolutions or any(r < 16 or r % 16 for r in self.resolutions):
            raise FieldError("resolutions", f"expected multiples of 16 (the patch size), got {self.resolutions}")
        if self.views is not None and self.views < 1:
            raise FieldError("views", f"expected at least 1 or null, got {self.views}")
        if self.subset is not None and self.views is not None:
            raise FieldError("views", "a subset trains on the views it retrieved: leave views null with a subset")


@dataclass
class SamDataConfig:
    batch_size: int = 32  # global images per step, at 1024 px
    prompts: int = 32  # P': prompts drawn per image from the stored ones
    sources: list[str] | None = None
    read_run: int = 1  # an SA-1B image is ~0.5 MB and its JSON, which training skips, as large
    mix_window: int = 4  # each image holds P' x M x 256 x 256 logits in memory until it is trained on

    def validate(self) -> None:
        _check_reads(self.read_run, self.mix_window)
        for name in ("batch_size", "prompts"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"expected at least 1, got {getattr(self, name)}")


@dataclass
class DataConfig:
    clip: ClipDataConfig = field(default_factory=ClipDataConfig)
    sam: SamDataConfig = field(default_factory=SamDataConfig)
    held_out: float = 0.01  # fraction of samples kept for validation (paper: 1%), by identity hash
    val_clip_samples: int = 1024  # held-out CLIP samples validation uses (the first found)
    val_sam_images: int = 16
    workers: int = 4  # loader worker processes per training process and kind (0: load in the main process)
    # Logical streams per process and kind: the batch sequence depends on it, not on `workers`,
    # which must divide it (each worker reads streams/workers streams, each alone).
    streams: int = 8

    def validate(self) -> None:
        if not 0.0 < self.held_out < 1.0:
            raise FieldError("held_out", f"expected a fraction in (0, 1), got {self.held_out}")
        if self.streams < 1:
            raise FieldError("streams", f"expected at least 1, got {self.streams}")
        if self.workers < 0 or (self.workers and self.streams % self.workers):
            raise FieldError("workers", f"expected 0 or a divisor of data.streams ({self.streams}), got {self.workers}")


@dataclass
class LossConfig:
    focal: float = 20.0  # SAM's 20:1 focal:dice
    dice: float = 1.0
    iou: float = 1.0  # MSE of the IoU head against the teacher's predicted IoU (0: off)
    targets: Literal["soft", "hard"] = "soft"  # sigmoid of the teacher's logits, or its mask (> 0)
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25  # negative: no alpha weighting


@dataclass
class StageConfig:
    name: Literal["probe", "joint", "resadapt"]
    epochs: float = 20  # the schedule's length, in epochs of this rank's CLIP data
    stop_epoch: float | None = None  # stop early (the paper stops joint training at 16 of 20)
    lr: float | None = None  # null: the stage's paper value (probe/resadapt 8e-4, joint 4e-5)
    backbone_lr_mult: float = 0.1  # joint only: the backbone trains at lr x this
    sam_head_lr_mult: float | None = None  # joint only: the SAM head at lr x this (null: backbone_lr_mult)
    weight_decay: float = 0.05
    warmup_steps: int = 100
    lambda_sam: float = 10.0  # joint only: L_CLIP + lambda L_SAM
    resolutions: list[int] | None = None  # null: data.clip.resolutions (resadapt: [224, 448, 1024])
    max_steps: int | None = None  # stop after this many optimiser steps (smoke runs)

    def validate(self) -> None:
        if self.epochs <= 0:
            raise FieldError("epochs", f"expected a positive number, got {self.epochs}")
        if self.stop_epoch is not None and not 0 < self.stop_epoch <= self.epochs:
            raise FieldError("stop_epoch", f"expected a value in (0, epochs={self.epochs}], got {self.stop_epoch}")
        if self.resolutions is not None and (not self.resolutions or any(r < 16 or r % 16 for r in self.resolutions)):
            raise FieldError("resolutions", f"expected null or multiples of 16, got {self.resolutions}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (4e-5 if self.name == "joint" else 8e-4)

    def clip_resolutions(self, data: ClipDataConfig) -> list[int]:
        if self.resolutions is not None:
            return self.resolutions
        return [224, 448, 1024] if self.name == "resadapt" else data.resolutions


@dataclass
class TrainConfig:
    store: StoreConfig
    output_dir: str  # checkpoints/, tensorboard/, export/ go here
    stages: list[StageConfig]
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0  # data order, view and prompt choice
    grad_accum: int = 1  # micro-batches per optimiser step
    grad_clip: float = 1.0  # max gradient norm (0: off)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, none on CPU
    val_every: int = 500  # optimiser steps between held-out validations (and at each stage's end)
    ckpt_every: int = 1000  # optimiser steps between checkpoints (and at each stage's end)
    keep_checkpoints: int = 3
    log_every: int = 10
    log_batches: bool = False  # write each step's sample ids per rank to OUTPUT/batches/ (tests, debugging)
    # Experiment trackers (accelerate's): tensorboard (OUTPUT/tensorboard), wandb, mlflow, or a list.
    log_with: str | list[str] = "tensorboard"

    def validate(self) -> None:
        if not self.stages:
            raise FieldError("stages", f"expected at least one stage of {', '.join(STAGES)}")
        for name in ("grad_accum", "val_every", "ckpt_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"expected at least 1, got {getattr(self, name)}")
        names = self.trackers()
        for name in names:
            if name not in TRACKERS:
                raise FieldError("log_with", f"expected {', '.join(TRACKERS)} or a list of them, got {name!r}")
            if importlib.util.find_spec(TRACKERS[name]) is None:
                needs = f"{name!r} needs the {TRACKERS[name]} package (pip install 'samclip-distill[{name}]')"
                raise FieldError("log_with", needs)
        if not names or len(set(names)) < len(names):
            raise FieldError("log_with", f"expected one or more different trackers, got {self.log_with!r}")

    def trackers(self) -> list[str]:
        return [self.log_with] if isinstance(self.log_with, str) else list(self.log_with)

    def per_process_batch(self, kind: Literal["clip", "sam"], processes: int) -> int:
        """The global batch of `kind` per process and micro-batch; it must divide evenly
        (paper.yaml on 4 nodes x 8 GPUs: CLIP 2048 / 32 = 64 at 224 px, SAM 32 / 32 = 1)."""
        total = getattr(self.data, kind).batch_size
        parts = processes * self.grad_accum
        if total % parts:
            raise ConfigError(
                f"data.{kind}.batch_size: {total} does not split over {processes} "
                f"processes x {self.grad_accum} accumulation steps; use a multiple of {parts}"
            )
        return total // parts


def load_train_config(path: str | None, overrides: list[str] = ()) -> TrainConfig:
    return load_config(TrainConfig, path, list(overrides))


RUN_CONFIG = "config.yaml"  # OUTPUT/config.yaml: the resolved config a run was (last) started with


def config_record(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a run records it: plain data, storage options left out (they may hold
    credentials, which must never reach a log or a file next to the run)."""

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "storage_options"}
        return [strip(x) for x in v] if isinstance(v, list) else v

    return strip(to_dict(cfg))


def flat_config(record: dict[str, Any]) -> dict[str, Any]:
    """{"data": {"clip": {"views": 4}}, "stages": [{...}]} -> {"data.clip.views": 4, "stages.0.lr": ...},
    the dotted keys `--set` takes."""
    out: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        items = (
            v.items()
            if isinstance(v, dict)
            else enumerate(v)
            if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
            else None
        )
        if items is None:
            out[prefix] = v
            return
        for k, x in items:
            walk(f"{prefix}.{k}" if prefix else str(k), x)

    walk("", record)
    return out


def default_value(key: str) -> Any:
    """The default of a dotted config key (`data.clip.views`, `stages.1.lr`), in the form
    `config_record` writes it; `dataclasses.MISSING` for a key without one. A run recorded before a
    key existed ran with its default."""
    tp: Any = TrainConfig
    parts = key.split(".")
    for i, name in enumerate(parts):
        if name.isdigit():
            continue  # a list item: its type is the list's item type, resolved below
        if not dataclasses.is_dataclass(tp):
            return dataclasses.MISSING
        f = next((f for f in dataclasses.fields(tp) if f.name == name), None)
        if f is None:
            return dataclasses.MISSING
        if i == len(parts) - 1:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
                return to_dict(value) if dataclasses.is_dataclass(value) else value
            return dataclasses.MISSING
        tp = typing.get_type_hints(tp)[name]
        if typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
    return dataclasses.MISSING
