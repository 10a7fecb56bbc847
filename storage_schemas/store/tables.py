"""What every table of the store shares (schema version, identity fields, list and box types), the
errors and text-embedding tables, and Parquet encoding. The CLIP views table is in clip_views.py,
the SAM prompts and images tables in sam_tables.py.

Widths that depend on the teacher (embedding width D, mask outputs M) are parameters, recorded in
the kind's manifest; a reader gets them from there. Every table starts with the sample identity
(source, shard, key) and the sample's position in its unit (`sample_index`), so rows of the
Parquet tables, the errors table and the Zarr arrays line up without lookups.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

# 2: units of several parts (KIND/SOURCE/UNIT/PART.*) written by the teacher actors, views
# view-major with a row group per view.
SCHEMA_VERSION = 2

IDENTITY_FIELDS = [
    pa.field("source", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),
    pa.field("key", pa.string(), nullable=False),
    pa.field("sample_index", pa.int32(), nullable=False),  # position in the unit: 0..n_in_unit-1
]


def list_of(item: pa.DataType, size: int = -1) -> pa.DataType:
    """A list type whose item is named "element", as Parquet names it, so schemas round-trip exactly."""
    return pa.list_(pa.field("element", item), size)


BOX = list_of(pa.float32(), 4)  # [x0, y0, x1, y1]


PROMPT_STRUCTURES = ("box", "points", "box+points")
# (has a box, has points) per structure code, the index into PROMPT_STRUCTURES.
STRUCTURE_PARTS = {0: (True, False), 1: (False, True), 2: (True, True)}


ERRORS_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("unit", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("members", list_of(pa.string()), nullable=False),  # tar member names seen
        pa.field("reason", pa.string(), nullable=False),  # a key of ERROR_REASONS
        pa.field("detail", pa.string(), nullable=False),  # the underlying message
    ],
    metadata={"schema_version": str(SCHEMA_VERSION)},
)


def text_embeddings_schema(embed_dim: int) -> pa.Schema:
    """One row per class name: the teacher's text embedding averaged over templates, renormalised."""
    return pa.schema(
        [
            pa.field("class_index", pa.int32(), nullable=False),
            pa.field("class_name", pa.string(), nullable=False),
            pa.field("embedding", list_of(pa.float32(), embed_dim), nullable=False),
        ],
        metadata={"schema_version": str(SCHEMA_VERSION), "embed_dim": str(embed_dim)},
    )


def parquet_bytes(table: pa.Table) -> bytes:
    """A whole Parquet file in memory (zstd), to be written in one atomic put."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
