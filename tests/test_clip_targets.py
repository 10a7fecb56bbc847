"""CLIP targets: equality with open_clip, exact replay, exactly-once, refusal of other policies."""

import tarfile

import numpy as np
import open_clip
import pytest
import torch

from pipeline.config import ClipTeacherConfig
from pipeline.materialize.job import main as materialize
from pipeline.teachers import load_clip_teacher
from storage_schemas.models.clip_archs import TINY_CLIP_ARCH
from storage_schemas.pixels.decode import decode_image, draft_side_for
from storage_schemas.pixels.views import render_view, view_hash
from storage_schemas.plumbing.errors import ManifestMismatch
from storage_schemas.store import open_store
from support.job_configs import write_clip_job


def tar_images(corpus, shard: str) -> dict[str, bytes]:
    with tarfile.open(corpus / "clip" / f"{shard}.tar") as tar:
        return {m.name[:-4]: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")}


@pytest.fixture(scope="module")
def teacher(tiny_teachers):
    return load_clip_teacher(ClipTeacherConfig(arch=TINY_CLIP_ARCH, pretrained=tiny_teachers["clip"]))


@pytest.fixture(scope="module")
def views(clip_store):
    return open_store(str(clip_store)).read_table("clip", "views").to_pylist()


def test_view0_equals_open_clip_preprocess_val(views, teacher, sample_corpus):
    images = tar_images(sample_corpus, "00001")
    rows = [r for r in views if r["shard"] == "00001" and r["view"] == 0]
    assert len(rows) == 25
    for r in rows:
        decoded = decode_image(images[r["key"]], draft_side=draft_side_for(224)).image
        reference = teacher.preprocess_val(decoded)  # normalised float [3, 224, 224]
        pp = teacher.fingerprint.preprocess
        ref_u8 = (reference * torch.tensor(pp["std"]).view(3, 1, 1) + torch.tensor(pp["mean"]).view(3, 1, 1)) * 255
        ours = torch.from_numpy(render_view(decoded, r["crop"], False, 224).copy()).permute(2, 0, 1).float()
        diff = (ours - ref_u8).abs()
        # preprocess_val's pixels, but for the crop box's rounding to float32 (as stored)
        assert diff.max() <= 6.5, (r["key"], diff.max(), diff.mean())
        assert diff.mean() < 0.5, (r["key"], diff.max(), diff.mean())
        with torch.no_grad():
            want = torch.nn.functional.normalize(
                teacher.model.encode_image(teacher.preprocess_val(decoded)[None]), dim=-1
            )[0]
        got = torch.tensor(np.asarray(r["embedding"], np.float32))
        assert torch.dot(want, got).item() > 0.999, r["key"]
        assert abs(got.norm().item() - 1) < 2e-3


def test_random_views_replay_exactly(views, teacher, sample_corpus):
    images = {**tar_images(sample_corpus, "00002"), **tar_images(sample_corpus, "00003")}
    rows = [r for r in views if r["shard"] in ("00002", "00003") and r["view"] > 0][::5]
    assert len(rows) >= 25
    assert any(r["flip"] for r in rows)
    assert not all(r["flip"] for r in rows)
    pp = teacher.fingerprint.preprocess
    mean, std = torch.tensor(pp["mean"]).view(3, 1, 1), torch.tensor(pp["std"]).view(3, 1, 1)
    for r in rows:
        decoded = decode_image(images[r["key"]], draft_side=draft_side_for(224)).image
        pixels = render_view(decoded, r["crop"], r["flip"], 224)
        assert view_hash(pixels) == r["pixel_hash"]
        x = (torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255 - mean) / std
        want = teacher.encode_images(x[None])[0]
        assert torch.dot(want, torch.tensor(np.asarray(r["embedding"], np.float32))).item() > 0.999


def test_views_differ_and_counts_reconcile(views, clip_store, sample_corpus):
    store = open_store(str(clip_store))
    commits = store.commits("clip")
    assert [c.unit for c in commits] == ["00000", "00001", "00002", "00003"]
    for c in commits:
        keys = tar_images(sample_corpus, c.shard).keys()
        stored = {r["key"] for r in views if r["shard"] == c.shard}
        assert c.n_input == len(keys)
        assert c.n_errors == 0
        assert stored == set(keys)
        assert c.rows["views"] == 4 * c.n_stored
        assert c.input.size == (sample_corpus / "clip" / f"{c.shard}.tar").stat().st_size
    seen = [(r["shard"], r["key"], r["view"]) for r in views]
    assert len(seen) == len(set(seen)) == 400
    crops = {tuple(r["crop"]) for r in views if r["view"] > 0}
    assert len(crops) == 300, "every random view has its own crop"
    assert store.manifest("clip").must_match["policy"]["views"] == 4


def test_another_policy_or_teacher_is_refused(clip_store, sample_corpus, tiny_teachers, tmp_path):
    job = write_clip_job(tmp_path / "job.yaml", clip_store, sample_corpus, tiny_teachers)
    with pytest.raises(ManifestMismatch, match="policy.views: store has 4, job has 3"):
        materialize([str(job), "--set", "clip.views=3"])
    with pytest.raises(ManifestMismatch, match="teacher.weights_sha256"):
        materialize([str(job), "--set", "clip.teacher.pretrained=null", "--set", "clip.teacher.init_seed=5"])


def test_rerun_skips_committed_units(clip_store, sample_corpus, tiny_teachers, tmp_path):
    before = {c.unit: c.attempt_id for c in open_store(str(clip_store)).commits("clip")}
    job = write_clip_job(tmp_path / "job.yaml", clip_store, sample_corpus, tiny_teachers)
    assert materialize([str(job), "--report", str(tmp_path / "report.json")]) == 0
    after = {c.unit: c.attempt_id for c in open_store(str(clip_store)).commits("clip")}
    assert after == before
    import json

    report = json.loads((tmp_path / "report.json").read_text())["reports"][0]
    assert report["units_skipped"] == 4
    assert report["units_done"] == 0


def test_text_targets_equal_open_clip_zero_shot_classifier(
    clip_store, sample_corpus, tiny_teachers, tmp_path, teacher, capsys
):
    from pipeline.text_targets import main as text_targets

    job = write_clip_job(tmp_path / "job.yaml", clip_store, sample_corpus, tiny_teachers)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\nrocket\ncup of coffee\n")
    assert text_targets([str(job), "--name", "sample", "--classes", str(classes)]) == 0
    table = open_store(str(clip_store)).read_text("sample")
    assert table.column("class_name").to_pylist() == ["cat", "rocket", "cup of coffee"]
    got = torch.tensor(np.asarray(table.column("embedding").to_pylist(), np.float32))
    want = open_clip.build_zero_shot_classifier(
        teacher.model, teacher.tokenizer, ["cat", "rocket", "cup of coffee"], open_clip.OPENAI_IMAGENET_TEMPLATES
    ).T
    torch.testing.assert_close(got, want)
    with torch.no_grad():  # and by hand: mean of normalised template embeddings, renormalised
        e = teacher.model.encode_text(teacher.tokenizer([t("rocket") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]))
        manual = torch.nn.functional.normalize(torch.nn.functional.normalize(e, dim=-1).mean(0), dim=0)
    torch.testing.assert_close(got[1], manual, atol=1e-5, rtol=1e-5)
    assert table.schema.metadata[b"teacher_weights_sha256"].decode() == teacher.fingerprint.weights_sha256
    # Run again: the same classes, templates and teacher keep the table; other classes rebuild it.
    path = clip_store / "text" / "sample.parquet"
    before = path.stat().st_mtime_ns
    capsys.readouterr()
    assert text_targets([str(job), "--name", "sample", "--classes", str(classes)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert path.stat().st_mtime_ns == before
    classes.write_text("cat\nrocket\n")
    assert text_targets([str(job), "--name", "sample", "--classes", str(classes)]) == 0
    assert open_store(str(clip_store)).read_text("sample").column("class_name").to_pylist() == ["cat", "rocket"]


def test_read_rows_carry_the_encoded_image_and_little_else(sample_corpus, tmp_path):
    """What crosses the object store per sample: the JPEG as the tar holds it, plus a few hundred
    bytes of identity, not K rendered views."""
    import os

    import pyarrow as pa

    from pipeline.materialize.clip_targets import read_clip_shard
    from pipeline.materialize.sources import InputShard
    from pipeline.materialize.units import shard_task
    from storage_schemas.store.root import StoreRoot

    url = str(sample_corpus / "clip" / "00001.tar")
    shard = InputShard("s", "clip", url, "00001", os.path.getsize(url), None, {}, None)
    rows = list(read_clip_shard(shard_task(shard, [], StoreRoot(str(tmp_path)), write_index=False)))
    ok = [r for r in rows if r["status"] == "ok"]
    images = tar_images(sample_corpus, "00001")
    assert [r["image"] for r in ok] == [images[r["key"]] for r in ok]
    assert len(ok) == 25
    assert pa.Table.from_pylist(rows).nbytes <= 1.2 * sum(len(r["image"]) for r in ok)


def test_the_read_stage_is_capped_at_two_tasks_per_actor(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    """Concurrent read tasks are bounded by the actors, not the shard count (config or default)."""
    from pipeline.config import load_job_config
    from pipeline.materialize.clip_targets import ClipTeacherStage, read_clip_shard
    from pipeline.materialize.teacher_dataset import KindStages, read_concurrency, teacher_dataset

    job = write_clip_job(tmp_path / "job.yaml", tmp_path / "store", sample_corpus, tiny_teachers)
    cfg = load_job_config(str(job), ["ray.teacher_actors=3"])
    assert read_concurrency(cfg) == 6
    assert read_concurrency(load_job_config(str(job), ["ray.read_tasks=5"])) == 5
    tasks = [{"n": i} for i in range(40)]
    ds = teacher_dataset(cfg, False, tasks, KindStages(read_clip_shard, ClipTeacherStage, {}, 8, 1 << 20))
    read_op = ds._logical_plan.dag.input_dependencies[0]
    assert read_op.name == "FlatMap(read_clip_shard)"
    assert read_op.compute.size == 6
