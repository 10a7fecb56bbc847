"""Session-wide fixtures: the sample corpus and tiny teachers are built once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    from pipeline.sample_data import build_sample_corpus

    out = tmp_path_factory.mktemp("sample")
    build_sample_corpus(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory) -> dict[str, str]:
    from pipeline.teachers.tiny import write_tiny_teachers

    return write_tiny_teachers(str(tmp_path_factory.mktemp("teachers")))


@pytest.fixture
def job_yaml(tmp_path, sample_corpus, tiny_teachers):
    """Write a sample-corpus job config into tmp_path; returns a function taking extra YAML text."""

    def make(store: str | None = None, extra: str = "") -> Path:
        path = tmp_path / "job.yaml"
        path.write_text(f"""
store: {{url: "{store or tmp_path / 'store'}"}}
sources:
  - {{name: sample, kind: clip, shards: "{sample_corpus}/clip/{{00000..00003}}.tar"}}
  - {{name: sa1b-sample, kind: sam, shards: "{sample_corpus}/sam/sa_{{000000..000001}}.tar", unit_size: 4}}
clip:
  teacher: {{arch: samclip-tiny-clip, pretrained: "{tiny_teachers['clip']}"}}
  views: 4
sam:
  teacher: {{model: tiny, checkpoint: "{tiny_teachers['sam']}"}}
  prompts: 16
{extra}""")
        return path

    return make


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m module args...` from the repository root, capturing output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
