"""Decoding ahead of the model: a set's items loaded on a thread pool, handed out in order.

    for sample in load_in_order(dataset.items(), dataset.load, workers=4): ...

PIL and numpy release the GIL while they decode and resize, so threads keep the model fed without
the start-up and pickling of worker processes.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def load_in_order(
    items: Iterable[T], load: Callable[[T], R | None], workers: int = 4, ahead: int | None = None
) -> Iterator[R]:
    """load(item) for every item, at most `ahead` (default 4 x workers) in flight, in the items'
    order; items whose load returns None (skipped, and recorded by `load`) are left out. An
    exception in a load is raised here, at its item."""
    if workers <= 0:
        for item in items:
            out = load(item)
            if out is not None:
                yield out
        return
    window: deque = deque()
    ahead = ahead or 4 * workers
    with ThreadPoolExecutor(workers, thread_name_prefix="load") as pool:
        for item in items:
            window.append(pool.submit(load, item))
            if len(window) >= ahead:
                out = window.popleft().result()
                if out is not None:
                    yield out
        while window:
            out = window.popleft().result()
            if out is not None:
                yield out
