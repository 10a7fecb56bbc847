"""Streaming the samples of a tar shard from any fsspec URL, without holding the shard in memory.

Shared: the pipeline streams shards to make targets (and their tar indexes); a store without a
tar index for a shard gets one by streaming it here (`storage_schemas.store.tar_index.scan_tar_index`).

Members are grouped into samples the webdataset way: consecutive members sharing the part of the
base name before its first dot (`000420017.jpg`, `000420017.json` -> key `000420017`;
`sa_223750.jpg` + `sa_223750.json` -> `sa_223750`).
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import fsspec

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class TarSample:
    index: int  # position in the shard, counting every sample (0-based)
    key: str
    members: dict[str, bytes] = field(default_factory=dict)  # extension -> bytes
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # extension -> (data offset, size) in the tar

    def image(self) -> tuple[str, bytes] | None:
        """(extension, bytes) of the first image member, if any."""
        for ext in IMAGE_EXTENSIONS:
            if ext in self.members:
                return ext, self.members[ext]
        return None

    def member_names(self) -> list[str]:
        return [f"{self.key}.{ext}" for ext in self.members]


def split_member_name(name: str) -> tuple[str, str]:
    directory, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def iter_tar_samples(
    url: str, storage_options: dict[str, Any] | None = None, want: Callable[[int], bool] | None = None
) -> Iterator[TarSample]:
    """Every sample of the tar at `url`, read as a stream.

    Samples for which `want(index)` is False are still yielded (so they are counted), with no
    members read.
    """
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    size = int(fs.info(path)["size"])
    with fs.open(path, "rb", block_size=1 << 22) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        current: TarSample | None = None
        index = -1
        for info in tar:
            if not info.isfile():
                continue
            key, ext = split_member_name(info.name)
            if current is None or key != current.key:
                if current is not None:
                    yield current
                index += 1
                current = TarSample(index, key)
            current.spans[ext] = (info.offset_data, info.size)
            if want is None or want(index):
                extracted = tar.extractfile(info)
                current.members[ext] = extracted.read() if extracted is not None else b""
            else:
                current.members.setdefault(ext, b"")
        # A stream read ends quietly where a cut tar ends: insist on the end-of-archive marker,
        # or the last samples would go missing without a word.
        if tar.offset + 2 * tarfile.BLOCKSIZE > size:
            raise ValueError(
                f"{url} ends without its end-of-archive marker after {tar.offset} of {size} bytes: truncated?"
            )
        if current is not None:
            yield current
