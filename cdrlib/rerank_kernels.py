"""ICFRR's per-iteration steps on a CPU, compiled: the votes, the ordering keys, the new ranking.

One iteration of ICFRR on a chunk of C queries (see :mod:`cdrlib.rerank`) is three steps, each one
pass over the chunk's rows, with NumPy's sort between the second and the third:

1. :func:`update_votes` — the running vote sums follow the top KQ: only the items that entered it
   add their KG weights, only those that left it take theirs away;
2. :func:`order_keys_official` / :func:`order_keys_paper` — each position's new score, and from it
   one unsigned 64-bit key per position whose ascending order is the scores' descending order, the
   position (or gallery index) in the low bits, so equal scores keep it as their tie-break: NumPy's
   sort of the keys *is* the stable argsort;
3. :func:`read_order` / :func:`read_head` — the sorted keys back to gallery indices, and the rows
   whose keys could not tell two different scores apart (float64 scores share their last bits with
   the index; rare), which the caller re-sorts exactly.

When only the top of each ranking is returned, the official update orders only the head of each
row that can still reach it (:func:`cdrlib.rerank.head_thresholds`): the keys are written for
that head alone, and the rest of the row keeps its order.

Written as plain loops compiled by numba, so each step touches each entry once (the array form took
about fifteen full-width passes per iteration), and released from the GIL, so chunks run side by
side. Arithmetic follows :func:`cdrlib.rerank.icfrr_dense` operation by operation (the bonus is
``β · (sums · unit)`` in the scores' dtype), so the rankings equal the reference's exactly.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .thresholds import sample_threshold


@njit(nogil=True, cache=True)
def update_votes(total, in_top, top_prev, pi, kq, index, values, first):
    """Bring the vote sums up to date with each row's new top KQ.

    Args:
        total: int32 or int64 (C, G), in place: per query, the sum of ``values`` over its top
            items' neighbour lists — KQ·(G−1)·Δ.
        in_top: bool (C, G), in place: whether an item is in the row's current top KQ.
        top_prev: int64 (C, KQ), in place: the top KQ the sums were made for.
        pi: int64 (C, G), the new ranking, best first.
        kq: KQ.
        index: int32 or int64 (G, KG), each gallery item's KG nearest others.
        values: (KG,) the integer weights G−1−r, same dtype as ``total``.
        first: no sums yet (``total`` and ``in_top`` are zero): add every top item.
    """
    c, g = total.shape
    kg = index.shape[1]
    in_new_top = np.zeros(g, dtype=np.bool_)
    for r in range(c):
        if not first:
            for i in range(kq):
                in_new_top[pi[r, i]] = True
            for i in range(kq):  # items that left the top: take their votes away
                j = top_prev[r, i]
                if not in_new_top[j]:
                    in_top[r, j] = False
                    for t in range(kg):
                        total[r, index[j, t]] -= values[t]
        for i in range(kq):  # items that entered it: add theirs
            j = pi[r, i]
            in_new_top[j] = False  # cleared for the next row
            top_prev[r, i] = j
            if not in_top[r, j]:
                in_top[r, j] = True
                for t in range(kg):
                    total[r, index[j, t]] += values[t]


@njit(nogil=True, cache=True, inline="always")
def _packed(bits, width, low, slot):
    """One ordering key: the score's bits (a signed integer of ``width`` bits, widened) mapped so
    that ascending unsigned order is descending score order, shifted to the top of 64 bits, the
    low bits replaced by ``slot``."""
    if bits == -(np.int64(1) << (width - 1)):  # −0.0 compares equal to +0.0: the same key
        bits = np.int64(0)
    if bits >= 0:  # non-negative scores: larger first, so invert all but the sign bit
        bits ^= (np.int64(1) << (width - 1)) - 1
    if width < 64:
        bits &= (np.int64(1) << width) - 1
    return ((bits << (64 - width)) & ~low) | slot


@njit(nogil=True, cache=True)
def order_keys_official(v, total, pi, unit, beta, tau, active, scores, score_bits, keys):
    """The official update's scores and the ordering keys of the head still to be ordered.

    ``scores[r, p] = v[r, p] + β · (total[r, π[r, p]] · unit)`` — the original sorted score of
    position p plus the bonus of the item now there — for the first ``active[r]`` positions (the
    rest of the row can no longer reach the top; see :func:`cdrlib.rerank.head_thresholds`). Every
    position there whose score is at least ``tau[r]`` gets a key, written first in the row, with p
    in the low bits, so equal scores keep their positions' order (the official code's stable sort).

    Args:
        v: float (C, G), the original scores, sorted descending; total: (C, G) vote sums;
        pi: int64 (C, G) the current ranking;
        unit, beta: scalars of v's dtype, unit = 1/(KQ·(G−1)).
        tau: float64 (C,), the head's threshold (−inf: every active position);
        active: int64 (C,), the positions still in play.
        scores: float (C, G), written up to ``active``; score_bits: the same memory viewed as signed
            integers of the same width; keys: int64 view of the uint64 (C, G) keys, written.
    Returns:
        int64 (C,): the number of keys of each row — the size of its head.
    """
    c, g = v.shape
    width = score_bits.itemsize * 8
    low = (np.int64(1) << _index_bits(g)) - 1
    counts = np.empty(c, dtype=np.int64)
    for r in range(c):
        n = 0
        for p in range(active[r]):
            # each step stored in the scores' dtype, as the reference rounds it
            scores[r, p] = total[r, pi[r, p]]
            scores[r, p] = scores[r, p] * unit
            scores[r, p] = v[r, p] + beta * scores[r, p]
        for p in range(active[r]):
            if scores[r, p] >= tau[r]:
                keys[r, n] = _packed(np.int64(score_bits[r, p]), width, low, p)
                n += 1
        counts[r] = n
    return counts


@njit(nogil=True, cache=True)
def order_keys_paper(s, total, unit, beta, score_bits, keys):
    """The paper's update: ``s[r, j] += β · (total[r, j] · unit)`` per gallery item, in place, and
    the ordering keys with j in the low bits (equal scores in gallery order, as the paper's full
    re-sort)."""
    c, g = s.shape
    width = score_bits.itemsize * 8
    low = (np.int64(1) << _index_bits(g)) - 1
    bonus = np.empty(g, dtype=s.dtype)
    for r in range(c):
        for j in range(g):
            if total[r, j] != 0:  # s + β·0 is s
                bonus[j] = total[r, j]
                bonus[j] = bonus[j] * unit
                s[r, j] = s[r, j] + beta * bonus[j]
        for j in range(g):
            keys[r, j] = _packed(np.int64(score_bits[r, j]), width, low, j)


@njit(nogil=True, cache=True, inline="always")
def _index_bits(g):
    bits = 1
    while (1 << bits) < g:
        bits += 1
    return bits


@njit(nogil=True, cache=True, inline="always")
def _read_row(keys, scores, pi, through, out, r, n, low):
    """Row r's first n sorted keys → ``out[r, :n]``: ``pi`` at the keys' positions (``through``)
    or the keys' gallery indices. True when two neighbouring keys agree in every bit above the
    index but their scores differ (the keys' truncation hid the order of two scores)."""
    redo = False
    prev_key = np.int64(0)
    prev_slot = np.int64(0)
    for i in range(n):
        key = keys[r, i]
        slot = key & low
        if i > 0 and (key ^ prev_key) & ~low == 0 and scores[r, slot] != scores[r, prev_slot]:
            redo = True
        out[r, i] = pi[r, slot] if through else slot
        prev_key, prev_slot = key, slot
    return redo


@njit(nogil=True, cache=True)
def read_order(keys, scores, pi, through, out):
    """Sorted keys → the new ranking.

    The low bits of each key are a position (``through``: the new ranking is ``pi`` at those
    positions) or a gallery index. Returns bool (C,): rows in which two neighbouring keys agree in
    every bit above the index but their scores differ — the keys' truncation hid the order of two
    scores there, and the row must be sorted exactly.
    """
    c, g = keys.shape
    low = (np.int64(1) << _index_bits(g)) - 1
    redo = np.zeros(c, dtype=np.bool_)
    for r in range(c):
        redo[r] = _read_row(keys, scores, pi, through, out, r, g, low)
    return redo


@njit(nogil=True, cache=True)
def read_head(keys, counts, active, tau, scores, pi, out):
    """The official update's sorted head keys → the new ranking ``out`` (C, G), written whole.

    Each row: its head (``counts[r]`` sorted keys, positions in the low bits) in order, then the
    other active positions' items in their present order (below the head's threshold ``tau[r]``,
    they can no longer reach the top), then the row beyond ``active[r]`` as it was. Returns bool
    (C,): rows whose head keys could not tell two different scores apart (see
    :func:`read_order`); the caller orders those heads exactly.
    """
    c, g = keys.shape
    low = (np.int64(1) << _index_bits(g)) - 1
    redo = np.zeros(c, dtype=np.bool_)
    for r in range(c):
        redo[r] = _read_row(keys, scores, pi, True, out, r, counts[r], low)
        i = counts[r]
        if i < active[r]:
            for p in range(active[r]):
                if not scores[r, p] >= tau[r]:
                    out[r, i] = pi[r, p]
                    i += 1
        for p in range(active[r], g):
            out[r, p] = pi[r, p]
    return redo


@njit(nogil=True, cache=True)
def nearest_candidates(d, k, score_bits, keys):
    """Step 1 of the k nearest per row: the candidates' ordering keys, in about one pass per row.

    A threshold from a strided sample of the row, set to let about 2k entries through, picks the
    candidates; each gets the key of −d (ascending key order is ascending distance; −d's bits are
    d's with the sign bit flipped) with its column in the low bits. Every entry at or below the
    threshold is a candidate, so once there are at least k of them the k nearest, ties included,
    are among them; with fewer, the threshold is raised and the row scanned again.

    Args:
        d: float (R, G) distances, finite; k: 1 ≤ k ≤ G; score_bits: d's bits, the same memory
            viewed as signed integers of d's width.
        keys: int64 view of uint64 (R, G), written: each row's candidates' keys first.
    Returns:
        int64 (R,): the number of candidates of each row; −1 for a row that holds NaN or an
        infinity (checked first, in the pass that brings the row into cache).
    """
    n_rows, g = d.shape
    width = score_bits.itemsize * 8
    low = (np.int64(1) << _index_bits(g)) - 1
    flip = -(np.int64(1) << (width - 1))  # the sign bit, sign-extended: widened bits of −d
    stride = max(1, k // 16)  # about 32 sample entries below the threshold
    n_sample = (g + stride - 1) // stride
    counts = np.empty(n_rows, dtype=np.int64)
    for r in range(n_rows):
        row = d[r]
        bad = 0
        for j in range(g):
            bad += not (abs(row[j]) < np.inf)  # NaN fails every comparison
        if bad:
            counts[r] = -1
            continue
        place = (2 * k) // stride
        while True:
            threshold = sample_threshold(row, stride, place, False) if place < n_sample else np.inf
            n = 0
            for j in range(g):
                if row[j] <= threshold:
                    keys[r, n] = _packed(np.int64(score_bits[r, j]) ^ flip, width, low, j)
                    n += 1
            if n >= k:
                break
            place = 2 * place + 1
        counts[r] = n
    return counts


@njit(nogil=True, cache=True)
def read_nearest(keys, counts, d, out):
    """Step 2: each row's sorted candidate keys (``counts`` of them) → the first k columns
    (``out`` (R, k), written).

    Returns bool (R,): rows whose keys could not tell two different distances apart among the
    first k or in the run of keys that agree with the k-th above the index bits (a truncated
    key's order can reach past the k-th place; see :func:`read_order`); the caller sorts those
    rows exactly.
    """
    n_rows, k = out.shape
    low = (np.int64(1) << _index_bits(d.shape[1])) - 1
    redo = np.zeros(n_rows, dtype=np.bool_)
    for r in range(n_rows):
        for i in range(k):
            out[r, i] = keys[r, i] & low
        i = 1
        while i < counts[r] and (i < k or (keys[r, i] ^ keys[r, k - 1]) & ~low == 0):
            a, b = keys[r, i - 1], keys[r, i]
            if (a ^ b) & ~low == 0 and d[r, a & low] != d[r, b & low]:
                redo[r] = True
                break
            i += 1
    return redo
