"""Retrieval metrics, exact and chunked, from features or from a ranking.

Every metric the papers report is a function of one thing: for each query, the ranks (0-based
positions in its ranked gallery) of the relevant items. :class:`RelevantRanks` holds those, padded
to a rectangle, and every metric below reads them — so a gallery of 100k items never needs a
Q×G table in memory, only one chunk of queries at a time.

Ranking order is by score descending; exact ties are broken by gallery index ascending, so every
number here is deterministic. Definitions (the book's "Retrieval metrics" chapter explains them):

* ``precision_at_k`` — hits in the top K / K (ICFRR's "Prec@K").
* ``precision_at_k_capped`` — the UCDIR/IBNM code's P@K: Σ_q hits in the top min(K, n_rel) /
  Σ_q min(K, n_rel), micro-averaged. Their tables use this one; it is never below the standard one.
* ``average_precision`` / mAP@all — AP over the whole ranking.
* ``map_at_k_icfrr`` — AP of the top-K list, normalised by the positives found inside it (ICFRR).
* ``recall_at_k`` — queries with at least one relevant item in the top K.
* ``r_precision`` — precision in the top R = n_rel.  ``map_at_r`` — metric-learning mAP@R.
* ``pmrp`` — plausible-match R-precision over ζ ∈ {0, 1, 2} on multi-hot label vectors (PCME).

Queries without any relevant item have no defined AP or R-precision: they are left out of those
means (``RelevantRanks.valid``), and counted in ``n_queries_without_relevant``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from numba import njit

from .validation import (
    as_tensor,
    check_choice,
    check_features,
    check_k,
    check_labels,
    check_positive_int,
)

METRICS = ("cosine", "dot", "euclidean")

DEFAULT_KS = (1, 5, 10, 15, 50, 100, 200)


@dataclass
class RelevantRanks:
    """Ranks of the relevant items of each query.

    Attributes:
        ranks: float64 (Q, M), sorted ascending per row; entries past a row's relevant items, and
            relevant items that a truncated ranking did not retrieve, are ``inf``.
        n_rel: int64 (Q,), the number of relevant items in the whole gallery.
        gallery_size: G.
    """

    ranks: torch.Tensor
    n_rel: torch.Tensor
    gallery_size: int

    @property
    def valid(self) -> torch.Tensor:
        return self.n_rel > 0

    @staticmethod
    def cat(parts: Sequence["RelevantRanks"]) -> "RelevantRanks":
        m = max(p.ranks.shape[1] for p in parts)
        ranks = torch.cat(
            [
                torch.nn.functional.pad(p.ranks, (0, m - p.ranks.shape[1]), value=float("inf"))
                for p in parts
            ]
        )
        return RelevantRanks(ranks, torch.cat([p.n_rel for p in parts]), parts[0].gallery_size)


# ---------------------------------------------------------------- the metrics, on RelevantRanks


def _positions(rr: RelevantRanks) -> torch.Tensor:
    """1, 2, 3, … : the index of each relevant item among the relevant items (i in i / rank_i)."""
    return torch.arange(1, rr.ranks.shape[1] + 1, dtype=torch.float64).expand_as(rr.ranks)


def _per_query_precision_at_k(rr: RelevantRanks, k: int) -> torch.Tensor:
    return (rr.ranks < k).sum(1).double() / k


def _per_query_recall_at_k(rr: RelevantRanks, k: int) -> torch.Tensor:
    return torch.where(rr.valid, (rr.ranks[:, 0] < k).double(), torch.nan)


def _per_query_capped_hits(rr: RelevantRanks, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    cap = rr.n_rel.clamp(max=k)
    return (rr.ranks < cap.unsqueeze(1)).sum(1).double(), cap.double()


def _per_query_map_at_k_icfrr(rr: RelevantRanks, k: int) -> torch.Tensor:
    inside = rr.ranks < k
    found = inside.sum(1)
    terms = torch.where(inside, _positions(rr) / (rr.ranks + 1), 0.0).sum(1)
    return torch.where(found > 0, terms / found.clamp(min=1), 0.0)


def _per_query_r_precision(rr: RelevantRanks) -> torch.Tensor:
    hits = (rr.ranks < rr.n_rel.unsqueeze(1)).sum(1).double()
    return torch.where(rr.valid, hits / rr.n_rel.clamp(min=1), torch.nan)


def _per_query_map_at_r(rr: RelevantRanks) -> torch.Tensor:
    inside = rr.ranks < rr.n_rel.unsqueeze(1)
    terms = torch.where(inside, _positions(rr) / (rr.ranks + 1), 0.0).sum(1)
    return torch.where(rr.valid, terms / rr.n_rel.clamp(min=1), torch.nan)


def precision_at_k(rr: RelevantRanks, k: int) -> float:
    """Mean over queries of (relevant items in the top k) / k."""
    check_k(k, rr.gallery_size)
    return _per_query_precision_at_k(rr, k).mean().item()


def precision_at_k_capped(rr: RelevantRanks, k: int) -> float:
    """The UCDIR/IBNM code's P@K: Σ_q hits in top min(k, n_rel) / Σ_q min(k, n_rel)."""
    check_k(k, rr.gallery_size)
    hits, cap = _per_query_capped_hits(rr, k)
    return (hits.sum() / cap.sum().clamp(min=1)).item()


def recall_at_k(rr: RelevantRanks, k: int) -> float:
    """Fraction of queries (with a relevant item) that find one in the top k."""
    check_k(k, rr.gallery_size)
    return torch.nanmean(_per_query_recall_at_k(rr, k)).item()


def average_precision(rr: RelevantRanks) -> torch.Tensor:
    """AP of each query over the full ranking, (Q,); ``nan`` where the query has no relevant
    item."""
    terms = torch.where(rr.ranks.isfinite(), _positions(rr) / (rr.ranks + 1), 0.0)
    ap = terms.sum(1) / rr.n_rel.double()
    return torch.where(rr.valid, ap, torch.nan)


def mean_average_precision(rr: RelevantRanks) -> float:
    """mAP@all."""
    return torch.nanmean(average_precision(rr)).item()


def map_at_k_icfrr(rr: RelevantRanks, k: int) -> float:
    """mAP@K as ICFRR computes it: AP of the top-k list over the positives found in it (0 if
    none)."""
    check_k(k, rr.gallery_size)
    return _per_query_map_at_k_icfrr(rr, k).mean().item()


def r_precision(rr: RelevantRanks) -> float:
    """Mean over queries of precision in the top R, R = n_rel."""
    return torch.nanmean(_per_query_r_precision(rr)).item()


def map_at_r(rr: RelevantRanks) -> float:
    """mAP@R (Musgrave et al.): (1/R) Σ_{i: rank_i < R} i / (rank_i + 1), averaged over queries."""
    return torch.nanmean(_per_query_map_at_r(rr)).item()


class MetricSums:
    """Every metric of :func:`summarize`, accumulated one chunk of queries at a time.

    A chunk's :class:`RelevantRanks` is reduced to a few numbers per query (its AP, its hits in the
    top K, …) and then dropped, so memory is O(Q) per metric plus one chunk's ranks — never the
    (Q, max n_rel) table of all queries, which with few classes is as large as the Q×G scores.
    """

    def __init__(self, gallery_size: int, ks: Iterable[int] | None = None):
        self.gallery_size = gallery_size
        self.ks = (
            [k for k in DEFAULT_KS if k <= gallery_size]
            if ks is None
            else [check_k(k, gallery_size) for k in ks]
        )
        self.parts: dict[str, list[torch.Tensor]] = {}

    def _keep(self, name: str, values: torch.Tensor) -> None:
        self.parts.setdefault(name, []).append(values)

    def add(self, rr: RelevantRanks) -> None:
        """Reduce one chunk of queries (their ranks against the whole gallery)."""
        if rr.gallery_size != self.gallery_size:
            raise ValueError(
                f"a chunk ranked {rr.gallery_size} items, the gallery has {self.gallery_size}"
            )
        self._keep("mAP@all", average_precision(rr))
        self._keep("mAP@R", _per_query_map_at_r(rr))
        self._keep("R-Precision", _per_query_r_precision(rr))
        for k in self.ks:
            self._keep(f"P@{k}", _per_query_precision_at_k(rr, k))
            hits, cap = _per_query_capped_hits(rr, k)
            self._keep(f"P@{k}(capped) hits", hits)
            self._keep(f"P@{k}(capped) cap", cap)
            self._keep(f"mAP@{k}(icfrr)", _per_query_map_at_k_icfrr(rr, k))
            self._keep(f"R@{k}", _per_query_recall_at_k(rr, k))
        self._keep("without relevant", (~rr.valid).double())

    def result(self) -> dict[str, float]:
        """The flat dict of :func:`summarize`."""
        v = {name: torch.cat(parts) for name, parts in self.parts.items()}

        def mean(name):  # over every query
            return v[name].mean().item()

        def over_valid(name):  # over the queries with a relevant item
            return torch.nanmean(v[name]).item()

        out = {
            "mAP@all": over_valid("mAP@all"),
            "mAP@R": over_valid("mAP@R"),
            "R-Precision": over_valid("R-Precision"),
        }
        for k in self.ks:
            out[f"P@{k}"] = mean(f"P@{k}")
            out[f"P@{k}(capped)"] = (
                v[f"P@{k}(capped) hits"].sum() / v[f"P@{k}(capped) cap"].sum().clamp(min=1)
            ).item()
            out[f"mAP@{k}(icfrr)"] = mean(f"mAP@{k}(icfrr)")
            out[f"R@{k}"] = over_valid(f"R@{k}")
        out["n_queries_without_relevant"] = int(v["without relevant"].sum())
        return out


# ---------------------------------------------------------------- from scores to RelevantRanks


def sorted_ascending(scores: torch.Tensor) -> torch.Tensor:
    """Each row of ``scores`` (R, G) sorted ascending: values only, (R, G).

    On the CPU, NumPy's vectorised sort, about 10x faster than torch.sort there. (Sorting blocks of
    rows on a second thread was measured no faster: right after the chunk's matrix product the
    BLAS threads still hold the other core.) The permutation is never needed: the sorted values
    give the k-th best score and how many items beat a relevant one.
    """
    if scores.device.type != "cpu":
        return torch.sort(scores, dim=1).values
    return torch.from_numpy(np.sort(scores.numpy(), axis=1))


def _pack_rows(rows: torch.Tensor, values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Values grouped by row, packed left: (len(counts), max(counts, 1)) int64, 0 past a row's
    count.

    ``rows`` (L,) must be sorted (row-major order); ``counts`` (R,) is how many entries each row
    has.
    """
    m = max(int(counts.max()) if len(counts) else 0, 1)
    start = torch.cumsum(counts, 0) - counts
    packed = torch.zeros(len(counts), m, dtype=torch.int64, device=values.device)
    packed[rows, torch.arange(len(rows), device=values.device) - start[rows]] = values
    return packed


def _relevant_columns(relevant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The relevant columns of each row, packed left: ``(columns (Q, M), n_rel (Q,))``, M = max
    n_rel (at least 1); entries past a row's n_rel are 0. One pass over the mask (no sort, no
    top-k)."""
    n_rel = relevant.sum(1)
    rows, cols = relevant.nonzero(as_tuple=True)  # row-major: each row's columns ascending
    return _pack_rows(rows, cols, n_rel), n_rel


# a row with at most this many tied relevant items counts their ties directly (a pass over the row
# each); a row with more takes one stable sort
TIES_COUNTED_DIRECTLY = 32


@njit(nogil=True, cache=True)
def _ranks_compiled(scores, ascending, rel_idx, n_rel, max_tied, out):
    """:func:`ranks_from_scores` on a CPU, compiled: per row, the relevant items in descending
    order of score walk down the sorted row once (the number of entries above each is where the
    walk stands); an item that ties with another also counts the equal items before it.

    Args:
        scores: float (Q, G); ascending: its rows sorted; rel_idx: int64 (Q, M) relevant columns
            packed left, n_rel: int64 (Q,) how many; max_tied: tied items counted directly per row.
        out: float64 (Q, M), written: each row's ranks (in no particular order), inf past n_rel.
    Returns:
        bool (Q,): rows with more than ``max_tied`` tied relevant items, left for the caller.
    """
    q, g = scores.shape
    many = np.zeros(q, dtype=np.bool_)
    for r in range(q):
        srt = ascending[r]
        nr = n_rel[r]
        for m in range(nr, out.shape[1]):
            out[r, m] = np.inf
        x_rel = np.empty(nr, dtype=scores.dtype)
        for m in range(nr):
            x_rel[m] = scores[r, rel_idx[r, m]]
        p = g  # entries at p and beyond are above the current score
        tied = 0
        for m in np.argsort(x_rel)[::-1]:
            x = x_rel[m]
            while p > 0 and srt[p - 1] > x:
                p -= 1
            rank = g - p
            if p >= 2 and srt[p - 2] == x:  # another item has the same score
                tied += 1
                if tied > max_tied:
                    many[r] = True
                    break
                for j in range(rel_idx[r, m]):  # it ranks after the equal items of smaller index
                    rank += scores[r, j] == x
            out[r, m] = rank
    return many


def ranks_from_scores(
    scores: torch.Tensor, relevant: torch.Tensor, ascending: torch.Tensor | None = None
) -> RelevantRanks:
    """Ranks of the relevant items when each row of ``scores`` is sorted descending.

    Args:
        scores: float (Q, G), larger is better; ascending: its rows sorted ascending, when the
            caller has them already (:func:`sorted_ascending`).
        relevant: bool (Q, G), or the relevant columns already packed, ``(columns (Q, M), n_rel
            (Q,))`` with entries past a row's n_rel ignored (what :func:`label_columns` gives,
            without a Q × G mask).
    Ties: an item ranks after every item with a larger score, and after items with an equal score
    and a smaller gallery index.
    """
    q, g = scores.shape
    rel_idx, n_rel = relevant if isinstance(relevant, tuple) else _relevant_columns(relevant)
    m = rel_idx.shape[1]
    srt = (sorted_ascending(scores) if ascending is None else ascending).contiguous()
    columns = torch.arange(g, device=scores.device)
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64):
        ranks = np.empty((q, m), dtype=np.float64)
        many = _ranks_compiled(
            np.ascontiguousarray(scores.numpy()),
            srt.numpy(),
            np.ascontiguousarray(rel_idx.numpy(), dtype=np.int64),
            np.ascontiguousarray(n_rel.numpy(), dtype=np.int64),
            TIES_COUNTED_DIRECTLY,
            ranks,
        )
        ranks = torch.from_numpy(ranks)
        many = torch.from_numpy(many).nonzero().flatten()
        if len(many):  # many ties (a collapsed model): ranks from one stable sort of each row
            ranks[many] = _ranks_by_stable_sort(scores[many], rel_idx[many], n_rel[many], columns)
        return RelevantRanks(sorted_ascending(ranks), n_rel.cpu(), g)
    rel_scores = torch.gather(scores, 1, rel_idx)  # padding entries read column 0: masked below
    rel_scores = rel_scores.contiguous()
    at_or_below = torch.searchsorted(srt, rel_scores, right=True)
    above = g - at_or_below
    # The relevant item's own score sits at at_or_below − 1 of its sorted row; another item has the
    # same score exactly when the entry before that one is equal too (one gather, not a second
    # binary search).
    before = torch.gather(srt, 1, (at_or_below - 2).clamp(min=0))
    shared = (at_or_below >= 2) & (before == rel_scores)
    pad = torch.arange(m, device=scores.device).unsqueeze(0) >= n_rel.unsqueeze(1)
    ranks = above.to(torch.float64)
    # A relevant item that ties with another item ranks after the equal ones of smaller index:
    # rank = #(larger) + #(equal, smaller column). A few tied items per row (float32 scores of a
    # large gallery tie now and then) are counted directly, a pass over their row each; rows with
    # many (a collapsed model) take their ranks from one stable sort of the row instead.
    tied_items = shared & ~pad
    per_row = tied_items.sum(1)
    few = per_row <= TIES_COUNTED_DIRECTLY
    rows, slots = (tied_items & few.unsqueeze(1)).nonzero(as_tuple=True)
    block = max(1, (1 << 24) // g)  # (block, G) comparisons at a time
    for b in range(0, len(rows), block):
        r, c = rows[b : b + block], slots[b : b + block]
        x, j = rel_scores[r, c], rel_idx[r, c]
        equal_before = (scores[r] == x.unsqueeze(1)) & (columns < j.unsqueeze(1))
        ranks[r, c] += equal_before.sum(1).to(torch.float64)
    many = (per_row > TIES_COUNTED_DIRECTLY).nonzero().flatten()
    if len(many):
        ranks[many] = _ranks_by_stable_sort(scores[many], rel_idx[many], n_rel[many], columns)
    ranks[pad] = float("inf")
    return RelevantRanks(sorted_ascending(ranks.cpu()), n_rel.cpu(), g)


def _ranks_by_stable_sort(
    scores: torch.Tensor, rel_idx: torch.Tensor, n_rel: torch.Tensor, columns: torch.Tensor
) -> torch.Tensor:
    """The relevant items' ranks (R, M) from one stable sort of each row; inf past n_rel."""
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    position = torch.empty_like(order).scatter_(1, order, columns.expand_as(order))
    ranks = torch.gather(position, 1, rel_idx).to(torch.float64)
    pad = torch.arange(rel_idx.shape[1], device=scores.device).unsqueeze(0) >= n_rel.unsqueeze(1)
    return ranks.masked_fill_(pad, float("inf"))


def ranks_from_ranking(ranking: torch.Tensor, relevant: torch.Tensor) -> RelevantRanks:
    """Ranks of the relevant items from an explicit ranking (for re-ranked or truncated lists).

    Args:
        ranking: int (Q, L), gallery indices best first; L ≤ G (a truncated list is fine: relevant
            items it leaves out count as never retrieved).
        relevant: bool (Q, G).
    """
    n_rel = relevant.sum(1)
    hits = torch.gather(relevant, 1, ranking.long())
    m = max(int(n_rel.max()) if len(n_rel) else 0, 1)
    pos = torch.where(
        hits,
        torch.arange(hits.shape[1], device=hits.device).expand_as(hits).double(),
        torch.tensor(float("inf"), dtype=torch.float64, device=hits.device),
    )
    ranks = (
        torch.sort(pos, dim=1).values[:, :m]
        if pos.shape[1] >= m
        else torch.nn.functional.pad(
            torch.sort(pos, dim=1).values, (0, m - pos.shape[1]), value=float("inf")
        )
    )
    return RelevantRanks(ranks.cpu(), n_rel.cpu(), relevant.shape[1])


# ---------------------------------------------------------------- relevance


def label_relevance(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> Callable:
    """Relevance = same class. Returns ``f(query_slice) -> bool (chunk, G)``."""
    return lambda sl: query_labels[sl].unsqueeze(1) == gallery_labels.unsqueeze(0)


def label_columns(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> Callable:
    """Relevance = same class, as packed columns: ``f(query_slice) -> (columns (chunk, M), n_rel
    (chunk,))``.

    The gallery is grouped by class once (a (classes, M) table of its indices, M the largest class),
    so a chunk's relevant columns are one row lookup per query — no (chunk, G) mask to build and
    scan. A query whose class the gallery lacks gets n_rel = 0.
    """
    both, inverse = torch.unique(
        torch.cat([query_labels.reshape(-1), gallery_labels.reshape(-1)]), return_inverse=True
    )
    q_ids, g_ids = inverse[: len(query_labels)], inverse[len(query_labels) :]
    counts = torch.bincount(g_ids, minlength=len(both))
    order = torch.argsort(g_ids, stable=True)  # by class, indices ascending within one
    table = _pack_rows(g_ids[order], order, counts)
    return lambda sl: (table[q_ids[sl]], counts[q_ids[sl]])


def hamming_relevance(query_tags: torch.Tensor, gallery_tags: torch.Tensor, zeta: int) -> Callable:
    """PMRP's plausibility: Hamming distance of multi-hot vectors ≤ ζ."""
    qt, gt = query_tags.float(), gallery_tags.float()
    g_count = gt.sum(1)

    def rel(sl):
        a = qt[sl]
        dist = a.sum(1, keepdim=True) + g_count.unsqueeze(0) - 2 * (a @ gt.T)
        return dist <= zeta + 0.5

    return rel


# ---------------------------------------------------------------- drivers


def chunk_rows(n_gallery: int, budget: int = 1 << 22) -> int:
    """Queries per chunk so that a chunk's score table stays near ``budget`` entries (16 MB in
    float32; ranking it takes about 15 such tables of temporaries, so a chunk peaks near 250 MB)."""
    return max(1, min(4096, budget // max(n_gallery, 1)))


def _glibc_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl): nothing to call
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def return_freed_memory() -> None:
    """Give the memory a finished chunk freed back to the system.

    glibc keeps freed heap memory for reuse, and the chunks' differently sized temporaries fragment
    it: at Q = G = 20k with 7 classes the process grew to 1.9 GB although one chunk needs about
    0.2 GB; trimming after each chunk kept it at 0.7 GB (import included) for the same run time.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _cosine_or_dot(a: torch.Tensor, metric: str) -> torch.Tensor:
    return torch.nn.functional.normalize(a, dim=1) if metric == "cosine" else a


def iter_relevant_ranks(
    query: torch.Tensor,
    gallery: torch.Tensor,
    relevance: Callable,
    metric: str = "cosine",
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
):
    """Score the gallery one chunk of queries at a time and yield each chunk's
    :class:`RelevantRanks`.

    Args:
        query: float (Q, d); gallery: float (G, d).
        relevance: ``f(query_slice) -> bool (chunk, G)`` (see :func:`label_relevance`), or packed
            columns ``(columns, n_rel)`` (see :func:`label_columns`).
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"`` (smaller distance ranks first).
        chunk_size: queries per chunk; default about 2^22 / G (a 16 MB float32 score table).
    Memory: one chunk's scores, relevance and ranks, each at most chunk × G entries.
    """
    check_choice(metric, "metric", METRICS)
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")
    dev = torch.device(device) if device is not None else query.device
    # float32 queries and a float64 gallery mix
    dtype = torch.promote_types(query.dtype, gallery.dtype)
    q = _cosine_or_dot(query.to(dtype), metric).to(dev)
    g = _cosine_or_dot(gallery.to(dtype), metric).to(dev)
    g_sq = (g * g).sum(1) if metric == "euclidean" else None
    step = chunk_size or chunk_rows(len(g))
    for start in range(0, len(q), step):
        sl = slice(start, min(start + step, len(q)))
        s = q[sl] @ g.T
        if metric == "euclidean":  # −||q − g||² ranks like the distance, up to the constant ||q||²
            s = 2 * s - g_sq.unsqueeze(0)
        rel = relevance(sl)
        yield ranks_from_scores(
            s, tuple(x.to(dev) for x in rel) if isinstance(rel, tuple) else rel.to(dev)
        )
        del s
        return_freed_memory()


def relevant_ranks(
    query: torch.Tensor,
    gallery: torch.Tensor,
    relevance: Callable,
    metric: str = "cosine",
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
) -> RelevantRanks:
    """The relevant ranks of every query, (Q, max n_rel): :func:`iter_relevant_ranks` concatenated.

    For metrics over a large gallery with few classes use :func:`retrieval_metrics` (or
    :class:`MetricSums`), which keeps only a few numbers per query instead of this table.
    """
    return RelevantRanks.cat(
        list(iter_relevant_ranks(query, gallery, relevance, metric, chunk_size, device))
    )


def summarize(rr: RelevantRanks, ks: Iterable[int] | None = None) -> dict[str, float]:
    """Every metric of the module from one set of ranks, as a flat dict.

    ``ks=None`` takes the values of ``DEFAULT_KS`` that fit the gallery; a K given explicitly must
    fit (a ``ValueError`` otherwise). Keys: ``mAP@all``, ``mAP@R``, ``R-Precision``,
    ``P@K``, ``P@K(capped)``, ``mAP@K(icfrr)``, ``R@K``, ``n_queries_without_relevant``.
    """
    sums = MetricSums(rr.gallery_size, ks)
    sums.add(rr)
    return sums.result()


def retrieval_metrics(
    query,
    gallery,
    query_labels,
    gallery_labels,
    metric: str = "cosine",
    ks: Iterable[int] | None = None,
    chunk_size: int | None = None,
    device=None,
) -> dict[str, float]:
    """All label-based metrics for query and gallery features.

    Args:
        query: (Q, d) features; gallery: (G, d) features (numpy or torch, float, finite).
        query_labels: (Q,) ints; gallery_labels: (G,) ints.
        metric: ``"cosine"`` (default), ``"dot"`` or ``"euclidean"``.
    Memory: one chunk of queries at a time (about 2^22 / G queries, ``chunk_size`` to change it):
    its scores and relevance (chunk × G) and a few numbers per query, whatever the number of
    relevant items per query.
    """
    query = check_features(query, "query")
    gallery = check_features(gallery, "gallery", dim=query.shape[1])
    ql = check_labels(query_labels, "query_labels", len(query))
    gl = check_labels(gallery_labels, "gallery_labels", len(gallery))
    sums = MetricSums(len(gallery), ks)
    for rr in iter_relevant_ranks(
        query, gallery, label_columns(ql, gl), metric, chunk_size, device
    ):
        sums.add(rr)
    return sums.result()


def ranking_metrics(
    ranking, query_labels, gallery_labels, ks: Iterable[int] | None = None
) -> dict[str, float]:
    """All label-based metrics for an explicit ranking (Q, L) of gallery indices, best first."""
    ranking = as_tensor(ranking, "ranking")
    if ranking.dim() != 2 or ranking.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"ranking must be an integer array (Q, L), got {ranking.dtype} {tuple(ranking.shape)}"
        )
    gl = check_labels(gallery_labels, "gallery_labels")
    ql = check_labels(query_labels, "query_labels", len(ranking))
    if ranking.numel() and (ranking.min() < 0 or ranking.max() >= len(gl)):
        raise ValueError(f"ranking holds indices outside the gallery [0, {len(gl)})")
    if ranking.shape[1] > 1:
        srt = torch.sort(ranking, dim=1).values
        repeated = (srt[:, 1:] == srt[:, :-1]).any(1)
        if repeated.any():
            raise ValueError(
                f"ranking lists a gallery item twice in {int(repeated.sum())} row(s) (first: row "
                f"{int(repeated.nonzero()[0])}); each row must rank distinct items"
            )
    sums = MetricSums(len(gl), ks)
    step = chunk_rows(len(gl))
    for start in range(
        0, len(ranking), step
    ):  # one chunk of queries at a time: no Q × G relevance table
        sl = slice(start, start + step)
        sums.add(ranks_from_ranking(ranking[sl], label_relevance(ql, gl)(sl)))
        return_freed_memory()
    return sums.result()


def pmrp(
    query,
    gallery,
    query_tags,
    gallery_tags,
    zetas: Sequence[int] = (0, 1, 2),
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> dict[str, float]:
    """PMRP: plausible-match R-precision, per ζ and averaged (PCME, Chun et al. 2021).

    An item is plausible for a query when the Hamming distance of their multi-hot vectors is ≤ ζ.

    Args:
        query: (Q, d), gallery: (G, d) features; query_tags: (Q, V), gallery_tags: (G, V) 0/1.
    Returns:
        ``{"PMRP@0": …, "PMRP@1": …, "PMRP@2": …, "PMRP": mean}``.
    """
    query = check_features(query, "query")
    gallery = check_features(gallery, "gallery", dim=query.shape[1])
    qt, gt = as_tensor(query_tags, "query_tags"), as_tensor(gallery_tags, "gallery_tags")
    if qt.shape != (len(query), gt.shape[1]) or gt.shape[0] != len(gallery):
        raise ValueError(
            f"query_tags {tuple(qt.shape)} and gallery_tags {tuple(gt.shape)} must be "
            f"({len(query)}, V) and ({len(gallery)}, V)"
        )
    out = {}
    for z in zetas:
        per_query = [
            _per_query_r_precision(rr)
            for rr in iter_relevant_ranks(
                query, gallery, hamming_relevance(qt, gt, z), metric, chunk_size
            )
        ]
        out[f"PMRP@{z}"] = torch.nanmean(torch.cat(per_query)).item()
    out["PMRP"] = float(np.mean([out[f"PMRP@{z}"] for z in zetas]))
    return out
