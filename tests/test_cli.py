"""Command lines: the plan command on the sample job, and one-line errors for bad input.

The commands run in this process through `run_cli`, as `python -m X` runs them; one test per
wrapper (`pipeline.plan`, `storage_schemas`) runs the real `python -m` in a subprocess."""

import pytest

from pipeline.materialize.plan import main as plan
from storage_schemas.__main__ import main as summary
from support.commands import CliRun, assert_one_line_error, run_in_process, run_module


def test_plan_lists_pending_units_and_writes_nothing(job_yaml, tmp_path, capsys):
    result = run_in_process(plan, [job_yaml()], capsys)
    assert result.status == 0, result.err
    out = result.out
    assert "clip: teacher samclip-tiny-clip" in out
    assert "sam: teacher tiny" in out
    assert "source sample: 4 shards" in out
    assert "source sa1b-sample: 2 shards" in out
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
def test_bad_input_is_one_line_and_nonzero(job_yaml, overrides, message, monkeypatch, capsys):
    args = [job_yaml()] + [a for o in overrides for a in ("--set", o)]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")  # credentials of no one: the endpoint is what fails
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    result = run_in_process(plan, args, capsys)
    assert_one_line_error(result, message)
    assert "Traceback" not in result.err


def test_missing_config_file_is_one_line(tmp_path):
    """`python -m pipeline.plan` itself: run_cli's one line and exit status 2, no traceback."""
    result = run_module("pipeline.plan", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: config file '{tmp_path / 'nope.yaml'}' not found (expected a YAML file)"


def test_second_job_with_other_views_is_refused(job_yaml, tmp_path, capsys):
    from pipeline.config import load_job_config
    from pipeline.materialize.job_manifests import clip_manifest
    from pipeline.teachers import load_clip_teacher
    from storage_schemas.store.manifest import ensure_manifest
    from storage_schemas.store.root import StoreRoot

    cfg = load_job_config(str(job_yaml()))
    ensure_manifest(
        StoreRoot(cfg.store.url), clip_manifest(cfg, load_clip_teacher(cfg.clip.teacher).fingerprint, "fp32", "cpu")
    )
    ok = run_in_process(plan, [job_yaml()], capsys)
    assert ok.status == 0
    assert "manifest matches the store's" in ok.out
    refused = run_in_process(plan, [job_yaml(), "--set", "clip.views=6"], capsys)
    assert_one_line_error(refused, "policy.views: store has 4, job has 6")
    assert "Traceback" not in refused.err


def test_materialize_checks_the_job_before_it_starts_ray(job_yaml, monkeypatch, capsys):
    import pipeline.materialize.job as job

    def no_ray(cfg):
        raise AssertionError("Ray was started before the job was checked")

    monkeypatch.setattr(job, "start_ray", no_ray)
    refused = run_in_process(job.main, [job_yaml(), "--set", "sources.0.shards=/nonexistent/00000.tar"], capsys)
    assert_one_line_error(refused, "config key 'sources.0.shards': shard '/nonexistent/00000.tar' not found")


def test_an_auto_compute_dtype_is_compared_only_where_the_device_is_known(job_yaml):
    from pipeline.config import load_job_config
    from pipeline.materialize.job_manifests import clip_manifest
    from pipeline.materialize.plan import make_plan
    from pipeline.teachers import load_clip_teacher
    from storage_schemas.plumbing.errors import ManifestMismatch
    from storage_schemas.store.manifest import ensure_manifest
    from storage_schemas.store.root import StoreRoot

    cfg = load_job_config(str(job_yaml()))
    cfg.sources = [s for s in cfg.sources if s.kind == "clip"]
    fp = load_clip_teacher(cfg.clip.teacher).fingerprint
    ensure_manifest(StoreRoot(cfg.store.url), clip_manifest(cfg, fp, "bf16", "cuda"))  # made on GPUs
    assert make_plan(cfg, "cpu", device_known=False).kinds["clip"].manifest_exists
    with pytest.raises(ManifestMismatch, match="compute_dtype: store has bf16, job has fp32"):
        make_plan(cfg, "cpu")


def test_store_summary_command(tmp_path, capsys):
    result = run_in_process(summary, [tmp_path], capsys)
    assert result.status == 0
    assert "no manifest yet" in result.out
    # `python -m storage_schemas` itself: a store it cannot read is one line and exit status 2.
    unreadable = CliRun.of(run_module("storage_schemas", str(tmp_path / "nowhere")))
    assert_one_line_error(unreadable, "nowhere", "cannot be reached")
    assert "Traceback" not in unreadable.err


def test_samclip_lists_every_command_and_runs_each_as_python_m_does():
    import importlib.util

    from samclip.cli import COMMANDS

    listed = run_module("samclip", "--help")
    assert listed.returncode == 0
    for name, (module, what) in COMMANDS.items():
        assert f"  {name}" in listed.stdout, name
        assert what in listed.stdout, name
        assert importlib.util.find_spec(module) is not None, module  # `python -m module` finds it
    planned = run_module("samclip", "plan", "--help")
    assert planned.returncode == 0
    assert "usage: python -m pipeline.plan" in planned.stdout
    unknown = run_module("samclip", "nope")
    assert unknown.returncode == 2
    assert "samclip: unknown command 'nope'" in unknown.stderr
