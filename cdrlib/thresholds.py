"""A threshold from a strided sample of a row: what lets about m of its entries through in one
pass, for the compiled selections of :mod:`cdrlib.fused` (the k best scores of a row) and
:mod:`cdrlib.rerank_kernels` (the k nearest items of a distance row).

Both first pick a threshold from every ``stride``-th entry, then keep the entries on the right
side of it in one pass, and scan again with a looser threshold in the rare row where too few got
through; only the kept entries are sorted.

The helper is inlined into its callers, whose compiled code numba caches in ``cdrlib/__pycache__``
keyed by the *caller's* file: after editing this file, delete those ``*.nbi``/``*.nbc`` files (a
fresh checkout has none).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True, inline="always")
def sample_threshold(row, stride, place, largest):
    """The ``place``-th smallest (``largest``: largest) entry, counted from 0, of
    ``row[::stride]``.

    A buffer of the ``place + 1`` best entries seen so far is kept sorted; most entries are
    rejected by one comparison with its last one. Negation is exact, so the largest are found as
    the smallest of −row without a copy of the row.

    Args:
        row: float (G,); stride ≥ 1; 0 ≤ place < ⌈G / stride⌉; largest: bool.
    """
    sign = row.dtype.type(-1.0) if largest else row.dtype.type(1.0)
    buf = np.empty(place + 1, dtype=row.dtype)
    n = 0
    for i in range(0, len(row), stride):
        x = sign * row[i]
        if n == place + 1:
            if x >= buf[place]:
                continue
            n -= 1
        j = n
        while j > 0 and buf[j - 1] > x:
            buf[j] = buf[j - 1]
            j -= 1
        buf[j] = x
        n += 1
    return sign * (buf[n - 1] if n < place + 1 else buf[place])
