"""Zero-shot classifiers: class-name text embeddings for the student's CLIP head.

    classes = ClassNames.from_store(store, "sample", ["cat", "rocket"])     # the store's text/ table
    text = TextTower("ViT-L-14", "open_clip_model.safetensors", cache_dir="~/.cache/samclip/text")
    classes = text(["cat", "rocket"])                                       # computed once, then cached
    logits = classes.logits(image_embeddings)                               # [B, C] = 100 x cosine

The store's tables are written by the CLIP teacher (`pipeline.text_targets`), so evaluation needs
no CLIP model. Where a text tower is at hand (the teacher's checkpoint), embeddings for any class
names are computed once and cached in the same Parquet format, keyed by the tower's weights and
the names and templates.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from storage_schemas.models.checkpoints import fetch_checkpoint, weights_sha256
from storage_schemas.models.class_texts import class_text_embeddings, template_set, text_table
from storage_schemas.plumbing.errors import ConfigError
from storage_schemas.store import TargetStore

# open_clip's zero-shot evaluation scales cosines by CLIP's learned logit scale, 100 at convergence.
LOGIT_SCALE = 100.0


@dataclass
class ClassNames:
    names: list[str]
    weights: torch.Tensor  # float32 [C, D], L2-normalised rows
    teacher_weights_sha256: str | None = None  # of the CLIP model whose text tower made them, if known

    @classmethod
    def from_table(cls, table: pa.Table, names: list[str] | None = None, what: str = "text table") -> "ClassNames":
        """Rows of a text table (all, or `names` in that order)."""
        stored = table.column("class_name").to_pylist()
        emb = table.column("embedding").combine_chunks()
        weights = np.asarray(emb.values, np.float32).reshape(len(stored), emb.type.list_size)
        sha = (table.schema.metadata or {}).get(b"teacher_weights_sha256")
        sha = sha.decode() if sha else None
        if names is None:
            return cls(stored, torch.from_numpy(weights.copy()), sha)
        row = {n: i for i, n in enumerate(stored)}
        missing = [n for n in names if n not in row]
        if missing:
            raise ConfigError(
                f"{what} has no embedding for class names {missing[:5]} "
                f"({len(missing)} missing; it has {len(stored)} names)"
            )
        return cls(list(names), torch.from_numpy(weights[[row[n] for n in names]].copy()), sha)

    @classmethod
    def from_store(cls, store: TargetStore, table: str, names: list[str] | None = None) -> "ClassNames":
        return cls.from_table(store.read_text(table), names, f"text table '{table}' of {store.url}")

    def __len__(self) -> int:
        return len(self.names)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """embeddings: [..., D] L2-normalised -> [..., C], cosines times the CLIP logit scale."""
        return LOGIT_SCALE * embeddings @ self.weights.to(embeddings.device, embeddings.dtype).T


class StoreText:
    """Class names -> ClassNames from one text table of a store (read once)."""

    def __init__(self, store: TargetStore, table: str):
        self.table, self.what = store.read_text(table), f"text table '{table}' of {store.url}"

    def __call__(self, names: list[str]) -> ClassNames:
        return ClassNames.from_table(self.table, list(names), self.what)


class TextTower:
    """Class names -> ClassNames from an open_clip text tower, each set of names computed once and
    cached under `cache_dir` (keyed by the tower's weights, the names and the templates)."""

    def __init__(self, arch: str, pretrained: str, templates: str = "openai", cache_dir: str | None = None):
        import open_clip

        import storage_schemas.models.clip_archs  # noqa: F401 (the project's own architectures)

        self.model = open_clip.create_model(arch, pretrained=fetch_checkpoint(pretrained)).eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.arch, self.digest, self.templates_name = arch, weights_sha256(self.model), templates
        self.templates = template_set(templates)
        self.cache_dir = os.path.expanduser(cache_dir) if cache_dir else None

    def __call__(self, names: list[str]) -> ClassNames:
        names = list(names)
        path = None
        if self.cache_dir:
            key = hashlib.sha256(json.dumps([self.arch, self.digest, self.templates_name, names]).encode()).hexdigest()
            path = os.path.join(self.cache_dir, f"text-{key[:24]}.parquet")
            if os.path.isfile(path):
                return ClassNames.from_table(pq.read_table(path), names, path)
        emb = class_text_embeddings(self.model, self.tokenizer, names, self.templates)
        if path:
            os.makedirs(self.cache_dir, exist_ok=True)
            table = text_table(
                emb,
                names,
                self.templates_name,
                self.templates,
                {"teacher_arch": self.arch, "teacher_weights_sha256": self.digest},
            )
            pq.write_table(table, path + ".tmp")
            os.replace(path + ".tmp", path)
        return ClassNames(names, torch.from_numpy(emb), self.digest)
