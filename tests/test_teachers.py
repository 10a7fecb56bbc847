"""Teacher loaders: a checkpoint saved and loaded back gives identical outputs; bad ones fail clearly."""

import fsspec
import numpy as np
import open_clip
import pytest
import skimage.data
import torch
from PIL import Image
from segment_anything import SamPredictor

from pipeline.config import ClipTeacherConfig, SamTeacherConfig
from pipeline.teachers import load_clip_teacher, load_sam_teacher
from pipeline.teachers.tiny import build_tiny_sam
from storage_schemas.models.clip_archs import TINY_CLIP_ARCH
from storage_schemas.plumbing.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(skimage.data.chelsea())


def test_clip_checkpoint_round_trip_gives_identical_outputs(tiny_teachers, photo):
    torch.manual_seed(0)  # write_tiny_teachers' seed: the reference model is built the same way
    reference, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP_ARCH, pretrained=None)
    reference.eval()
    teacher = load_clip_teacher(ClipTeacherConfig(arch=TINY_CLIP_ARCH, pretrained=tiny_teachers["clip"]))
    x = preprocess(photo)[None]
    assert torch.equal(teacher.preprocess_val(photo)[None], x)
    with torch.no_grad():
        want = torch.nn.functional.normalize(reference.encode_image(x), dim=-1)
        text = teacher.tokenizer(["a photo of a cat"])
        assert torch.equal(teacher.model.encode_text(text), reference.encode_text(text))
    assert torch.equal(teacher.encode_images(x), want)
    assert teacher.embed_dim == 64
    fp = teacher.fingerprint
    assert fp.preprocess["size"] == [224, 224]
    assert fp.preprocess["interpolation"] == "bicubic"
    assert fp.preprocess["mean"] == list(open_clip.OPENAI_DATASET_MEAN)


def test_clip_fingerprint_tracks_the_weights(tiny_teachers, tmp_path):
    cfg = ClipTeacherConfig(arch=TINY_CLIP_ARCH, pretrained=tiny_teachers["clip"])
    a, b = load_clip_teacher(cfg).fingerprint, load_clip_teacher(cfg).fingerprint
    assert a.must_match() == b.must_match()
    random = load_clip_teacher(ClipTeacherConfig(arch=TINY_CLIP_ARCH, pretrained=None, init_seed=1)).fingerprint
    assert random.weights_sha256 != a.weights_sha256
    assert "versions" not in a.must_match()
    assert a.recorded()["versions"]["torch"] == torch.__version__


def test_clip_checkpoint_from_an_fsspec_url(tiny_teachers, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMCLIP_CACHE", str(tmp_path / "cache"))
    with open(tiny_teachers["clip"], "rb") as f:
        fsspec.filesystem("memory").pipe("/weights/tiny-clip.safetensors", f.read())
    url = "memory://weights/tiny-clip.safetensors"
    remote = load_clip_teacher(ClipTeacherConfig(arch=TINY_CLIP_ARCH, pretrained=url))
    local = load_clip_teacher(ClipTeacherConfig(arch=TINY_CLIP_ARCH, pretrained=tiny_teachers["clip"]))
    assert remote.fingerprint.weights_sha256 == local.fingerprint.weights_sha256
    assert remote.fingerprint.weights == url


def test_sam_checkpoint_round_trip_gives_identical_outputs(tiny_teachers, photo):
    reference = build_tiny_sam(0)  # write_tiny_teachers' construction and seed
    teacher = load_sam_teacher(SamTeacherConfig(model="tiny", checkpoint=tiny_teachers["sam"]))
    image = np.asarray(photo)
    outputs = []
    for sam in (reference, teacher.sam):
        predictor = SamPredictor(sam)
        predictor.set_image(image)
        outputs.append(predictor.predict(box=np.array([50, 40, 300, 260]), multimask_output=False, return_logits=True))
    for got, want in zip(outputs[1], outputs[0]):
        np.testing.assert_array_equal(got, want)
    assert outputs[0][2].shape == (1, 256, 256)
    fp = teacher.fingerprint
    assert fp.arch == "tiny"
    assert fp.preprocess["image_size"] == 1024
    assert fp.output["image_embedding_shape"] == [32, 64, 64]


def test_wrong_checkpoint_for_the_architecture_is_named(tiny_teachers):
    with pytest.raises(CheckpointError, match=r"does not fit open_clip ViT-B-32: \d+ shape mismatches"):
        load_clip_teacher(ClipTeacherConfig(arch="ViT-B-32", pretrained=tiny_teachers["clip"]))
    with pytest.raises(CheckpointError, match=r"does not fit SAM vit_b: .*image_encoder.pos_embed"):
        load_sam_teacher(SamTeacherConfig(model="vit_b", checkpoint=tiny_teachers["sam"]))
    with pytest.raises(CheckpointError, match="does not fit open_clip .* missing keys"):
        load_clip_teacher(ClipTeacherConfig(arch=TINY_CLIP_ARCH, pretrained=tiny_teachers["sam"]))


def test_bad_names_and_paths_fail_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="unknown open_clip architecture 'ViT-Q-14'"):
        load_clip_teacher(ClipTeacherConfig(arch="ViT-Q-14", pretrained=None))
    with pytest.raises(ConfigError, match="'laion9000' is not a pretrained tag of ViT-L-14"):
        load_clip_teacher(ClipTeacherConfig(arch="ViT-L-14", pretrained="laion9000"))
    with pytest.raises(CheckpointError, match="not found"):
        load_sam_teacher(SamTeacherConfig(model="tiny", checkpoint=str(tmp_path / "nope.pth")))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read as a file written by torch.save, so it holds no state"):
        load_sam_teacher(SamTeacherConfig(model="tiny", checkpoint=str(garbage)))
    trainer_state = tmp_path / "trainer.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "step": 3}, trainer_state)
    with pytest.raises(
        CheckpointError, match=r"is not a state dict: 2 of its entries are not tensors \(e.g. 'model'\)"
    ):
        load_sam_teacher(SamTeacherConfig(model="tiny", checkpoint=str(trainer_state)))


def test_the_tiny_teachers_cli_says_which_files_it_kept(tiny_teachers, tmp_path, capsys):
    import shutil

    from pipeline.teachers.tiny import main

    shutil.copy(tiny_teachers["clip"], tmp_path / "tiny-clip.safetensors")
    assert main([str(tmp_path)]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0].endswith("kept: already there)")
    assert said[1].endswith("written, seed 0)")
    assert (tmp_path / "tiny-sam.pth").read_bytes() == open(tiny_teachers["sam"], "rb").read()  # same seed, same bytes
