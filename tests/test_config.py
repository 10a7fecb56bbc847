"""Configs: YAML + --set overrides into typed dataclasses, with errors naming the key."""

from dataclasses import dataclass, field

import pytest

from pipeline.config import JobConfig, load_job_config
from storage_schemas.plumbing.errors import ConfigError
from storage_schemas.plumbing.typed_config import apply_override, load_config


def test_overrides_take_dotted_keys_list_indices_and_yaml_types(job_yaml):
    path = job_yaml()
    cfg = load_job_config(
        str(path),
        [
            "clip.views=7",
            "sources.0.name=cc3m",
            "sam.multimask=true",
            "store.storage_options.anon=false",
            "clip.view_policy.scale=[0.5, 1]",
            "sam.teacher.checkpoint=null",
        ],
    )
    assert isinstance(cfg, JobConfig)
    assert cfg.clip.views == 7
    assert cfg.sources[0].name == "cc3m"
    assert cfg.sam.multimask is True
    assert cfg.store.storage_options == {"anon": False}
    assert cfg.clip.view_policy.scale == [0.5, 1.0]
    assert cfg.sam.teacher.checkpoint is None
    assert cfg.sources[1].unit_size == 4
    assert cfg.seed == 0


def test_defaults_are_the_papers_teachers():
    cfg = load_job_config(None, ["store.url=/tmp/x", "sources=[]"])
    assert (cfg.clip.teacher.arch, cfg.clip.teacher.pretrained) == ("ViT-L-14", "datacomp_xl_s13b_b90k")
    assert cfg.sam.teacher.model == "vit_b"
    assert cfg.sam.prompts == 64


@pytest.mark.parametrize(
    "override, message",
    [
        ("clip.viewz=3", "config key 'clip.viewz': unknown key; expected one of teacher, views, view_policy"),
        ("clip.views=abc", "config key 'clip.views': expected int, got 'abc'"),
        ("clip.views=0", "config key 'clip.views': expected at least 1 view per sample, got 0"),
        ("sam.precision=int4", "config key 'sam.precision': expected one of fp16, uint8_sigmoid, got 'int4'"),
        ("sam.teacher.model=vit_q", "config key 'sam.teacher.model': unknown SAM architecture 'vit_q'"),
        ("sources.1.kind=audio", "config key 'sources.1.kind': expected one of 'clip', 'sam', got 'audio'"),
        ("sources.5.name=x", "override 'sources.5.name': 'sources.5' needs a list index below 2"),
        ("sources.0.name=../evil", "config key 'sources.0.name': source name '../evil'"),
        ("compute_dtype=fp8", "config key 'compute_dtype': expected one of 'auto', 'fp32', 'bf16', 'fp16'"),
        ("clip.view_policy.scale=[0.9, 0.1]", "config key 'clip.view_policy.scale': expected [low, high]"),
        ("seed", "override 'seed': expected KEY=VALUE"),
    ],
)
def test_bad_values_name_the_key(job_yaml, override, message):
    with pytest.raises(ConfigError) as e:
        load_job_config(str(job_yaml()), [override])
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_missing_required_key_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config key 'store': required"):
        load_job_config(None, ["sources=[]"])
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' not found"):
        load_job_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: {url: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_job_config(str(bad))


def test_nested_dataclasses_lists_and_optionals(tmp_path):
    @dataclass
    class Inner:
        size: int = 224
        name: str | None = None

    @dataclass
    class Outer:
        inners: list[Inner] = field(default_factory=list)
        inner: Inner = field(default_factory=Inner)
        weights: dict[str, float] = field(default_factory=dict)

    cfg = load_config(Outer, None, ["inners=[{size: 448}, {}]", "inners.1.name=b", "weights.clip=1", "inner.size=1024"])
    assert cfg.inners == [Inner(448, None), Inner(224, "b")]
    assert cfg.weights == {"clip": 1.0}
    assert cfg.inner.size == 1024
    with pytest.raises(ConfigError, match=r"config key 'inners.0.size': expected int, got 1.5"):
        load_config(Outer, None, ["inners=[{size: 1.5}]"])
    assert apply_override({"a": [1, {"b": 2}]}, "a.1.b=x") == {"a": [1, {"b": "x"}]}


@pytest.mark.parametrize(
    "override, message",
    [
        ("stages.0.resolutions=[]", "config key 'stages.0.resolutions': expected null or multiples of 16, got []"),
        ("stages.0.resolutions=[224, 230]", "config key 'stages.0.resolutions': expected null or multiples of 16"),
        ("data.streams=0", "config key 'data.streams': expected at least 1, got 0"),
        ("data.workers=3", "config key 'data.workers': expected 0 or a divisor of data.streams (2), got 3"),
    ],
)
def test_bad_training_values_name_the_key(override, message):
    from student.config import load_train_config

    with pytest.raises(ConfigError) as e:
        load_train_config("student/configs/tiny.yaml", [override])
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    from student.config import load_train_config

    cfg = load_train_config("student/configs/tiny.yaml", ["stages.0.lr=1e-4", "stages.1.lr=-2E+3"])
    assert cfg.stages[0].lr == 1e-4
    assert cfg.stages[1].lr == -2000.0
    with pytest.raises(ConfigError, match="config key 'stages.0.lr': expected float or null, got '1e-4x'"):
        load_train_config("student/configs/tiny.yaml", ["stages.0.lr=1e-4x"])
