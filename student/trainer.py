"""The distillation loop: stages, optimiser steps, validation, checkpoints, logging.

Stages (paper section 4.1, appendix A):
    probe     backbone and SAM head frozen; CLIP head on L_CLIP; CLIP batches only; lr 8e-4
    joint     all but the prompt encoder train; L_CLIP + lambda L_SAM; backbone and SAM head at
              backbone_lr_mult x lr (4e-5); each optimiser step = one CLIP batch + one SAM batch
    resadapt  as probe, at 224/448/1024 px
A run does its `stages` in order, each from the weights the last one left.

The step is one forward through the DDP-wrapped model for both tasks, so every trained parameter
gets its gradient in the same backward (DDP needs that unless told to search for unused ones);
what a stage does not train is frozen with `requires_grad_(False)`.

Preemption: a SIGTERM or SIGUSR1 to any process stops every process after the same optimiser step,
with a checkpoint for that step (student/preemption.py); the run then exits 0 and a rerun, or
`--resume latest`, continues with the batch an uninterrupted run would have seen next.

Exact resume: `save_state` keeps model, optimiser and every process's RNG; `trainer_state.json`
next to it keeps the stage, the steps, the data position (epoch and batch of each kind), the
world size, stream count and `data_order` values it was planned with, and the scheduler. The
batches are a pure function of (epoch, batch, world size, streams, data_order), so a resumed run
sees the same next batch; a resume that changes any of them keeps the position but says, in one
line, that its batches are not those of an uninterrupted run, and another held-out fraction is
refused.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from storage_schemas.plumbing.errors import CheckpointError, ConfigError, StoreError
from storage_schemas.plumbing.faults import kill_point
from storage_schemas.store import READ_THREADS, TargetStore
from storage_schemas.store.subsets import Subset, read_subset
from student.config import StageConfig, TrainConfig
from student.data.batches import ClipBatchMaker, SamBatchMaker, Stream, target_logits
from student.data.epoch_plan import UnitPieces, batch_sizes
from student.data.pieces import split_filter, unit_pieces
from student.losses import clip_loss, sam_loss
from student.modeling.model import SamClip
from student.preemption import Preempted, StopRequest
from student.run_dir import CHECKPOINTS, STATE_FILE, VALIDATION_FILE, checkpoint_names
from student.validation import clip_metrics, load_clip_held_out, load_sam_held_out, sam_metrics


@dataclass
class TrainState:
    stage: int = 0  # index into cfg.stages
    stage_step: int = 0  # optimiser steps done in this stage
    global_step: int = 0
    clip_epoch: int = 0  # data position: next batch of each stream
    clip_batch: int = 0
    sam_epoch: int = 0
    sam_batch: int = 0
    world_size: int = 0  # the plan's shape (0: not recorded, a checkpoint from before streams)
    streams: int = 0
    data_order: dict[str, Any] = field(default_factory=dict)  # data_order(cfg) ({}: not recorded)
    # What the run consumed over all processes and stages, as of the last checkpoint: the teacher
    # work the store saved (student.compare), and the training loop's wall time.
    clip_views: int = 0
    sam_images: int = 0
    sam_prompts: int = 0
    train_seconds: float = 0.0


def data_order(cfg: TrainConfig) -> dict[str, Any]:
    """The config values, beyond world size and streams, that decide which samples make batch b of
    an epoch, as JSON gives them back (checkpoints keep them in `trainer_state.json`)."""
    d = cfg.data
    order = {"seed": cfg.seed, "grad_accum": cfg.grad_accum, "data.held_out": d.held_out}
    for kind, keys in (
        ("clip", ("batch_size", "resolutions", "sources", "subset")),
        ("sam", ("batch_size", "sources")),
    ):
        for key in (*keys, "read_run", "mix_window"):
            order[f"data.{kind}.{key}"] = getattr(getattr(d, kind), key)
    order["stages.resolutions"] = [stage.clip_resolutions(d.clip) for stage in cfg.stages]
    return json.loads(json.dumps(order))


def plan_shape_warning(
    saved: TrainState, path: str, world_size: int, streams: int, order: dict[str, Any] | None = None
) -> str | None:
    """One line when a resume changes what its batches are made of (the plan's shape or a value of
    `data_order`): the data position is kept, the batches change. Another held-out fraction is
    refused: samples the checkpoint trained on would become validation samples."""
    changes = []
    if saved.world_size and (saved.world_size, saved.streams) != (world_size, streams):
        changes.append(f"{saved.world_size} process(es) x {saved.streams} streams, now {world_size} x {streams}")
    for key, value in (order or {}).items():
        if key not in saved.data_order or saved.data_order[key] == value:
            continue
        if key == "data.held_out":
            raise ConfigError(
                f"data.held_out: {path} was trained holding out {saved.data_order[key]}, this run {value}: "
                f"samples it trained on would be validated on; resume with --set data.held_out={saved.data_order[key]}"
            )
        changes.append(f"{key} {saved.data_order[key]}, now {value}")
    if not changes:
        return None
    return (
        f"warning: {path} was trained with {'; '.join(changes)}: it goes on from CLIP epoch {saved.clip_epoch} batch "
        f"{saved.clip_batch}, but its batches are not those of an uninterrupted run (samples of this epoch may repeat)"
    )


def open_subset(store: TargetStore, name: str, held_out: float) -> Subset:
    """The transfer set `name`, refused if made for another held-out split or from another teacher."""
    subset = read_subset(store.storage, name)
    made = subset.manifest["held_out"]
    if made != held_out:
        raise ConfigError(
            f"data.clip.subset: subset '{name}' was selected with held-out fraction {made}, this run "
            f"holds out {held_out} (data.held_out): its samples may be this run's validation samples; "
            f"remake it with --held-out {held_out}"
        )
    teacher = store.manifest("clip").must_match["teacher"]["weights_sha256"]
    if subset.manifest["teacher"]["weights_sha256"] != teacher:
        raise ConfigError(
            f"data.clip.subset: subset '{name}' was retrieved with another CLIP teacher than this "
            f"store's ({subset.manifest['teacher']['weights_sha256'][:12]} vs {teacher[:12]})"
        )
    return subset


def check_subset_items(subset: Subset, units: list[UnitPieces]) -> None:
    """Every view the subset names is in a committed unit (a unit redone since may lack some)."""
    found = sum(u.count for u in units)
    if found != len(subset):
        raise StoreError(
            f"data.clip.subset: subset '{subset.name}' names {len(subset)} views, the store's committed "
            f"units hold {found} of them as training samples (units redone since it was made?); "
            "remake it with pipeline.transfer_set"
        )


def set_trainable(model: SamClip, stage: str) -> None:
    model.requires_grad_(stage == "joint")
    model.clip_head.requires_grad_(True)
    model.prompt_encoder.requires_grad_(False)


def param_groups(model: SamClip, stage: StageConfig) -> list[dict[str, Any]]:
    """The CLIP head at lr; in joint, the backbone at lr x backbone_lr_mult and the SAM head at
    lr x sam_head_lr_mult (the paper: both 0.1). No decay on norms, biases, position embeddings."""
    lr = stage.learning_rate
    sam_mult = stage.sam_head_lr_mult if stage.sam_head_lr_mult is not None else stage.backbone_lr_mult
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("clip_head."):
            scale = 1.0
        elif name.startswith(("neck.", "mask_decoder.")):
            scale = sam_mult
        else:
            scale = stage.backbone_lr_mult
        decay = p.ndim >= 2 and "pos_embed" not in name and "rel_pos" not in name
        groups.setdefault((scale, decay), []).append(p)
    return [
        {"params": ps, "lr": lr * scale, "weight_decay": stage.weight_decay if decay else 0.0}
        for (scale, decay), ps in groups.items()
    ]


def warmup_cosine(warmup: int, total: int):
    """Linear warmup to 1, cosine to 0 at `total` steps: the LambdaLR factor of step s."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        accelerator: Accelerator,
        store: TargetStore,
        model: SamClip,
        multimask: bool,
        stop: StopRequest | None = None,
    ):
        """stop: the stop signals' flag, installed by the caller before anything slow (default: a
        flag no signal sets, for a caller that handles signals itself)."""
        self.cfg, self.accelerator, self.store, self.model = cfg, accelerator, store, model
        self.multimask = multimask
        self.stop = stop or StopRequest()
        self.saved_step = -1  # the global step of the newest checkpoint this run wrote or resumed from
        self.device = accelerator.device
        self.state = TrainState()
        d = cfg.data
        self.train_keep, self.held_keep = split_filter(d.held_out, "train"), split_filter(d.held_out, "held_out")
        self.records = {"clip": store.commits("clip", d.clip.sources)}
        self.subset = open_subset(store, d.clip.subset, d.held_out) if d.clip.subset else None
        needs_sam = any(s.name == "joint" for s in cfg.stages)
        self.records["sam"] = store.commits("sam", d.sam.sources) if needs_sam else []
        for kind, records in self.records.items():
            if not records and (kind == "clip" or needs_sam):
                sources = getattr(d, kind).sources
                among = f" from data.{kind}.sources {sources}" if sources is not None else ""
                raise StoreError(f"store {store.url} has no committed {kind} units{among} to train on")
        # What each kind trains on; validation draws from every unit's held-out samples either way.
        train = {kind: (records, self.train_keep, None) for kind, records in self.records.items()}
        if self.subset is not None:
            # Units without a subset sample are not read at all; in the others, only subset samples,
            # each once per retrieved view.
            subset = self.subset
            train["clip"] = (
                [r for r in self.records["clip"] if (r.source, r.unit) in subset.units],
                lambda s: bool(subset.views_of(s)) and self.train_keep(s),
                lambda s: len(subset.views_of(s)),
            )
        # Each unit's pieces and training-sample counts: the key column of each part, read once for
        # the run by the main process and sent to the others (not once per process: 64 ranks x
        # ~160k part files of Merged-41M would be 10M requests at start).
        units = [None]
        if accelerator.is_main_process:
            with ThreadPoolExecutor(READ_THREADS) as pool:
                units[0] = {
                    k: list(pool.map(lambda r: unit_pieces(store, r, keep, items), rs))
                    for k, (rs, keep, items) in train.items()
                }
            if self.subset is not None:
                check_subset_items(self.subset, units[0]["clip"])
        if accelerator.num_processes > 1:
            broadcast_object_list(units)
        self.units = units[0]
        self.per_process = {kind: cfg.per_process_batch(kind, accelerator.num_processes) for kind in ("clip", "sam")}
        self.makers = {
            "clip": ClipBatchMaker(
                store=store,
                keep=train["clip"][1],
                seed=cfg.seed,
                view_choice=d.clip.view_choice,
                views=d.clip.views,
                storage_options=cfg.store.storage_options,
                read_run=d.clip.read_run,
                mix_window=d.clip.mix_window,
                subset=self.subset,
            )
        }
        if needs_sam:
            self.makers["sam"] = SamBatchMaker(
                store=store,
                keep=self.train_keep,
                seed=cfg.seed,
                prompts=d.sam.prompts,
                storage_options=cfg.store.storage_options,
                read_run=d.sam.read_run,
                mix_window=d.sam.mix_window,
            )
        self.held_clip: dict[int, Any] = {}
        self.held_sam = None
        self.consumed = [0, 0, 0]  # this process's CLIP views, SAM images, SAM prompts since the last checkpoint
        self.since = time.perf_counter()

    def subset_record(self) -> dict[str, Any] | None:
        """What student.json says of the transfer set trained on (None: the whole store)."""
        if self.subset is None:
            return None
        m = self.subset.manifest
        return {
            "name": self.subset.name,
            "views": len(self.subset),
            "samples": m["samples"],
            "query_checksum": m["query"]["checksum"],
            "per_query": m["per_query"],
            "index": m["index"]["factory"],
        }

    # ---- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> str:
        return os.path.join(self.cfg.output_dir, CHECKPOINTS)

    def checkpoints(self) -> list[str]:
        """Completed checkpoint directories, oldest first."""
        return [os.path.join(self.checkpoint_root, d) for d in checkpoint_names(self.cfg.output_dir)]

    def latest_checkpoint(self) -> str | None:
        return (self.checkpoints() or [None])[-1]

    def step_checkpoint(self) -> str:
        return os.path.join(self.checkpoint_root, f"step_{self.state.global_step:08d}")

    def save_checkpoint(self, scheduler) -> None:
        """save_state into step_N.tmp, renamed when every process is done: a killed save is never
        'latest', and the checkpoint it would have replaced is untouched. A step saved already (a
        stop signal right after a periodic save, or before the first step after a resume) keeps its
        checkpoint: the same step is the same state."""
        acc = self.accelerator
        if self.saved_step == self.state.global_step:
            return
        final = self.step_checkpoint()
        tmp = final + ".tmp"
        self.add_consumed()
        acc.wait_for_everyone()
        if acc.is_main_process and os.path.isdir(tmp):
            shutil.rmtree(tmp)  # a save of this step that was killed: garbage
        acc.wait_for_everyone()
        acc.save_state(tmp)
        if acc.is_main_process:
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump({"state": asdict(self.state), "scheduler": scheduler.state_dict()}, f, indent=2)
        kill_point("checkpoint_written", "stop" if self.stop.signum else "periodic")  # written, not yet renamed
        acc.wait_for_everyone()
        if acc.is_main_process:
            if os.path.isdir(final):  # written by an earlier run of this step: as good, and complete
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
            for old in self.checkpoints()[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old)
        self.saved_step = self.state.global_step
        acc.wait_for_everyone()

    def add_consumed(self) -> None:
        """Fold every process's counts since the last checkpoint into the state (a collective)."""
        total = self.accelerator.reduce(torch.tensor(self.consumed, dtype=torch.long, device=self.device), "sum")
        st = self.state
        st.clip_views, st.sam_images, st.sam_prompts = (
            a + int(b) for a, b in zip((st.clip_views, st.sam_images, st.sam_prompts), total)
        )
        now = time.perf_counter()
        st.train_seconds += now - self.since
        self.consumed, self.since = [0, 0, 0], now

    @staticmethod
    def read_checkpoint_state(path: str) -> dict[str, Any]:
        with open(os.path.join(path, STATE_FILE)) as f:
            return json.load(f)

    # ---- the loop -------------------------------------------------------------------------
    def run(self, resume: str | None = None) -> TrainState:
        saved = None
        self.since = time.perf_counter()
        if resume is not None:
            path = self.latest_checkpoint() if resume == "latest" else resume
            if path is None:
                self.accelerator.print(f"no checkpoint under {self.checkpoint_root}: starting from scratch")
            else:
                saved = (path, self.read_checkpoint_state(path))
                self.state = TrainState(**saved[1]["state"])
                self.saved_step = self.state.global_step
                later = [c for c in self.checkpoints() if int(c.rsplit("_", 1)[1]) > self.state.global_step]
                if later:  # rotation keeps the highest steps: it would delete this run's checkpoints instead
                    raise CheckpointError(
                        f"--resume {path}: {self.checkpoint_root} holds later checkpoints "
                        f"({', '.join(os.path.basename(c) for c in later)}); move them out of it first"
                    )
                self.accelerator.print(
                    f"resuming from {path} (stage {self.state.stage}, step {self.state.global_step})"
                )
                warning = plan_shape_warning(
                    self.state, path, self.accelerator.num_processes, self.cfg.data.streams, data_order(self.cfg)
                )
                if warning:
                    self.accelerator.print(warning)
        validations = os.path.join(self.cfg.output_dir, VALIDATION_FILE)
        if saved is None and self.accelerator.is_main_process and os.path.isfile(validations):
            os.remove(validations)  # an attempt that stopped before its first checkpoint: it starts over
            self.accelerator.print(f"starting over: {validations} of an attempt without a checkpoint replaced")
        self.state.world_size, self.state.streams = self.accelerator.num_processes, self.cfg.data.streams
        self.state.data_order = data_order(self.cfg)
        while self.state.stage < len(self.cfg.stages):
            self.run_stage(self.cfg.stages[self.state.stage], saved)
            saved = None
            self.state = replace(
                self.state,
                stage=self.state.stage + 1,
                stage_step=0,
                clip_epoch=0,
                clip_batch=0,
                sam_epoch=0,
                sam_batch=0,
            )
        return self.state

    def stream(self, kind: str, sizes: dict[int, int], epoch: int = 0, batch: int = 0) -> Stream:
        acc, d = self.accelerator, self.cfg.data
        return Stream(
            kind,
            self.units[kind],
            self.makers[kind],
            sizes=sizes,
            seed=self.cfg.seed,
            world_size=acc.num_processes,
            rank=acc.process_index,
            streams=d.streams,
            workers=d.workers,
            epoch=epoch,
            batch=batch,
        )

    def stage_steps(self, stage: StageConfig, clip_sizes: dict[int, int]) -> tuple[int, int]:
        """(schedule length, stop step) in optimiser steps, from the epoch-0 plan's batch count."""
        per_epoch = max(1, len(self.stream("clip", clip_sizes).plan.batches) // self.cfg.grad_accum)
        total = max(1, round(stage.epochs * per_epoch))
        stop = total if stage.stop_epoch is None else max(1, round(stage.stop_epoch * per_epoch))
        return total, min(stop, stage.max_steps) if stage.max_steps is not None else stop

    def run_stage(self, stage: StageConfig, saved: tuple[str, dict] | None) -> None:
        acc, cfg, st = self.accelerator, self.cfg, self.state
        joint = stage.name == "joint"
        resolutions = stage.clip_resolutions(cfg.data.clip)
        clip_sizes = batch_sizes(self.per_process["clip"], resolutions)
        total, stop = self.stage_steps(stage, clip_sizes)
        set_trainable(self.model, stage.name)
        optimizer = torch.optim.AdamW(param_groups(self.model, stage), betas=(0.9, 0.999))
        # Kept out of `prepare`: it steps once per optimiser step, however many processes there are.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(stage.warmup_steps, total))
        ddp_model, optimizer = acc.prepare(self.model, optimizer)
        if saved is not None:
            acc.load_state(saved[0])
            scheduler.load_state_dict(saved[1]["scheduler"])
        clip = self.stream("clip", clip_sizes, st.clip_epoch, st.clip_batch)
        sam = self.stream("sam", {1024: self.per_process["sam"]}, st.sam_epoch, st.sam_batch) if joint else None
        self.load_held_out(min(resolutions), joint)
        acc.print(
            f"stage {stage.name}: {stop} of {total} scheduled steps; per process and micro-batch: CLIP "
            f"{clip_sizes} (px: images), SAM {self.per_process['sam'] if joint else 0} images x "
            f"{cfg.data.sam.prompts} prompts; trainable {self.model.trainable_parameters():,}"
        )
        bar = tqdm(total=stop, initial=st.stage_step, desc=stage.name, disable=not acc.is_local_main_process)
        if st.stage_step == 0:
            self.validate(ddp_model, stage.name)  # the starting point every later figure compares with
        ddp_model.train()
        t0, images = time.perf_counter(), 0
        while st.stage_step < stop:
            logs: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                cb = next(clip)
                sb = next(sam) if sam is not None else None
                last = micro == cfg.grad_accum - 1
                with acc.no_sync(ddp_model) if not last else nullcontext(), acc.autocast():
                    out = ddp_model(
                        clip_images=cb["images"].to(self.device),
                        sam_images=None if sb is None else sb["images"].to(self.device),
                        sam_input_hw=None if sb is None else sb["input_hw"].to(self.device),
                        prompts=None if sb is None else sb["prompts"].to(self.device),
                        multimask=self.multimask,
                    )
                    parts = {"clip": clip_loss(out["clip"], cb["targets"].to(self.device))}
                    loss = parts["clip"]
                    if sb is not None:
                        s = sam_loss(
                            out["masks"],
                            out["iou"],
                            target_logits(sb, self.device),
                            sb["target_iou"].to(self.device),
                            cfg.loss,
                        )
                        parts.update({f"sam_{k}": v for k, v in s.items()})
                        loss = loss + stage.lambda_sam * s["total"]
                    acc.backward(loss / cfg.grad_accum)
                for k, v in parts.items():
                    logs[f"loss/{k}"] = logs.get(f"loss/{k}", 0.0) + v.item() / cfg.grad_accum
                images += len(cb["images"]) + (len(sb["images"]) if sb is not None else 0)
                self.consumed[0] += len(cb["images"])
                if sb is not None:
                    self.consumed[1] += len(sb["images"])
                    self.consumed[2] += len(sb["prompts"].image_index)
                self.log_batch(stage, micro, cb, sb, loss.item())
            if cfg.grad_clip > 0:
                logs["grad_norm"] = float(acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            st.stage_step += 1
            st.global_step += 1
            st.clip_epoch, st.clip_batch = clip.epoch, clip.batch
            if sam is not None:
                st.sam_epoch, st.sam_batch = sam.epoch, sam.batch
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss/clip']:.4f}")
            if st.global_step % cfg.log_every == 0 or st.stage_step == stop:
                dt = time.perf_counter() - t0
                logs["images_per_s_per_process"] = images / max(dt, 1e-9)
                t0, images = time.perf_counter(), 0
                for i, g in enumerate(optimizer.param_groups):
                    logs[f"lr/group{i}"] = g["lr"]
                logs["epoch/clip"] = clip.epoch + clip.batch / max(1, len(clip.plan.batches))
                acc.log(logs, step=st.global_step)
            if st.global_step % cfg.val_every == 0 or st.stage_step == stop:
                self.validate(ddp_model, stage.name)
            if st.global_step % cfg.ckpt_every == 0 or st.stage_step == stop:
                self.save_checkpoint(scheduler)
            signum = self.stop.agreed(acc)  # the one collective a step adds
            if signum:
                self.save_checkpoint(scheduler)
                bar.close()
                raise Preempted(st.global_step, signum, self.step_checkpoint())
            kill_point("train_step")
        bar.close()
        acc.free_memory()  # forget this stage's model wrapper and optimiser before the next prepares its own

    # ---- held-out validation --------------------------------------------------------------
    def load_held_out(self, resolution: int, with_sam: bool) -> None:
        if not self.accelerator.is_main_process:
            return
        d, storage_options = self.cfg.data, self.cfg.store.storage_options
        if resolution not in self.held_clip:
            self.held_clip[resolution] = load_clip_held_out(
                self.store, self.records["clip"], self.held_keep, d.val_clip_samples, resolution, storage_options
            )
        if with_sam and self.held_sam is None:
            self.held_sam = load_sam_held_out(
                self.store,
                self.records["sam"],
                self.held_keep,
                limit=d.val_sam_images,
                prompts=d.sam.prompts,
                seed=self.cfg.seed,
                storage_options=storage_options,
            )

    def validate(self, ddp_model, stage: str) -> dict[str, float]:
        """On the main process only, with the unwrapped model (no collective inside)."""
        acc = self.accelerator
        metrics: dict[str, float] = {}
        if acc.is_main_process:
            model = acc.unwrap_model(ddp_model)
            model.eval()
            with acc.autocast():
                for res, held in self.held_clip.items():
                    if held is not None:
                        for k, v in clip_metrics(model, held, 64, self.device).items():
                            metrics[f"val/clip{res}_{k}"] = v
                if self.held_sam:
                    metrics.update(
                        {
                            f"val/sam_{k}": v
                            for k, v in sam_metrics(model, self.held_sam, self.multimask, self.device).items()
                        }
                    )
            model.train()
            acc.log(metrics, step=self.state.global_step)
            summary = ", ".join(f"{k[4:]}={v:.4f}" for k, v in sorted(metrics.items()) if not k.endswith("chance"))
            acc.print(f"[{stage} step {self.state.global_step}] {summary}")
            with open(os.path.join(self.cfg.output_dir, VALIDATION_FILE), "a") as f:
                f.write(json.dumps({"stage": stage, "step": self.state.global_step, **metrics}) + "\n")
        acc.wait_for_everyone()
        return metrics

    def log_batch(self, stage: StageConfig, micro: int, cb: dict, sb: dict | None, loss: float) -> None:
        if not self.cfg.log_batches:
            return
        path = os.path.join(self.cfg.output_dir, "batches", f"rank{self.accelerator.process_index}.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(
                json.dumps(
                    {
                        "stage": stage.name,
                        "step": self.state.global_step + 1,
                        "micro": micro,
                        "world_size": self.accelerator.num_processes,
                        "resolution": cb["resolution"],
                        "clip": cb["ids"],
                        "sam": sb["ids"] if sb else [],
                        "loss": loss,
                    }
                )
                + "\n"
            )
