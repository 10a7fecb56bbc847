"""SAM targets: equality with SamPredictor, the compact encoding's error, errors and exactly-once."""

import io
import json
import signal
import tarfile

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from segment_anything import SamPredictor

from pipeline.config import SamTeacherConfig
from pipeline.materialize.job import main as materialize
from pipeline.teachers import load_sam_teacher
from storage_schemas.pixels.decode import decode_image
from storage_schemas.store import open_store
from storage_schemas.store.mask_logits import UINT8_MAX_PROB_ERROR, decode_logits
from support.commands import run_in_process, run_module
from support.job_configs import sam_shards, write_sam_job
from support.store_checks import assert_sound


def sa1b_members(corpus, shard):
    with tarfile.open(corpus / "sam" / f"{shard}.tar") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.fixture(scope="module")
def stored(sam_store):
    store = open_store(str(sam_store))
    prompts = store.read_table("sam", "prompts").to_pylist()
    logits = {}
    for c in store.commits("sam"):
        arr = store.open_logits(c)
        images = store.read_unit_table(c, "images").to_pylist()
        for img in images:
            logits[(c.shard, img["key"])] = decode_logits(arr[img["sample_index"]], "fp16")
    return store, prompts, logits


def test_stored_logits_equal_sam_predictor(stored, sample_corpus, tiny_teachers):
    store, prompts, logits = stored
    predictor = SamPredictor(load_sam_teacher(SamTeacherConfig(model="tiny", checkpoint=tiny_teachers["sam"])).sam)
    members = sa1b_members(sample_corpus, "sa_000000")
    checked = {"box": 0, "points": 0, "box+points": 0}
    for key in ["sa_1", "sa_2", "sa_3"]:
        predictor.set_image(np.asarray(decode_image(members[f"{key}.jpg"]).image))
        for p in [p for p in prompts if p["key"] == key and p["round"] == 0][:9]:
            kwargs = {}
            if p["box"] is not None:
                kwargs["box"] = np.array(p["box"])
            if p["point_coords"]:
                kwargs["point_coords"] = np.array(p["point_coords"])
                kwargs["point_labels"] = np.array(p["point_labels"])
            _, iou, low = predictor.predict(multimask_output=False, return_logits=True, **kwargs)
            got = logits[("sa_000000", key)][p["slot"], 0]
            assert np.abs(got - low[0]).max() <= 2e-3 * max(1.0, np.abs(low).max()), (key, p["structure"])
            np.testing.assert_allclose(p["iou"], iou, atol=1e-5)
            # Round 1: the round-0 logits fed back as the mask prompt, with the same box/points.
            _, iou1, low1 = predictor.predict(multimask_output=False, return_logits=True, mask_input=low, **kwargs)
            got1 = logits[("sa_000000", key)][p["slot"] + 16, 0]
            assert np.abs(got1 - low1[0]).max() <= 2e-3 * max(1.0, np.abs(low1).max())
            checked[p["structure"]] += 1
    assert all(n > 0 for n in checked.values()), checked


def test_prompts_come_from_the_annotations(stored, sample_corpus):
    store, prompts, logits = stored
    images = store.read_table("sam", "images").to_pylist()
    assert len(images) == 12
    assert all(i["n_prompts"] == min(16, i["n_annotations"]) for i in images)
    assert any(i["n_prompts"] < 16 for i in images), "an image with fewer annotations than P uses what it has"
    members = {**sa1b_members(sample_corpus, "sa_000000"), **sa1b_members(sample_corpus, "sa_000001")}
    for img in images[:4]:
        doc = json.loads(members[f"{img['key']}.json"])
        anns = {a["id"]: a for a in doc["annotations"]}
        assert (img["width"], img["height"]) == (doc["image"]["width"], doc["image"]["height"])
        mine = [p for p in prompts if p["key"] == img["key"] and p["round"] == 0]
        assert len({p["annotation_id"] for p in mine}) == img["n_prompts"]
        for p in mine:
            a = anns[p["annotation_id"]]
            if p["box"] is not None:
                x0, y0, x1, y1 = p["box"]
                assert 0 <= x0 < x1 <= img["width"]
                assert 0 <= y0 < y1 <= img["height"]
            m = mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
            for x, y in p["point_coords"]:
                assert m[int(y), int(x)] == 1
        arr = logits[(store.commits("sam")[0].shard, img["key"])] if img["key"] in ("sa_1", "sa_2") else None
        if arr is not None:
            assert arr.shape == (32, 1, 256, 256)
            assert np.isfinite(arr).all()
    assert {p["structure"] for p in prompts} == {"box", "points", "box+points"}
    commits = store.commits("sam")
    assert [c.unit for c in commits] == ["sa_000000.p000", "sa_000000.p001", "sa_000001.p000", "sa_000001.p001"]
    assert sum(c.n_stored for c in commits) == 12
    assert sum(c.rows["prompts"] for c in commits) == 2 * sum(i["n_prompts"] for i in images) == len(prompts)


def test_uint8_encoding_stays_within_its_documented_error(stored, sample_corpus, tiny_teachers, tmp_path):
    store, _, fp16_logits = stored
    job = write_sam_job(
        tmp_path / "job.yaml",
        tmp_path / "store",
        f"{sample_corpus}/sam/sa_000001.tar",
        tiny_teachers,
        precision="uint8_sigmoid",
    )
    assert materialize([str(job)]) == 0
    u8 = open_store(str(tmp_path / "store"))

    def sig(x):
        return 1 / (1 + np.exp(-x.astype(np.float64)))

    worst = 0.0
    for c in u8.commits("sam"):
        arr = u8.open_logits(c)
        assert arr.dtype == np.uint8
        for img in u8.read_unit_table(c, "images").to_pylist():
            n = img["n_prompts"]
            got = decode_logits(arr[img["sample_index"]], "uint8_sigmoid")
            ref = fp16_logits[("sa_000001", img["key"])]
            for r in range(2):  # the slots of real prompts, both rounds
                live = slice(16 * r, 16 * r + n)
                assert np.isfinite(ref[live]).all()
                worst = max(worst, float(np.abs(sig(got[live]) - sig(ref[live])).max()))
            assert (arr[img["sample_index"]][n:16] == 0).all()  # padding holds the fill value
    assert 0 < worst <= UINT8_MAX_PROB_ERROR + 1e-4  # + fp16's own error on the reference


def dirty_sa1b_tar(path, corpus):
    members = sa1b_members(corpus, "sa_000000")
    doc = json.loads(members["sa_1.json"])
    partly_bad = json.loads(members["sa_2.json"])
    partly_bad["annotations"][0]["segmentation"]["counts"] = 17  # malformed
    partly_bad["annotations"][1]["bbox"] = [5.0, 5.0, 0.0, 3.0]  # zero-size box
    empty = {
        "size": [doc["image"]["height"], doc["image"]["width"]],
        "counts": mask_utils.encode(np.zeros((doc["image"]["height"], doc["image"]["width"]), np.uint8, order="F"))[
            "counts"
        ].decode(),
    }
    useless = dict(doc, annotations=[dict(a, segmentation=empty) for a in doc["annotations"][:3]])
    entries = [
        ("sa_1.jpg", members["sa_1.jpg"]),
        ("sa_1.json", members["sa_1.json"]),  # good
        ("sa_2.jpg", members["sa_2.jpg"]),
        ("sa_2.json", json.dumps(partly_bad).encode()),  # good, 2 skipped
        ("sa_3.jpg", members["sa_3.jpg"]),  # no json
        ("sa_4.json", members["sa_4.json"]),  # no image
        ("sa_5.jpg", members["sa_5.jpg"]),
        ("sa_5.json", b'{"image": {"width": 3'),  # bad json
        ("sa_6.jpg", members["sa_6.jpg"][:2000]),
        ("sa_6.json", members["sa_6.json"]),  # truncated image
        ("sa_7.jpg", members["sa_1.jpg"]),
        ("sa_7.json", json.dumps(useless).encode()),  # no usable annotation
    ]
    with tarfile.open(path, "w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_samples_are_errors_and_skipped_annotations_are_counted(
    tmp_path, sample_corpus, tiny_teachers, ray_cluster
):
    dirty_sa1b_tar(tmp_path / "sa_000009.tar", sample_corpus)
    job = write_sam_job(tmp_path / "job.yaml", tmp_path / "store", tmp_path / "sa_000009.tar", tiny_teachers)
    assert materialize([str(job), "--set", "sources.0.unit_size=100"]) == 0
    store = open_store(str(tmp_path / "store"))
    (commit,) = store.commits("sam")
    errors = {r["key"]: r["reason"] for r in store.read_table("sam", "errors").to_pylist()}
    assert errors == {
        "sa_3": "missing_json",
        "sa_4": "missing_image",
        "sa_5": "bad_json",
        "sa_6": "truncated",
        "sa_7": "no_usable_annotation",
    }
    images = {r["key"]: r for r in store.read_table("sam", "images").to_pylist()}
    assert set(images) == {"sa_1", "sa_2"}
    assert commit.n_input == 7
    assert commit.n_stored == 2
    skipped = {s["reason"]: s["count"] for s in images["sa_2"]["skipped_annotations"]}
    assert skipped == {"malformed": 1, "zero_size_box": 1}


@pytest.mark.slow
def test_kill_before_commit_then_rerun_is_exactly_once(tmp_path, sample_corpus, tiny_teachers, ray_cluster, capsys):
    store = tmp_path / "store"
    job = write_sam_job(tmp_path / "job.yaml", store, sam_shards(sample_corpus), tiny_teachers)
    killed = run_module("pipeline.materialize", str(job), env={"SAMCLIP_KILL_AT": "after_data_before_commit:3"})
    assert killed.returncode == -signal.SIGKILL
    before = {c.unit: c.attempt_id for c in open_store(str(store)).commits("sam")}
    assert len(before) == 2
    rerun = run_in_process(materialize, [job], capsys)  # the rerun in this process: no second start-up
    assert rerun.status == 0, rerun.err[-2000:]
    s = open_store(str(store))
    commits = s.commits("sam")
    assert len(commits) == 4
    assert all(before[c.unit] == c.attempt_id for c in commits if c.unit in before)
    images = s.read_table("sam", "images").to_pylist()
    keys = [(r["shard"], r["key"]) for r in images]
    assert len(keys) == len(set(keys)) == 12
    for c in commits:  # every chunk the record lists is there, and the array has one row per image
        assert s.open_logits(c).shape[0] == c.n_stored
        assert all((store / f.path).stat().st_size == f.size for f in c.files)
    assert_sound(store)


def test_quantisation_on_the_device_is_the_stored_rule():
    """The teacher encodes logits where they are (torch); tools and tests use numpy: one rule."""
    import torch

    from storage_schemas.store.mask_logits import encode_logits

    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(4, 1, 256, 256)) * 8).astype(np.float32)
    logits[0, 0, 0, :4] = [-80.0, 80.0, 0.0, 1e6]
    for precision in ("fp16", "uint8_sigmoid"):
        on_device = encode_logits(torch.from_numpy(logits), precision).numpy()
        reference = encode_logits(logits, precision)
        assert on_device.dtype == reference.dtype
        if precision == "fp16":
            assert np.array_equal(on_device, reference)
        else:  # sigmoid's last float32 bit can land a value on the other side of a .5: one level at most
            diff = np.abs(on_device.astype(int) - reference.astype(int))
            assert diff.max() <= 1
            assert (diff > 0).mean() < 1e-4
