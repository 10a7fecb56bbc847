"""The SAM-CLIP student model: shapes at every resolution, the SAM path equal to SAM's own."""

import numpy as np
import pytest
import skimage.data
import torch
from segment_anything import SamPredictor, sam_model_registry

from pipeline.config import SamTeacherConfig
from pipeline.teachers import load_sam_teacher
from storage_schemas.models.sam_models import build_sam
from storage_schemas.pixels.sam_transforms import pad_image, sam_boxes, sam_input_image, sam_points
from student.config import ModelConfig
from student.modeling.export import export_student, sam_state_dict
from student.modeling.load import load_student
from student.modeling.model import PromptBatch, SamClip


@pytest.fixture(scope="module")
def tiny_sam(tiny_teachers):
    return load_sam_teacher(SamTeacherConfig(model="tiny", checkpoint=tiny_teachers["sam"])).sam


@pytest.mark.parametrize("size", [224, 448, 1024])
def test_shapes_and_no_nans_at_every_resolution(tiny_sam, size):
    model = SamClip(tiny_sam, embed_dim=64).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens = model.backbone(x)
        emb = model.clip_embed(x, tokens)
        dense = model.clip_dense(x, tokens)
    g = size // 16
    assert tokens.shape == (2, g, g, 32)
    assert emb.shape == (2, 64)
    assert dense.shape == (2, g, g, 64)
    assert torch.isfinite(emb).all()
    assert torch.isfinite(dense).all()
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    if size == 1024:
        assert model.sam_embed(x, tokens).shape == (2, 32, 64, 64)


def test_batched_decoding_over_images_and_mixed_prompts_equals_sam_predictor(tiny_sam):
    model = SamClip(tiny_sam, embed_dim=64).eval()
    images = [skimage.data.chelsea(), skimage.data.coffee()]
    u8 = torch.stack([torch.from_numpy(pad_image(sam_input_image(im))).permute(2, 0, 1) for im in images])
    hw = torch.tensor([sam_input_image(im).shape[:2] for im in images])
    # (image, structure, box, points): boxes, points and box+points over both images, interleaved.
    prompts = [
        (0, 0, [40, 30, 300, 250], None),
        (1, 1, None, [[200, 150], [40, 60]]),
        (0, 2, [100, 50, 200, 150], [[150, 100], [120, 90]]),
        (1, 0, [10, 10, 500, 300], None),
        (0, 1, None, [[60, 70], [250, 200]]),
        (1, 2, [0, 0, 50, 80], [[20, 30], [25, 40]]),
    ]
    boxes = torch.zeros(len(prompts), 4)
    points = torch.zeros(len(prompts), 2, 2)
    for i, (b, _, box, pts) in enumerate(prompts):
        size = images[b].shape[:2]
        if box is not None:
            boxes[i] = torch.as_tensor(sam_boxes(np.array([box]), size)[0])
        if pts is not None:
            points[i] = torch.as_tensor(sam_points(np.array(pts), size))
    batch = PromptBatch(
        torch.tensor([p[0] for p in prompts]),
        torch.tensor([p[1] for p in prompts]),
        boxes,
        points,
        torch.ones(len(prompts), 2, dtype=torch.int),
    )
    for multimask in (False, True):
        with torch.no_grad():
            out = model(sam_images=u8, sam_input_hw=hw, prompts=batch, multimask=multimask)
        m = 3 if multimask else 1
        assert out["masks"].shape == (6, m, 256, 256)
        assert out["iou"].shape == (6, m)
        predictor = SamPredictor(tiny_sam)
        for i, (b, _, box, pts) in enumerate(prompts):
            predictor.set_image(images[b])
            _, want_iou, want_low = predictor.predict(
                box=None if box is None else np.array(box),
                point_coords=None if pts is None else np.array(pts),
                point_labels=None if pts is None else np.ones(2),
                multimask_output=multimask,
                return_logits=True,
            )
            # The tiny teacher's logits spread like SAM's (|x| up to ~15): float32 rounding of
            # a gather instead of repeat_interleave stays far below 1e-3 of that.
            np.testing.assert_allclose(out["masks"][i].numpy(), want_low, atol=2e-3, rtol=1e-4)
            np.testing.assert_allclose(out["iou"][i].numpy(), want_iou, atol=1e-4)


def test_exported_sam_path_loads_into_segment_anythings_sam(tiny_sam, tmp_path):
    model = SamClip(tiny_sam, embed_dim=64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # a trained student differs from its SAM
    paths = export_student(model, ModelConfig(sam_arch="tiny", sam_checkpoint=None, mlp_hidden=1024), 64, str(tmp_path))
    sam = build_sam("tiny")
    sam.load_state_dict(torch.load(paths["sam"], weights_only=True), strict=True)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        torch.testing.assert_close(sam.image_encoder(x), model.sam_embed(x))
    loaded = load_student(str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    # The vit_b export has exactly the keys and shapes segment_anything's own registry builds.
    with torch.device("meta"):
        ours = sam_state_dict(SamClip(build_sam("vit_b"), embed_dim=768))
        reference = sam_model_registry["vit_b"]().state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}


def test_an_export_cut_short_leaves_no_finished_marker(tiny_sam, tmp_path, monkeypatch):
    from student.run_dir import run_status

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_student(SamClip(tiny_sam, embed_dim=64), ModelConfig(sam_arch="tiny"), 64, str(tmp_path / "export"))
    assert run_status(str(tmp_path)) == "new"
    assert not (tmp_path / "export" / "student.json").exists()


def test_clip_head_starts_from_the_last_block_and_prompt_encoder_is_frozen(tiny_sam):
    model = SamClip(tiny_sam, embed_dim=64)
    last = model.blocks[-1].state_dict()
    for blk in model.clip_head.blocks:
        assert all(torch.equal(v, last[k]) for k, v in blk.state_dict().items())
        assert blk is not model.blocks[-1]
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())
    assert all(p.requires_grad for p in model.clip_head.parameters())


def test_parameter_counts_of_the_vit_b_student():
    with torch.device("meta"):
        counts = SamClip(build_sam("vit_b"), embed_dim=768).parameter_counts()
    assert counts["clip_head"] == 23_938_176
    assert counts["backbone"] == 88_883_456
    assert 0.25 < counts["clip_head"] / counts["backbone"] < 0.30  # the paper's appendix D: about 25%
