"""A store and a student export made by older code of the same schema version (commit 2f689e0,
before attempts named files) read as they did.

`tests/data/store_v2` was made at that commit from the sample corpus with this job:

    sources:
      - {name: sample, kind: clip, shards: "CORPUS/clip/00000.tar"}
      - {name: sa1b-sample, kind: sam, shards: "CORPUS/sam/sa_000000.tar", unit_size: 4}
    clip: {teacher: {arch: samclip-tiny-clip, pretrained: TEACHERS/tiny-clip.safetensors}, views: 2}
    sam: {teacher: {model: tiny, checkpoint: TEACHERS/tiny-sam.pth}, prompts: 2, precision: uint8_sigmoid}
    ray: {batch_size: 8, num_cpus: 2}

and `tests/data/student_export_v2` by `export_student` at that commit (the tiny config's model
from the tiny SAM teacher, embed_dim 64); its student.json holds the CLIP embedding that commit
computed for a seeded input (`reference`).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.materialize.plan import main as plan
from pipeline.validate import validate
from storage_schemas.pixels.views import render_view, view_hash
from storage_schemas.store import open_store
from storage_schemas.store.root import StoreRoot
from support.commands import REPO
from support.job_configs import clip_source, sam_source, tiny_clip, tiny_sam, write_job

DATA = REPO / "tests" / "data"


@pytest.fixture
def store_v2(tmp_path, sample_corpus) -> Path:
    """The committed store with its CORPUS/ input URLs pointed at the session's sample corpus."""
    root = tmp_path / "store_v2"
    shutil.copytree(DATA / "store_v2", root)
    for record in (root / "_commits").rglob("*.json"):
        record.write_text(record.read_text().replace("CORPUS", str(sample_corpus)))
    for index in (root / "_tar_index").rglob("*.parquet"):
        table = pq.read_table(index)
        meta = {k: v.replace(b"CORPUS", str(sample_corpus).encode()) for k, v in table.schema.metadata.items()}
        pq.write_table(table.replace_schema_metadata(meta), index)
    return root


def test_a_store_made_before_the_regrouping_reads_validates_and_plans_as_complete(
    store_v2, tmp_path, sample_corpus, tiny_teachers, capsys
):
    from student.data.unit_samples import iter_clip_unit, iter_sam_unit

    store = open_store(str(store_v2))
    (clip,) = store.commits("clip")
    assert clip.schema_version == 2
    assert len(clip.parts) == 4
    assert store.read_table("clip", "views").num_rows == 50
    samples = list(iter_clip_unit(store, clip))
    assert len(samples) == 25
    for s in samples[:5]:  # the student still renders the teacher's pixels from it
        image = s.image(224)
        assert [view_hash(render_view(image, c, f, 224)) for c, f in zip(s.crops, s.flips)] == s.pixel_hashes
    sam = store.commits("sam")
    assert [r.n_stored for r in sam] == [4, 2]
    assert store.open_logits(sam[0]).shape == (4, 2, 1, 256, 256)
    assert all(np.isfinite(i.logits()).all() for i in iter_sam_unit(store, sam[0]))
    assert validate(StoreRoot(str(store_v2))).problems == []
    job = write_job(
        tmp_path / "job.yaml",
        store_v2,
        [
            clip_source(f"{sample_corpus}/clip/00000.tar"),
            sam_source(f"{sample_corpus}/sam/sa_000000.tar", name="sa1b-sample", unit_size=4),
        ],
        clip=tiny_clip(tiny_teachers, views=2),
        sam=tiny_sam(tiny_teachers, prompts=2, precision="uint8_sigmoid"),
    )
    assert plan([str(job)]) == 0  # the manifests agree with this code's: nothing to redo
    out = capsys.readouterr().out
    assert out.count("manifest matches the store's") == 2, out
    assert "1 with committed units (1 units), 0 untouched" in out, out
    assert "(2 units), 0 untouched" in out, out


def test_a_student_export_made_before_the_regrouping_loads_and_computes_the_same():
    from student.modeling.load import load_student

    export = DATA / "student_export_v2"
    reference = json.loads((export / "student.json").read_text())["reference"]
    model = load_student(str(export))
    with torch.no_grad():
        got = model.clip_embed(torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    np.testing.assert_allclose(got[0].numpy(), reference["clip_embed"], atol=2e-6)
