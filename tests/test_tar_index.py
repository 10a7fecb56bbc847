"""Tar indexes: offsets that match the tar, ranged reads equal to the stream, stale ones refused."""

import tarfile

import pytest

from storage_schemas.pixels.tar_samples import iter_tar_samples
from storage_schemas.store.layout import tar_index_path
from storage_schemas.store.root import StoreRoot
from storage_schemas.store.tar_index import (
    index_rows,
    iter_indexed_samples,
    make_tar_index,
    read_tar_index,
    write_tar_index,
)


def test_index_offsets_are_the_tars_and_ranged_reads_equal_the_stream(tmp_path, sample_corpus):
    url = str(sample_corpus / "clip" / "00001.tar")
    size = (sample_corpus / "clip" / "00001.tar").stat().st_size
    streamed = list(iter_tar_samples(url))
    index = make_tar_index(url, size, None, [r for s in streamed for r in index_rows(s)])
    with tarfile.open(url) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
    assert index.table.column("offset").to_pylist() == [m.offset_data for m in members]
    assert index.table.column("size").to_pylist() == [m.size for m in members]
    assert index.n_samples == len(streamed) == 25

    storage = StoreRoot(str(tmp_path / "store"))
    write_tar_index(storage, "clip", "s", "00001", index)
    assert (tmp_path / "store" / tar_index_path("clip", "s", "00001")).exists()
    back = read_tar_index(storage, "clip", "s", "00001", size, None)
    ranged = list(iter_indexed_samples(url, {}, back, 10, 20))
    assert [(s.index, s.key, s.members) for s in ranged] == [(s.index, s.key, s.members) for s in streamed[10:20]]
    assert list(iter_indexed_samples(url, {}, back, 25, 30)) == []

    # Another version of the tar (size or ETag): the index is stale, and absent ones are None.
    assert read_tar_index(storage, "clip", "s", "00001", size + 512, None) is None
    assert read_tar_index(storage, "clip", "s", "00001", size, "etag-of-another") is None
    assert read_tar_index(storage, "clip", "s", "00002", size, None) is None


def test_a_ranged_read_past_a_cut_tar_says_so(tmp_path, sample_corpus):
    src = sample_corpus / "clip" / "00001.tar"
    streamed = list(iter_tar_samples(str(src)))
    index = make_tar_index(str(src), src.stat().st_size, None, [r for s in streamed for r in index_rows(s)])
    cut = tmp_path / "00001.tar"
    cut.write_bytes(src.read_bytes()[: streamed[20].spans["jpg"][0] + 10])
    with pytest.raises(ValueError, match="truncated"):
        list(iter_indexed_samples(str(cut), {}, index, 15, 25))
