"""A transfer set's contact sheet: each query beside the crops it retrieved, as the teacher saw them.

    png = contact_sheet(store, queries, subset_table, rows=8, crops=8)    # PNG bytes

A query is drawn by the view-0 rule; a retrieved crop is rendered from its stored crop box and flip
(`storage_schemas.pixels.views.render_view`) on its image, read by range through the shard's tar index,
with its cosine similarity to the query under it. A header names the columns (the query, then the
crops by rank) and a footer says what the numbers are.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw

from pipeline.transfer.queries import QuerySet
from storage_schemas.pixels.decode import DecodeError, decode_image, draft_side_for
from storage_schemas.pixels.views import canonical_crop, render_view
from storage_schemas.store import TargetStore
from storage_schemas.store.tar_index import read_spans
from storage_schemas.store.unit_tar import unit_tar

TILE = 112
LABEL = 14  # pixels under a tile for its caption, and the header's and footer's heights
GAP = 12  # between a query and its crops
FOOTER = "under each crop: its cosine similarity to the query (the store's teacher embeddings)"


def _render(data: bytes, crop, flip: bool, resize_mode: str = "shortest") -> np.ndarray:
    image = decode_image(data, draft_side=draft_side_for(TILE)).image
    if crop is None:
        crop = canonical_crop(image.width, image.height, TILE, resize_mode)
    return render_view(image, crop, flip, TILE)


def crop_tiles(store: TargetStore, chosen: pa.Table, storage_options: dict | None = None) -> list[np.ndarray]:
    """uint8 [TILE, TILE, 3] renders of `chosen`'s rows (source, unit, key, sample_index, view)."""
    records = {(r.source, r.unit): r for r in store.commits("clip")}
    out: list[np.ndarray | None] = [None] * chosen.num_rows
    rows = chosen.to_pylist()
    for source, unit in sorted({(r["source"], r["unit"]) for r in rows}):
        record = records[(source, unit)]
        here = [i for i, r in enumerate(rows) if (r["source"], r["unit"]) == (source, unit)]
        views = store.read_unit_table(record, "views", ["sample_index", "view", "crop", "flip"]).to_pylist()
        boxes = {(v["sample_index"], v["view"]): (v["crop"], v["flip"]) for v in views}
        positions = np.array([rows[i]["sample_index"] for i in here])
        images = read_spans(
            storage_options,
            unit_tar(store, record, storage_options).image_spans(positions, [rows[i]["key"] for i in here]),
        )
        for i, data in zip(here, images):
            crop, flip = boxes[(rows[i]["sample_index"], rows[i]["view"])]
            out[i] = _render(data, crop, flip)
    return out


def contact_sheet(
    store: TargetStore,
    queries: QuerySet,
    chosen: pa.Table,
    rows: int = 8,
    crops: int = 8,
    storage_options: dict | None = None,
) -> bytes:
    """The first `rows` queries that retrieved anything, each with its `crops` closest views."""
    resize_mode = store.manifest("clip").must_match["teacher"]["preprocess"]["resize_mode"]  # the view-0 rule
    qids = sorted(set(chosen.column("query_id").to_pylist()))[:rows]
    shown = chosen.filter(
        pc.and_(pc.is_in(chosen.column("query_id"), pa.array(qids, pa.int32())), pc.less(chosen.column("rank"), crops))
    )
    tiles = crop_tiles(store, shown, storage_options)
    crops = min(crops, max(shown.column("rank").to_pylist(), default=0) + 1)
    cell = TILE + LABEL
    width = max(TILE + GAP + crops * TILE, 6 * len(FOOTER) + 4)  # the default font is 6 px a character
    sheet = Image.new("RGB", (width, LABEL + max(1, len(qids)) * cell + LABEL), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 1), "query", fill="black")
    for rank in range(crops):
        draw.text((TILE + GAP + rank * TILE + 2, 1), f"rank {rank + 1}", fill="black")
    draw.text((2, sheet.height - LABEL + 1), FOOTER, fill="black")
    info = shown.select(["query_id", "rank", "similarity"]).to_pylist()
    for row, q in enumerate(qids):
        y = LABEL + row * cell
        try:
            query = _render(queries.data[q], None, False, resize_mode)
            sheet.paste(Image.fromarray(query), (0, y))
        except DecodeError as e:
            draw.text((4, y + TILE // 2), e.reason, fill="red")
        draw.text((2, y + TILE), queries.keys[q][-18:], fill="black")
        for tile, r in zip(tiles, info):
            if r["query_id"] == q:
                x = TILE + GAP + r["rank"] * TILE
                sheet.paste(Image.fromarray(tile), (x, y))
                draw.text((x + 2, y + TILE), f"{r['similarity']:.3f}", fill="black")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
