"""ICFRR — iterative cluster-free re-ranking (Hudson & Smith, arXiv 2303.17703), sparse and exact.

The idea: a query's strong matches vote for the gallery items that *they* rank highly. With
``qg`` (Q×G) query–gallery and ``gg`` (G×G) gallery–gallery Euclidean distances:

1. each query sorts the gallery by distance: ranking π and sorted scores v = −qg (descending);
2. gallery item g gives item j the weight ``w[R[g, j]]``, where ``R[g, j]`` is j's position in
   g's own ranking minus 1 (g itself: −1) and ``w[r] = 1 − r/(G−1)`` for ``0 ≤ r < KG``, else 0;
3. ``n_iter`` times: ``Δ(j) = (1/KQ) Σ_{g in the top KQ of π} w[R[g, j]]``, then re-rank:

   * ``variant="official"`` — the official code: the score at position p becomes
     ``v[p] + β Δ(π[p])``; v is the *original* sorted score vector and is never updated, so an item
     gets its bonus on top of the score of the position it currently holds;
   * ``variant="paper"`` — the paper's accumulating form, per item: ``s ← s + β Δ``, ``s⁰ = −qg``.

Because w vanishes beyond rank KG, only the KG nearest neighbours of each gallery item carry
weight: ``Δ_q = (1/KQ) Σ_{g ∈ top-KQ(q)} W[g, :]`` with W sparse (KG entries per row). One
iteration costs Q·KQ·KG, the neighbour lists G·KG memory — never the G×G rank table of the
official code. Queries are processed in chunks, so memory is bounded for any Q.

On a CPU each chunk's iterations run as a few compiled passes and one NumPy sort per iteration
(:mod:`cdrlib.rerank_kernels`) — of each row's head only, when only the first places of the
rankings are returned and the official update is used (:func:`head_thresholds`) — and the
neighbour lists of a distance matrix come from a compiled one-pass selection; on a GPU both are
torch operations (:class:`Voter`, stable sorts of whole rows, :func:`cdrlib.search.top_k_exact`).
The two give the same rankings.

:func:`icfrr_dense` is the slow reference written straight from the specification (full rank table,
a loop over queries); tests and the benchmark compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import rerank_kernels as kernels
from .parallel import map_chunks
from .progress import progress
from .search import knn_search, top_k_exact
from .validation import check_features, check_k, check_positive_int, non_finite_error

VARIANTS = ("official", "paper")
# A CPU chunk's arrays take about 50 bytes per query–item; keeping about 2^16 query–items in a
# chunk keeps them in the core's caches between the passes. Measured (G = 20k, Q = 1000, KG = KQ =
# 256, 2 cores): 4 queries a chunk ran 1.6x faster than 64; at G = 1000, 64 was best; below 4 a
# chunk's fixed costs (its distance product, its first sort) dominate.
CPU_CHUNK_ITEMS = 1 << 16


@dataclass
class GalleryNeighbours:
    """The sparse form of the weights: for each gallery item its KG nearest others and their
    weights.

    Attributes:
        index: int64 or int32 (G, KG), positions 1…KG of each item's own ranking (position 0 —
            itself — dropped).
        weight: float (KG,), ``1 − r/(G−1)`` for r = 0…KG−1 (the same for every row).
    """

    index: torch.Tensor
    weight: torch.Tensor

    @property
    def gallery_size(self) -> int:
        return self.index.shape[0]


def _weights(kg: int, g: int, dtype, device) -> torch.Tensor:
    return 1.0 - torch.arange(kg, dtype=dtype, device=device) / (g - 1)


def neighbours_from_distances(
    gg: torch.Tensor, kg: int, workers: int | None = None
) -> GalleryNeighbours:
    """Sparse weights from a gallery–gallery distance matrix (G, G), by chunks of rows.

    Each row's KG + 1 nearest (itself first) with exact ties in gallery order, also at the KG
    boundary — the first KG + 1 entries of a stable argsort of the row. On a CPU (float32 or
    float64) a compiled pass per row selects them (:func:`cdrlib.rerank_kernels.nearest_candidates`;
    chunks side by side, :func:`cdrlib.parallel.map_chunks`) and finds NaN and infinities on the
    way; elsewhere :func:`cdrlib.search.top_k_exact` after a finiteness check.
    """
    g = gg.shape[0]
    step = max(1, (1 << 22) // g)
    compiled = gg.device.type == "cpu" and gg.dtype in (torch.float32, torch.float64)
    if not compiled:
        check_features(gg, "gg", products=False)
    # on a CPU, NaN and infinities are found in the selection's own pass over each row

    def chunk(s: int) -> torch.Tensor:
        block = gg[s : s + step]
        if compiled:
            return _nearest_compiled(block.contiguous(), kg + 1)
        return top_k_exact(block, kg + 1, larger_first=False)[1], 0

    rows, bad = zip(*map_chunks(chunk, range(0, g, step), workers, gg.device), strict=True)
    if sum(bad):
        raise non_finite_error("gg", sum(bad))
    return GalleryNeighbours(torch.cat(rows)[:, 1:], _weights(kg, g, gg.dtype, gg.device))


def _nearest_compiled(d: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """The first k columns of a stable ascending argsort of each row of d (R, G), on a CPU:
    candidates under a sampled threshold, their keys sorted by NumPy
    (:func:`cdrlib.rerank_kernels.nearest_candidates`). Also returns how many rows hold NaN or
    an infinity (their columns are then meaningless: the caller raises)."""
    a = d.numpy()
    keys = np.empty(a.shape, dtype=np.uint64)
    counts = kernels.nearest_candidates(a, k, a.view(f"i{a.itemsize}"), keys.view(np.int64))
    bad = int((counts < 0).sum())
    if bad:
        return torch.empty((len(a), k), dtype=torch.int64), bad
    m = int(counts.max())
    head = keys[:, :m]
    head[np.arange(m) >= counts[:, None]] = np.iinfo(np.uint64).max  # after every candidate
    head.sort(axis=1)
    out = np.empty((len(a), k), dtype=np.int64)
    for r in np.flatnonzero(kernels.read_nearest(head, counts, a, out)):
        out[r] = np.argsort(a[r], kind="stable")[:k]
    return torch.from_numpy(out), 0


def neighbours_from_features(
    gallery: torch.Tensor, kg: int, backend: str = "auto"
) -> GalleryNeighbours:
    """Sparse weights from gallery features (L2-normalised inside): no G×G matrix is ever formed."""
    _, idx = knn_search(gallery, gallery, kg + 1, metric="cosine", backend=backend)
    return GalleryNeighbours(
        idx[:, 1:].to(gallery.device), _weights(kg, len(gallery), gallery.dtype, gallery.device)
    )


def _euclidean_normalised(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between L2-normalised rows: sqrt(2 − 2 cos)."""
    return (2 - 2 * q @ g.T).clamp_min(0).sqrt()


class Voter:
    """Δ for a chunk of queries, kept up to date across iterations.

    The first call sums the KQ sparse weight rows of every query's top items; later calls only add
    the rows of items that entered the top KQ and subtract those of items that left it, so an
    iteration costs in proportion to how much the top KQ changed.
    """

    def __init__(self, nb: GalleryNeighbours, c: int, kq: int):
        self.nb, self.c, self.kq, self.g = nb, c, kq, nb.gallery_size
        self.total = None  # (C·G,) running sum of the top items' weight rows, in units of 1/(G−1)
        self.in_top = None  # (C, G) bool
        # Every weight is 1 − r/(G−1) = (G−1−r)/(G−1): the votes are summed as exact integers
        # G−1−r (at most KQ·(G−1) per entry) and scaled once. int32 halves the scatter's and the
        # gathers' memory traffic against float64, and the sums no longer depend on their order.
        kg = nb.index.shape[1]
        self.dtype = torch.int32 if kq * (self.g - 1) < 2**31 else torch.int64
        self.scale = 1.0 / (self.g - 1)
        # the weights repeat every KG entries: one long copy, sliced per call, instead of a new one
        self.values = (
            (self.g - 1 - torch.arange(kg, device=nb.index.device)).to(self.dtype).repeat(c * kq)
        )

    def _add(self, rows: torch.Tensor, items: torch.Tensor, sign: float) -> None:
        # index_select + one flat index_add_ over (row, column) ids: the fastest form measured on
        # CPU, several times faster than advanced indexing and a row-wise scatter_add_.
        cols = torch.index_select(self.nb.index, 0, items)  # (n, KG), int32 where it fits
        cols += (rows * self.g).to(cols.dtype).unsqueeze(1)
        vals = self.values[: cols.numel()]
        self.total.index_add_(0, cols.view(-1), vals if sign > 0 else -vals)

    def sums(self, top: torch.Tensor) -> torch.Tensor:
        """(C, KQ) top items → KQ·(G−1)·Δ (C, G), their weight rows' integer sum (a view; no
        copy)."""
        dev = top.device
        mask = torch.zeros(self.c, self.g, dtype=torch.bool, device=dev).scatter_(1, top, True)
        if self.total is None:
            self.total = torch.zeros(self.c * self.g, dtype=self.dtype, device=dev)
            rows = torch.arange(self.c, device=dev).repeat_interleave(top.shape[1])
            self._add(rows, top.reshape(-1), +1.0)
        else:
            for changed, sign in ((mask & ~self.in_top, +1.0), (self.in_top & ~mask, -1.0)):
                rows, items = changed.nonzero(as_tuple=True)
                if len(items):
                    self._add(rows, items, sign)
        self.in_top = mask
        return self.total.view(self.c, self.g)

    def __call__(self, top: torch.Tensor) -> torch.Tensor:
        """(C, KQ) top items → Δ (C, G), the mean of their sparse weight rows."""
        return self.sums(top).to(self.nb.weight.dtype) * (self.scale / self.kq)


def vote_delta(top: torch.Tensor, nb: GalleryNeighbours, kq: int) -> torch.Tensor:
    """Δ for a chunk: (C, KQ) top items → (C, G) mean of their sparse weight rows (the chapter's
    view)."""
    return Voter(nb, top.shape[0], kq)(top)


def _sort_keys(keys: np.ndarray, scores: np.ndarray, pi, through, out: np.ndarray) -> None:
    """Sort ordering keys (C, G) in place and write the ranking they give to ``out``.

    ``through``: the keys' low bits are positions of this ranking (the official update), or None:
    gallery indices. Rows whose keys could not separate two scores take a stable argsort.
    """
    keys.sort(axis=1)
    redo = kernels.read_order(keys.view(np.int64), scores, pi, through is not None, out)
    for r in np.flatnonzero(redo):
        order = np.argsort(-scores[r], kind="stable")
        out[r] = order if through is None else through[r][order]


def head_thresholds(v: np.ndarray, m: int, remaining: int, beta: float) -> np.ndarray:
    """Per row, the score below which a position of the official update can no longer reach the
    first m places within ``remaining`` updates (the present one included) — the bound that lets
    the update order only the head of each row when only the top of the ranking is returned.

    Why it holds (β ≥ 0): an update gives the item at position p the score ``v[p] + βΔ`` with
    0 ≤ Δ ≤ 1, so every score is at least its position's base ``v[p]``; an item scoring u is then
    placed at or below every position whose base exceeds u, and its new base is at most u. A base
    thus rises by at most β per update, and an item scoring below ``v[m−1] − (remaining − 1)·β``
    now stays below ``v[m−1]`` — outside the first m places — through every later update. The
    items below the threshold also stay below every item above it, so the head's order, sorted
    alone, is the full sort's, and its size is at least m. A small margin covers rounding.

    Args:
        v: float (C, G), each row's original scores sorted descending; m: 1 ≤ m ≤ G.
    Returns:
        float64 (C,): the thresholds (−inf when β < 0, where the bound does not hold).
    """
    if beta < 0:
        return np.full(len(v), -np.inf)
    eps = 2.0**-16  # far above the float32 rounding of v + β·Δ, which is what it covers
    rise = beta * (1 + eps) + eps * (1 + np.abs(v).max(axis=1))
    return v[:, m - 1].astype(np.float64) - (remaining - 1) * rise


def _order_head(keys, counts, active, tau, scores, pi, out) -> None:
    """Sort each row's head keys (the first ``counts[r]``, see
    :func:`cdrlib.rerank_kernels.order_keys_official`) and write the new ranking to ``out``;
    heads whose keys could not separate two scores take a stable argsort."""
    m = int(counts.max())
    head = keys[:, :m]
    if int(counts.min()) < m:
        head[np.arange(m) >= counts[:, None]] = np.iinfo(np.uint64).max  # after every key
    head.sort(axis=1)
    redo = kernels.read_head(keys.view(np.int64), counts, active, tau, scores, pi, out)
    for r in np.flatnonzero(redo):
        place = np.flatnonzero(scores[r, : active[r]] >= tau[r])
        out[r, : len(place)] = pi[r, place[np.argsort(-scores[r, place], kind="stable")]]


def _argsort_desc_compiled(scores: torch.Tensor) -> torch.Tensor:
    """argsort(scores, dim=1, descending, stable) of a float32 or float64 CPU block (R, G), by
    ordering keys (:mod:`cdrlib.rerank_kernels`) — the first ranking of every query."""
    a = np.ascontiguousarray(scores.numpy())
    keys = np.empty(a.shape, dtype=np.uint64)
    out = np.empty(a.shape, dtype=np.int64)
    none = np.zeros(a.shape, dtype=np.int32)  # no votes: the keys of the scores themselves
    one = a.dtype.type(1.0)
    kernels.order_keys_paper(a, none, one, one, a.view(f"i{a.itemsize}"), keys.view(np.int64))
    _sort_keys(keys, a, out, None, out)
    return torch.from_numpy(out)


def _rerank_chunk_compiled(
    dist: torch.Tensor,
    nb: GalleryNeighbours,
    kq: int,
    beta: float,
    n_iter: int,
    variant: str,
    keep: int,
) -> torch.Tensor:
    """:func:`_rerank_chunk` on a CPU: per iteration three compiled passes and one NumPy sort
    (:mod:`cdrlib.rerank_kernels`). With ``keep`` < G the official update sorts only the head
    of each row that can still reach the first max(KQ, keep) places (the first ``keep`` in the
    last iteration; :func:`head_thresholds`): the first ``keep`` of the result are exact, the
    rest is not a ranking."""
    c, g = dist.shape
    neg = (-dist).numpy()  # a new array: the paper variant accumulates its scores in it
    pi = _argsort_desc_compiled(torch.from_numpy(neg)).numpy()
    if n_iter == 0:
        return torch.from_numpy(pi)
    ftype = neg.dtype.type
    unit, beta_t = ftype((1.0 / (g - 1)) / kq), ftype(beta)
    index = np.ascontiguousarray(nb.index.numpy())
    total_dtype = np.int32 if kq * (g - 1) < 2**31 else np.int64
    total = np.zeros((c, g), dtype=total_dtype)  # KQ·(G−1)·Δ, exact integers
    values = (g - 1 - np.arange(index.shape[1])).astype(total_dtype)
    in_top = np.zeros((c, g), dtype=bool)
    top_prev = np.empty((c, kq), dtype=np.int64)
    keys = np.empty((c, g), dtype=np.uint64)
    signed = np.dtype(f"i{neg.itemsize}")
    if variant == "official":
        v = np.take_along_axis(neg, pi, axis=1)  # sorted original scores, never updated
        scores = np.empty_like(v)
    else:
        scores = neg  # s
    nxt = np.empty_like(pi)
    active = np.full(c, g, dtype=np.int64)  # per row, the positions still in play
    whole = np.full(c, -np.inf)
    for it in range(n_iter):
        kernels.update_votes(total, in_top, top_prev, pi, kq, index, values, it == 0)
        if variant == "official":
            last = it == n_iter - 1
            tau = (
                head_thresholds(v, keep if last else max(kq, keep), n_iter - it, beta)
                if keep < g
                else whole
            )
            counts = kernels.order_keys_official(
                v,
                total,
                pi,
                unit,
                beta_t,
                tau,
                active,
                scores,
                scores.view(signed),
                keys.view(np.int64),
            )
            _order_head(keys, counts, active, tau, scores, pi, nxt)
            active = counts
        else:
            kernels.order_keys_paper(
                scores, total, unit, beta_t, scores.view(signed), keys.view(np.int64)
            )
            _sort_keys(keys, scores, pi, None, nxt)
        pi, nxt = nxt, pi
    return torch.from_numpy(pi)


def _argsort_desc(scores: torch.Tensor) -> torch.Tensor:
    """argsort(scores, dim=1, descending), equal scores in index order (a stable sort)."""
    return torch.argsort(scores, dim=1, descending=True, stable=True)


def _rerank_chunk_torch(
    dist: torch.Tensor, nb: GalleryNeighbours, kq: int, beta: float, n_iter: int, variant: str
) -> torch.Tensor:
    """:func:`_rerank_chunk` in torch operations, for a GPU: Δ by :class:`Voter`, a full stable
    sort per iteration."""
    pi = _argsort_desc(-dist)
    vote = Voter(nb, dist.shape[0], kq)
    if variant == "official":
        v = torch.gather(-dist, 1, pi)  # sorted original scores, never updated
        for _ in range(n_iter):
            # v[p] + β Δ(π[p]), rounded step by step as the reference does
            pos_scores = v + beta * torch.gather(vote(pi[:, :kq]), 1, pi)
            pi = torch.gather(pi, 1, _argsort_desc(pos_scores))
    else:
        s = -dist.clone()
        for _ in range(n_iter):
            s = s + beta * vote(pi[:, :kq])
            pi = _argsort_desc(s)  # equal scores by gallery index, as the paper's full re-sort
    return pi


def _rerank_chunk(
    dist: torch.Tensor,
    nb: GalleryNeighbours,
    kq: int,
    beta: float,
    n_iter: int,
    variant: str,
    keep: int,
) -> torch.Tensor:
    """Re-rank one chunk of queries from their distances (C, G); returns the first ``keep``
    places of the final π (C, keep)."""
    if dist.device.type == "cpu":
        return _rerank_chunk_compiled(dist, nb, kq, beta, n_iter, variant, keep)[:, :keep]
    return _rerank_chunk_torch(dist, nb, kq, beta, n_iter, variant)[:, :keep]


def _check(kq: int, kg: int, g: int, beta: float, n_iter: int, variant: str) -> None:
    if g < 2:
        raise ValueError("ICFRR needs a gallery of at least 2 items")
    check_k(kq, g, "kq")
    check_k(kg, g - 1, "kg")  # each item has G − 1 others
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    if not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    if not np.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")


def icfrr(
    qg=None,
    gg=None,
    *,
    query=None,
    gallery=None,
    kg: int = 256,
    kq: int = 250,
    beta: float = 0.5,
    n_iter: int = 5,
    variant: str = "official",
    keep: int | None = None,
    chunk_size: int | None = None,
    device=None,
    workers: int | None = None,
) -> torch.Tensor:
    """Re-rank a gallery for every query with ICFRR.

    Give either distances ``qg`` (Q, G) and ``gg`` (G, G), or features ``query`` (Q, d) and
    ``gallery`` (G, d) — then distances are Euclidean on L2-normalised features, computed a chunk
    at a time, and the neighbour lists come from :func:`cdrlib.search.knn_search`, so no G×G matrix
    exists anywhere.

    Args:
        kg: KG, neighbours of each gallery item that carry weight (≤ G − 1).
        kq: KQ, top items of each query that vote (≤ G).
        beta: β, the weight of the bonus.
        n_iter: iterations (0 returns the original ranking).
        variant: ``"official"`` (the official code's update) or ``"paper"`` (accumulating scores).
        keep: return only the first ``keep`` positions of each ranking (default: all G). The result
            takes 8·Q·keep bytes — 8 GB for all of a 100k gallery and 10k queries — so pass ``keep``
            (e.g. 100 for P@100 and mAP@100) when the gallery is large. On a CPU the official
            update then sorts only the head of each row that can still reach those places
            (:func:`head_thresholds`).
        chunk_size: queries processed together (memory ≈ chunk_size · (G · 50 + KQ · KG · 16)
            bytes). Default on a CPU: 2^16 / G, between 4 and 64, so that a chunk stays in the
            caches (:data:`CPU_CHUNK_ITEMS`); on a GPU 64.
        workers: chunks in flight at once on a CPU (default: torch's thread count), each on one
            thread (:func:`cdrlib.parallel.map_chunks`); memory grows with it.
    Returns:
        int64 (Q, keep or G): gallery indices, best first.
    """
    if (
        (qg is None) == (query is None)
        or (qg is None) != (gg is None)
        or (query is None) != (gallery is None)
    ):
        raise ValueError("give either qg= and gg= (distances) or query= and gallery= (features)")
    if qg is not None:
        qg = check_features(qg, "qg", products=False)
        # gg's NaN and infinities: found by the neighbour lists' pass over it
        gg = check_features(gg, "gg", products=False, finite=False)
        if gg.shape[0] != gg.shape[1] or gg.shape[0] != qg.shape[1]:
            raise ValueError(
                f"gg must be (G, G) with G = qg.shape[1] = {qg.shape[1]}, got {tuple(gg.shape)}"
            )
        g = gg.shape[0]
    else:
        query = check_features(query, "query")
        gallery = check_features(gallery, "gallery", dim=query.shape[1])
        g = gallery.shape[0]
    _check(kq, kg, g, beta, n_iter, variant)
    keep = g if keep is None else check_k(keep, g, "keep")
    dev = torch.device(device) if device is not None else (qg if qg is not None else query).device
    if chunk_size is None:
        chunk_size = min(64, max(4, CPU_CHUNK_ITEMS // g)) if dev.type == "cpu" else 64
    check_positive_int(chunk_size, "chunk_size")

    # the compiled CPU passes take float32 and float64: half precision is re-ranked in float32
    wide = torch.float32 if dev.type == "cpu" else None
    if qg is not None:
        if wide is not None and qg.dtype not in (torch.float32, torch.float64):
            qg, gg = qg.to(wide), gg.to(wide)
        qg, gg = qg.to(dev), gg.to(dev)
        nb = neighbours_from_distances(gg, kg)
        n_q = qg.shape[0]
    else:
        if wide is not None and query.dtype not in (torch.float32, torch.float64):
            query, gallery = query.to(wide), gallery.to(wide)
        query = torch.nn.functional.normalize(query.to(dev), dim=1)
        gallery = torch.nn.functional.normalize(gallery.to(dev), dim=1)
        nb = neighbours_from_features(gallery, kg)
        n_q = query.shape[0]
    # int32 neighbour ids (when every flat id of a chunk fits) halve the voter's index traffic
    index_dtype = torch.int32 if min(chunk_size, n_q) * g < 2**31 else torch.int64
    nb = GalleryNeighbours(nb.index.to(dev, index_dtype), nb.weight.to(dev))
    out = torch.empty(n_q, keep, dtype=torch.int64)

    def chunk(s: int) -> torch.Tensor:
        dist = (
            qg[s : s + chunk_size]
            if qg is not None
            else _euclidean_normalised(query[s : s + chunk_size], gallery)
        )
        return _rerank_chunk(dist, nb, kq, beta, n_iter, variant, keep).cpu()

    starts = range(0, n_q, chunk_size)
    done = map_chunks(chunk, starts, workers, dev)  # side by side on a CPU, one chunk per core
    for s, pi in zip(starts, progress(done, total=len(starts), desc="ICFRR"), strict=True):
        out[s : s + chunk_size] = pi
    return out


def dense_weight_table(gg: torch.Tensor, kg: int) -> torch.Tensor:
    """The official code's dense table ``w[R[g, j]]`` (G, G): memory G², what the sparse form
    avoids."""
    g = gg.shape[0]
    order = torch.argsort(gg, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(g).expand(g, -1).contiguous())
    rank -= 1  # R[g, j]: position − 1, self −1
    w = torch.zeros(g, dtype=gg.dtype)  # w[r] for r = −1 … G−2, stored at r + 1
    r = torch.arange(g - 1)
    w[1:] = torch.where(r < kg, 1.0 - r.to(gg.dtype) / (g - 1), torch.zeros((), dtype=gg.dtype))
    return w[rank + 1]


def icfrr_dense(
    qg: torch.Tensor,
    gg: torch.Tensor,
    kg: int = 256,
    kq: int = 250,
    beta: float = 0.5,
    n_iter: int = 5,
    variant: str = "official",
    weight_table: torch.Tensor | None = None,
) -> torch.Tensor:
    """The slow reference, straight from the specification: full G×G rank table, a loop over
    queries.

    Memory G² (the rank table); time Q·n_iter·KQ·G. Used by the tests and the benchmark, which
    may pass a precomputed ``weight_table`` (:func:`dense_weight_table`). Returns int64 (Q, G).
    """
    g = gg.shape[0]
    _check(kq, kg, g, beta, n_iter, variant)
    table = dense_weight_table(gg, kg) if weight_table is None else weight_table
    # Each weight is (G−1−r)/(G−1). Summing the integer numerators and dividing once gives every Δ
    # as the exact mean rounded once, so Δs that are equal in exact arithmetic compare equal: with
    # float weights the sum's rounding depends on the order, and an exact tie can come out either
    # way after the paper variant accumulates it over iterations.
    numerators = torch.round(table * (g - 1)).to(torch.int64)
    unit = (1.0 / (g - 1)) / kq
    out = torch.empty(qg.shape, dtype=torch.int64)
    for q in range(qg.shape[0]):
        pi = torch.argsort(qg[q], stable=True)
        v = -qg[q][pi]
        s = -qg[q].clone()
        for _ in range(n_iter):
            # Δ(j), the mean weight over the current top KQ
            delta = numerators[pi[:kq]].sum(0).to(qg.dtype) * unit
            if variant == "official":
                pi = pi[torch.argsort(-(v + beta * delta[pi]), stable=True)]
            else:
                s = s + beta * delta
                pi = torch.argsort(-s, stable=True)
        out[q] = pi
    return out
