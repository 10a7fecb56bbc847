"""Experiment trackers: accelerate's, chosen by the config's `log_with`, named after the run.

    accelerator = Accelerator(log_with=trackers(cfg), project_dir=cfg.output_dir)
    start_trackers(accelerator, cfg, hparams)     # hparams: the config, storage options left out

TensorBoard writes OUTPUT/tensorboard (its folder whatever the run is called). Weights & Biases
gets the run's name (OUTPUT's folder name) as project and run name and keeps its files in OUTPUT/
wandb, without the system metadata (it holds the command line); `WANDB_MODE=offline` runs it
without a network. MLflow gets it as experiment and run name and logs to `MLFLOW_TRACKING_URI` (a
server), else to OUTPUT/mlruns (MLflow's file store).
"""

from __future__ import annotations

import os
from typing import Any

from student.config import TrainConfig


def run_name(cfg: TrainConfig) -> str:
    return os.path.basename(os.path.normpath(os.path.abspath(cfg.output_dir)))


def trackers(cfg: TrainConfig) -> list[Any]:
    """What `Accelerator(log_with=...)` takes: tracker names, and TensorBoard's tracker made here
    so that its folder stays OUTPUT/tensorboard."""
    from accelerate.tracking import TensorBoardTracker

    return [TensorBoardTracker("tensorboard", cfg.output_dir) if n == "tensorboard" else n for n in cfg.trackers()]


def start_trackers(accelerator, cfg: TrainConfig, hparams: dict[str, Any]) -> None:
    name = run_name(cfg)
    if "mlflow" in cfg.trackers() and not os.environ.get("MLFLOW_TRACKING_URI") and accelerator.is_main_process:
        import mlflow

        # No server named: a folder beside the run. MLflow 3 keeps its file store for this use but
        # asks for consent, as its other local backend (SQLite) needs the full mlflow package.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri("file:" + os.path.join(os.path.abspath(cfg.output_dir), "mlruns"))
    init_kwargs: dict[str, dict[str, Any]] = {"mlflow": {"run_name": name}}
    if "wandb" in cfg.trackers():
        import wandb

        # Its system metadata holds the command line, and `--set store.storage_options=...` may
        # carry credentials: no metadata then (the config it logs has storage options left out).
        settings = wandb.Settings(x_disable_meta=True)
        init_kwargs["wandb"] = {"name": name, "dir": os.path.abspath(cfg.output_dir), "settings": settings}
    accelerator.init_trackers(name, config=hparams, init_kwargs=init_kwargs)
