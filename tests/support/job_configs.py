"""Job configs for tests, built as `pipeline.config.JobConfig` values and written as YAML:

    write_job(tmp_path / "job.yaml", tmp_path / "store",
              [clip_source(clip_shards(corpus), unit_size=0)],
              clip=tiny_clip(teachers, views=4), ray=RayConfig(batch_size=8))

The YAML holds only the fields that differ from JobConfig's defaults, so a file reads like a
hand-written job, and `load_job_config` reads it back to the config built (checked on every
write). Tests of configs no JobConfig can hold (an unknown key, a wrong type) write YAML by hand.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import (
    ClipConfig,
    ClipTeacherConfig,
    JobConfig,
    RayConfig,
    SamConfig,
    SamTeacherConfig,
    SourceConfig,
    load_job_config,
)
from storage_schemas.store import StoreConfig

TINY_CLIP_ARCH = "samclip-tiny-clip"  # pipeline.teachers.tiny's (not imported here: it imports open_clip)
TINY_SAM_MODEL = "tiny"


def clip_shards(corpus) -> str:
    """The sample corpus's four CLIP shards (25 samples each)."""
    return f"{corpus}/clip/{{00000..00003}}.tar"


def sam_shards(corpus) -> str:
    """The sample corpus's two SA-1B shards (6 images each)."""
    return f"{corpus}/sam/sa_{{000000..000001}}.tar"


def clip_source(shards, name: str = "sample", **fields) -> SourceConfig:
    return SourceConfig(name=name, kind="clip", shards=_urls(shards), **fields)


def sam_source(shards, name: str = "sa1b", **fields) -> SourceConfig:
    return SourceConfig(name=name, kind="sam", shards=_urls(shards), **fields)


def tiny_clip(teachers: dict, views: int, **fields) -> ClipConfig:
    """The tiny CLIP teacher that `write_tiny_teachers` wrote, K = `views`."""
    return ClipConfig(
        teacher=ClipTeacherConfig(arch=TINY_CLIP_ARCH, pretrained=str(teachers["clip"])), views=views, **fields
    )


def tiny_sam(teachers: dict, prompts: int, **fields) -> SamConfig:
    """The tiny SAM teacher that `write_tiny_teachers` wrote, P = `prompts`."""
    return SamConfig(
        teacher=SamTeacherConfig(model=TINY_SAM_MODEL, checkpoint=str(teachers["sam"])), prompts=prompts, **fields
    )


def job_config(store, sources: list[SourceConfig], **fields) -> JobConfig:
    """A JobConfig; `store` is a URL or path, or a StoreConfig (for storage options)."""
    if not isinstance(store, StoreConfig):
        store = StoreConfig(url=os.fspath(store))
    return JobConfig(store=store, sources=list(sources), **fields)


def write_job(path, store, sources: list[SourceConfig], **fields) -> Path:
    """Write `job_config(store, sources, **fields)` as YAML at `path`; returns the path."""
    cfg = job_config(store, sources, **fields)
    path = Path(path)
    path.write_text(yaml.safe_dump(changed_fields(cfg), sort_keys=False))
    assert load_job_config(str(path)) == cfg, f"{path} does not read back as the config it was written from"
    return path


def changed_fields(config: Any) -> Any:
    """The plain (YAML-ready) form of a config dataclass without the fields left at their defaults."""
    if dataclasses.is_dataclass(config):
        out = {}
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            if f.default_factory is not dataclasses.MISSING and value == f.default_factory():
                continue
            out[f.name] = changed_fields(value)
        return out
    if isinstance(config, (list, tuple)):
        return [changed_fields(v) for v in config]
    if isinstance(config, dict):
        return {k: changed_fields(v) for k, v in config.items()}
    return config


def _urls(shards) -> str | list[str]:
    return [os.fspath(s) for s in shards] if isinstance(shards, (list, tuple)) else os.fspath(shards)


# The jobs of the session stores (conftest's `clip_store`, `sam_store`): the golden, student and
# training tests were written against what they make.


def write_clip_job(path, store, corpus, teachers: dict) -> Path:
    """The four sample CLIP shards, K = 4, batch 8, whole shards as units (unit_size 0, not the
    default cut: the student shuffles units by name, and the rehearsal test's few-step comparison
    depends on that order)."""
    return write_job(
        path,
        store,
        [clip_source(clip_shards(corpus), unit_size=0)],
        clip=tiny_clip(teachers, views=4),
        ray=RayConfig(batch_size=8),
    )


def write_sam_job(path, store, shards, teachers: dict, precision: str = "fp16") -> Path:
    """SA-1B shards in units of 4 images, P = 16, 2 rounds (the mask-prompt round), `precision`."""
    return write_job(
        path,
        store,
        [sam_source(shards, unit_size=4)],
        sam=tiny_sam(teachers, prompts=16, rounds=2, precision=precision),
    )
