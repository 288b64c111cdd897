"""k-means for UCDIR's cluster-wise losses: faiss (GPU when present) with a scikit-learn fallback.

UCDIR clusters each domain's key features (niter 20, nredo 5) every epoch from the warm-up on; the
centroids are L2-normalised afterwards, since the losses compare them with normalised embeddings.
"""

from __future__ import annotations

import numpy as np
import torch

from .validation import check_features, check_ids, check_k, check_positive_int

SMALL_PROBLEM = 5_000_000  # points × clusters below which faiss k-means runs on one thread


def kmeans(
    features,
    k: int,
    niter: int = 20,
    nredo: int = 5,
    seed: int = 0,
    backend: str = "auto",
    threads: int | None = None,
):
    """Cluster the rows of ``features`` (N, d) into ``k`` groups.

    Args:
        backend: ``"faiss"``, ``"sklearn"`` or ``"auto"`` (faiss when installed).
        threads: CPU threads for the clustering. ``None``: one thread for small problems (below
            ``SMALL_PROBLEM`` points × clusters, as UCDIR's per-epoch re-clustering, which runs
            between torch steps whose threads would otherwise compete), the library's default
            otherwise. Pass the machine's core count when nothing else runs beside it.
    Returns:
        ``(centroids, labels)``: float (k, d) L2-normalised, int64 (N,) assignments to the nearest
        centroid (squared Euclidean, as k-means assigns).
    """
    x = check_features(features, "features").float().cpu()
    k = check_k(k, len(x), "k", of="the number of points")
    if threads is not None:
        check_positive_int(threads, "threads")
    if backend == "auto":
        from .search import faiss_available

        backend = "faiss" if faiss_available() else "sklearn"
    data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    if backend == "faiss":
        import faiss

        gpu = torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources")
        # min_points_per_centroid=1: UCDIR clusters ~20 points per centroid on purpose; faiss would
        # warn every epoch
        km = faiss.Kmeans(
            data.shape[1],
            k,
            niter=niter,
            nredo=nredo,
            seed=seed,
            verbose=False,
            gpu=gpu,
            min_points_per_centroid=1,
        )
        before = faiss.omp_get_max_threads()
        if threads is not None:
            faiss.omp_set_num_threads(threads)
        elif not gpu and len(data) * k < SMALL_PROBLEM:
            # Small problems (UCDIR re-clusters a few thousand points every epoch) run 10-40x faster
            # on one thread: faiss's OpenMP threads otherwise spin against torch's (measured on 2
            # cores).
            faiss.omp_set_num_threads(1)
        try:
            km.train(data)
            _, labels = km.index.search(data, 1)
        finally:
            faiss.omp_set_num_threads(before)
        centroids = km.centroids
        labels = labels[:, 0]
    elif backend == "sklearn":
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits  # installed with scikit-learn

        with threadpool_limits(limits=threads):  # None: no limit
            km = KMeans(n_clusters=k, n_init=nredo, max_iter=niter, random_state=seed).fit(data)
        centroids, labels = km.cluster_centers_, km.labels_
    else:
        raise ValueError(f"backend must be 'faiss', 'sklearn' or 'auto', not {backend!r}")
    c = torch.nn.functional.normalize(
        torch.from_numpy(np.asarray(centroids, dtype=np.float32)), dim=1
    )
    return c, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def cluster_purity(assignments, labels) -> float:
    """Analysis with labels: the share of points whose cluster's most common class is their own.

    Args:
        assignments: (N,) cluster ids; labels: (N,) class ids (evaluation labels — never for
            training).
    """
    a = torch.as_tensor(np.asarray(assignments), dtype=torch.int64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if a.shape != y.shape or a.dim() != 1:
        raise ValueError(
            f"assignments and labels must both be (N,), got {tuple(a.shape)} and {tuple(y.shape)}"
        )
    if len(a) == 0:
        raise ValueError("no points")
    a, y = check_ids(a, "assignments"), check_ids(y, "labels")  # a negative id would wrap around
    counts = torch.zeros(int(a.max()) + 1, int(y.max()) + 1, dtype=torch.int64)
    counts.index_put_((a, y), torch.ones_like(a), accumulate=True)  # (clusters, classes)
    return float(counts.max(1).values.sum()) / len(a)
