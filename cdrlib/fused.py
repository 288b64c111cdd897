"""The fused evaluator's per-row work on a CPU: the top k and the ranks of the relevant items from
one pass over each row of scores, compiled.

:func:`cdrlib.search.search_and_evaluate` scores a chunk of queries once; each row of that chunk
must then give (a) its k best entries, ties by column, and (b) for each relevant item, how many
entries beat it (its 0-based rank; an equal score beats it when its column is smaller). Sorting
every row answers both, but a sort costs about 0.6 of the matrix product that made the row. Here
one pass per row does both:

* **the top k**: entries at or above a threshold, taken from a strided sample of the row so that
  about 2k pass, are collected; only they are sorted (a row whose threshold let fewer than k
  through is scanned again lower);
* **the ranks**: the relevant scores, sorted, cut the line into M + 1 intervals; each entry adds
  one to the count of its interval (found from a small lookup table over the relevant scores'
  range and corrected exactly), and a suffix sum of the counts is each relevant item's rank.
  Entries equal to a relevant score are counted apart; where there are any, the tied items' ranks
  add the equal entries of smaller column, counted directly — unless a row has more than
  ``max_tied`` of them (a collapsed model), which the caller ranks by a stable sort instead.

Written as plain loops compiled by numba, released from the GIL so that chunks run side by side.
The results equal :func:`cdrlib.search.top_k_exact` and :func:`cdrlib.metrics.ranks_from_scores`
exactly (tests compare them).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from .metrics import TIES_COUNTED_DIRECTLY, RelevantRanks, ranks_from_scores, sorted_ascending
from .thresholds import sample_threshold

LOOKUP = 4  # lookup-table buckets per relevant score


@njit(nogil=True, cache=True, inline="always")
def _interval_lookup(xs, nr):
    """A table of ``LOOKUP · nr + 1`` equal buckets over [xs[0], xs[nr − 1]]: entry i is how many
    of the sorted relevant scores ``xs[:nr]`` lie below bucket i's lower edge — where the search
    for an entry's interval starts (the caller corrects it exactly). Returns ``(table, lo,
    scale)``: an entry y falls in bucket ``int((y − lo) · scale)``."""
    n_buckets = LOOKUP * nr + 1
    lookup = np.zeros(n_buckets + 1, dtype=np.int64)
    lo = np.float64(xs[0]) if nr else 0.0
    hi = np.float64(xs[nr - 1]) if nr else 0.0
    scale = n_buckets / (hi - lo) if hi > lo else 0.0
    if nr:
        b = 0
        for i in range(n_buckets + 1):
            edge = lo + i / scale if scale > 0 else lo
            while b < nr and np.float64(xs[b]) < edge:
                b += 1
            lookup[i] = b
    return lookup, lo, scale


@njit(nogil=True, cache=True, inline="always")
def _ranks_from_counts(row, rel_idx, xs, order, counts, equal, max_tied, ranks):
    """One row's ranks from its interval counts: the entries above ``xs[t]`` are those of
    intervals t + 1 … nr, plus, for a tied relevant item, the equal entries of smaller column.

    Args:
        row: (G,) scores; rel_idx: (M,) relevant columns (the first nr used); xs: the nr sorted
            relevant scores, then +inf; order: ``xs[t] = row[rel_idx[order[t]]]``;
        counts, equal: the pass's (nr + 1,) interval counts and equal-entry counts.
        ranks: float64 (M,), written in ``rel_idx``'s order, inf past nr.
    Returns:
        True when more than ``max_tied`` relevant items tie (the ranks are then not complete).
    """
    nr = len(xs) - 1
    for m in range(nr, len(ranks)):
        ranks[m] = np.inf
    above = 0
    tied = 0
    t = nr - 1
    while t >= 0:
        above += counts[t + 1]
        first = t  # the run of relevant scores equal to xs[t]: first … t
        while first > 0 and xs[first - 1] == xs[t]:
            first -= 1
            above += counts[first + 1]  # zero: no entry lies strictly between equal scores
        for u in range(first, t + 1):
            m = order[u]
            rank = np.float64(above)
            if equal[first] > 1:  # another entry has this score: those of smaller column win
                tied += 1
                if tied > max_tied:
                    return True
                x = xs[u]
                for j in range(rel_idx[m]):
                    rank += row[j] == x
            ranks[m] = rank
        t = first - 1
    return False


@njit(nogil=True, cache=True)
def _select_and_rank(scores, rel_idx, n_rel, k, max_tied, top_values, top_columns, ranks):
    """Per row of ``scores``: its k best entries and the ranks of its relevant items.

    Args:
        scores: float32 or float64 (R, G), finite, larger is better.
        rel_idx: int64 (R, M) relevant columns packed left; n_rel: int64 (R,) how many.
        k: 1 ≤ k ≤ G; max_tied: tied relevant items counted directly per row.
        top_values: (R, k) scores' dtype; top_columns: int64 (R, k) — written, best first, equal
            values by ascending column.
        ranks: float64 (R, M), written: the relevant items' ranks in the order of ``rel_idx``,
            inf past n_rel.
    Returns:
        bool (R,): rows with more than ``max_tied`` tied relevant items; their ranks are not
        written.
    """
    n_rows, g = scores.shape
    many = np.zeros(n_rows, dtype=np.bool_)
    stride = max(1, k // 16)  # about 32 sample entries above the threshold
    n_sample = (g + stride - 1) // stride
    cand = np.empty(g, dtype=np.int64)
    cand_values = np.empty(g, dtype=scores.dtype)
    for r in range(n_rows):
        row = scores[r]
        nr = n_rel[r]
        # the relevant scores, ascending, and the intervals they cut the line into
        x_rel = np.empty(nr, dtype=scores.dtype)
        for m in range(nr):
            x_rel[m] = row[rel_idx[r, m]]
        order = np.argsort(x_rel)
        xs = np.empty(nr + 1, dtype=scores.dtype)  # sorted, then +inf: no bounds checks below
        xs[:nr] = x_rel[order]
        xs[nr] = np.inf
        counts = np.zeros(nr + 1, dtype=np.int64)  # entries with exactly b relevant scores below
        equal = np.zeros(nr + 1, dtype=np.int64)  # entries equal to xs[b] (b: first of its run)
        lookup, lo, scale = _interval_lookup(xs, nr)
        n_buckets = len(lookup) - 1
        place = (2 * k) // stride
        threshold = sample_threshold(row, stride, place, True) if place < n_sample else -np.inf
        n = 0
        below = 0  # entries under every relevant score, and over every one: counted apart
        above_all = 0
        for j in range(g):
            y = row[j]
            if y >= threshold:
                cand[n] = j
                n += 1
            if nr == 0 or y < xs[0]:  # most entries, for a model that works: one comparison
                below += 1
            elif y > xs[nr - 1]:
                above_all += 1
            else:
                b = lookup[min(int((np.float64(y) - lo) * scale), n_buckets)]
                while xs[b] < y:
                    b += 1
                while b > 0 and xs[b - 1] >= y:
                    b -= 1
                counts[b] += 1
                equal[b] += xs[b] == y
        counts[0] += below
        counts[nr] += above_all
        while n < k:  # the threshold let too few through: lower it and scan again
            place = 2 * place + 1
            threshold = sample_threshold(row, stride, place, True) if place < n_sample else -np.inf
            n = 0
            for j in range(g):
                if row[j] >= threshold:
                    cand[n] = j
                    n += 1
        # the candidates are in column order: a stable sort by descending value keeps equal
        # values by ascending column
        for i in range(n):
            cand_values[i] = -row[cand[i]]
        best = np.argsort(cand_values[:n], kind="mergesort")
        for i in range(k):
            top_columns[r, i] = cand[best[i]]
            top_values[r, i] = row[top_columns[r, i]]
        many[r] = _ranks_from_counts(row, rel_idx[r], xs, order, counts, equal, max_tied, ranks[r])
    return many


def select_and_rank(
    scores: torch.Tensor, relevant: tuple[torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor, RelevantRanks]:
    """The k best entries of each row and the ranks of its relevant items, from one pass per row.

    Args:
        scores: float32 or float64 CPU (R, G), finite, larger is better; 1 ≤ k ≤ G.
        relevant: the relevant columns packed left and their counts, ``(columns (R, M), n_rel
            (R,))``, as :func:`cdrlib.metrics.label_columns` gives them.
    Returns:
        ``(values, columns, ranks)``: (R, k) each, best first, equal values by ascending column
        (as :func:`cdrlib.search.top_k_exact`), and the :class:`cdrlib.metrics.RelevantRanks`
        that :func:`cdrlib.metrics.ranks_from_scores` gives.
    """
    if scores.device.type != "cpu" or scores.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"select_and_rank takes float32 or float64 scores on the CPU, got {scores.dtype} on "
            f"{scores.device}; use cdrlib.search.top_k_exact and cdrlib.metrics.ranks_from_scores "
            "elsewhere"
        )
    if scores.dim() != 2 or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"expected scores (R, G) and 1 ≤ k ≤ G, got {tuple(scores.shape)}, k={k}")
    rel_idx, n_rel = relevant
    r, g = scores.shape
    a = np.ascontiguousarray(scores.numpy())
    values = np.empty((r, k), dtype=a.dtype)
    columns = np.empty((r, k), dtype=np.int64)
    ranks = np.empty(tuple(rel_idx.shape), dtype=np.float64)
    many = _select_and_rank(
        a,
        np.ascontiguousarray(rel_idx.numpy(), dtype=np.int64),
        np.ascontiguousarray(n_rel.numpy(), dtype=np.int64),
        k,
        TIES_COUNTED_DIRECTLY,
        values,
        columns,
        ranks,
    )
    ranks = torch.from_numpy(ranks)
    rows = torch.from_numpy(many).nonzero().flatten()
    if len(rows):  # many ties (a collapsed model): the general path, which sorts those rows
        ranks[rows] = ranks_from_scores(scores[rows], (rel_idx[rows], n_rel[rows])).ranks
    ranks = RelevantRanks(sorted_ascending(ranks), n_rel.cpu(), g)
    return torch.from_numpy(values), torch.from_numpy(columns), ranks
