"""Checkpoint files: fetching from any fsspec URL, loading on CPU safely, checksums, mismatches."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import fsspec
import torch

from storage_schemas.plumbing.errors import CheckpointError

CACHE_ENV = "SAMCLIP_CACHE"


def is_path_like(spec: str) -> bool:
    """A checkpoint given as a path or URL rather than a registry tag."""
    return "://" in spec or os.sep in spec or spec.endswith((".pt", ".pth", ".bin", ".safetensors"))


def fetch_checkpoint(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """A local path for `url`: local paths as they are, remote files copied once into a cache."""
    if "://" not in url or url.startswith("file://"):
        path = url[len("file://") :] if url.startswith("file://") else url
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint file '{path}' not found")
        return path
    cache = os.environ.get(CACHE_ENV, os.path.expanduser("~/.cache/samclip/checkpoints"))
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        info = fs.info(path)
        # Keyed by what the object is now, so a checkpoint replaced under the same URL is fetched again.
        version = [url, info.get("size"), info.get("ETag") or info.get("etag") or info.get("mtime")]
        local = os.path.join(
            cache, hashlib.sha256(repr(version).encode()).hexdigest()[:16], os.path.basename(url.rstrip("/"))
        )
        if os.path.isfile(local):
            return local
        os.makedirs(os.path.dirname(local), exist_ok=True)
        part = f"{local}.part-{uuid.uuid4().hex[:8]}"  # concurrent fetchers (teacher actors) never share one
        fs.get_file(path, part)
    except Exception as e:  # any filesystem's "cannot fetch": one line, not a traceback
        raise CheckpointError(f"checkpoint '{url}' cannot be fetched ({type(e).__name__}: {e})") from None
    os.replace(part, local)
    return local


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch file (on CPU, `weights_only=True`)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or foreign files fail in many ways
        kind = "a safetensors file" if path.endswith(".safetensors") else "a file written by torch.save"
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read as {kind}, so it holds no state dict ({type(e).__name__}: {e})"
        ) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(sd).__name__}, expected a state dict")
    others = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if others:
        raise CheckpointError(
            f"checkpoint '{path}' is not a state dict: {len(others)} of its entries are not tensors "
            f"(e.g. {others[0]!r}); expected parameter names -> tensors"
        )
    return sd


def weights_sha256(module: torch.nn.Module) -> str:
    """Checksum of a module's weights (names, dtypes, shapes, bytes), independent of file format."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def describe_mismatch(model_sd: dict[str, torch.Tensor], ckpt_sd: dict[str, torch.Tensor]) -> str | None:
    """One line on how a checkpoint's keys and shapes differ from a model's, or None if they fit."""
    missing = [k for k in model_sd if k not in ckpt_sd]
    unexpected = [k for k in ckpt_sd if k not in model_sd]
    shapes = [k for k in model_sd if k in ckpt_sd and tuple(model_sd[k].shape) != tuple(ckpt_sd[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint {list(ckpt_sd[k].shape)}, "
            f"model {list(model_sd[k].shape)})"
        )
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    return ", ".join(parts)
