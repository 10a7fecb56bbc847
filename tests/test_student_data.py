"""The student's CLIP data: lockstep with the shards, the teacher's pixels, refusal of changed inputs."""
import shutil

import pytest

from conftest import write_clip_job
from pipeline.materialize import main as materialize
from storage_schemas.errors import StoreError
from storage_schemas.identity import SampleId
from storage_schemas.store import open_store
from storage_schemas.views import render_view, view_hash
from student.data import choose_view, iter_clip_unit, split_units


def test_units_stream_in_lockstep_and_render_the_teachers_pixels(clip_store):
    store = open_store(str(clip_store))
    seen = 0
    for record in store.commits("clip"):
        samples = list(iter_clip_unit(store, record, size=224))
        assert len(samples) == record.n_stored and [s.sample_index for s in samples] == sorted(s.sample_index for s in samples)
        for s in samples[::3]:
            for v in range(4):
                assert view_hash(render_view(s.image, s.crops[v], bool(s.flips[v]), 224)) == s.pixel_hashes[v]
            assert s.embeddings.shape == (4, 64)
            assert render_view(s.image, s.crops[1], bool(s.flips[1]), 448).shape == (448, 448, 3)
        seen += len(samples)
    assert seen == 100


def test_a_changed_input_is_refused(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    corpus = tmp_path / "corpus"
    shutil.copytree(sample_corpus / "clip", corpus / "clip")
    job = write_clip_job(tmp_path / "job.yaml", tmp_path / "store", corpus, tiny_teachers)
    assert materialize([str(job), "--set", "sources.0.shards=" + str(corpus / "clip" / "00000.tar")]) == 0
    store = open_store(str(tmp_path / "store"))
    (record,) = store.commits("clip")
    assert len(list(iter_clip_unit(store, record, size=224))) == 25
    with open(corpus / "clip" / "00000.tar", "ab") as f:
        f.write(b"\0" * 1024)
    with pytest.raises(StoreError, match="changed since unit sample/00000 was made"):
        next(iter_clip_unit(store, record, size=224))


def test_view_choice_is_stable_and_covers_the_views():
    s = SampleId("cc12m", "00042", "000420017")
    assert [choose_view(0, e, s, 4, "cycle") for e in range(6)] == [0, 1, 2, 3, 0, 1]
    picks = [choose_view(0, e, s, 4, "random") for e in range(40)]
    assert picks == [choose_view(0, e, s, 4, "random") for e in range(40)] and set(picks) == {0, 1, 2, 3}


def test_units_split_across_ranks_without_overlap_and_with_equal_steps(clip_store):
    records = open_store(str(clip_store)).commits("clip") * 3  # 12 units (names repeat, identities differ by order)
    records = [r.__class__(**{**r.__dict__, "unit": f"{r.unit}-{i}"}) for i, r in enumerate(records)]
    for epoch in range(2):
        parts = [split_units(records, 3, rank, seed=0, epoch=epoch) for rank in range(3)]
        units = [u.unit for mine, _ in parts for u in mine]
        assert sorted(units) == sorted(r.unit for r in records) and len(set(units)) == len(units)
        stop = {n for _, n in parts}
        assert len(stop) == 1 and stop.pop() == min(sum(u.n_stored for u in mine) for mine, _ in parts)
        assert parts == [split_units(records, 3, rank, seed=0, epoch=epoch) for rank in range(3)]
    assert [u.unit for u in split_units(records, 3, 0, 0, 0)[0]] != [u.unit for u in split_units(records, 3, 0, 0, 1)[0]]
