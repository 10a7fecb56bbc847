"""CLIP-like embeddings without a teacher: the retrieval benchmark's gallery and the tests'.

gallery, queries = clustered_vectors(1_000_000, 768, seed=0, queries=1000)
recall_at(found_rows, exact_rows)      # recall@k of an approximate search
"""

from __future__ import annotations

import numpy as np


def clustered_vectors(
    n: int, dim: int, seed: int, centroids: int = 300, spread: float = 0.6, queries: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(gallery float16 [n, dim], queries float32 [queries, dim]): unit vectors, each a centroid plus
    isotropic noise of norm ~`spread` (cosine ~0.86 to its centroid, ~0.74 between two of a
    cluster), renormalised; the gallery rounded to fp16 as the store keeps it."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centroids, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)

    def around(m: int) -> np.ndarray:
        x = c[rng.integers(0, centroids, m)] + rng.standard_normal((m, dim)).astype(np.float32) * (
            spread / np.sqrt(dim)
        )
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    gallery = np.concatenate([around(min(65536, n - a)) for a in range(0, n, 65536)]).astype(np.float16)
    return gallery, around(queries)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))
