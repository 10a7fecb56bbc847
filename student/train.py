"""Distil the SAM-CLIP student from a target store: no teacher is built or run here.

    accelerate launch student/train.py --config student/configs/paper.yaml [--set k=v ...] [--resume latest]
    torchrun --nproc_per_node 2 student/train.py --config student/configs/tiny.yaml --set store.url=out/store

Reads targets and images through `student.data` (pieces of units, batches), trains the stages of
the config (see `student.trainer`), logs to the trackers of `log_with` (OUTPUT/tensorboard by
default) and OUTPUT/validation.jsonl, checkpoints to OUTPUT/checkpoints and exports the student to
OUTPUT/export at the end. Run again into the same
OUTPUT, a run of the same config that finished is skipped and one that stopped is resumed; a
folder holding a run of another config is refused (one folder, one run's logs).

SIGTERM or SIGUSR1 to any process (a preemption, a time limit) stops them all after the same step
with a checkpoint for it; the run exits 0 and leaves OUTPUT/preempted.json (step, signal, time),
which a requeue script reads (jobs/preemptible.sh): launchers report a signalled run as failed.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import yaml

from storage_schemas.plumbing.errors import ConfigError, StoreError, run_cli
from storage_schemas.plumbing.typed_config import add_set_argument
from storage_schemas.store import open_store
from student.config import RUN_CONFIG, TrainConfig, config_record, flat_config, load_train_config
from student.modeling.build import build_student
from student.modeling.export import export_student
from student.preemption import Preempted, StopRequest, remove_marker, write_marker
from student.run_dir import CHECKPOINTS, STATE_FILE, checkpoint_names, config_difference, run_status
from student.trackers import start_trackers, trackers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="student/train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="training config YAML (see student/configs/)")
    add_set_argument(p)
    p.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue from the newest checkpoint under OUTPUT/checkpoints, or from PATH",
    )
    return p.parse_args(argv)


def flat_hparams(cfg: TrainConfig) -> dict[str, str | int | float | bool]:
    """The config as TensorBoard hparams accept it: flat keys, scalar values."""
    return {
        k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
        for k, v in flat_config(config_record(cfg)).items()
    }


def earlier_run(cfg: TrainConfig, resume: str | None) -> str | None:
    """What an earlier run in OUTPUT means for this one, said in one line: "skip" (it finished with
    this config), "latest" (it stopped with this config: resume it) or `resume` as given. A folder
    holding a run of another config is refused, so two runs' logs never mix."""
    out = cfg.output_dir
    if resume not in (None, "latest") and not os.path.isfile(os.path.join(resume, STATE_FILE)):
        raise ConfigError(
            f"--resume {resume}: no checkpoint there (expected 'latest' or a step_N folder under "
            f"OUTPUT/{CHECKPOINTS} holding {STATE_FILE})"
        )
    if resume is not None:
        return resume
    diff = config_difference(out, config_record(cfg))
    if diff:
        raise ConfigError(
            f"{out} holds a run of another config ({diff}); use another output_dir, or "
            f"--resume latest to continue that run with this config"
        )
    status = run_status(out)
    say = print if os.environ.get("RANK", "0") == "0" else (lambda *_: None)  # once, not once per process
    if status == "finished":
        say(
            f"{out}: finished before with this config (its export is in {out}/export): skipped; "
            f"delete {out} to train it again"
        )
        return "skip"
    if status == "partial":
        say(f"{out}: a run of this config stopped at {checkpoint_names(out)[-1]}: resuming it")
        return "latest"
    return None


def main(argv: list[str] | None = None) -> int:
    stop = StopRequest().install()  # first: a signal during the set-up still ends in a clean stop
    args = parse_args(argv)
    cfg = load_train_config(args.config, args.overrides)
    resume = earlier_run(cfg, args.resume)
    if resume == "skip":
        return 0
    from accelerate import Accelerator

    from student.trainer import Trainer

    mixed = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if torch.cuda.is_available() else "no")
    # cpu=True where there is no GPU: torchrun or `accelerate launch --multi_gpu` processes then join
    # one gloo group (MULTI_CPU) instead of each training alone.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=mixed, log_with=trackers(cfg), project_dir=cfg.output_dir
    )
    store = open_store(cfg.store.url, cfg.store.storage_options)
    clip_manifest = store.manifest("clip")
    if clip_manifest is None:
        raise StoreError(f"store {store.url} has no CLIP targets (no clip/_manifest.json)")
    embed_dim = int(clip_manifest.must_match["teacher"]["output"]["embed_dim"])
    sam_manifest = store.manifest("sam")
    multimask = sam_manifest is not None and int(sam_manifest.must_match["policy"]["num_masks"]) == 3
    model = build_student(cfg.model, embed_dim, cfg.store.storage_options).to(accelerator.device)
    if accelerator.is_main_process:
        os.makedirs(cfg.output_dir, exist_ok=True)
        remove_marker(cfg.output_dir)
        with open(os.path.join(cfg.output_dir, RUN_CONFIG), "w") as f:
            yaml.safe_dump(config_record(cfg), f, sort_keys=False)
        counts = model.parameter_counts()
        accelerator.print("student parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    start_trackers(accelerator, cfg, flat_hparams(cfg))
    trainer = Trainer(cfg, accelerator, store, model, multimask, stop)
    try:
        state = trainer.run(resume)
    except Preempted as stopped:
        if accelerator.is_main_process:
            marker = write_marker(cfg.output_dir, stopped)
            accelerator.print(f"{stopped}; {marker} written: rerun (or --resume latest) to continue")
        accelerator.end_training()
        return 0
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        paths = export_student(
            model,
            cfg.model,
            embed_dim,
            os.path.join(cfg.output_dir, "export"),
            {
                "store": store.url,
                "clip_teacher": clip_manifest.must_match["teacher"],
                "sam_teacher": sam_manifest.must_match["teacher"] if sam_manifest else None,
                "sam_multimask": multimask,
                "global_step": state.global_step,
                "held_out": cfg.data.held_out,
                "train_seconds": round(state.train_seconds, 1),
                "subset": trainer.subset_record(),
                "consumed": {
                    "clip_views": state.clip_views,
                    "sam_images": state.sam_images,
                    "sam_prompts": state.sam_prompts,
                },
            },
        )
        accelerator.print(f"exported after {state.global_step} steps: " + ", ".join(paths.values()))
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    run_cli(main)
