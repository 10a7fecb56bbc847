"""Joining or starting the Ray cluster a job runs on, with Ray Data's own console output kept quiet.

has_gpu = start_ray(cfg)   # RAY_ADDRESS's cluster, or a fresh local one of cfg.ray.num_cpus CPUs
"""

from __future__ import annotations

import logging
import os

from pipeline.config import JobConfig
from storage_schemas.plumbing.faults import FAULT_ENVS

VERBOSE_ENV = "SAMCLIP_RAY_VERBOSE"  # =1: Ray Data's own progress bars and execution logs come back


def quiet_ray_data() -> None:
    """The job shows its own bars and summary; Ray Data's per-operator progress (a block of lines
    per update when stdout is a file) and its INFO lines about execution plans stay off unless
    SAMCLIP_RAY_VERBOSE=1, for debugging a job."""
    import ray.data

    if os.environ.get(VERBOSE_ENV) == "1":
        return
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled": we did


def start_ray(cfg: JobConfig) -> bool:
    """Connect to RAY_ADDRESS's cluster or start a local one; True when the cluster has GPUs."""
    import ray

    quiet_ray_data()
    if not ray.is_initialized():
        # A test's kill point must reach the teacher actors, also on a cluster's other nodes.
        env = {k: os.environ[k] for k in FAULT_ENVS if k in os.environ}
        runtime_env = {"env_vars": env} if env else None
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_level=logging.WARNING, runtime_env=runtime_env)
        else:
            # "local": always a fresh local Ray, never a stale one named by /tmp/ray/ray_current_cluster.
            ray.init(
                address="local",
                num_cpus=cfg.ray.num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                runtime_env=runtime_env,
            )
    return ray.cluster_resources().get("GPU", 0) > 0
