"""How the CLIP views table is encoded and laid out: write and read speed per encoding, and the
cost of reading one view of every sample against all K.

    python bench/views_layout.py [--samples 10000] [--views 10] [--dim 768]

Synthetic unit-norm fp16 embeddings (random: they do not compress, nor do real ones much) with
the pipeline's own crops/flips/hashes columns, in memory (no disk in the timings):
  encodings   the embedding column as fixed_size_list<float16> with Parquet's defaults
              (dictionary + statistics), without them (what the store writes), and as
              fixed_size_binary(2 x D);
  layouts     sample-major in one row group vs view-major with one row group per view (the
              store's): reading view v of every sample.
Figures are MB/s of embedding bytes and ratios measured side by side in this run.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage_schemas.store.clip_views import ClipViews, read_view, views_parquet


def synthetic(n: int, k: int, d: int) -> ClipViews:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(n, k, d)).astype(np.float32)
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    crops = np.tile(np.array([0.1, 0.1, 0.9, 0.9], np.float32), (n, k, 1))
    hashes = np.array([[f"{rng.integers(1 << 62):016x}" for _ in range(k)] for _ in range(n)], dtype=object)
    return ClipViews(
        np.arange(n, dtype=np.int32),
        [f"{i:09d}" for i in range(n)],
        np.full(n, 480, np.int32),
        np.full(n, 384, np.int32),
        crops,
        rng.random((n, k)) < 0.5,
        hashes,
        e.astype(np.float16),
    )


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def write(table: pa.Table, **options) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", **options)
    return sink.getvalue().to_pybytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    views = synthetic(args.samples, args.views, args.dim)
    table = views.table("bench", "00000")
    mb = views.embeddings.nbytes / 1e6
    flat = np.asarray(table.column("embedding").combine_chunks().values, np.float16)
    as_binary = pa.Array.from_buffers(pa.binary(2 * args.dim), table.num_rows, [None, pa.py_buffer(flat.tobytes())])
    binary = table.set_column(
        table.schema.get_field_index("embedding"), pa.field("embedding", pa.binary(2 * args.dim)), as_binary
    )
    plain = [f.name for f in table.schema if f.name != "embedding"]
    print(f"{args.samples} samples x {args.views} views x D={args.dim}: {mb:.0f} MB of fp16 embeddings")
    print(f"  {'embedding encoding':<44} {'write MB/s':>10} {'read MB/s':>10} {'file MB':>8}")
    for name, tbl, opts in [
        ("fixed_size_list<f16>, dictionary + statistics", table, {}),
        ("fixed_size_list<f16>, neither (the store's)", table, dict(use_dictionary=plain, write_statistics=plain)),
        ("fixed_size_binary(2D), neither", binary, dict(use_dictionary=plain, write_statistics=plain)),
    ]:
        t_write, data = timed(lambda: write(tbl, **opts), repeat=1)
        t_read, _ = timed(lambda: pq.read_table(io.BytesIO(data)))
        print(f"  {name:<44} {mb / t_write:>10.0f} {mb / t_read:>10.0f} {len(data) / 1e6:>8.1f}")
    sample_major = write(
        table.sort_by([("sample_index", "ascending"), ("view", "ascending")]),
        use_dictionary=plain,
        write_statistics=plain,
    )
    view_major = views_parquet(views, "bench", "00000")
    t_all, _ = timed(lambda: pq.read_table(io.BytesIO(view_major)))
    t_one_sm, one_sm = timed(lambda: read_view(io.BytesIO(sample_major), 3))
    t_one_vm, one_vm = timed(lambda: read_view(io.BytesIO(view_major), 3))
    assert one_sm.num_rows == one_vm.num_rows == args.samples
    print(
        f"  read view 3 of every sample: sample-major {t_one_sm * 1e3:.0f} ms, view-major (the store's) "
        f"{t_one_vm * 1e3:.0f} ms, all {args.views} views {t_all * 1e3:.0f} ms; "
        f"view-major one view is {t_all / t_one_vm:.1f}x cheaper than reading all"
    )


if __name__ == "__main__":
    main()
