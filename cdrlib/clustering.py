"""k-means for UCDIR's cluster-wise losses: faiss (GPU when present) with a scikit-learn fallback.

UCDIR clusters each domain's key features (niter 20, nredo 5) every epoch from the warm-up on; the
centroids are L2-normalised afterwards, since the losses compare them with normalised embeddings.
"""
from __future__ import annotations

import numpy as np
import torch

from .validation import check_features, check_k


def kmeans(features, k: int, niter: int = 20, nredo: int = 5, seed: int = 0, backend: str = "auto"):
    """Cluster the rows of ``features`` (N, d) into ``k`` groups.

    Args:
        backend: ``"faiss"``, ``"sklearn"`` or ``"auto"`` (faiss when installed).
    Returns:
        ``(centroids, labels)``: float (k, d) L2-normalised, int64 (N,) assignments to the nearest
        centroid (squared Euclidean, as k-means assigns).
    """
    x = check_features(features, "features").float().cpu()
    k = check_k(k, len(x), "k", of="the number of points")
    if backend == "auto":
        from .search import faiss_available

        backend = "faiss" if faiss_available() else "sklearn"
    data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    if backend == "faiss":
        import faiss

        km = faiss.Kmeans(data.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False,
                          gpu=torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources"))
        km.train(data)
        centroids = km.centroids
        _, labels = km.index.search(data, 1)
        labels = labels[:, 0]
    elif backend == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=nredo, max_iter=niter, random_state=seed).fit(data)
        centroids, labels = km.cluster_centers_, km.labels_
    else:
        raise ValueError(f"backend must be 'faiss', 'sklearn' or 'auto', not {backend!r}")
    c = torch.nn.functional.normalize(torch.from_numpy(np.asarray(centroids, dtype=np.float32)), dim=1)
    return c, torch.from_numpy(np.asarray(labels, dtype=np.int64))
