"""Input shards: expanding a source's URLs and brace patterns, and what each shard is.

`expand_source` turns `s3://b/cc12m/{00000..01242}.tar` into one `InputShard` per tar, checking
that each exists (a missing shard is a config error, reported before any work starts) and reading
its size and, on object stores, its ETag: the commit record keeps both, and the student refuses a
shard that changed since.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import braceexpand
import fsspec

from pipeline.config import SourceConfig
from storage_schemas.plumbing.errors import ConfigError
from storage_schemas.plumbing.remote_files import stat_url
from storage_schemas.store.commit import InputRef


@dataclass(frozen=True)
class InputShard:
    source: str  # the config's source name
    kind: str  # "clip" or "sam"
    url: str
    name: str  # file name without .tar: "00042", "sa_000123"
    size: int
    etag: str | None
    storage_options: dict[str, Any]
    unit_size: int | None  # samples per unit; None: the whole shard is one unit

    def ref(self, start: int, stop: int, shard_samples: int | None) -> InputRef:
        return InputRef(
            url=self.url,
            size=self.size,
            etag=self.etag,
            sample_start=start,
            sample_stop=stop,
            shard_samples=shard_samples,
            unit_size=self.unit_size or 0,
        )


def shard_name(url: str) -> str:
    base = os.path.basename(url.rstrip("/"))
    if not base.endswith(".tar"):
        raise ValueError(f"shard URL '{url}' does not name a .tar file")
    return base[: -len(".tar")]


def expand_urls(patterns: str | list[str]) -> list[str]:
    """Brace-expand every pattern; keep order, drop repeats."""
    out: list[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        for url in braceexpand.braceexpand(pattern):
            if url not in out:
                out.append(url)
    return out


# One HEAD per shard: thousands of them at cluster scale, so they run concurrently.
STAT_THREADS = 32


def expand_source(index: int, source: SourceConfig) -> list[InputShard]:
    """The shards of `source` (the `index`-th of the config), each checked to exist."""
    key = f"sources.{index}.shards"
    names: dict[str, str] = {}
    urls = expand_urls(source.shards)
    for url in urls:
        try:
            name = shard_name(url)
        except ValueError as e:
            raise ConfigError(f"config key '{key}': {e}") from None
        if name in names:
            raise ConfigError(
                f"config key '{key}': '{url}' and '{names[name]}' have the same shard name "
                f"'{name}'; shard names are part of sample identity within a source"
            )
        names[name] = url

    def stat(url: str) -> tuple[int, str | None]:
        try:
            return stat_url(url, source.storage_options)
        except FileNotFoundError:
            raise ConfigError(f"config key '{key}': shard '{url}' not found") from None
        except Exception as e:  # unreachable endpoint, bad credentials, unknown protocol
            raise ConfigError(f"config key '{key}': shard '{url}' cannot be read ({type(e).__name__}: {e})") from None

    with ThreadPoolExecutor(STAT_THREADS) as pool:
        stats = list(pool.map(stat, urls))
    return [
        InputShard(source.name, source.kind, url, shard_name(url), size, etag, source.storage_options, source.unit_size)
        for url, (size, etag) in zip(urls, stats)
    ]


def sidecar_success_counts(tar_url: str, storage_options: dict[str, Any] | None = None) -> dict[str, int]:
    """img2dataset's success counts beside a shard: {"_stats.json": n, ".parquet": n}, where present."""
    fs, path = fsspec.core.url_to_fs(tar_url, **(storage_options or {}))
    stem = path[: -len(".tar")]
    out = {}
    if fs.exists(stem + "_stats.json"):
        out["_stats.json"] = int(json.loads(fs.cat_file(stem + "_stats.json"))["successes"])
    if fs.exists(stem + ".parquet"):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        with fs.open(stem + ".parquet", "rb") as f:
            status = pq.read_table(f, columns=["status"]).column("status")
        out[".parquet"] = int(pc.sum(pc.equal(status, "success")).as_py() or 0)
    return out
