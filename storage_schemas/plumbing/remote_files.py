"""Facts about a file at any fsspec URL, for the pixel readers and the store alike."""

from __future__ import annotations

from typing import Any

import fsspec


def stat_url(url: str, storage_options: dict[str, Any] | None = None) -> tuple[int, str | None]:
    """(size, ETag or None) of a file at any fsspec URL; FileNotFoundError if absent."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    info = fs.info(path)
    etag = info.get("ETag") or info.get("etag")
    return int(info["size"]), etag.strip('"') if isinstance(etag, str) else None
