"""Sweeps and their comparison against one store (student.sweep, student.compare), as users run them.

- a two-value sweep trains both runs; killed inside a run it stops, and run again it resumes that
  run from its checkpoint and trains the next; run a third time it skips both;
- compare prints a row per point with the swept values, writes CSV, Markdown and the curves' PNG,
  and counts each run's teacher work from what it consumed: its own batch log's CLIP views and
  SAM images, across the kill, times the teachers' FLOPs;
- bad grid keys or values stop with one line before any run starts; run names stay unique and
  readable for multi-key grids; a run folder of another config is refused.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

import student.sweeps.sweep as sweep
from storage_schemas.models.teacher_flops import clip_view_flops, manifest_flops, teacher_flops
from storage_schemas.plumbing.errors import ConfigError
from storage_schemas.store import open_store

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "student" / "configs" / "tiny.yaml")
STAGES = (
    "stages=[{name: probe, epochs: 20, warmup_steps: 1, max_steps: 3}, "
    "{name: joint, epochs: 20, lr: 0.0004, warmup_steps: 1, max_steps: 2}]"
)


def run_sweep(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "student.sweep", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def logged(run_dir: Path) -> dict[int, dict]:
    """step -> the batch record (a step redone after a resume keeps its last record)."""
    return {r["step"]: r for r in map(json.loads, (run_dir / "batches" / "rank0.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_a_sweep_trains_resumes_after_a_kill_skips_when_done_and_compares(train_store, tiny_teachers, tmp_path):
    out = tmp_path / "sweep"
    args = [
        "--config",
        TINY,
        "--grid",
        "stages.0.lr=0.002,0.004",
        "--set",
        f"store.url={train_store}",
        "--set",
        f"model.sam_checkpoint={tiny_teachers['sam']}",
        "--set",
        STAGES,
        "--set",
        "ckpt_every=3",
        "--set",
        "val_every=2",
        "--set",
        "log_batches=true",
        "--set",
        "data.workers=0",
        str(out),
    ]
    # Killed at step 4 (joint's first): the first run's checkpoint is step 3, the sweep stops there.
    p = run_sweep(*args, env={"SAMCLIP_KILL_AT": "train_step:4"})
    assert p.returncode == 1, p.stderr[-2000:]
    assert "sweep stopped: run lr=0.002 exited with -9" in p.stderr, p.stderr[-2000:]
    assert not (out / "lr=0.004").exists()

    p = run_sweep(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[1/2] lr=0.002: resuming" in p.stdout
    assert "[2/2] lr=0.004: training" in p.stdout
    assert "resuming from" in p.stdout + p.stderr
    assert "step_00000003" in p.stdout + p.stderr
    for name in ("lr=0.002", "lr=0.004"):
        assert (out / name / "export" / "student.json").is_file()
        assert sorted(logged(out / name)) == [1, 2, 3, 4, 5]
    before = (out / "lr=0.002" / "batches" / "rank0.jsonl").read_text()

    p = run_sweep(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("finished before, skipped") == 2
    assert (out / "lr=0.002" / "batches" / "rank0.jsonl").read_text() == before

    p = subprocess.run(
        [sys.executable, "-m", "student.compare", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    header, rule, *rows = p.stdout.split("\n\n")[0].splitlines()
    assert header.split()[0] == "lr"
    assert [r.split()[0] for r in rows] == ["0.002", "0.004"]
    assert "clip224_retrieval_top1" in header
    assert all(" finished " in r for r in rows)
    assert "teacher work the store saved over 2 run(s)" in p.stdout
    with open(out / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["stages.0.lr"] for r in table] == ["0.002", "0.004"]
    assert {r["steps"] for r in table} == {"5"}
    store = open_store(str(train_store))
    clip = store.manifest("clip")
    flops = manifest_flops(clip, store.manifest("sam"))
    assert flops.clip_view == clip_view_flops(clip.must_match["teacher"]["arch"], (224, 224)) > 0
    for name, row in zip(("lr=0.002", "lr=0.004"), table):
        batches = logged(out / name).values()  # the kill's lost step is not counted: its redo is
        views, images = sum(len(b["clip"]) for b in batches), sum(len(b["sam"]) for b in batches)
        assert (int(row["clip_views"]), int(row["sam_images"])) == (views, images)
        assert images == 2 * 2  # 2 joint steps
        prompts = int(row["sam_prompts"])
        assert images <= prompts <= 8 * images  # P' = 8 of each image's stored prompts, fewer where it has fewer
        assert float(row["teacher_flops_saved"]) == pytest.approx(flops.of(views, images, prompts), rel=1e-5)
    assert (out / "comparison.md").read_text().startswith("| lr |")
    with Image.open(out / "comparison.png") as png:
        assert png.size[0] > 400
        assert len(png.getcolors(1 << 16) or range(1 << 16)) > 16  # drawn, not blank


def test_bad_grid_keys_and_values_stop_in_one_line_before_any_run(tmp_path):
    out = tmp_path / "sweep"
    cases = {
        ("--grid", "stages.0.lr_typo=1,2"): "config key 'stages.0.lr_typo': unknown key",
        ("--grid", "stages.0.lr=0.1,fast"): "run lr=fast: config key 'stages.0.lr': expected float or null, got 'fast'",
        ("--grid", "stages.9.lr=0.1"): "'stages.9' needs a list index below 3",
        ("--grid", "stages.0.lr"): "--grid 'stages.0.lr': expected KEY=V1,V2",
        ("--grid", "data.clip.resolutions=[224,448"): "expected comma-separated YAML values",
        ("--grid", "model.sam_checkpoint=x/y,x y"): "both make run name 'sam_checkpoint=x-y'",
        ("--grid", "seed=1,2", "--seeds", "2"): "give seeds one way",
    }
    for extra, message in cases.items():
        with pytest.raises(ConfigError) as e:
            sweep.main(["--config", TINY, *extra, str(out)])
        assert message in str(e.value), (extra, str(e.value))
        assert "\n" not in str(e.value), (extra, str(e.value))
    assert not out.exists()
    p = run_sweep("--config", TINY, "--grid", "stages.0.lr=0.1,fast", str(out))  # what a user sees
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert p.stderr.startswith("error: run lr=fast")


def test_run_names_are_unique_and_readable_for_multi_key_grids(tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = ["--grid", "data.clip.batch_size=8,16", "--grid", "data.sam.batch_size=2,4"]
    grid += ["--grid", "data.clip.resolutions=[224],[224, 448]"]
    args = ["--config", TINY, *grid, "--seeds", "2", "--print", str(out)]
    assert sweep.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    dirs = [line.split("output_dir=")[1].strip("'") for line in lines]
    assert len(lines) == 16
    assert len(set(dirs)) == 16
    assert all(line.startswith("accelerate launch ") for line in lines)
    assert os.path.basename(dirs[0]) == "clip.batch_size=8,sam.batch_size=2,resolutions=224,seed=0"
    assert os.path.basename(dirs[-1]) == "clip.batch_size=16,sam.batch_size=4,resolutions=224-448,seed=1"
    assert "--set seed=1" in lines[1]
    assert "--set seed=0" in lines[0]
    # A run folder that holds a run of another config is refused, naming the key that differs.
    (out / "clip.batch_size=8,sam.batch_size=2,resolutions=224,seed=0").mkdir(parents=True)
    record = yaml.safe_load(open(TINY)) | {"seed": 5}
    (out / "clip.batch_size=8,sam.batch_size=2,resolutions=224,seed=0" / "config.yaml").write_text(
        yaml.safe_dump(record)
    )
    (out / "clip.batch_size=8,sam.batch_size=2,resolutions=224,seed=0" / "validation.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="holds a run of another config"):
        sweep.main(args)


def test_negative_and_exponent_values_keep_their_sign_and_parse_as_floats(tmp_path, capsys):
    grid = ["--grid", "stages.1.lambda_sam=-1,1", "--grid", "stages.1.lr=1e-4,4.0e-5"]
    assert sweep.main(["--config", TINY, *grid, "--print", str(tmp_path / "sweep")]) == 0
    dirs = [os.path.basename(line.split("output_dir=")[1].strip("'")) for line in capsys.readouterr().out.splitlines()]
    assert dirs == [f"lambda_sam={a},lr={b}" for a in ("-1", "1") for b in ("1e-4", "4.0e-5")]
    sweep_file = tmp_path / "lr.yaml"
    sweep_file.write_text(f"base: {TINY}\ngrid:\n  stages.1.lr: [4.0e-5, 8.0e-4]\n")
    assert sweep.main(["--sweep", str(sweep_file), "--print", str(tmp_path / "file")]) == 0
    assert "--set stages.1.lr=4e-05" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(os.listdir(REPO / "student" / "configs" / "sweeps")))
def test_the_example_sweeps_validate_every_point(name, tmp_path, capsys):
    assert sweep.main(["--sweep", str(REPO / "student" / "configs" / "sweeps" / name), "--print", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    grid = yaml.safe_load(open(REPO / "student" / "configs" / "sweeps" / name))["grid"]
    assert len(lines) == len(next(iter(grid.values()))) >= 2


def test_teacher_flops_match_a_count_by_hand():
    """The tiny CLIP tower (storage_schemas/models/model_configs): 224 px, patch 32, width 64, 2 layers of
    2 heads, MLP 4x, projection to 64: multiply-adds counted by hand, 2 FLOPs each."""
    n, d, heads, mlp = (224 // 32) ** 2 + 1, 64, 2, 256
    patches = 49 * 3 * 32 * 32 * d
    layer = n * d * 3 * d + 2 * heads * n * n * (d // heads) + n * d * d + 2 * n * d * mlp
    assert clip_view_flops("samclip-tiny-clip", (224, 224)) == 2 * (patches + 2 * layer + d * 64)
    flops = teacher_flops({"arch": "samclip-tiny-clip", "preprocess": {"size": [224, 224]}}, {"arch": "tiny"})
    assert flops.sam_image > flops.sam_prompt > 0
    assert flops.of(3, 2, 5) == 3 * flops.clip_view + 2 * flops.sam_image + 5 * flops.sam_prompt


def _fake_run(path: Path, lr: float, seed: int, top1: list[float], finished: bool = True) -> None:
    """A run folder as student/train.py leaves it, without training: config, validations, export or checkpoint."""
    config = yaml.safe_load(open(TINY))
    config["stages"][0]["lr"], config["seed"], config["output_dir"] = lr, seed, str(path)
    (path / "export").mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [
        {"stage": "probe", "step": 10 * i, "val/clip224_retrieval_top1": v, "val/clip224_chance": 0.05}
        for i, v in enumerate(top1)
    ]
    rows.insert(1, {**rows[1], "val/clip224_retrieval_top1": -1.0})  # validated again after a resume: the last counts
    (path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    consumed = {"clip_views": 100, "sam_images": 0, "sam_prompts": 0}
    teacher = {"arch": "samclip-tiny-clip", "preprocess": {"size": [224, 224]}}
    if finished:
        (path / "export" / "student.json").write_text(
            json.dumps(
                {
                    "global_step": 10 * (len(top1) - 1),
                    "train_seconds": 12.0,
                    "consumed": consumed,
                    "clip_teacher": teacher,
                    "sam_teacher": None,
                    "sam_multimask": False,
                }
            )
        )
    else:
        state = path / "checkpoints" / "step_00000010"
        state.mkdir(parents=True)
        (state / "trainer_state.json").write_text(
            json.dumps({"state": {"global_step": 10, "train_seconds": 5.0, **consumed}})
        )


def test_compare_gives_mean_and_std_over_seeds_and_reads_partial_runs(tmp_path, capsys):
    import student.sweeps.compare as compare

    _fake_run(tmp_path / "a0", 0.002, 0, [0.1, 0.4, 0.6])
    _fake_run(tmp_path / "a1", 0.002, 1, [0.1, 0.3, 0.4])
    _fake_run(tmp_path / "b0", 0.004, 0, [0.1, 0.2], finished=False)
    (tmp_path / "b0" / "config.yaml").write_text(
        (tmp_path / "b0" / "config.yaml")
        .read_text()
        .replace("store:\n  url: out/store", f"store:\n  url: {tmp_path / 'no-store'}")
    )
    assert compare.main([str(tmp_path / n) for n in ("a0", "a1", "b0")] + ["--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr()
    header, _, row_a, row_b = out.out.split("\n\n")[0].splitlines()
    assert header.split()[:2] == ["lr", "url"]
    assert "chance" not in header
    assert row_a.split()[0] == "0.002"
    assert row_a.split()[2:5] == ["2", "finished", "20"]
    assert "0.5000 +- 0.1414 (n=2)" in row_a
    assert row_b.split()[0] == "0.004"
    assert row_b.split()[2:5] == ["1", "partial", "10"]
    assert "0.2000" in row_b
    assert "its runs' teacher work is not counted" in out.err  # the partial run's store is not there
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "comparison.csv")))
    assert rows[0]["clip_views"] == "200"
    assert float(rows[0]["teacher_flops_saved"]) == 200 * clip_view_flops("samclip-tiny-clip", (224, 224))
    assert rows[1]["teacher_flops_saved"] == ""
    assert rows[1]["train_seconds"] == "5.0"
