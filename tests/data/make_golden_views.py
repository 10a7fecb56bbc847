"""Regenerate tests/data/golden_views.parquet: the sample corpus's CLIP views table (tiny teacher,
K=4, tests/support/job_configs.py's `write_clip_job`) made by the code of a checkout, sorted by (source, shard, key,
view).

    python tests/data/make_golden_views.py                       # this checkout's code
    python tests/data/make_golden_views.py --repo /tmp/before    # another checkout's code (the
                                                                 # committed file: commit 849a8d5)

It builds the corpus and the tiny teachers in a temporary directory, runs
`python -m pipeline.materialize job.yaml` there without RAY_ADDRESS (a local Ray), and records the
sha256 of its inputs (the four shards, the teacher's weights) and the code's commit in the file's
metadata, so that a failing golden test can tell changed inputs from changed outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COLUMNS = ["source", "shard", "key", "view", "crop", "flip", "pixel_hash", "embedding"]
SORT_KEYS = [("source", "ascending"), ("shard", "ascending"), ("key", "ascending"), ("view", "ascending")]
SHARDS = [f"clip/{i:05d}.tar" for i in range(4)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def input_hashes(corpus: Path, clip_teacher: Path) -> dict[str, str]:
    """What the golden was made from: the CLIP shards and the tiny CLIP teacher's file."""
    return {**{s: sha256(corpus / s) for s in SHARDS}, clip_teacher.name: sha256(clip_teacher)}


def session_clip_job():
    """That checkout's `write_clip_job`: in tests/support/job_configs.py, or, in a checkout made
    before tests/support (the committed golden's, 849a8d5), in its tests/conftest.py."""
    import importlib

    try:
        return importlib.import_module("support.job_configs").write_clip_job
    except ModuleNotFoundError:
        return importlib.import_module("conftest").write_clip_job


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=here.parents[2], help="the checkout whose code makes the table")
    parser.add_argument("--out", type=Path, default=here.with_name("golden_views.parquet"))
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    sys.path[:0] = [str(repo), str(repo / "tests")]
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import pyarrow.parquet as pq

    write_clip_job = session_clip_job()  # the job the session fixture `clip_store` runs, as that checkout has it
    from pipeline.sample_data import build_sample_corpus
    from pipeline.teachers.tiny import write_tiny_teachers
    from storage_schemas.store import open_store

    with tempfile.TemporaryDirectory(prefix="golden-views-") as tmp:
        tmp = Path(tmp)
        build_sample_corpus(str(tmp / "sample"))
        teachers = write_tiny_teachers(str(tmp / "teachers"))
        job = write_clip_job(tmp / "job.yaml", tmp / "store", tmp / "sample", teachers)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-m", "pipeline.materialize", str(job)], cwd=repo, env=env, check=True)
        table = open_store(str(tmp / "store")).read_table("clip", "views").select(COLUMNS).sort_by(SORT_KEYS)
        commit = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=40"], capture_output=True, text=True
        ).stdout.strip()
        meta = {
            "golden.commit": commit,
            "golden.inputs": json.dumps(input_hashes(tmp / "sample", Path(teachers["clip"]))),
        }
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{k: v.encode() for k, v in meta.items()}})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out, compression="zstd", compression_level=19)
    print(f"{args.out}: {table.num_rows} rows, {args.out.stat().st_size:,} bytes, code {commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
