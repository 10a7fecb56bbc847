"""`python -m pipeline.verify`: the teacher, re-run from scratch on random committed samples, agrees
with a sound store and catches a tampered one; another teacher is refused. The command runs in this
process, through `run_cli` as `python -m pipeline.verify` runs it."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.verify import main as verify_main
from support.commands import CliRun, run_in_process
from support.job_configs import clip_source, tiny_clip, tiny_sam, write_job

pytestmark = pytest.mark.slow


def job(tmp_path, teachers, store) -> str:
    """The teachers of the session stores; verify takes the store from its ROOT argument."""
    return str(
        write_job(
            tmp_path / "job.yaml",
            store,
            [clip_source("unused.tar")],
            clip=tiny_clip(teachers, views=4),
            sam=tiny_sam(teachers, prompts=16, rounds=2),
        )
    )


def verify(capsys, store, config, *extra) -> tuple[CliRun, dict | None]:
    out = store.parent / "verify.json"
    p = run_in_process(verify_main, [store, "--config", config, "--sample", "3", "--json", out, *extra], capsys)
    return p, (json.loads(out.read_text()) if out.exists() else None)


def test_a_sound_store_agrees_with_its_teacher(train_store, tiny_teachers, tmp_path, capsys):
    p, figures = verify(capsys, train_store, job(tmp_path, tiny_teachers, train_store))
    assert p.status == 0, p.out + p.err[-2000:]
    clip, sam = figures["clip"], figures["sam"]
    assert clip["samples"] == 3
    assert clip["pixel_hash_matches"] == clip["items"] == 12  # K = 4 views each
    assert clip["min_cosine"] > 0.9999
    assert clip["mismatched"] == []
    assert sam["samples"] == 3
    assert sam["items"] > 0
    assert sam["max_abs_diff"] < 0.02  # fp16 storage rounding
    assert "ok: the teacher agrees with the store" in p.out


def test_draws_are_distinct_samples_and_at_most_all_of_them(train_store):
    from pipeline.verify import choose
    from storage_schemas.store import open_store

    store = open_store(str(train_store))
    stored = sum(r.n_stored for r in store.commits("sam"))
    for kind, n in (("clip", 8), ("sam", stored + 5)):
        draws = [(r.unit, row) for r, row in choose(store, kind, n, seed=0)]
        assert len(draws) == len(set(draws)) == min(n, sum(r.n_stored for r in store.commits(kind)))


def test_tampered_targets_and_another_teacher_are_caught(train_store, tiny_teachers, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(train_store, store)
    for path in (store / "clip").rglob("*.parquet"):  # every sample gets another sample's embeddings
        t = pq.read_table(path)
        emb = np.asarray(t.column("embedding").to_pylist(), np.float16)
        rolled = pa.FixedSizeListArray.from_arrays(pa.array(np.roll(emb, 4, axis=0).reshape(-1)), emb.shape[1])
        pq.write_table(t.set_column(t.schema.get_field_index("embedding"), t.schema.field("embedding"), rolled), path)
    p, figures = verify(capsys, store, job(tmp_path, tiny_teachers, store))
    assert p.status == 1
    assert figures["clip"]["min_cosine"] < 0.99
    assert len(figures["clip"]["mismatched"]) == 3
    assert "MISMATCH clip sample/" in p.out
    assert figures["sam"]["mismatched"] == []
    # A teacher with other weights is not the store's: refused with one line naming the weights.
    p, _ = verify(
        capsys,
        store,
        job(tmp_path, tiny_teachers, store),
        "--set",
        "clip.teacher.pretrained=null",
        "--set",
        "clip.teacher.init_seed=1",
    )
    last = p.err.strip().splitlines()[-1]  # (open_clip may warn first that the weights are random)
    assert p.status == 2
    assert last.startswith("error: ")
    assert "verify needs the store's own teacher" in last
    assert "Traceback" not in p.err
