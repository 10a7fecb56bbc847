"""Reruns into a run folder (student/train.py, student.run_dir): a finished run of the same config
is skipped, a stopped one resumed, each said in one line; a folder holding another config's run is
refused in one line naming the key, unless --resume says to continue it."""

from pathlib import Path

import pytest
import yaml

from storage_schemas.plumbing.errors import ConfigError
from student.config import RUN_CONFIG, config_record, load_train_config
from student.run_dir import config_difference, run_status
from student.train import earlier_run

TINY = str(Path(__file__).resolve().parents[1] / "student" / "configs" / "tiny.yaml")


def test_a_rerun_skips_a_finished_run_resumes_a_stopped_one_and_refuses_another_config(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = load_train_config(TINY, [f"output_dir={out}"])
    assert run_status(str(out)) == "new"
    assert earlier_run(cfg, None) is None
    out.mkdir()
    other = load_train_config(TINY, [f"output_dir={out}", "seed=3", "stages.0.lr=0.01"])
    (out / RUN_CONFIG).write_text(yaml.safe_dump(config_record(other)))
    assert earlier_run(cfg, None) is None  # a start that stopped on bad input: nothing trained, no refusal
    (out / RUN_CONFIG).write_text(yaml.safe_dump(config_record(cfg)))
    (out / "checkpoints" / "step_00000025").mkdir(parents=True)
    (out / "checkpoints" / "step_00000050.tmp").mkdir()  # cut short: not a checkpoint
    assert run_status(str(out)) == "partial"
    assert earlier_run(cfg, None) == "latest"
    assert capsys.readouterr().out.strip() == f"{out}: a run of this config stopped at step_00000025: resuming it"
    (out / "export").mkdir()
    (out / "export" / "student.json").write_text("{}")
    assert run_status(str(out)) == "finished"
    assert earlier_run(cfg, None) == "skip"
    assert "finished before with this config" in capsys.readouterr().out

    assert config_difference(str(out), config_record(other)) == "seed: 0 there, 3 now and 1 more key(s)"
    with pytest.raises(ConfigError, match="holds a run of another config") as e:
        earlier_run(other, None)
    assert "\n" not in str(e.value)
    assert earlier_run(other, "latest") == "latest"  # said explicitly: continue it with this config
    moved = load_train_config(TINY, [f"output_dir={out}/../{out.name}"])  # the same folder, spelled otherwise
    assert config_difference(str(out), config_record(moved)) is None
    assert earlier_run(moved, None) == "skip"


def test_keys_that_do_not_change_training_and_keys_added_at_their_default_keep_the_run(tmp_path):
    cfg = load_train_config(TINY, [f"output_dir={tmp_path}"])
    before = config_record(cfg)
    del before["log_with"]  # a run recorded before the key existed
    (tmp_path / RUN_CONFIG).write_text(yaml.safe_dump(before))
    (tmp_path / "validation.jsonl").write_text('{"stage": "probe", "step": 0}\n')
    assert config_difference(str(tmp_path), config_record(cfg)) is None
    watched = load_train_config(TINY, [f"output_dir={tmp_path}", "log_with=[tensorboard, mlflow]", "val_every=7"])
    assert config_difference(str(tmp_path), config_record(watched)) is None
    other = load_train_config(TINY, [f"output_dir={tmp_path}", "data.clip.views=2"])
    assert config_difference(str(tmp_path), config_record(other)) == "data.clip.views: None there, 2 now"


def test_an_unknown_or_repeated_tracker_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'log_with': expected tensorboard, wandb, mlflow or a list"):
        load_train_config(TINY, [f"output_dir={tmp_path}", "log_with=comet"])
    with pytest.raises(ConfigError, match=r"config key 'log_with': expected one or more different trackers"):
        load_train_config(TINY, [f"output_dir={tmp_path}", "log_with=[wandb, wandb]"])


def test_a_folder_of_a_run_from_before_configs_were_recorded_is_another_config(tmp_path):
    (tmp_path / "validation.jsonl").write_text('{"stage": "probe", "step": 0}\n')
    assert "without config.yaml" in config_difference(str(tmp_path), {})


def test_a_resume_path_without_a_checkpoint_is_one_line(tmp_path):
    cfg = load_train_config(TINY, [f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError) as e:
        earlier_run(cfg, str(tmp_path / "checkpoints" / "step_99999"))
    assert str(e.value) == (
        f"--resume {tmp_path}/checkpoints/step_99999: no checkpoint there (expected 'latest' "
        f"or a step_N folder under OUTPUT/checkpoints holding trainer_state.json)"
    )


@pytest.mark.slow
def test_a_bad_key_is_one_line_alone_on_one_process_and_first_under_accelerate_launch():
    import subprocess
    import sys

    repo = Path(TINY).parents[2]
    args = ["student/train.py", "--config", TINY, "--set", "data.clip.batch_sise=8"]
    message = "error: config key 'data.clip.batch_sise': unknown key"
    plain = subprocess.run([sys.executable, *args], cwd=repo, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2
    assert plain.stderr.strip().startswith(message)
    assert plain.stderr.count("\n") == 1
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    wrapped = subprocess.run(
        [accelerate, "launch", "--num_processes", "1", *args], cwd=repo, capture_output=True, text=True, timeout=300
    )
    # What docs/student.md says accelerate adds: the child's line first, then its own CalledProcessError.
    lines = [x for x in wrapped.stderr.splitlines() if x.strip()]
    first = next(i for i, x in enumerate(lines) if x.startswith("error: "))
    assert wrapped.returncode == 1
    assert lines[first].startswith(message)
    assert "CalledProcessError" in "\n".join(lines[first:])
    assert "Traceback" not in "\n".join(lines[:first])
