"""Query-balanced selection (Vemulapalli et al., ICML 2024, section 3: "retrieving an equal number of
samples for each query"), over candidate lists from `pipeline.transfer.gallery_index`.

    chosen = select_balanced(sims, rows, images, ok, per_query=100, min_similarity=0.2)
    chosen.query, chosen.row, chosen.similarity, chosen.rank        # one entry per selected view
    chosen.short                                                     # [q]: views each query lacks
    chosen.needs_more                                                # [q]: its list ran out while full of usable rows

The rule, greedy over every (query, candidate) pair by similarity, best first (ties: lower query
id, then lower row): a pair is taken when its query has fewer than `per_query` views, the view is
not taken yet (so a view retrieved by several queries goes to the closest one, and each of the
others takes its next candidate), the candidate is usable (`ok`: not held out, not excluded),
its similarity is at least `min_similarity`, and the query has no other view of the same image
(near-duplicate suppression: a query's views are crops of distinct images; two queries may take
different crops of one image). A query whose list runs out before it is full, with every entry a
real row above the threshold, may be filled by a longer list: `needs_more` says so, and the caller
searches deeper. With lists that deep, the result is the one full lists would give (from an exact
index; an IVF index's lists also end where its probed lists do, and a query short for that reason
is reported short, like one short of similar images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Selection:
    query: np.ndarray  # int32 [m]
    row: np.ndarray  # int64 [m], gallery index row
    similarity: np.ndarray  # float32 [m]
    rank: np.ndarray  # int32 [m], place among its query's views (0 = closest)
    short: np.ndarray  # int64 [q], per_query minus the views the query got
    needs_more: np.ndarray  # bool [q]


def select_balanced(
    sims: np.ndarray,
    rows: np.ndarray,
    images: np.ndarray,
    ok: np.ndarray,
    per_query: int,
    min_similarity: float | None = None,
) -> Selection:
    """sims float32 [q, c] (NaN: no candidate), rows int64 [q, c] (-1), images int64 [q, c] (the
    candidate's image), ok bool [q, c]; see the module docstring for the rule."""
    n_q, c = rows.shape
    floor = -np.inf if min_similarity is None else min_similarity
    real = (rows >= 0) & ~np.isnan(sims)
    s = np.where(real, sims, -np.inf)
    q_of = np.repeat(np.arange(n_q), c).reshape(n_q, c)
    order = np.lexsort((rows.ravel(), q_of.ravel(), -s.ravel()))
    count = np.zeros(n_q, np.int64)
    taken: set[int] = set()
    seen: set[tuple[int, int]] = set()
    picked: list[int] = []
    flat_rows, flat_img, flat_ok, flat_s = rows.ravel(), images.ravel(), ok.ravel(), s.ravel()
    for i in order.tolist():
        if flat_s[i] < floor or flat_s[i] == -np.inf:
            break
        q = i // c
        r = int(flat_rows[i])
        if count[q] >= per_query or r in taken or not flat_ok[i] or (q, int(flat_img[i])) in seen:
            continue
        taken.add(r)
        seen.add((q, int(flat_img[i])))
        count[q] += 1
        picked.append(i)
    picked_a = np.array(picked, dtype=np.int64)
    query = (picked_a // c).astype(np.int32)
    by_query = np.argsort(query, kind="stable")  # a query's picks in the order taken: its rank
    query, picked_a = query[by_query], picked_a[by_query]
    starts = np.searchsorted(query, np.arange(n_q))
    rank = (np.arange(len(query)) - starts[query]).astype(np.int32)
    full_list = real.all(axis=1) & (s[:, -1] >= floor) if c else np.zeros(n_q, bool)
    return Selection(
        query,
        flat_rows[picked_a].astype(np.int64),
        flat_s[picked_a].astype(np.float32),
        rank,
        per_query - count,
        (count < per_query) & full_list,
    )
