"""The student's CLIP data: lockstep with the shards, the teacher's pixels, refusal of changed inputs."""
import shutil

import numpy as np
import pytest
import torch

from conftest import write_clip_job
from pipeline.materialize import main as materialize
from storage_schemas.errors import StoreError
from storage_schemas.identity import SampleId, is_held_out
from storage_schemas.mask_logits import decode_logits
from storage_schemas.sam_transforms import sam_boxes
from storage_schemas.store import open_store
from storage_schemas.views import render_view, view_hash
from student.batches import BatchStream, ClipBatchMaker, SamBatchMaker, batch_sizes, make_loader, plan_epoch
from student.data import (choose_prompts, choose_view, count_kept, iter_clip_unit, iter_sam_unit, split_filter,
                          split_units, unit_id)


def test_units_stream_in_lockstep_and_render_the_teachers_pixels(clip_store):
    store = open_store(str(clip_store))
    seen = 0
    for record in store.commits("clip"):
        samples = list(iter_clip_unit(store, record))
        assert len(samples) == record.n_stored and [s.sample_index for s in samples] == sorted(s.sample_index for s in samples)
        for s in samples[::3]:
            for v in range(4):
                assert view_hash(render_view(s.image(224), s.crops[v], bool(s.flips[v]), 224)) == s.pixel_hashes[v]
            assert s.embeddings.shape == (4, 64)
            assert render_view(s.image(448), s.crops[1], bool(s.flips[1]), 448).shape == (448, 448, 3)
        seen += len(samples)
    assert seen == 100


def test_a_changed_input_is_refused(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    corpus = tmp_path / "corpus"
    shutil.copytree(sample_corpus / "clip", corpus / "clip")
    job = write_clip_job(tmp_path / "job.yaml", tmp_path / "store", corpus, tiny_teachers)
    assert materialize([str(job), "--set", "sources.0.shards=" + str(corpus / "clip" / "00000.tar")]) == 0
    store = open_store(str(tmp_path / "store"))
    (record,) = store.commits("clip")
    assert len(list(iter_clip_unit(store, record))) == 25
    with open(corpus / "clip" / "00000.tar", "ab") as f:
        f.write(b"\0" * 1024)
    with pytest.raises(StoreError, match="changed since unit sample/00000 was made"):
        next(iter_clip_unit(store, record))


def test_view_choice_is_stable_and_covers_the_views():
    s = SampleId("cc12m", "00042", "000420017")
    assert [choose_view(0, e, s, 4, "cycle") for e in range(6)] == [0, 1, 2, 3, 0, 1]
    picks = [choose_view(0, e, s, 4, "random") for e in range(40)]
    assert picks == [choose_view(0, e, s, 4, "random") for e in range(40)] and set(picks) == {0, 1, 2, 3}


def test_units_split_across_ranks_without_overlap_and_with_equal_steps(clip_store):
    records = open_store(str(clip_store)).commits("clip") * 3  # 12 units (names repeat, identities differ by order)
    records = [r.__class__(**{**r.__dict__, "unit": f"{r.unit}-{i}"}) for i, r in enumerate(records)]
    counts = {unit_id(r): r.n_stored for r in records}
    for epoch in range(2):
        parts = [split_units(records, counts, 3, rank, seed=0, epoch=epoch) for rank in range(3)]
        units = [u.unit for mine, _ in parts for u in mine]
        assert sorted(units) == sorted(r.unit for r in records) and len(set(units)) == len(units)
        stop = {n for _, n in parts}
        assert len(stop) == 1 and stop.pop() == min(sum(u.n_stored for u in mine) for mine, _ in parts)
        assert parts == [split_units(records, counts, 3, rank, seed=0, epoch=epoch) for rank in range(3)]
    first = lambda epoch: [u.unit for u in split_units(records, counts, 3, 0, 0, epoch)[0]]  # noqa: E731
    assert first(0) != first(1)


def test_sam_units_give_the_stored_logits_and_prompts(sam_store):
    store = open_store(str(sam_store))
    prompts = store.read_table("sam", "prompts").to_pylist()
    n = 0
    for record in store.commits("sam"):
        array = store.open_logits(record)
        for s in iter_sam_unit(store, record):
            rows = sorted((r for r in prompts if r["key"] == s.identity.key and r["round"] == 0), key=lambda r: r["prompt"])
            assert len(s.prompts.structure) == len(rows) and len(rows) > 0
            np.testing.assert_array_equal(s.logits(), decode_logits(array[s.sample_index, :len(rows)], "fp16"))
            np.testing.assert_allclose(s.prompts.iou, [r["iou"] for r in rows])
            chosen = choose_prompts(0, 0, s.identity, len(rows), 5)
            assert len(chosen) == min(5, len(rows)) and list(chosen) == sorted(set(chosen.tolist()))
            assert not np.array_equal(chosen, choose_prompts(0, 1, s.identity, len(rows), 5)) or len(rows) <= 5
            boxes, _ = s.prompts_1024(chosen)
            for b, i in zip(boxes, chosen):
                if rows[i]["box"] is not None:
                    np.testing.assert_allclose(b, sam_boxes(np.array([rows[i]["box"]]), s.original_hw)[0], rtol=1e-6)
            image, hw = s.sam_input()
            assert image.shape == (1024, 1024, 3) and max(hw) == 1024 and not image[hw[0]:, :].any()
            n += 1
    assert n == sum(r.n_stored for r in store.commits("sam"))


def test_held_out_split_is_stable_and_partitions_the_samples(clip_store):
    store = open_store(str(clip_store))
    keys = {"train": set(), "held_out": set()}
    for record in store.commits("clip"):
        for split in keys:
            keep = split_filter(0.2, split)
            got = {s.identity for s in iter_clip_unit(store, record, keep)}
            assert len(got) == count_kept(store, record, keep)
            keys[split] |= got
    assert not keys["train"] & keys["held_out"] and len(keys["train"]) + len(keys["held_out"]) == 100
    assert 8 <= len(keys["held_out"]) <= 35  # ~20% of 100
    assert all(is_held_out(s, 0.2) for s in keys["held_out"])


def test_variable_batches_are_the_same_on_every_rank_and_shrink_with_resolution(clip_store):
    records = open_store(str(clip_store)).commits("clip")
    counts = {unit_id(r): r.n_stored for r in records}
    sizes = batch_sizes(8, [224, 448])
    assert sizes == {224: 8, 448: 2}
    plans = [plan_epoch(records, counts, 2, rank, seed=0, epoch=3, sizes=sizes, tag="clip") for rank in range(2)]
    assert plans[0].batches == plans[1].batches and {r for r, _ in plans[0].batches} == {224, 448}
    assert all(n == sizes[r] for r, n in plans[0].batches)
    assert not {u.unit for u in plans[0].units} & {u.unit for u in plans[1].units}
    assert plans[0].samples <= min(sum(p.counts) for p in plans)


def _ids(loader):
    return [(b["batch"], b["resolution"], tuple(b["ids"])) for b in loader]


def test_batch_order_is_the_plans_for_any_worker_count_and_resumes_mid_epoch(clip_store):
    store = open_store(str(clip_store))
    records = store.commits("clip")
    keep = split_filter(0.2, "train")
    counts = {unit_id(r): count_kept(store, r, keep) for r in records}
    plan = plan_epoch(records, counts, 1, 0, seed=0, epoch=0, sizes=batch_sizes(8, [64, 128]), tag="clip")
    maker = ClipBatchMaker(store, keep, seed=0, view_choice="random", views=None)
    whole = _ids(make_loader(BatchStream(plan, 0, maker), workers=0))
    assert [b for b, _, _ in whole] == list(range(len(plan.batches))) and len(whole) >= 8
    assert [len(ids) for _, _, ids in whole] == [n for _, n in plan.batches]
    assert _ids(make_loader(BatchStream(plan, 0, maker), workers=2)) == whole
    assert _ids(make_loader(BatchStream(plan, 5, maker), workers=2)) == whole[5:]
    flat = [i.split("#")[0] for _, _, ids in whole for i in ids]
    assert len(flat) == len(set(flat))  # each sample at most once an epoch
    batch = next(iter(make_loader(BatchStream(plan, 0, maker), workers=0)))
    res = plan.batches[0][0]
    assert batch["images"].shape == (plan.batches[0][1], 3, res, res) and batch["images"].dtype == torch.uint8
    assert batch["targets"].shape == (plan.batches[0][1], 64)


def test_sam_batches_collate_prompts_over_images(sam_store):
    store = open_store(str(sam_store))
    records = store.commits("sam")
    keep = split_filter(0.01, "train")
    counts = {unit_id(r): count_kept(store, r, keep) for r in records}
    plan = plan_epoch(records, counts, 1, 0, seed=0, epoch=0, sizes={1024: 2}, tag="sam")
    batch = next(iter(make_loader(BatchStream(plan, 0, SamBatchMaker(store, keep, seed=0, prompts=3)), workers=0)))
    n = len(batch["prompts"].image_index)
    assert batch["images"].shape == (2, 3, 1024, 1024) and n == 6
    assert batch["prompts"].image_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch["target_logits"].shape == (6, 1, 256, 256) and batch["target_iou"].shape == (6, 1)
    assert batch["prompts"].points.shape[:2] == (6, 1) and batch["prompts"].boxes.shape == (6, 4)
