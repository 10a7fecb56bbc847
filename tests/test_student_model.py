"""The SAM-CLIP student model: shapes at every resolution, the SAM path equal to SAM's own."""
import numpy as np
import pytest
import skimage.data
import torch
from segment_anything import SamPredictor

from pipeline.config import SamTeacherConfig
from pipeline.teachers import load_sam_teacher
from storage_schemas.sam_models import build_sam
from storage_schemas.sam_transforms import sam_boxes, sam_input_image
from student.model import SamClip


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
    assert tokens.shape == (2, g, g, 32) and emb.shape == (2, 64) and dense.shape == (2, g, g, 64)
    assert torch.isfinite(emb).all() and torch.isfinite(dense).all()
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    if size == 1024:
        assert model.sam_embed(x, tokens).shape == (2, 32, 64, 64)


def test_sam_path_at_1024_equals_sam_predictor(tiny_sam):
    model = SamClip(tiny_sam, embed_dim=64).eval()
    images = [skimage.data.chelsea(), skimage.data.coffee()]
    boxes = [np.array([[40, 30, 300, 250], [100, 50, 200, 150]]), np.array([[10, 10, 500, 300], [0, 0, 50, 80]])]
    x = torch.cat([tiny_sam.preprocess(torch.from_numpy(sam_input_image(im)).permute(2, 0, 1)[None].float())
                   for im in images])
    box_t = torch.stack([torch.as_tensor(sam_boxes(b, im.shape[:2]), dtype=torch.float) for b, im in zip(boxes, images)])
    with torch.no_grad():
        low, iou = model.sam_decode(model.sam_embed(x), boxes=box_t)
    assert low.shape == (2, 2, 1, 256, 256) and iou.shape == (2, 2, 1)
    predictor = SamPredictor(tiny_sam)
    for i, (im, b) in enumerate(zip(images, boxes)):
        predictor.set_image(im)
        for j in range(2):
            _, want_iou, want_low = predictor.predict(box=b[j], multimask_output=False, return_logits=True)
            np.testing.assert_allclose(low[i, j].numpy(), want_low, atol=1e-5)
            np.testing.assert_allclose(iou[i, j].numpy(), want_iou, atol=1e-5)


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
    assert counts["clip_head"] == 23_938_176 and counts["backbone"] == 88_883_456
    assert 0.25 < counts["clip_head"] / counts["backbone"] < 0.30  # the paper's appendix D: about 25%
