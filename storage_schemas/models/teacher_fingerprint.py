"""What identifies a teacher's outputs: recorded in the manifest, compared on every job."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any


def library_versions() -> dict[str, str]:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda)}
    for dist in ("torchvision", "open_clip_torch", "segment_anything", "pillow", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


@dataclass(frozen=True)
class TeacherFingerprint:
    family: str  # "open_clip" or "segment_anything"
    arch: str
    weights_sha256: str  # of the loaded weights, so a tag and the same weights from a file agree
    preprocess: dict[str, Any]  # size, mean, std, interpolation, resize mode ...
    output: dict[str, Any]  # embed_dim (CLIP); num_masks, mask size, embedding shape (SAM)
    weights: str  # where the weights came from (tag or path); recorded, not compared
    versions: dict[str, str] = field(default_factory=library_versions)

    def must_match(self) -> dict[str, Any]:
        """The fields a store's manifest compares: a change here changes the targets."""
        d = asdict(self)
        d.pop("weights")
        d.pop("versions")
        return d

    def recorded(self) -> dict[str, Any]:
        return {"weights": self.weights, "versions": self.versions}
