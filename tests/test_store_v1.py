"""Stores of schema version 1 (one file per table and unit, made by the code before parts) stay
readable everywhere, and jobs refuse to add units to them.

`tests/data/store_v1` was made by that code (commit 849a8d5) from the sample corpus with this job:

    sources:
      - {name: sample, kind: clip, shards: "CORPUS/clip/00000.tar"}
      - {name: sa1b-sample, kind: sam, shards: "CORPUS/sam/sa_000000.tar", unit_size: 4}
    clip: {teacher: {arch: samclip-tiny-clip, pretrained: TEACHERS/tiny-clip.safetensors}, views: 2}
    sam: {teacher: {model: tiny, checkpoint: TEACHERS/tiny-sam.pth}, prompts: 2, precision: uint8_sigmoid}
    ray: {batch_size: 8}

Its records name the inputs as CORPUS/..., replaced here by the session's sample corpus (built
byte-identically).
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.validate import validate
from storage_schemas.__main__ import main as summary
from storage_schemas.pixels.views import render_view, view_hash
from storage_schemas.plumbing.errors import ManifestMismatch
from storage_schemas.store import open_store
from storage_schemas.store.root import StoreRoot
from support.commands import REPO, run_in_process
from support.job_configs import clip_source, tiny_clip, write_job

V1 = REPO / "tests" / "data" / "store_v1"


@pytest.fixture
def store_v1(tmp_path, sample_corpus) -> Path:
    root = tmp_path / "store_v1"
    shutil.copytree(V1, root)
    for record in (root / "_commits").rglob("*.json"):
        record.write_text(record.read_text().replace("CORPUS", str(sample_corpus)))
    return root


def test_a_schema_1_store_reads_as_before(store_v1, capsys):
    from student.data import iter_clip_unit, iter_sam_unit

    store = open_store(str(store_v1))
    (clip,) = store.commits("clip")
    assert clip.parts is None and clip.schema_version == 1
    assert store.read_table("clip", "views").num_rows == 50
    assert store.committed_files("clip", "views") == [f"{store_v1}/clip/sample/00000.parquet"]
    samples = list(iter_clip_unit(store, clip))
    assert len(samples) == 25
    for s in samples[:5]:  # the student renders the teacher's pixels from a version-1 unit too
        image = s.image(224)
        assert [view_hash(render_view(image, c, f, 224)) for c, f in zip(s.crops, s.flips)] == s.pixel_hashes
    sam = store.commits("sam")
    assert [r.n_stored for r in sam] == [4, 2]
    logits = store.open_logits(sam[0])
    assert logits.shape == (4, 2, 1, 256, 256)
    images = list(iter_sam_unit(store, sam[0]))
    assert len(images) == 4 and all(np.isfinite(i.logits()).all() for i in images)
    assert validate(StoreRoot(str(store_v1))).problems == []
    listing = run_in_process(summary, [store_v1], capsys)
    clip_row = next(line.split() for line in listing.out.splitlines() if line.split()[:1] == ["clip"])
    assert listing.status == 0 and clip_row[3:5] == ["1", "25/25"], listing.out


def test_adding_units_to_a_schema_1_store_is_refused(store_v1, tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    from pipeline.materialize import main as materialize

    job = write_job(
        tmp_path / "job.yaml",
        store_v1,
        [clip_source(f"{sample_corpus}/clip/00001.tar")],
        clip=tiny_clip(tiny_teachers, views=2),
    )
    with pytest.raises(ManifestMismatch, match="has schema version 1; .* write these targets to a new store URL"):
        materialize([str(job)])
    assert not (store_v1 / "_commits" / "clip" / "sample" / "00001.json").exists()
