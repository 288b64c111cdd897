"""Exact k-nearest-neighbour search: torch (on a CPU, one matrix product and a linear-time selection
per chunk of queries), or faiss (its GPU index for features on a GPU).

Both backends return the same thing: for every query the k best gallery items, best first, with
exact ties ordered by gallery index (smaller first) — also at the k-th place, where the smallest
indices among the tied items are the ones returned (:func:`top_k_exact`) — so results are
reproducible and equal to a stable sort of each whole row. Queries are processed in chunks, so
memory stays bounded (a chunk's score table, not Q×G) even for 100k × 100k.

Similarities: ``"cosine"`` (rows L2-normalised, inner product, larger is better), ``"dot"``, and
``"euclidean"`` (squared distance, smaller is better; the returned values are squared distances).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from .fused import select_and_rank
from .metrics import (
    METRICS,
    MetricSums,
    chunk_rows,
    label_columns,
    ranks_from_scores,
    return_freed_memory,
    sorted_ascending,
)
from .parallel import map_chunks
from .validation import check_choice, check_features, check_k, check_labels, check_positive_int


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_gpu_available() -> bool:
    """faiss with its GPU build (``StandardGpuResources``) is installed."""
    if not faiss_available():
        return False
    import faiss

    return hasattr(faiss, "StandardGpuResources")


def tie_order(values: torch.Tensor, indices: torch.Tensor, larger_first: bool):
    """Re-sort each row by (value, index) so that exact ties come out by ascending gallery index."""
    if values.device.type == "cpu":  # one NumPy lexsort: several times faster than torch's sorts
        v = values.numpy()
        order = torch.from_numpy(np.lexsort((indices.numpy(), -v if larger_first else v), axis=1))
    else:  # by index first, then a stable sort by value keeps equal values in index order
        perm = torch.sort(indices, dim=1).indices
        by_index = torch.gather(values, 1, perm)
        by_value = torch.sort(-by_index if larger_first else by_index, dim=1, stable=True).indices
        order = torch.gather(perm, 1, by_value)
    return torch.gather(values, 1, order), torch.gather(indices, 1, order)


def _first_k(
    scores: torch.Tensor, kth: torch.Tensor, k: int, larger_first: bool = True
) -> torch.Tensor:
    """bool (R, G): every entry better than its row's k-th value ``kth`` (R, 1), then the entries
    equal to it in column order until the row has k — a stable argsort's first k columns."""
    better = scores > kth if larger_first else scores < kth
    tied = scores == kth
    return better | (tied & (tied.cumsum(1) <= k - better.sum(1, keepdim=True)))


def top_k_exact(
    scores: torch.Tensor, k: int, larger_first: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best entries of every row of a score block, best first, exact ties by ascending column.

    ``torch.topk`` picks *some* of the entries tied at the k-th value; a stable argsort of the whole
    row would pick the smallest columns. This gives the stable argsort's first k columns at a
    top-k search's cost: every entry strictly better than the row's k-th value, then the first
    entries equal to it in column order. On a CPU the k-th values come from NumPy's ``partition``
    (linear time, several times faster than ``torch.topk`` there); elsewhere from ``torch.topk``,
    whose rows are redone where the k-th value has more copies than it picked.

    Args:
        scores: (R, G) finite scores; k: 1 ≤ k ≤ G; larger_first: similarities (True) or distances.
    Returns:
        ``(values, columns)``, each (R, k).
    """
    r, g = scores.shape
    if scores.device.type == "cpu":
        place = g - k if larger_first else k - 1  # the k-th best's place in an ascending row
        wide = scores if scores.dtype in (torch.float32, torch.float64) else scores.float()
        kth = torch.from_numpy(np.partition(wide.numpy(), place, axis=1)[:, place : place + 1])
        return _best_k(scores, kth, k, larger_first)
    v, i = torch.topk(scores, k, dim=1, largest=larger_first)
    v, i = tie_order(v, i, larger_first)
    kth = v[:, -1:]
    redo = ((scores == kth).sum(1) != (v == kth).sum(1)).nonzero().flatten()
    if len(redo):
        s = scores[redo]
        cols = _first_k(s, kth[redo], k, larger_first).nonzero()[:, 1].view(len(redo), k)
        v[redo], i[redo] = tie_order(torch.gather(s, 1, cols), cols, larger_first)
    return v, i


def top_k_from_sorted(
    scores: torch.Tensor, ascending: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`top_k_exact` (larger first) for rows whose ascending sort is already at hand.

    The k-th largest value of a row is ``ascending[:, G − k]`` — a lookup instead of a top-k
    search.

    Args:
        scores: (R, G); ascending: (R, G) each row of ``scores`` sorted ascending; 1 ≤ k ≤ G.
    Returns:
        ``(values, columns)``, each (R, k), best first, exact ties by ascending column.
    """
    place = scores.shape[1] - k
    return _best_k(scores, ascending[:, place : place + 1].contiguous(), k, True)


@njit(nogil=True, cache=True, fastmath=True)
def _first_k_columns(scores, kth, k, out):
    """:func:`_first_k`'s columns on a CPU for larger-is-better scores, compiled: per row a
    counting pass (vectorised) and one pass taking the larger entries and the first entries equal
    to the k-th value until the row has k, in column order. (``fastmath``: the scores are finite,
    and only the count's additions are reordered.)

    Args:
        scores: float (R, G); kth: (R,) each row's k-th largest value; out: int64 (R, k), written.
    """
    n_rows, g = scores.shape
    for r in range(n_rows):
        t = kth[r]
        row = scores[r]
        better = 0
        for j in range(g):
            better += np.int64(row[j] > t)
        if better >= k:  # then kth is not the row's k-th value: never write past out's row
            raise ValueError("kth must be each row's k-th best value")
        ties = k - better  # how many entries equal to the k-th value belong to the k best
        n = 0
        for j in range(g):
            if row[j] >= t:
                if row[j] > t or ties > 0:
                    ties -= row[j] == t
                    out[r, n] = j
                    n += 1
        if n != k:  # kth was not a value of the row: never leave entries unwritten
            raise ValueError("kth must be each row's k-th best value")


def _best_k(
    scores: torch.Tensor, kth: torch.Tensor, k: int, larger_first: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best entries of each row given its k-th best value ``kth`` (R, 1): every entry at least
    as good, and where that is more than k (ties at the k-th value), the first tied ones by column.
    """
    r, g = scores.shape
    if scores.device.type == "cpu":
        # the compiled selection; half precision widened to float32 (exact and order-preserving)
        wide = scores if scores.dtype in (torch.float32, torch.float64) else scores.float()
        cols = np.empty((r, k), dtype=np.int64)
        a = np.ascontiguousarray(wide.numpy())
        t = kth.to(wide.dtype).numpy().reshape(r)
        if not larger_first:  # negation is exact: the smallest are the largest of −scores
            a, t = -a, -t
        _first_k_columns(a, t, k, cols)
        cols = torch.from_numpy(cols)
        values, cols = tie_order(torch.gather(wide, 1, cols), cols, larger_first)
        return values.to(scores.dtype), cols
    chosen = scores >= kth if larger_first else scores <= kth
    over = (chosen.sum(1) > k).nonzero().flatten()  # rows with more entries tied at the k-th value
    if len(over):
        chosen[over] = _first_k(scores[over], kth[over], k, larger_first)
    cols = chosen.nonzero()[:, 1].view(r, k)  # exactly k per row, in column order
    return tie_order(torch.gather(scores, 1, cols), cols, larger_first)


def _scores(
    q: torch.Tensor, g: torch.Tensor, metric: str, g_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """Similarities (cosine, dot) or squared Euclidean distances (Q, G) of one chunk of queries."""
    s = q @ g.T
    if metric == "euclidean":
        g_sq = (g * g).sum(1) if g_sq is None else g_sq
        s = (q**2).sum(1, keepdim=True) + g_sq.unsqueeze(0) - 2 * s
    return s


def _prepare(query, gallery, metric):
    check_choice(metric, "metric", METRICS)
    q = check_features(query, "query").float()
    g = check_features(gallery, "gallery", dim=q.shape[1]).float()
    if metric == "cosine":
        q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    return q, g


def knn_torch(q: torch.Tensor, g: torch.Tensor, k: int, metric: str, chunk_size: int) -> tuple:
    g_sq = (g * g).sum(1) if metric == "euclidean" else None
    vals, idxs = [], []
    for start in range(0, len(q), chunk_size):
        v, i = top_k_exact(
            _scores(q[start : start + chunk_size], g, metric, g_sq), k, metric != "euclidean"
        )
        vals.append(v)
        idxs.append(i)
    return torch.cat(vals), torch.cat(idxs)


def knn_faiss(q: torch.Tensor, g: torch.Tensor, k: int, metric: str, chunk_size: int) -> tuple:
    import faiss

    d = g.shape[1]
    larger_first = metric != "euclidean"
    index = faiss.IndexFlatL2(d) if metric == "euclidean" else faiss.IndexFlatIP(d)
    if q.device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), q.device.index or 0, index)
    index.add(np.ascontiguousarray(g.cpu().numpy(), dtype=np.float32))
    # one extra neighbour shows where the k-th value may be tied with items faiss left out
    extra = 1 if k < len(g) else 0
    vals, idxs = [], []
    for start in range(0, len(q), chunk_size):
        chunk = q[start : start + chunk_size]
        v, i = index.search(np.ascontiguousarray(chunk.cpu().numpy(), dtype=np.float32), k + extra)
        v, i = torch.from_numpy(v), torch.from_numpy(i)
        redo = torch.zeros(len(v), dtype=torch.bool)
        if extra:
            # faiss's kernels may round tied scores apart by an ulp: treat near-equal as tied
            redo = (v[:, k] - v[:, k - 1]).abs() <= 1e-6 * v[:, k - 1].abs().clamp_min(1.0)
        v, i = tie_order(v[:, :k], i[:, :k], larger_first)
        if redo.any():
            rows = redo.nonzero().flatten()
            v[rows], i[rows] = top_k_exact(
                _scores(chunk[rows].cpu(), g.cpu(), metric), k, larger_first
            )
        vals.append(v)
        idxs.append(i)
    return torch.cat(vals).to(q.device), torch.cat(idxs).to(q.device)


def knn_search(
    query,
    gallery,
    k: int,
    metric: str = "cosine",
    backend: str = "auto",
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest gallery items of every query.

    Args:
        query: float (Q, d); gallery: float (G, d) — numpy or torch, finite.
        k: neighbours per query, 1 ≤ k ≤ G.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        backend: ``"faiss"``, ``"torch"`` or ``"auto"``: faiss's GPU index for features on a GPU
            where faiss-gpu is installed, torch otherwise — on a CPU the torch path (a matrix
            product per chunk, NumPy's linear-time partition) searched the top 100 1.75× (20k
            items) to 2.3× (50k) faster than faiss-cpu's flat index
            (``benchmarks/results/retrieval.json``).
        chunk_size: queries per chunk (default: about 64 MB of scores per chunk).
    Returns:
        ``(values, indices)``, each (Q, k), best first: similarities (larger first) or squared
        Euclidean distances (smaller first); ties by ascending gallery index.
    """
    q, g = _prepare(query, gallery, metric)
    k = check_k(k, len(g))
    if backend == "auto":
        backend = "faiss" if q.device.type == "cuda" and faiss_gpu_available() else "torch"
    if backend not in ("faiss", "torch"):
        raise ValueError(f"backend must be 'faiss', 'torch' or 'auto', not {backend!r}")
    chunk_size = (
        max(1, min(8192, (1 << 24) // len(g)))
        if chunk_size is None
        else check_positive_int(chunk_size, "chunk_size")
    )
    if backend == "faiss":
        return knn_faiss(q, g, k, metric, chunk_size)
    return knn_torch(q, g, k, metric, chunk_size)


def search_and_evaluate(
    query,
    gallery,
    k: int,
    query_labels,
    gallery_labels,
    metric: str = "cosine",
    ks=None,
    chunk_size: int | None = None,
    workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The k nearest gallery items of every query and every label-based metric, from one pass.

    :func:`knn_search` followed by :func:`cdrlib.metrics.retrieval_metrics` computes the Q × G
    scores twice — the matrix product is most of the search's time. Here each chunk of queries is
    scored once, and its scores give both the top k (exactly as the torch backend of
    :func:`knn_search` returns them) and the ranks of the relevant items (the metrics of
    ``retrieval_metrics`` for cosine and dot; for Euclidean the ranks come from the squared
    distances, so exact ties may fall differently in the last bit).

    Args:
        query: float (Q, d); gallery: float (G, d); k: 1 ≤ k ≤ G.
        query_labels: (Q,) ints; gallery_labels: (G,) ints (relevance = same class).
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``. ks: the K of the @K metrics
            (default: those of ``DEFAULT_KS`` that fit the gallery).
        chunk_size: queries per chunk; default about 2^24 / G on a CPU (a 64 MB float32 score
            table: the compiled pass needs no other table that size, and larger chunks kept the
            two cores' matrix products efficient — 1.64× the floor at 50k against 1.96× with
            2^22 / G) and 2^22 / G on a GPU (its sort makes several tables that size).
        workers: chunks in flight at once on the CPU (default: torch's thread count), each on
            one thread (:func:`cdrlib.parallel.map_chunks`: the per-row pass after a threaded
            matrix product could not use the other cores).
    Returns:
        ``(values, indices, metrics)``: (Q, k) each as :func:`knn_search` returns them, and the
        dict of :func:`cdrlib.metrics.summarize`.
    Memory: ``workers`` chunks' scores (chunk × G each), the (Q, k) results and a few numbers
    per relevant item.
    """
    q, g = _prepare(query, gallery, metric)
    k = check_k(k, len(g))
    ql = check_labels(query_labels, "query_labels", len(q))
    gl = check_labels(gallery_labels, "gallery_labels", len(g))
    budget = 1 << 24 if q.device.type == "cpu" else 1 << 22
    step = (
        chunk_rows(len(g), budget)
        if chunk_size is None
        else check_positive_int(chunk_size, "chunk_size")
    )
    relevance = label_columns(ql.to(q.device), gl.to(q.device))
    larger_first = metric != "euclidean"
    g_sq = (g * g).sum(1) if metric == "euclidean" else None
    sums = MetricSums(len(g), ks)

    def chunk(start: int):
        sl = slice(start, min(start + step, len(q)))
        s = _scores(q[sl], g, metric, g_sq)
        if not larger_first:
            s.neg_()  # distances: the smaller the better, so rank their negatives
        if s.device.type == "cpu":  # one compiled pass per row for both
            v, i, ranks = select_and_rank(s, relevance(sl), k)
        else:  # one sort of each row serves both the top k and the ranks of the relevant items
            ascending = sorted_ascending(s)
            v, i = top_k_from_sorted(s, ascending, k)
            ranks = ranks_from_scores(s, relevance(sl), ascending=ascending)
            del ascending
        del s
        return_freed_memory()
        return (v if larger_first else v.neg_()), i, ranks

    vals, idxs = [], []
    for v, i, ranks in map_chunks(chunk, range(0, len(q), step), workers, q.device):
        vals.append(v), idxs.append(i), sums.add(ranks)  # in order: sums as in a serial loop
    return torch.cat(vals), torch.cat(idxs), sums.result()
