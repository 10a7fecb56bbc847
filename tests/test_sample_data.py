import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.sample.corpus import CorpusSpec, build_sample_corpus


def test_clip_shards_read_with_webdataset(sample_corpus):
    urls = [str(sample_corpus / "clip" / f"{i:05d}.tar") for i in range(4)]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 100
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == 100
    for s in samples:
        assert isinstance(s["jpg"], Image.Image)
        assert s["jpg"].mode == "RGB"
        meta = s["json"]
        assert meta["key"] == s["__key__"]
        assert meta["status"] == "success"
        assert (meta["width"], meta["height"]) == s["jpg"].size
        assert s["txt"] == meta["caption"]
    sizes = {s["jpg"].size for s in samples}
    assert len(sizes) > 50, "crops should vary the image sizes"


def test_img2dataset_sidecars_reconcile_with_tars(sample_corpus):
    for i in range(4):
        stem = sample_corpus / "clip" / f"{i:05d}"
        table = pq.read_table(f"{stem}.parquet").to_pylist()
        stats = json.loads((stem.parent / f"{stem.name}_stats.json").read_text())
        with tarfile.open(f"{stem}.tar") as tar:
            jpgs = sorted(m.name[:-4] for m in tar.getmembers() if m.name.endswith(".jpg"))
        ok = sorted(r["key"] for r in table if r["status"] == "success")
        assert ok == jpgs
        assert stats["successes"] == len(jpgs)
        assert stats["count"] == len(table)
        assert any(r["status"] != "success" for r in table), "img2dataset parquets list failures too"


def test_sa1b_annotations_decode_with_pycocotools(sample_corpus):
    n_images = n_anns = 0
    for tar_path in sorted((sample_corpus / "sam").glob("sa_*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in [n for n in members if n.endswith(".json")]:
            doc = json.loads(members[name])
            img = Image.open(io.BytesIO(members[doc["image"]["file_name"]]))
            h, w = doc["image"]["height"], doc["image"]["width"]
            assert img.size == (w, h)
            ids = [a["id"] for a in doc["annotations"]]
            assert len(ids) == len(set(ids))
            assert 10 <= len(ids) <= 100
            for ann in doc["annotations"]:
                rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
                m = mask_utils.decode(rle)
                assert m.shape == (h, w)
                assert int(m.sum()) == ann["area"] > 0
                np.testing.assert_allclose(mask_utils.toBbox(rle), ann["bbox"])
                x, y = ann["point_coords"][0]
                assert m[int(y), int(x)] == 1, "SA-1B's point lies inside its mask"
                assert ann["crop_box"] == [0.0, 0.0, float(w), float(h)]
                assert 0 < ann["predicted_iou"] <= 1.1
                assert 0 < ann["stability_score"] <= 1
            n_images += 1
            n_anns += len(ids)
    assert n_images == 12
    assert n_anns > 500


def test_corpus_is_deterministic(sample_corpus, tmp_path):
    build_sample_corpus(str(tmp_path), CorpusSpec(clip_shards=1, sam_shards=1))
    for rel in ["clip/00000.tar", "clip/00000.parquet", "clip/00000_stats.json", "sam/sa_000000.tar"]:
        assert (tmp_path / rel).read_bytes() == (sample_corpus / rel).read_bytes(), rel


def test_a_rerun_keeps_an_unchanged_corpus_and_rebuilds_a_changed_one(tmp_path, capsys):
    from pipeline.sample.corpus import main

    assert main([str(tmp_path)]) == 0
    tar = tmp_path / "clip" / "00000.tar"
    before, original = tar.stat().st_mtime_ns, tar.read_bytes()
    assert main([str(tmp_path)]) == 0
    assert "present and unchanged" in capsys.readouterr().out
    assert tar.stat().st_mtime_ns == before
    tar.write_bytes(tar.read_bytes()[:-512])  # damaged: rebuilt byte for byte
    assert main([str(tmp_path)]) == 0
    assert "present and unchanged" not in capsys.readouterr().out
    assert tar.read_bytes() == original
