"""Exact k-nearest-neighbour search: faiss when installed (a GPU index when a GPU is there), torch otherwise.

Both backends return the same thing: for every query the k best gallery items, best first, with
exact ties ordered by gallery index (smaller first), so results are reproducible. Queries are
processed in chunks, so memory stays bounded (a chunk's score table, not Q×G) even for 100k × 100k.

Similarities: ``"cosine"`` (rows L2-normalised, inner product, larger is better), ``"dot"``, and
``"euclidean"`` (squared distance, smaller is better; the returned values are squared distances).
"""
from __future__ import annotations

import numpy as np
import torch

from .validation import check_features, check_k

METRICS = ("cosine", "dot", "euclidean")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def tie_order(values: torch.Tensor, indices: torch.Tensor, larger_first: bool):
    """Re-sort each row by (value, index) so that exact ties come out by ascending gallery index."""
    idx_sorted, perm = torch.sort(indices, dim=1)
    vals = torch.gather(values, 1, perm)
    order = torch.sort(-vals if larger_first else vals, dim=1, stable=True).indices
    return torch.gather(vals, 1, order), torch.gather(idx_sorted, 1, order)


def _prepare(query, gallery, metric):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    q = check_features(query, "query").float()
    g = check_features(gallery, "gallery", dim=q.shape[1]).float()
    if metric == "cosine":
        q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    return q, g


def knn_torch(q: torch.Tensor, g: torch.Tensor, k: int, metric: str, chunk_size: int) -> tuple:
    larger_first = metric != "euclidean"
    g_sq = (g * g).sum(1) if metric == "euclidean" else None
    vals, idxs = [], []
    for start in range(0, len(q), chunk_size):
        s = q[start:start + chunk_size] @ g.T
        if metric == "euclidean":
            s = (q[start:start + chunk_size] ** 2).sum(1, keepdim=True) + g_sq.unsqueeze(0) - 2 * s
            v, i = torch.topk(-s, k, dim=1)
            v = -v
        else:
            v, i = torch.topk(s, k, dim=1)
        v, i = tie_order(v, i, larger_first)
        vals.append(v)
        idxs.append(i)
    return torch.cat(vals), torch.cat(idxs)


def knn_faiss(q: torch.Tensor, g: torch.Tensor, k: int, metric: str, chunk_size: int) -> tuple:
    import faiss

    d = g.shape[1]
    index = faiss.IndexFlatL2(d) if metric == "euclidean" else faiss.IndexFlatIP(d)
    if q.device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), q.device.index or 0, index)
    index.add(np.ascontiguousarray(g.cpu().numpy(), dtype=np.float32))
    vals, idxs = [], []
    for start in range(0, len(q), chunk_size):
        v, i = index.search(np.ascontiguousarray(q[start:start + chunk_size].cpu().numpy(), dtype=np.float32), k)
        v, i = tie_order(torch.from_numpy(v), torch.from_numpy(i), metric != "euclidean")
        vals.append(v)
        idxs.append(i)
    return torch.cat(vals).to(q.device), torch.cat(idxs).to(q.device)


def knn_search(query, gallery, k: int, metric: str = "cosine", backend: str = "auto",
               chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest gallery items of every query.

    Args:
        query: float (Q, d); gallery: float (G, d) — numpy or torch, finite.
        k: neighbours per query, 1 ≤ k ≤ G.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        backend: ``"faiss"``, ``"torch"`` or ``"auto"`` (faiss when installed).
        chunk_size: queries per chunk (default: about 64 MB of scores per chunk).
    Returns:
        ``(values, indices)``, each (Q, k), best first: similarities (larger first) or squared
        Euclidean distances (smaller first); ties by ascending gallery index.
    """
    q, g = _prepare(query, gallery, metric)
    k = check_k(k, len(g))
    if backend == "auto":
        backend = "faiss" if faiss_available() else "torch"
    if backend not in ("faiss", "torch"):
        raise ValueError(f"backend must be 'faiss', 'torch' or 'auto', not {backend!r}")
    chunk_size = chunk_size or max(1, min(8192, (1 << 24) // len(g)))
    if backend == "faiss":
        return knn_faiss(q, g, k, metric, chunk_size)
    return knn_torch(q, g, k, metric, chunk_size)
