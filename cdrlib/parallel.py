"""Independent chunks of work side by side, one per core, each on one thread.

On a CPU, a chunk of retrieval or re-ranking work is a threaded torch kernel (a matrix product, a
gather) followed by single-threaded steps (NumPy's sort, ``index_add_``). After a threaded kernel
its worker threads keep spinning for a while, so a single-threaded step that follows cannot use
the other cores, and a second Python thread started then is slowed by the spinning ones (both
measured on two cores). Running whole chunks side by side instead — one per core, torch limited to
one thread for the duration — keeps every core busy with no spinning at all.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch

from .validation import check_positive_int


@contextmanager
def one_torch_thread():
    """torch's intra-op thread count set to 1 inside the block, restored after it (also on an
    error). The count is process-wide: other torch work running at the same time sees it too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def map_chunks(fn: Callable, items: Iterable, workers: int | None = None, device=None) -> Iterator:
    """``fn(item)`` for every item, yielded in order.

    Args:
        workers: chunks in flight at once (default: torch's thread count). With more than one on a
            CPU, the chunks run in a thread pool under :func:`one_torch_thread` (NumPy and torch
            release the GIL in their kernels); otherwise one after another, as torch's threads
            please.
        device: where the work runs; a GPU runs its chunks one after another.
    Memory: up to ``workers`` chunks' working sets at once.
    """
    items = list(items)
    if workers is not None:
        check_positive_int(workers, "workers")
    n = min(torch.get_num_threads() if workers is None else workers, len(items))
    if n < 2 or (device is not None and torch.device(device).type != "cpu"):
        yield from map(fn, items)
        return
    with one_torch_thread(), ThreadPoolExecutor(n) as pool:
        yield from pool.map(fn, items)
