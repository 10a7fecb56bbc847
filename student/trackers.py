"""Experiment trackers: accelerate's, chosen by the config's `log_with`, named after the run.

    accelerator = Accelerator(log_with=trackers(cfg), project_dir=cfg.output_dir)
    start_trackers(accelerator, cfg, hparams)     # hparams: the config, storage options left out

TensorBoard writes OUTPUT/tensorboard (its folder whatever the run is called). Weights & Biases
gets the run's name (OUTPUT's folder name) as project and run name and keeps its files in OUTPUT/
wandb, without the system metadata (it holds the command line); `WANDB_MODE=offline` runs it
without a network. MLflow gets it as experiment and run name and logs to `MLFLOW_TRACKING_URI` (a
server), else to OUTPUT/mlruns (MLflow's file store). A resumed run logs into the run it started:
W&B's run id is a hash of the run folder, MLflow's is kept in OUTPUT/mlflow_run_id.txt.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from student.config import TrainConfig

MLFLOW_RUN_ID = "mlflow_run_id.txt"  # OUTPUT/: the MLflow run a resumed run continues


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
    out = os.path.abspath(cfg.output_dir)
    # A resumed run (a requeue after preemption) continues the trackers' run instead of starting one.
    mlflow_id_file = os.path.join(out, MLFLOW_RUN_ID)
    mlflow_id = open(mlflow_id_file).read().strip() if os.path.isfile(mlflow_id_file) else None
    init_kwargs: dict[str, dict[str, Any]] = {"mlflow": {"run_name": name, "run_id": mlflow_id}}
    if "wandb" in cfg.trackers():
        import wandb

        # Its system metadata holds the command line, and `--set store.storage_options=...` may
        # carry credentials: no metadata then (the config it logs has storage options left out).
        settings = wandb.Settings(x_disable_meta=True)
        run_id = hashlib.blake2b(out.encode(), digest_size=8).hexdigest()  # one W&B run per run folder
        init_kwargs["wandb"] = {"name": name, "dir": out, "settings": settings, "id": run_id, "resume": "allow"}
    accelerator.init_trackers(name, config=hparams, init_kwargs=init_kwargs)
    if "mlflow" in cfg.trackers() and accelerator.is_main_process and mlflow_id is None:
        with open(mlflow_id_file, "w") as f:
            f.write(accelerator.get_tracker("mlflow", unwrap=True).info.run_id)
