"""The student's data: the stored samples with the teacher's pixels, refusal of changed inputs, the
epoch plan (disjoint slots, equal steps, batches independent of the worker count, exact resume),
mixing, and the bytes a rank reads in an epoch against a budget written term by term."""

import os
import shutil

import numpy as np
import pytest
import torch

from pipeline.materialize.job import main as materialize
from storage_schemas.pixels.sam_transforms import sam_boxes
from storage_schemas.pixels.views import render_view, view_hash
from storage_schemas.plumbing.errors import ConfigError, StoreError
from storage_schemas.plumbing.identity import SampleId, is_held_out
from storage_schemas.store import open_store
from storage_schemas.store.mask_logits import decode_logits
from student.data.batches import BatchStream, ClipBatchMaker, Loader, SamBatchMaker, Stream, target_logits
from student.data.epoch_plan import batch_sizes, deal_slots, plan_epoch, stream_order, unit_id
from student.data.pieces import unit_pieces
from student.data.unit_samples import choose_prompts, choose_view, iter_clip_unit, iter_sam_unit, split_filter
from support.job_configs import write_clip_job


def test_units_read_whole_give_every_sample_and_the_teachers_pixels(clip_store):
    store = open_store(str(clip_store))
    seen = 0
    for record in store.commits("clip"):
        samples = list(iter_clip_unit(store, record))
        assert len(samples) == record.n_stored
        assert [s.sample_index for s in samples] == sorted(s.sample_index for s in samples)
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
    assert picks == [choose_view(0, e, s, 4, "random") for e in range(40)]
    assert set(picks) == {0, 1, 2, 3}


def test_slots_split_the_pieces_without_overlap_and_with_equal_loads(clip_store):
    store = open_store(str(clip_store))
    units = [unit_pieces(store, r, split_filter(0.2, "train")) for r in store.commits("clip")]
    assert sum(len(u.pieces) for u in units) >= 8
    biggest = max(p.count for u in units for p in u.pieces)
    for epoch in range(2):
        slots = deal_slots(units, 6, seed=0, epoch=epoch)
        taken = [(unit_id(su.unit.record), j) for slot in slots for su in slot for j in su.pieces]
        assert len(taken) == len(set(taken)) == sum(1 for u in units for p in u.pieces if p.count)
        loads = [sum(su.count for su in slot) for slot in slots]
        assert sum(loads) == sum(u.count for u in units)
        assert max(loads) - min(loads) <= 2 * biggest
        assert slots == deal_slots(units, 6, seed=0, epoch=epoch)
    plans = [
        plan_epoch(units, world_size=3, rank=rank, streams=2, seed=0, epoch=0, sizes={64: 4}, tag="clip")
        for rank in range(3)
    ]
    assert len({tuple(p.batches) for p in plans}) == 1  # equal steps on every rank
    assert plans[0].batches
    for p in plans:
        for s in range(2):
            assert p.stream_samples(s) <= sum(su.count for su in p.streams[s])
    first = lambda epoch: deal_slots(units, 6, 0, epoch)[0]  # noqa: E731
    assert first(0) != first(1)


def test_sam_units_give_the_stored_logits_and_prompts(sam_store):
    store = open_store(str(sam_store))
    prompts = store.read_table("sam", "prompts").to_pylist()
    n = 0
    for record in store.commits("sam"):
        array = store.open_logits(record)
        for s in iter_sam_unit(store, record):
            rows = sorted(
                (r for r in prompts if r["key"] == s.identity.key and r["round"] == 0), key=lambda r: r["prompt"]
            )
            assert len(s.prompts.structure) == len(rows)
            assert len(rows) > 0
            np.testing.assert_array_equal(s.logits(), decode_logits(array[s.sample_index, : len(rows)], "fp16"))
            np.testing.assert_allclose(s.prompts.iou, [r["iou"] for r in rows])
            chosen = choose_prompts(0, 0, s.identity, len(rows), 5)
            assert len(chosen) == min(5, len(rows))
            assert list(chosen) == sorted(set(chosen.tolist()))
            assert not np.array_equal(chosen, choose_prompts(0, 1, s.identity, len(rows), 5)) or len(rows) <= 5
            boxes, _ = s.prompts_1024(chosen)
            for b, i in zip(boxes, chosen):
                if rows[i]["box"] is not None:
                    np.testing.assert_allclose(b, sam_boxes(np.array([rows[i]["box"]]), s.original_hw)[0], rtol=1e-6)
            image, hw = s.sam_input()
            assert image.shape == (1024, 1024, 3)
            assert max(hw) == 1024
            assert not image[hw[0] :, :].any()
            n += 1
    assert n == sum(r.n_stored for r in store.commits("sam"))


def test_held_out_split_is_stable_and_partitions_the_samples(clip_store):
    store = open_store(str(clip_store))
    keys = {"train": set(), "held_out": set()}
    for record in store.commits("clip"):
        for split in keys:
            keep = split_filter(0.2, split)
            got = {s.identity for s in iter_clip_unit(store, record, keep)}
            assert len(got) == unit_pieces(store, record, keep).count
            keys[split] |= got
    assert not keys["train"] & keys["held_out"]
    assert len(keys["train"]) + len(keys["held_out"]) == 100
    assert 8 <= len(keys["held_out"]) <= 35  # ~20% of 100
    assert all(is_held_out(s, 0.2) for s in keys["held_out"])


def test_variable_batches_are_the_same_on_every_rank_and_shrink_with_resolution(clip_store):
    store = open_store(str(clip_store))
    units = [unit_pieces(store, r, split_filter(0.2, "train")) for r in store.commits("clip")]
    sizes = batch_sizes(8, [224, 448])
    assert sizes == {224: 8, 448: 2}
    plans = [
        plan_epoch(units, world_size=2, rank=rank, streams=2, seed=0, epoch=3, sizes=sizes, tag="clip")
        for rank in range(2)
    ]
    assert plans[0].batches == plans[1].batches
    assert {r for r, _ in plans[0].batches} == {224, 448}
    assert all(n == sizes[r] for r, n in plans[0].batches)
    pieces = [{(unit_id(su.unit.record), j) for st in p.streams for su in st for j in su.pieces} for p in plans]
    assert not pieces[0] & pieces[1]


def _ids(loader):
    return [(b["batch"], b["resolution"], tuple(b["ids"])) for b in loader]


def _clip_plan(store, keep, streams=2, epoch=0, world=1, rank=0, sizes=None):
    units = [unit_pieces(store, r, keep) for r in store.commits("clip")]
    return plan_epoch(
        units,
        world_size=world,
        rank=rank,
        streams=streams,
        seed=0,
        epoch=epoch,
        sizes=sizes or batch_sizes(8, [64, 128]),
        tag="clip",
    )


def test_batch_order_is_the_plans_for_any_worker_count_and_resumes_mid_epoch(clip_store):
    store = open_store(str(clip_store))
    keep = split_filter(0.2, "train")
    plan = _clip_plan(store, keep)
    maker = ClipBatchMaker(store=store, keep=keep, seed=0, view_choice="random", views=None, read_run=4, mix_window=8)
    whole = _ids(Loader(BatchStream(plan, 0, maker), workers=0))
    assert [b for b, _, _ in whole] == list(range(len(plan.batches)))
    assert len(whole) >= 8
    assert [len(ids) for _, _, ids in whole] == [n for _, n in plan.batches]
    assert _ids(Loader(BatchStream(plan, 0, maker), workers=2)) == whole
    assert _ids(Loader(BatchStream(plan, 5, maker), workers=2)) == whole[5:]
    assert _ids(Loader(BatchStream(plan, 3, maker), workers=1)) == whole[3:]
    flat = [i.split("#")[0] for _, _, ids in whole for i in ids]
    assert len(flat) == len(set(flat))  # each sample at most once an epoch
    batch = next(iter(Loader(BatchStream(plan, 0, maker), workers=0)))
    res = plan.batches[0][0]
    assert batch["images"].shape == (plan.batches[0][1], 3, res, res)
    assert batch["images"].dtype == torch.uint8
    assert batch["targets"].shape == (plan.batches[0][1], 64)


def test_a_store_error_in_a_loader_worker_reaches_the_trainer_as_its_one_line(clip_store):
    """A unit whose input changed after the run planned it: the worker's StoreError is raised in
    the trainer process as itself, the same line as without workers, not inside a worker traceback."""
    from dataclasses import replace

    store = open_store(str(clip_store))
    keep = split_filter(0.2, "train")
    units = [unit_pieces(store, r, keep) for r in store.commits("clip")]
    changed = replace(units[0].record, input=replace(units[0].record.input, size=units[0].record.input.size + 1))
    units[0] = replace(units[0], record=changed)
    plan = plan_epoch(units, world_size=1, rank=0, streams=1, seed=0, epoch=0, sizes={64: 4}, tag="clip")
    maker = ClipBatchMaker(store=store, keep=keep, seed=0, view_choice="random", views=None, read_run=4, mix_window=8)
    lines = []
    for workers in (0, 1):
        with pytest.raises(StoreError, match=r"^input .* changed since unit") as e:
            list(Loader(BatchStream(plan, 0, maker), workers=workers))
        lines.append(str(e.value))
    assert lines[0] == lines[1]
    assert "\n" not in lines[1]
    assert type(e.value) is StoreError


def test_a_shard_without_a_stored_tar_index_is_scanned_once_and_its_index_stored(clip_store, tmp_path, caplog):
    """A store made before tar indexes: the first read of a shard scans its tar and stores the index,
    so a later loader process (this one with its scans forgotten) reads by range, scanning nothing."""
    import logging

    from storage_schemas.store import unit_tar
    from storage_schemas.store.tar_index import read_tar_index

    root = tmp_path / "store"
    shutil.copytree(clip_store, root)
    shutil.rmtree(root / "_tar_index")
    store, keep = open_store(str(root)), split_filter(0.2, "train")
    records = list(store.commits("clip"))
    want = [(s.identity, s.data) for r in records for s in iter_clip_unit(open_store(str(clip_store)), r, keep)]
    reads = []
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, unit_tar.__name__):
            reads.append([(s.identity, s.data) for r in records for s in iter_clip_unit(store, r, keep)])
        scans = [m for m in caplog.messages if "no tar index in the store" in m]
        assert len(scans) == (len({r.input.url for r in records}) if len(reads) == 1 else 0), scans
        unit_tar._scanned.clear()  # a new loader process
    assert reads[0] == reads[1] == want
    assert want
    for r in records:
        assert read_tar_index(store.storage, "clip", r.source, r.shard, r.input.size, r.input.etag) is not None


def test_batches_carry_the_stored_view_their_id_names(clip_store):
    store = open_store(str(clip_store))
    keep = split_filter(0.2, "train")
    stored = {s.identity: s for r in store.commits("clip") for s in iter_clip_unit(store, r, keep)}
    maker = ClipBatchMaker(store=store, keep=keep, seed=0, view_choice="random", views=3, read_run=4, mix_window=8)
    plan = _clip_plan(store, keep, epoch=1, sizes={64: 4})
    for b in Loader(BatchStream(plan, 0, maker), workers=0):
        for i, target in zip(b["ids"], b["targets"]):
            key, view = i.split("#")
            s = stored[SampleId(*key.split("/"))]
            assert int(view) < 3
            assert int(view) == choose_view(0, 1, s.identity, 3, "random")
            np.testing.assert_array_equal(target.numpy(), s.embeddings[int(view)].astype(np.float32))


def test_every_batch_mixes_the_units_of_its_stream(clip_store):
    store = open_store(str(clip_store))
    keep = split_filter(0.2, "train")
    plan = _clip_plan(store, keep, streams=1, sizes={64: 8})
    units = len(plan.streams[0])
    maker = ClipBatchMaker(store=store, keep=keep, seed=0, view_choice="random", views=None, read_run=2, mix_window=8)
    batches = list(Loader(BatchStream(plan, 0, maker), workers=0))
    per_batch = [len({i.split("/")[1] for i in b["ids"]}) for b in batches]
    assert units == 4, per_batch
    assert len(batches) >= 8, per_batch
    assert min(per_batch) >= 4, per_batch


def synthetic_units(n_units: int, samples: int, piece: int):
    """UnitPieces of a store that is never read: the plan needs only their counts."""
    from storage_schemas.store.commit import CommitRecord, InputRef
    from student.data.epoch_plan import Piece, UnitPieces

    def record(u):
        return CommitRecord(
            "clip",
            "synthetic",
            f"{u:05d}",
            f"{u:05d}",
            InputRef(f"/x/{u:05d}.tar", 1),
            samples,
            samples,
            0,
            {},
            [],
            "p",
            [],
        )

    return [UnitPieces(record(u), tuple(Piece((j,), piece) for j in range(samples // piece))) for u in range(n_units)]


def test_an_epoch_whose_deal_leaves_a_stream_short_of_a_batch_is_skipped_not_fatal():
    """The demo's SAM store: a unit of 4 training images and two of 1, 2 streams, batches of 2. Some
    deals give a stream a single image: that epoch has no batches, and the Stream goes on."""
    units = [synthetic_units(1, samples=4, piece=4)[0], *synthetic_units(3, samples=1, piece=1)[1:]]
    plans = [
        plan_epoch(units, world_size=1, rank=0, streams=2, seed=0, epoch=e, sizes={1024: 2}, tag="sam")
        for e in range(12)
    ]
    empty = [e for e, p in enumerate(plans) if not p.batches]
    assert empty, "the case this test is about did not come up"
    assert len(empty) < len(plans), "the case this test is about did not come up"
    stream = Stream(
        "sam", units, None, sizes={1024: 2}, seed=0, world_size=1, rank=0, streams=2, workers=0, epoch=empty[0]
    )
    assert stream.epoch == next(e for e in range(empty[0], 12) if plans[e].batches)
    assert stream.batch == 0
    with pytest.raises(StoreError, match="make no batch of 8 in 64 epochs"):
        Stream("sam", units, None, sizes={1024: 8}, seed=0, world_size=1, rank=0, streams=2, workers=0)
    with pytest.raises(StoreError, match="3 pieces cannot feed 2 process.*; lower data.streams$"):  # every epoch
        plan_epoch(units, world_size=2, rank=0, streams=2, seed=0, epoch=0, sizes={1024: 1}, tag="sam")
    with pytest.raises(StoreError, match="cannot feed 4 process.*; use fewer processes or add data$"):
        plan_epoch(units, world_size=4, rank=0, streams=1, seed=0, epoch=0, sizes={1024: 1}, tag="sam")


def test_a_64_unit_store_gives_batches_of_at_least_16_units():
    units = synthetic_units(64, samples=200, piece=40)
    plan = plan_epoch(units, world_size=1, rank=0, streams=2, seed=0, epoch=0, sizes={224: 32}, tag="clip")
    for s in range(2):
        order = stream_order(plan, s, read_run=2, mix_window=64)
        uid = np.array([plan.streams[s][u].unit.record.unit for u in order.unit])
        n = plan.stream_samples(s)
        per_batch = [len(set(uid[a : a + 32])) for a in range(0, n, 32)]
        assert len(plan.streams[s]) == 32, min(per_batch)
        assert len(per_batch) >= 190, min(per_batch)
        assert min(per_batch) >= 16, min(per_batch)
        picked = set(zip(order.unit.tolist(), order.piece.tolist(), order.ordinal.tolist()))
        assert len(picked) == len(order) == sum(su.count for su in plan.streams[s])  # each sample once


def test_sam_batches_collate_prompts_over_images(sam_store):
    store = open_store(str(sam_store))
    keep = split_filter(0.01, "train")
    units = [unit_pieces(store, r, keep) for r in store.commits("sam")]
    plan = plan_epoch(units, world_size=1, rank=0, streams=1, seed=0, epoch=0, sizes={1024: 2}, tag="sam")
    maker = SamBatchMaker(store=store, keep=keep, seed=0, prompts=3)
    batch = next(iter(Loader(BatchStream(plan, 0, maker), workers=0)))
    n = len(batch["prompts"].image_index)
    assert batch["images"].shape == (2, 3, 1024, 1024)
    assert n == 6
    assert batch["prompts"].image_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch["stored_logits"].shape == (6, 1, 256, 256)
    assert batch["target_iou"].shape == (6, 1)
    assert batch["prompts"].points.shape[:2] == (6, 1)
    assert batch["prompts"].boxes.shape == (6, 4)
    stored = {s.identity: s for r in store.commits("sam") for s in iter_sam_unit(store, r, keep)}
    for b, key in enumerate(batch["ids"]):
        s = stored[SampleId(*key.split("/"))]
        chosen = choose_prompts(0, 0, s.identity, len(s.prompts.structure), 3)
        np.testing.assert_array_equal(target_logits(batch, "cpu")[3 * b : 3 * b + 3].numpy(), s.logits()[chosen])


def _union(ranges):
    """Total bytes of (offset, n) ranges, and whether any two overlap."""
    ranges = sorted(ranges)
    overlap = any(a2 < a1 + n1 for (a1, n1), (a2, _) in zip(ranges, ranges[1:]))
    return sum(n for _, n in ranges), overlap


def _tar_members(path):
    """(member name, header offset, data offset, data size) of every member of a tar."""
    import tarfile

    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data, m.size) for m in tar.getmembers()]


def test_a_rank_reads_what_it_trains_on_once_against_a_budget_term_by_term(clip_store, tmp_path):
    """Rank 0 of 2, for 1 and 2 loader workers: every byte read is a trained sample's member, a tar
    header, a part file of a piece it trains on (whole, once), a tar index, or a member of a sample
    it does not train on lying in a gap between two it does; nothing is read twice."""
    from storage_schemas.pixels.tar_samples import IMAGE_EXTENSIONS
    from storage_schemas.plumbing.counting_fs import counting_reads, read_log
    from storage_schemas.store import table_files
    from storage_schemas.store.tar_index import HOLE_BYTES

    ledgers = []
    for workers in (1, 2):
        log = tmp_path / f"reads-{workers}.tsv"
        with counting_reads(log):
            store = open_store(str(clip_store))
            keep = split_filter(0.2, "train")
            plan = _clip_plan(store, keep, streams=2, world=2, rank=0, sizes={64: 4})
            maker = ClipBatchMaker(
                store=store, keep=keep, seed=0, view_choice="random", views=None, read_run=4, mix_window=8
            )
            log.unlink(missing_ok=True)  # the plan's reads (once per run, not per epoch) are not the epoch's
            batches = list(Loader(BatchStream(plan, 0, maker), workers=workers))
        reads = read_log(log)
        trained = {i.split("#")[0] for b in batches for i in b["ids"]}
        assert len(trained) == plan.samples == sum(len(b["ids"]) for b in batches)

        # The pieces the epoch reaches: those of the first stream_samples samples of each stream.
        parts, records = set(), {}
        for s in range(2):
            order = stream_order(plan, s, read_run=4, mix_window=8)
            n = plan.stream_samples(s)
            for u, j in set(zip(order.unit[:n].tolist(), order.piece[:n].tolist())):
                su = plan.streams[s][u]
                files = table_files(su.unit.record, "views")
                parts |= {str(clip_store / files[k]) for k in su.unit.pieces[j].parts}
                records[su.unit.record.input.url] = su.unit.record
        by_path: dict[str, list] = {}
        for _, path, at, n in reads:
            if n:
                by_path.setdefault(path, []).append((at, n))
        terms = dict.fromkeys(
            [
                "trained images",
                "trained .txt/.json",
                "tar headers",
                "targets (part files)",
                "tar indexes",
                "held out",
                "error samples",
                "not trained this epoch",
            ],
            0,
        )
        for path, ranges in by_path.items():
            total, overlap = _union(ranges)
            assert not overlap, (f"{path} read twice", sorted(ranges), [r for r in reads if r[1] == path])
            if path in parts:
                assert total == os.path.getsize(path), f"{path} read in part"
                terms["targets (part files)"] += total
            elif "/_tar_index/" in path:
                size = os.path.getsize(path)
                assert total % size == 0, path
                assert total // size <= 2, path  # once per stream of the rank at most
                terms["tar indexes"] += total
            else:
                record = records.get(path)
                assert record is not None, f"read {path}, which rank 0 does not train on"
                stored = {s.identity.key for s in iter_clip_unit(store, record)}
                members = _tar_members(path)
                images = {}
                for name, header, data, size in members:
                    key, ext = name.split(".", 1)
                    ident = SampleId(record.source, record.shard, key)
                    if "/".join(ident) in trained:
                        kind = "trained images" if ext in IMAGE_EXTENSIONS else "trained .txt/.json"
                        if ext in IMAGE_EXTENSIONS:
                            images[key] = (data, size)
                    elif is_held_out(ident, 0.2):
                        kind = "held out"
                    elif key not in stored:
                        kind = "error samples"
                    else:
                        kind = "not trained this epoch"
                    for a, n in ranges:
                        terms["tar headers"] += max(0, min(a + n, data) - max(a, header))
                        terms[kind] += max(0, min(a + n, data + size) - max(a, data))
                        pad_end = data + -(-size // 512) * 512
                        terms["tar headers"] += max(0, min(a + n, pad_end) - max(a, data + size))
                wanted = sorted(images.values())
                for a, n in ranges:  # a request starts and ends on wanted images, its gaps at most HOLE_BYTES
                    inside = [(d, s) for d, s in wanted if a <= d and d + s <= a + n]
                    assert inside, (path, a, n)
                    assert inside[0][0] == a, (path, a, n)
                    assert inside[-1][0] + inside[-1][1] == a + n, (path, a, n)
                    assert all(d2 - (d1 + s1) <= HOLE_BYTES for (d1, s1), (d2, _) in zip(inside, inside[1:]))
                assert all(any(a <= d and d + s <= a + n for a, n in ranges) for d, s in wanted)
                assert len(wanted) == sum(1 for i in trained if i.startswith(f"{record.source}/{record.shard}/"))
        assert sum(terms.values()) == sum(n for _, _, _, n in reads), "bytes read that no term accounts for"
        assert terms["trained images"] > 0
        assert terms["targets (part files)"] > 0
        ledgers.append({k: v for k, v in terms.items() if k != "tar indexes"})
    assert ledgers[0] == ledgers[1], ledgers  # the worker count changes nothing read but the indexes


def test_a_resume_with_another_plan_shape_says_so_in_one_line():
    from student.trainer import TrainState, plan_shape_warning

    saved = TrainState(clip_epoch=2, clip_batch=7, world_size=2, streams=8)
    assert plan_shape_warning(saved, "ckpt/step_9", 2, 8) is None
    assert plan_shape_warning(TrainState(), "ckpt/step_9", 4, 2) is None  # a checkpoint from before streams
    for world, streams in ((1, 8), (2, 4)):
        line = plan_shape_warning(saved, "ckpt/step_9", world, streams)
        assert "\n" not in line
        assert "2 process(es) x 8 streams" in line
        assert f"{world} x {streams}" in line
        assert "epoch 2 batch 7" in line


def test_a_resume_with_another_data_order_says_so_and_another_held_out_is_refused():
    from student.config import load_train_config
    from student.trainer import TrainState, data_order, plan_shape_warning

    def order(*overrides):
        return data_order(load_train_config("student/configs/tiny.yaml", list(overrides)))

    saved = TrainState(clip_epoch=1, clip_batch=3, world_size=1, streams=2, data_order=order())
    assert plan_shape_warning(saved, "ckpt/step_9", 1, 2, order("data.val_clip_samples=8")) is None  # not the order
    assert plan_shape_warning(TrainState(world_size=1, streams=2), "ckpt/step_9", 1, 2, order("seed=5")) is None
    for override, change in (
        ("data.clip.read_run=3", "data.clip.read_run 16, now 3"),
        ("seed=5", "seed 0, now 5"),
        ("stages.0.resolutions=[32]", "now [[32], [224, 448], [224, 448]]"),
    ):
        line = plan_shape_warning(saved, "ckpt/step_9", 1, 2, order(override))
        assert change in line, line
        assert "\n" not in line, line
        assert "epoch 1 batch 3" in line, line
    with pytest.raises(ConfigError, match=r"^data.held_out: ckpt/step_9 was trained holding out 0.2, this run 0.3"):
        plan_shape_warning(saved, "ckpt/step_9", 1, 2, order("data.held_out=0.3"))
