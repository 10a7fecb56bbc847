"""Command lines: the plan command on the sample job, and one-line errors for bad input."""

import pytest

from support.commands import run_module


def test_plan_lists_pending_units_and_writes_nothing(job_yaml, tmp_path):
    result = run_module("pipeline.plan", str(job_yaml()))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "clip: teacher samclip-tiny-clip" in out and "sam: teacher tiny" in out
    assert "source sample: 4 shards" in out and "source sa1b-sample: 2 shards" in out
    assert "manifest absent" in out
    assert list((tmp_path / "store").iterdir()) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["clip.teacher.arch=ViT-Q-14"], "config key 'clip.teacher.arch': unknown open_clip architecture 'ViT-Q-14'"),
        (["clip.teacher.arch=ViT-B-32"], "does not fit open_clip ViT-B-32: "),
        (["sam.teacher.model=vit_b"], "does not fit SAM vit_b: "),
        (
            ["sources.0.shards=/nonexistent/00000.tar"],
            "config key 'sources.0.shards': shard '/nonexistent/00000.tar' not found",
        ),
        (["sam.teacher.checkpoint=/nonexistent/sam.pth"], "checkpoint file '/nonexistent/sam.pth' not found"),
        (
            [
                "store.url=s3://no-such-bucket/store",
                "store.storage_options={client_kwargs: {endpoint_url: 'http://127.0.0.1:9'}, "
                "config_kwargs: {retries: {max_attempts: 1}}}",
            ],
            "store URL 's3://no-such-bucket/store' cannot be reached",
        ),
        (["clip.views=four"], "config key 'clip.views': expected int, got 'four'"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(job_yaml, overrides, message):
    args = [str(job_yaml())] + [a for o in overrides for a in ("--set", o)]
    result = run_module("pipeline.plan", *args, env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_one_line(tmp_path):
    result = run_module("pipeline.plan", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: config file '{tmp_path / 'nope.yaml'}' not found (expected a YAML file)"


def test_second_job_with_other_views_is_refused(job_yaml, tmp_path):
    from pipeline.config import load_job_config
    from pipeline.job_manifests import clip_manifest
    from pipeline.teachers import load_clip_teacher
    from storage_schemas.store.manifest import ensure_manifest
    from storage_schemas.store.root import StoreRoot

    cfg = load_job_config(str(job_yaml()))
    ensure_manifest(
        StoreRoot(cfg.store.url), clip_manifest(cfg, load_clip_teacher(cfg.clip.teacher).fingerprint, "fp32", "cpu")
    )
    ok = run_module("pipeline.plan", str(job_yaml()))
    assert ok.returncode == 0 and "manifest matches the store's" in ok.stdout
    refused = run_module("pipeline.plan", str(job_yaml()), "--set", "clip.views=6")
    assert refused.returncode == 2
    assert "policy.views: store has 4, job has 6" in refused.stderr and "Traceback" not in refused.stderr


def test_store_summary_command(job_yaml, tmp_path):
    result = run_module("storage_schemas", str(tmp_path))
    assert result.returncode == 0 and "no manifest yet" in result.stdout
