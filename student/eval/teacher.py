"""The store's CLIP teacher scored on the student's footing: the same data, class table and metric
code, with the teacher's own open_clip image tower and evaluation preprocessing.

    teacher, store_url = ClipTeacherPredictor.from_job("jobs/merged41m.yaml")
    result = zeroshot_classification(teacher, classes, ds.samples(), size=224)   # size: its own

The teacher scores what the paper scores it on: zero-shot classification. Semantic segmentation
and SAM agreement are tasks it has no head for in the paper's protocol (`TASKS` says which); the
evaluation reports them as not applicable, never as 0.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import yaml

from storage_schemas.models.clip_teacher import ClipTeacher, load_clip_teacher
from storage_schemas.models.teacher_config import ClipTeacherConfig
from storage_schemas.plumbing.errors import ConfigError, ManifestMismatch
from storage_schemas.plumbing.typed_config import from_dict
from storage_schemas.store import open_store
from storage_schemas.store.manifest import teacher_difference
from student.eval.inference import ImageLike, as_pil

TASKS = ("zeroshot-cls",)
NOT_APPLICABLE = "the CLIP teacher has no segmentation or SAM head in the paper's protocol"


def read_job_teacher(path: str) -> tuple[str, ClipTeacherConfig, dict[str, Any] | None]:
    """A job config's store URL, `clip.teacher` and store storage options, without the pipeline."""
    if not os.path.isfile(path):
        raise ConfigError(f"--job '{path}': no such file (expected the job config that made the store)")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    store = raw.get("store") or {}
    if not store.get("url"):
        raise ConfigError(f"--job '{path}': no store.url")
    teacher = from_dict(ClipTeacherConfig, (raw.get("clip") or {}).get("teacher") or {}, "clip.teacher")
    return store["url"], teacher, store.get("storage_options")


class ClipTeacherPredictor:
    """`embed_images` as `SamClipPredictor` has it, by the open_clip teacher."""

    def __init__(self, teacher: ClipTeacher, device: str | torch.device = "cpu"):
        self.teacher, self.device = teacher, torch.device(device)
        self.teacher.model.to(self.device)
        self.size = teacher.fingerprint.preprocess["size"][0]

    @classmethod
    def from_job(cls, job: str, device: str = "cpu") -> tuple["ClipTeacherPredictor", str]:
        """The job's CLIP teacher, checked to be the one its store's CLIP targets came from."""
        store_url, cfg, storage_options = read_job_teacher(job)
        teacher = load_clip_teacher(cfg, storage_options, device)
        manifest = open_store(store_url, storage_options).manifest("clip")
        mismatch = manifest and teacher_difference(manifest.must_match["teacher"], teacher.fingerprint.must_match())
        if mismatch:
            raise ManifestMismatch(
                f"--job {job}: its CLIP teacher is not the one store {store_url} was made with ({mismatch})"
            )
        return cls(teacher, device), store_url

    @property
    def meta(self) -> dict[str, Any]:
        """What an export's student.json says of its teacher, for the class-table check."""
        return {"clip_teacher": {"weights_sha256": self.teacher.fingerprint.weights_sha256}}

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageLike], size: int | None = None, batch_size: int = 32) -> torch.Tensor:
        """Image embeddings [B, D] (L2-normalised) by open_clip's `preprocess_val` at the teacher's
        own size (`size` is the student's and is not used)."""
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([self.teacher.preprocess_val(as_pil(im)) for im in images[i : i + batch_size]])
            out.append(self.teacher.encode_images(x.to(self.device)).cpu())
        return torch.cat(out)
