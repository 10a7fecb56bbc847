"""Evaluation and inference: zero-shot classification equal to open_clip's, mIoU by hand, the
SAM head equal to SamPredictor (mask prompts included), one backbone pass for the refinement, and
the evaluate / visualize / inspect commands on the sample sets."""

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import skimage.data
import torch
from PIL import Image
from segment_anything import SamPredictor

from pipeline.config import ClipTeacherConfig, SamTeacherConfig
from pipeline.sample.corpus import write_tar
from pipeline.teachers import load_clip_teacher, load_sam_teacher
from pipeline.teachers.tiny import TINY_CLIP_ARCH
from pipeline.text_targets import main as text_targets
from storage_schemas.datasets import classification_set, segmentation_set
from storage_schemas.pixels.sam_transforms import pad_image, sam_input_image, sam_points
from storage_schemas.store import open_store
from student.config import ModelConfig
from student.eval.evaluate import main as evaluate
from student.eval.inference import SamClipPredictor, mask_prompt, refine_prompts, upsampled_argmax, window_starts
from student.eval.inspect_store import main as inspect_store
from student.eval.tasks import semantic_segmentation, zeroshot_classification
from student.eval.teacher import NOT_APPLICABLE, ClipTeacherPredictor
from student.eval.visualize import main as visualize
from student.eval.zero_shot import ClassNames, StoreText, TextTower
from student.metrics import confusion_matrix, iou_per_class, mean_iou
from student.modeling.export import export_student
from student.modeling.model import PromptBatch, SamClip
from support import benchmark_layouts as layouts
from support.commands import REPO, run_in_process
from support.job_configs import write_clip_job

SAMPLE_CLASSES = (REPO / "jobs" / "sample_classes.txt").read_text().split("\n")[:-1]


@pytest.fixture(scope="module")
def clip_teacher(tiny_teachers):
    return load_clip_teacher(ClipTeacherConfig(arch=TINY_CLIP_ARCH, pretrained=tiny_teachers["clip"]))


@pytest.fixture(scope="module")
def tiny_sam(tiny_teachers):
    return load_sam_teacher(SamTeacherConfig(model="tiny", checkpoint=tiny_teachers["sam"])).sam


@pytest.fixture(scope="module")
def eval_store(train_store, sample_corpus, tiny_teachers, tmp_path_factory) -> Path:
    """The training store plus the `sample` text table (the sample class names, 80 templates)."""
    root = tmp_path_factory.mktemp("eval-store")
    shutil.copytree(train_store, root / "store")
    job = write_clip_job(root / "job.yaml", root / "store", sample_corpus, tiny_teachers)
    assert text_targets([str(job), "--name", "sample", "--classes", str(REPO / "jobs" / "sample_classes.txt")]) == 0
    return root / "store"


@pytest.fixture(scope="module")
def export(tiny_sam, eval_store, tmp_path_factory) -> Path:
    """An untrained student (the tiny SAM plus a random CLIP head), exported as training exports it."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("export")
    export_student(
        SamClip(tiny_sam, embed_dim=64, mlp_hidden=128),
        ModelConfig(sam_arch="tiny", mlp_hidden=128),
        64,
        str(out),
        {"store": str(eval_store), "held_out": 0.2},
    )
    return out


def test_classifier_from_the_store_and_from_a_text_tower_equal_open_clips(
    clip_teacher, tiny_sam, eval_store, tiny_teachers, tmp_path
):
    names = ["cat", "rocket", "grass", "cup of coffee"]
    want = open_clip.build_zero_shot_classifier(
        clip_teacher.model, clip_teacher.tokenizer, names, open_clip.OPENAI_IMAGENET_TEMPLATES
    ).T
    got = ClassNames.from_store(open_store(str(eval_store)), "sample", names)
    assert got.names == names
    torch.testing.assert_close(got.weights, want)
    cache = tmp_path / "cache"
    torch.testing.assert_close(
        TextTower(TINY_CLIP_ARCH, tiny_teachers["clip"], cache_dir=str(cache))(names).weights, want
    )
    (cached,) = cache.iterdir()
    stamp = cached.stat().st_mtime_ns
    again = TextTower(TINY_CLIP_ARCH, tiny_teachers["clip"], cache_dir=str(cache))(names)  # read from the cache
    torch.testing.assert_close(again.weights, want)
    assert list(cache.iterdir()) == [cached]
    assert cached.stat().st_mtime_ns == stamp
    with pytest.raises(Exception, match=r"no embedding for class names \['unicorn'\]"):
        ClassNames.from_store(open_store(str(eval_store)), "sample", ["cat", "unicorn"])
    # The predictor takes plain class names through its text source.
    predictor = SamClipPredictor(SamClip(tiny_sam, embed_dim=64), text=StoreText(open_store(str(eval_store)), "sample"))
    image = skimage.data.chelsea()
    torch.testing.assert_close(predictor.classify([image], names), predictor.classify([image], got))


def test_the_teacher_scores_as_open_clips_zero_shot_eval_from_the_api_and_the_cli(
    clip_teacher, eval_store, sample_corpus, tiny_teachers, tmp_path, capsys
):
    ds = classification_set("imagefolder", str(sample_corpus / "eval" / "classify"))
    names, samples = ds.classnames, list(ds)
    classes = ClassNames.from_store(open_store(str(eval_store)), "sample", names)
    job = write_clip_job(tmp_path / "job.yaml", eval_store, sample_corpus, tiny_teachers)
    teacher, store_url = ClipTeacherPredictor.from_job(str(job))
    assert store_url == str(eval_store)
    got = zeroshot_classification(teacher, classes, iter(samples), teacher.size, batch_size=16)
    # open_clip_train.zero_shot.run: logits = 100 * features @ classifier, top-k over the set.
    model, _, preprocess_val = open_clip.create_model_and_transforms(TINY_CLIP_ARCH, pretrained=tiny_teachers["clip"])
    classifier = open_clip.build_zero_shot_classifier(
        model, open_clip.get_tokenizer(TINY_CLIP_ARCH), names, open_clip.OPENAI_IMAGENET_TEMPLATES
    )
    with torch.no_grad():
        features = model.eval().encode_image(torch.stack([preprocess_val(im) for _, im, _ in samples]))
    logits = 100.0 * torch.nn.functional.normalize(features, dim=-1) @ classifier
    target = torch.tensor([label for _, _, label in samples])
    top5 = logits.topk(5, dim=1).indices
    assert got["images"] == len(samples) == 60
    assert got["top1"] == pytest.approx((top5[:, 0] == target).float().mean().item())
    assert got["top5"] == pytest.approx((top5 == target[:, None]).any(1).float().mean().item())

    out = tmp_path / "out"
    data = ["--data", str(sample_corpus / "eval" / "classify"), "--text", "sample", "--out", out]
    run = run_in_process(evaluate, ["zeroshot-cls", "--model", "teacher", "--job", job, *data], capsys)
    assert run.status == 0, run.err[-2000:]
    record = json.loads((out / "zeroshot-cls-teacher.json").read_text())
    assert record["model"] == "teacher"
    assert (record["metrics"]["top1"], record["metrics"]["top5"]) == (got["top1"], got["top5"])
    # A task the teacher has no head for is said to be so, not scored 0.
    voc = ["--data", str(sample_corpus / "eval" / "voc"), "--text", "sample", "--out", out]
    run = run_in_process(evaluate, ["semseg", "--model", "teacher", "--job", job, *voc], capsys)
    assert run.status == 0, run.err[-2000:]
    assert "semseg: not applicable to the teacher" in run.out
    assert json.loads((out / "semseg-teacher.json").read_text())["metrics"] == {"not_applicable": NOT_APPLICABLE}


def test_miou_equals_the_hand_computed_value():
    # 3 classes; class 2 appears in no label map but is predicted once; 255 is ignored.
    label_a = np.array([[0, 0, 1], [0, 1, 1], [255, 255, 1]])
    pred_a = np.array([[0, 1, 1], [0, 1, 1], [2, 0, 1]])
    label_b = np.array([[0, 0], [255, 0]])
    pred_b = np.array([[0, 2], [1, 0]])
    conf = confusion_matrix(pred_a, label_a, 3) + confusion_matrix(pred_b, label_b, 3)
    # class 0: TP 2 + 2 = 4, FP 0, FN (a: one 0 called 1) 1 + (b: one 0 called 2) 1 -> 4 / 6
    # class 1: TP 4, FP 1 (a), FN 0 -> 4 / 5;  class 2: TP 0, FP 1, FN 0 -> 0 / 1
    np.testing.assert_allclose(iou_per_class(conf), [4 / 6, 4 / 5, 0.0])
    assert mean_iou(conf) == pytest.approx((4 / 6 + 4 / 5 + 0.0) / 3)
    # A class neither labelled nor predicted anywhere has no IoU and is left out of the mean.
    conf4 = confusion_matrix(pred_a, label_a, 4) + confusion_matrix(pred_b, label_b, 4)
    assert np.isnan(iou_per_class(conf4)[3])
    assert mean_iou(conf4) == pytest.approx(mean_iou(conf))
    with pytest.raises(ValueError, match="label values"):
        confusion_matrix(pred_a, np.full((3, 3), 7), 3)


def test_sam_head_with_boxes_points_and_mask_prompts_equals_sam_predictor(tiny_sam):
    predictor = SamClipPredictor(SamClip(tiny_sam, embed_dim=64))
    image = skimage.data.chelsea()
    reference = SamPredictor(tiny_sam)
    reference.set_image(image)
    boxes = np.array([[40, 30, 300, 250], [100, 50, 200, 150]])
    masks, iou, low = predictor.segment_prompts(image, boxes=boxes)
    assert masks.shape == (2, 1) + image.shape[:2]
    assert masks.dtype == bool
    for i, box in enumerate(boxes):
        want_masks, want_iou, want_low = reference.predict(box=box, multimask_output=False)
        np.testing.assert_allclose(low[i].numpy(), want_low, atol=2e-3, rtol=1e-4)
        np.testing.assert_allclose(iou[i], want_iou, atol=1e-4)
        assert (masks[i] == want_masks).mean() > 0.999  # pixels within rounding of the threshold may flip
    # Points plus a mask prompt (the refinement's prompts), against SamPredictor's mask_input.
    pts = np.array([[[150.0, 100.0], [250.0, 200.0]]])
    mask_input = torch.randn(1, 1, 256, 256) * 4
    resized = sam_input_image(image)
    model = predictor.model
    batch = PromptBatch(
        torch.zeros(1, dtype=torch.long),
        torch.ones(1, dtype=torch.long),
        torch.zeros(1, 4),
        torch.from_numpy(sam_points(pts, image.shape[:2])).float(),
        torch.ones(1, 2, dtype=torch.long),
    )
    with torch.no_grad():
        x = model.sam_preprocess(
            torch.from_numpy(pad_image(resized)).permute(2, 0, 1)[None], torch.tensor([resized.shape[:2]])
        )
        out = model.decode_prompts(model.sam_embed(x), batch, False, mask_input)
    _, want_iou, want_low = reference.predict(
        point_coords=pts[0], point_labels=np.ones(2), mask_input=mask_input[0].numpy(), multimask_output=False
    )
    np.testing.assert_allclose(out[0][0].numpy(), want_low, atol=2e-3, rtol=1e-4)
    np.testing.assert_allclose(out[1][0].numpy(), want_iou, atol=1e-4)


def test_refinement_runs_the_backbone_once_per_image(tiny_sam, eval_store):
    torch.manual_seed(0)
    predictor = SamClipPredictor(SamClip(tiny_sam, embed_dim=64, mlp_hidden=128))
    classes = ClassNames.from_store(open_store(str(eval_store)), "sample", ["cat", "grass", "rocket"])
    calls = []
    backbone = predictor.model.backbone
    predictor.model.backbone = lambda x: calls.append(tuple(x.shape)) or backbone(x)
    image = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((453, 300)))  # resized: 678 px high, 678 % 16 = 6
    seg = predictor.segment(image, classes, refine=True, threshold=0.0)  # every class gets prompts
    assert calls == [(1, 3, 1024, 1024)]
    assert seg.labels.shape == seg.coarse_labels.shape == image.shape[:2]
    assert sorted(seg.points) == [0, 1, 2]
    assert all(len(p) == 3 for p in seg.points.values())
    for p in seg.points.values():  # points land inside the image, in its pixels
        assert (p >= 0).all(), p
        assert (p[:, 0] < image.shape[1]).all(), p
        assert (p[:, 1] < image.shape[0]).all(), p
    calls.clear()
    plain = predictor.segment(image, classes, refine=True, threshold=1.0)  # nothing confident: the CLIP head's map
    assert calls == [(1, 3, 1024, 1024)]
    assert plain.points == {}
    np.testing.assert_array_equal(plain.labels, plain.coarse_labels)
    np.testing.assert_array_equal(plain.coarse_labels, seg.coarse_labels)


def test_sample_segmentation_set_is_consistent(sample_corpus):
    skipped = []
    voc = segmentation_set("voc", str(sample_corpus / "eval" / "voc"), skipped)
    assert set(voc.classnames) <= set(SAMPLE_CLASSES)
    assert len(voc) == 6
    for _, image, label in voc:
        values = set(np.unique(label)) - {255}
        assert values <= set(range(len(voc.classnames)))
        assert len(values) >= 2
        assert (label == 255).any()
    assert skipped == []


def test_evaluate_visualize_and_inspect_on_the_sample_sets(export, eval_store, sample_corpus, tmp_path, capsys):
    classify = tmp_path / "classify"
    shutil.copytree(sample_corpus / "eval" / "classify", classify)
    (classify / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "eval"
    common = ["--export", str(export), "--text", "sample", "--out", str(out)]
    assert evaluate(["zeroshot-cls", "--data", str(classify), *common]) == 0
    cls = json.loads((out / "zeroshot-cls.json").read_text())
    assert cls["metrics"]["images"] == 60
    assert 0 <= cls["metrics"]["top1"] <= cls["metrics"]["top5"] <= 1
    assert cls["metrics"]["skipped_images"] == 1
    assert cls["skipped"][0]["key"] == "cat/broken.jpg"

    # The same images as webdataset shards with a class field give the same figures.
    names = sorted(p.name for p in (sample_corpus / "eval" / "classify").iterdir())
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    members = [
        (f"{i:04d}.{ext}", data)
        for i, (c, f) in enumerate(
            (c, f)
            for c in range(len(names))
            for f in sorted((sample_corpus / "eval" / "classify" / names[c]).iterdir())
        )
        for ext, data in (("jpg", f.read_bytes()), ("cls", str(c).encode()))
    ]
    write_tar(str(tmp_path / "val-000.tar"), members)
    assert (
        evaluate(
            [
                "zeroshot-cls",
                "--data",
                str(tmp_path / "val-{000..000}.tar"),
                "--classes",
                str(tmp_path / "names.txt"),
                *common,
                "--out",
                str(tmp_path / "wds"),
            ]
        )
        == 0
    )
    wds = json.loads((tmp_path / "wds" / "zeroshot-cls.json").read_text())["metrics"]
    assert (wds["images"], wds["top1"], wds["top5"]) == (60, cls["metrics"]["top1"], cls["metrics"]["top5"])

    voc = tmp_path / "voc"
    shutil.copytree(sample_corpus / "eval" / "voc", voc)
    (voc / "JPEGImages" / "sample_005.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with open(voc / "ImageSets" / "Segmentation" / "val.txt", "a") as f:
        f.write("not_there\n")
    voc = str(voc)
    assert evaluate(["semseg", "--data", voc, *common]) == 0
    assert evaluate(["semseg", "--refine", "--data", voc, *common]) == 0
    assert evaluate(["sam-agreement", "--export", str(export), "--out", str(out)]) == 0
    seg = json.loads((out / "semseg.json").read_text())["metrics"]
    ref = json.loads((out / "semseg-refine.json").read_text())["metrics"]
    agree = json.loads((out / "sam-agreement.json").read_text())["metrics"]
    assert seg["images"] == ref["images"] == 5
    assert 0 <= seg["miou"] <= 1
    assert 0 <= ref["miou"] <= 1
    assert seg["skipped_images"] == 2
    skipped = json.loads((out / "semseg.json").read_text())["skipped"]
    assert {(x["key"], x["reason"]) for x in skipped} == {("sample_005", "not_an_image"), ("not_there", "missing_file")}
    assert set(seg["per_class_iou"]) == set(segmentation_set("voc", voc).classnames)
    # The untrained student's SAM path is the teacher's own: its masks are the cached ones.
    assert agree["images"] >= 1
    assert agree["mask_iou"] > 0.9
    assert agree["logit_corr"] > 0.99
    assert "miou" in capsys.readouterr().out

    pictures = tmp_path / "pictures"
    assert (
        visualize(
            [
                "--export",
                str(export),
                "--data",
                voc,
                "--text",
                "sample",
                "--limit",
                "2",
                "--out",
                str(pictures / "semseg"),
            ]
        )
        == 0
    )
    assert inspect_store([str(eval_store), "--samples", "2", "--out", str(pictures / "store")]) == 0
    semseg = sorted((pictures / "semseg").iterdir())
    store = sorted(p.name for p in (pictures / "store").iterdir())
    assert [p.name for p in semseg] == ["sample_000.png", "sample_001.png"]
    with Image.open(semseg[0]) as im:  # 4 tiles of 256 px height plus titles and a legend
        assert im.height > 256
        assert im.width > 4 * 256
    assert len(store) == 4
    assert sum(n.startswith("clip_") for n in store) == 2


def test_bad_evaluation_arguments_stop_with_one_line(export, sample_corpus, tmp_path, capsys):
    few = tmp_path / "few.txt"
    few.write_text("grass\nbrick wall\n")  # the labels use 8 classes
    cases = [
        (["zeroshot-cls", "--data", str(sample_corpus / "eval" / "classify")], "--text"),
        (["zeroshot-cls", "--data", str(tmp_path / "nowhere"), "--text", "sample"], "nowhere"),
        (["semseg", "--data", str(sample_corpus / "eval" / "classify"), "--text", "sample"], "JPEGImages"),
        (
            ["semseg", "--data", str(tmp_path / "no-voc"), "--text", "sample"],
            "no-voc (expected a Pascal VOC folder",
        ),
        (["semseg", "--data", str(sample_corpus / "eval" / "voc"), "--text", "imagenet"], "no text table 'imagenet'"),
        (
            ["semseg", "--data", str(sample_corpus / "eval" / "voc"), "--classes", "voc"],
            "no text table 'voc' (has: sample",
        ),
        (
            ["semseg", "--data", str(sample_corpus / "eval" / "voc"), "--classes", "voc"],
            "`python -m pipeline.text_targets JOB --name voc --classes voc` writes it",
        ),
        (["suite", "--suite", str(tmp_path / "none.yaml")], "none.yaml' not found"),
        (
            ["zeroshot-cls", "--model", "teacher", "--data", str(sample_corpus / "eval" / "classify")],
            "--model teacher needs --job JOB.yaml",
        ),
        (
            ["zeroshot-cls", "--model", "teacher", "--job", str(tmp_path / "nojob.yaml"), "--data", "x"],
            "nojob.yaml': no such file",
        ),
        (
            ["semseg", "--dataset", "context59", "--data", str(sample_corpus / "eval" / "voc")],
            "SegmentationClassContext (expected VOC2010",
        ),
        (
            ["zeroshot-cls", "--dataset", "places365", "--data", str(sample_corpus / "eval" / "classify")],
            "no val_256/ or val_large/",
        ),
        (
            ["zeroshot-cls", "--dataset", "ade20k", "--data", str(sample_corpus / "eval" / "classify")],
            "--dataset ade20k is not a zeroshot-cls set",
        ),
        (
            ["semseg", "--data", str(sample_corpus / "eval" / "voc"), "--text", "sample", "--bg-threshold", "0.5"],
            "--bg-threshold: dataset voc's classes have no 'background' first",
        ),
        (
            ["semseg", "--data", str(sample_corpus / "eval" / "voc"), "--refine", "--slide", "448", "224"],
            "--refine takes neither --slide nor --bg-threshold",
        ),
        (
            ["semseg", "--data", str(sample_corpus / "eval" / "voc"), "--text", "sample", "--split", "vall"],
            "split 'vall': no",
        ),
        (
            ["semseg", "--refine", "--data", str(sample_corpus / "eval" / "voc"), "--text", "sample", "--points", "0"],
            "--points: expected at least 1",
        ),
        (
            ["semseg", "--data", str(sample_corpus / "eval" / "voc"), "--text", "sample", "--classes", str(few)],
            "label value",
        ),
        (
            [
                "zeroshot-cls",
                "--data",
                str(sample_corpus / "eval" / "classify"),
                "--text",
                "sample",
                "--templates",
                "simple",
            ],
            "--templates applies to --text-tower",
        ),
    ]
    for args, message in cases:
        p = run_in_process(evaluate, [*args, "--export", export, "--out", tmp_path / "out"], capsys)
        lines = [x for x in p.err.strip().splitlines() if "img/s" not in x]  # a progress bar may have started
        assert p.status == 2, (args, p.err[-2000:])
        assert len(lines) == 1, (args, p.err[-2000:])
        assert lines[0].startswith("error: "), (args, p.err[-2000:])
        assert message in lines[0], (args, p.err[-2000:])
        assert "Traceback" not in p.err, (args, p.err[-2000:])


def test_refinement_prompts_are_drawn_inside_the_image_without_padding():
    probs = torch.full((2, 64, 64), 0.1)
    probs[0, 41, 10] = 0.9  # the last patch row whose centre (y = 664) is inside 678 rows
    probs[0, 42, 10] = 0.9  # its centre (y = 680) is past the image: never drawn
    probs[1, :5, :5] = 0.8
    prompts = refine_prompts(probs, (678, 1024), threshold=0.5, max_points=3, seed=0)
    np.testing.assert_array_equal(prompts[0], [[10.5 * 16, 41.5 * 16]])  # one real point, no padding
    assert prompts[1].shape == (3, 2)
    assert (prompts[1] < 5 * 16).all()
    mask = mask_prompt(probs, (678, 1024))
    assert mask.shape == (2, 1, 256, 256)
    inside = torch.logit(torch.nn.functional.interpolate(probs[:, None], scale_factor=4, mode="bilinear"))
    torch.testing.assert_close(mask[..., :170, :], inside[..., :170, :])  # ceil(678 / 4) = 170 rows of image
    assert (mask[..., 170:, :] == mask.min()).all()
    assert mask.min() < -9


def test_segment_prompts_with_points_matches_sam_predictor_and_checks_shapes(tiny_sam):
    predictor = SamClipPredictor(SamClip(tiny_sam, embed_dim=64))
    image = skimage.data.coffee()
    reference = SamPredictor(tiny_sam)
    reference.set_image(image)
    points = np.array([[[200.0, 150.0], [40.0, 60.0]], [[300.0, 200.0], [310.0, 210.0]]])
    labels = np.array([[1, 0], [1, 1]])
    boxes = np.array([[100, 50, 400, 300], [250, 150, 400, 280]])
    for box in (None, boxes):
        _, iou, low = predictor.segment_prompts(image, boxes=box, points=points, labels=labels, multimask=True)
        for i in range(2):
            _, want_iou, want_low = reference.predict(
                point_coords=points[i],
                point_labels=labels[i],
                box=None if box is None else box[i],
                multimask_output=True,
            )
            np.testing.assert_allclose(low[i].numpy(), want_low, atol=2e-3, rtol=1e-4)
            np.testing.assert_allclose(iou[i], want_iou, atol=1e-4)
    for kwargs, message in [
        ({"points": points[0]}, "points: expected \\[N, n, 2\\]"),
        ({"boxes": boxes[:1], "points": points}, "1 and 2 prompts"),
        ({"points": points, "labels": labels[:, :1]}, "labels: expected shape"),
        ({"boxes": [1, 2, 3, 4]}, "boxes: expected \\[N, 4\\]"),
        ({}, "needs boxes, points"),
    ]:
        with pytest.raises(ValueError, match=message):
            predictor.segment_prompts(image, **kwargs)


def test_semseg_on_a_benchmark_layout_finds_its_table_and_equals_the_public_api(
    export, eval_store, sample_corpus, tiny_teachers, tmp_path, capsys
):
    ade = layouts.segmentation_layout("ade20k", tmp_path / "ADEChallengeData2016", sample_corpus)
    coco = layouts.segmentation_layout("coco-object", tmp_path / "coco", sample_corpus)
    job = write_clip_job(tmp_path / "job.yaml", eval_store, sample_corpus, tiny_teachers)
    for benchmark in ("ade20k", "coco-object"):  # each table takes the benchmark's name
        assert text_targets([str(job), "--classes", benchmark, "--templates", "simple"]) == 0
    out = tmp_path / "out"
    common = ["--export", str(export), "--limit", "3", "--workers", "2"]
    run = run_in_process(evaluate, ["semseg", "--dataset", "ade20k", "--data", ade, *common, "--out", out], capsys)
    assert run.status == 0, run.err[-2000:]
    record = json.loads((out / "semseg.json").read_text())
    assert (record["dataset"], record["limit"], record["metrics"]["images"]) == ("ade20k", 3, 3)
    assert record["metrics"]["inference"] == "whole"
    predictor = SamClipPredictor.load(str(export))
    classes = ClassNames.from_store(open_store(str(eval_store)), "ade20k")
    api = semantic_segmentation(predictor, classes, segmentation_set("ade20k", str(ade)).samples(limit=3))
    assert record["metrics"]["miou"] == api["miou"]
    assert record["metrics"]["per_class_iou"] == api["per_class_iou"]

    slide = ["--slide", "448", "224", "--out", out / "slide"]
    run = run_in_process(evaluate, ["semseg", "--dataset", "ade20k", "--data", ade, *common, *slide], capsys)
    assert run.status == 0, run.err[-2000:]
    metrics = json.loads((out / "slide" / "semseg.json").read_text())["metrics"]
    assert (metrics["inference"], metrics["slide"]) == ("slide", {"crop": 448, "stride": 224})
    assert 0 <= metrics["miou"] <= 1

    bg = ["--bg-threshold", "0.5", "--out", out / "coco"]
    run = run_in_process(evaluate, ["semseg", "--dataset", "coco-object", "--data", coco, *common, *bg], capsys)
    assert run.status == 0, run.err[-2000:]
    metrics = json.loads((out / "coco" / "semseg.json").read_text())["metrics"]
    assert metrics["background"] == {"threshold": 0.5}
    assert len(metrics["per_class_iou"]) == 81


def test_the_background_threshold_and_the_sliding_window_by_hand():
    # Foreground scores of two classes at 1 x 2: one confident pixel, one torn between them.
    scores = torch.tensor([[[5.0, 0.1]], [[0.0, 0.0]]])
    labels = upsampled_argmax(scores, lambda x: x, chunk=1, bg_threshold=0.6)
    assert labels.tolist() == [[1, 0]]  # class 0 is label 1; the torn pixel (p = 0.52) is background
    assert upsampled_argmax(scores, lambda x: x, chunk=1).tolist() == [[0, 0]]
    assert window_starts(597, 448, 224) == [0, 149]
    assert window_starts(448, 448, 224) == [0]
    assert window_starts(1000, 448, 224) == [0, 224, 448, 552]


def test_a_suite_tables_the_students_heads_beside_the_teacher(
    export, eval_store, sample_corpus, tiny_teachers, tmp_path, capsys
):
    job = write_clip_job(tmp_path / "job.yaml", eval_store, sample_corpus, tiny_teachers)
    out = tmp_path / "suite"
    argv = [
        "suite",
        "--suite",
        REPO / "student" / "configs" / "eval" / "sample.yaml",
        "--set",
        f"benchmarks.0.data={sample_corpus / 'eval' / 'classify'}",
        "--set",
        f"benchmarks.1.data={sample_corpus / 'eval' / 'voc'}",
        "--set",
        "benchmarks.1.limit=2",
        "--export",
        export,
        "--job",
        job,
        "--out",
        out,
    ]
    run = run_in_process(evaluate, argv, capsys)
    assert run.status == 0, run.err[-2000:]
    result = json.loads((out / "suite.json").read_text())
    assert result["benchmarks"] == ["classify", "voc-sample"]
    rows = {(r["model"], r["head"]): r["scores"] for r in result["rows"]}
    assert list(rows) == [("student", "CLIP head"), ("student", "CLIP + SAM head"), ("teacher", "CLIP")]
    assert set(rows[("student", "CLIP head")]) == {"classify", "voc-sample"}
    assert set(rows[("student", "CLIP + SAM head")]) == {"voc-sample"}
    assert rows[("teacher", "CLIP")]["voc-sample"] == "n/a"
    # Each figure is its run's own JSON, in %; the difference is their subtraction.
    student = json.loads((out / "classify" / "zeroshot-cls.json").read_text())["metrics"]["top1"]
    teacher = json.loads((out / "classify" / "zeroshot-cls-teacher.json").read_text())["metrics"]["top1"]
    assert rows[("student", "CLIP head")]["classify"] == round(100 * student, 2)
    assert rows[("teacher", "CLIP")]["classify"] == round(100 * teacher, 2)
    assert result["student_minus_teacher"] == {"classify": round(round(100 * student, 2) - round(100 * teacher, 2), 2)}
    table = (out / "suite.md").read_text().splitlines()
    assert table[0] == "| model | head | classify | voc-sample |"
    assert [line.split(" | ")[:2] for line in table[2:]] == [
        ["| student", "CLIP head"],
        ["| student", "CLIP + SAM head"],
        ["| teacher", "CLIP"],
        ["| student - teacher", "CLIP head"],
    ]
    assert "| student - teacher | CLIP head |" in run.out


def test_the_paper_suite_names_tables_1_and_2_in_known_layouts():
    from storage_schemas.datasets import CLASSIFICATION, SEGMENTATION
    from storage_schemas.plumbing.typed_config import load_config
    from student.eval.suite import SuiteConfig

    suite = load_config(SuiteConfig, REPO / "student" / "configs" / "eval" / "paper.yaml")
    cls = [b for b in suite.benchmarks if b.task == "zeroshot-cls"]
    seg = [b for b in suite.benchmarks if b.task == "semseg"]
    assert {(b.dataset, b.size) for b in cls} == {
        (d, s) for d in ("imagenet", "imagenet-v2", "places365") for s in (224, 336)
    }
    assert [b.dataset for b in seg] == ["voc", "context59", "coco-stuff", "ade20k", "coco-object"]
    assert all(b.dataset in (CLASSIFICATION if b.task == "zeroshot-cls" else SEGMENTATION) for b in suite.benchmarks)
