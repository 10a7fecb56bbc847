"""The CLIP views table against a golden one committed as test data (tests/data/README.md).

Same inputs (sample corpus, tiny teacher, K=4): the same rows, crops, flips and pixel hashes bit for
bit, embeddings within 1 fp16 ULP. A change to view sampling, rendering or decoding shows up as a
crop or hash difference; a change to the teacher's numerics as an embedding difference.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage_schemas.store import open_store

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "golden_views.parquet"
MAX_ULP = 1

_spec = importlib.util.spec_from_file_location("make_golden_views", DATA / "make_golden_views.py")
_maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_maker)
COLUMNS, SORT_KEYS = _maker.COLUMNS, _maker.SORT_KEYS


def sorted_views(table: pa.Table) -> pa.Table:
    return table.select(COLUMNS).sort_by(SORT_KEYS)


def matrix(table: pa.Table, column: str, dtype) -> np.ndarray:
    """A fixed-size-list column as an [n_rows, width] array of `dtype`."""
    col = table.column(column).combine_chunks()
    values = col.flatten().to_numpy(zero_copy_only=False)
    assert values.dtype == dtype, f"{column}: stored as {values.dtype}, the golden as {np.dtype(dtype)}"
    return values.reshape(len(col), -1)


def fp16_ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many representable float16 values apart a and b are (+0 and -0 are 0 apart).

    The sign-magnitude bit patterns are mapped onto a monotonic integer line: non-negative values
    keep their bits, negative ones go to -(bits & 0x7fff), so adjacent floats differ by 1, across
    zero too."""

    def ordered(x):
        bits = np.ascontiguousarray(x, dtype=np.float16).view(np.uint16).astype(np.int32)
        return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)

    return np.abs(ordered(a) - ordered(b))


def row_names(table: pa.Table, rows) -> list[str]:
    cols = {c: table.column(c).to_pylist() for c in ("source", "shard", "key", "view")}
    return [f"{cols['source'][i]}/{cols['shard'][i]}/{cols['key'][i]}#{cols['view'][i]}" for i in rows]


def test_fp16_ulp_distance():
    one = np.float16(1.0)
    assert fp16_ulp_distance(np.array([one]), np.array([np.nextafter(one, np.float16(2))]))[0] == 1
    assert fp16_ulp_distance(np.array([one]), np.array([np.nextafter(one, np.float16(0))]))[0] == 1
    tiny = np.float16(2.0**-24)  # the smallest subnormal: +tiny, +0, -tiny are one step apart each
    assert fp16_ulp_distance(
        np.array([tiny, -tiny, np.float16(0)]), np.array([-tiny, np.float16(-0.0), np.float16(-0.0)])
    ).tolist() == [2, 1, 0]
    x = np.float16(-0.3)
    assert fp16_ulp_distance(np.array([x]), np.array([x + 3 * np.spacing(x)]))[0] == 3


@pytest.fixture(scope="module")
def golden() -> pa.Table:
    return pq.read_table(GOLDEN)


def test_the_session_inputs_are_the_goldens(golden, sample_corpus, tiny_teachers):
    """Otherwise the comparison below says nothing about the code: the corpus or teacher changed."""
    made_from = json.loads(golden.schema.metadata[b"golden.inputs"])
    now = _maker.input_hashes(Path(sample_corpus), Path(tiny_teachers["clip"]))
    assert now == made_from, (
        "the sample corpus or the tiny CLIP teacher is not what the golden was made from; "
        "if that is intended, regenerate it (tests/data/README.md)"
    )


def test_views_match_the_golden_table(golden, clip_store):
    new = sorted_views(open_store(str(clip_store)).read_table("clip", "views"))
    golden = sorted_views(golden)

    def ids(t):
        return list(zip(*(t.column(c).to_pylist() for c in ("source", "shard", "key", "view"))))

    new_ids, golden_ids = ids(new), ids(golden)
    if new_ids != golden_ids:
        missing, extra = set(golden_ids) - set(new_ids), set(new_ids) - set(golden_ids)
        pytest.fail(
            f"rows differ from the golden: the store has {len(new_ids)}, the golden {len(golden_ids)}; "
            f"{len(missing)} missing from the store (e.g. {sorted(missing)[:3]}), "
            f"{len(extra)} not in the golden (e.g. {sorted(extra)[:3]})"
        )
    n = len(golden_ids)

    problems = []
    crop_new, crop_golden = matrix(new, "crop", np.float32), matrix(golden, "crop", np.float32)
    bad = np.flatnonzero((crop_new.view(np.uint32) != crop_golden.view(np.uint32)).any(axis=1))
    if len(bad):
        worst = np.abs(crop_new[bad] - crop_golden[bad]).max()
        problems.append(
            f"crop not bit-identical in {len(bad)}/{n} rows (max |diff| {worst:.3g}; e.g. "
            f"{row_names(golden, bad[:3])}: store {crop_new[bad[0]].tolist()}, golden {crop_golden[bad[0]].tolist()})"
        )
    for column in ("flip", "pixel_hash"):
        a, b = new.column(column).to_pylist(), golden.column(column).to_pylist()
        bad = [i for i in range(n) if a[i] != b[i]]
        if bad:
            problems.append(
                f"{column} differs in {len(bad)}/{n} rows (e.g. {row_names(golden, bad[:3])}: "
                f"store {a[bad[0]]!r}, golden {b[bad[0]]!r})"
            )

    emb_new, emb_golden = matrix(new, "embedding", np.float16), matrix(golden, "embedding", np.float16)
    if emb_new.shape != emb_golden.shape:
        problems.append(f"embedding shape {emb_new.shape} vs the golden's {emb_golden.shape}")
    else:
        assert np.isfinite(emb_golden).all()
        ulps = np.where(np.isfinite(emb_new), fp16_ulp_distance(emb_new, emb_golden), np.iinfo(np.int32).max)
        bad = np.flatnonzero((ulps > MAX_ULP).any(axis=1))
        if len(bad):
            r, c = np.unravel_index(np.argmax(ulps), ulps.shape)
            problems.append(
                f"embedding more than {MAX_ULP} fp16 ULP from the golden in {len(bad)}/{n} rows "
                f"({int((ulps > MAX_ULP).sum())} values); worst {int(ulps[r, c])} ULP at {row_names(golden, [r])[0]}"
                f"[{c}]: store {float(emb_new[r, c])!r}, golden {float(emb_golden[r, c])!r}; "
                f"max |diff| {np.abs(emb_new.astype(np.float32) - emb_golden.astype(np.float32)).max():.3g}"
            )
    assert not problems, "views differ from tests/data/golden_views.parquet:\n  " + "\n  ".join(problems)
