"""UCDIR's losses (Hu & Lee, ECCV 2022): instance-wise, cluster-wise, self-entropy,
distance-of-distance.

Notation: ``q`` (B, d) are L2-normalised embeddings of the query encoder, ``k`` of the momentum
(key) encoder, ``bank`` (N, d) the domain's memory bank (one key per image id), ``centroids``
(K, d) the domain's L2-normalised k-means centroids, ``T`` a temperature.

The training loop, memory banks and clustering that feed these are :mod:`cdrlib.ucdir_train`;
the book's notation page writes every loss out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .sinkhorn import sinkhorn


def instance_wise_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    bank: torch.Tensor,
    ids: torch.Tensor,
    temperature: float = 0.2,
) -> torch.Tensor:
    """L_IW: InfoNCE with the own key as positive and the bank minus the own entry as negatives.

    Args:
        q, k: (B, d); bank: (N, d); ids: (B,) the images' indices in the bank.
    """
    pos = (q * k).sum(1, keepdim=True)  # (B, 1)
    neg = q @ bank.T  # (B, N)
    neg = neg.scatter(1, ids.view(-1, 1), float("-inf"))  # the own id is not a negative
    logits = torch.cat([pos, neg], dim=1) / temperature
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()


def cluster_confidence(
    k: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """softmax(k · Cᵀ / T) at each anchor's own cluster, (B,)."""
    return (
        torch.softmax(k @ centroids.T / temperature, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    )


def cluster_wise_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    labels: torch.Tensor,
    centroids: torch.Tensor,
    temperature: float = 0.2,
    threshold: float = 0.2,
) -> torch.Tensor:
    """L_CW: −mean over the bank entries of the anchor's cluster of log softmax(q · bank / T).

    Only anchors whose key is confidently in its cluster (:func:`cluster_confidence` > threshold)
    count; the loss is 0 when none does.

    Args:
        bank_labels: (N,) cluster of every bank entry; labels: (B,) cluster of each anchor.
    """
    log_p = torch.log_softmax(q @ bank.T / temperature, dim=1)  # (B, N)
    same = (labels.view(-1, 1) == bank_labels.view(1, -1)).to(log_p)  # positives
    per_anchor = -(log_p * same).sum(1) / same.sum(1).clamp(min=1)
    keep = cluster_confidence(k, centroids, labels, temperature) > threshold
    return per_anchor[keep].mean() if keep.any() else q.sum() * 0


def self_entropy(q: torch.Tensor, centroids: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean entropy of softmax(q · Cᵀ / τ) over the batch."""
    log_p = torch.log_softmax(q @ centroids.T / tau, dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


def self_entropy_loss(
    q_a: torch.Tensor, q_b: torch.Tensor, c_a: torch.Tensor, c_b: torch.Tensor, tau: float = 0.01
) -> torch.Tensor:
    """L_SE: the four terms (queries of A and of B, against the centroids of A and of B),
    averaged."""
    return (
        self_entropy(q_a, c_a, tau)
        + self_entropy(q_a, c_b, tau)
        + self_entropy(q_b, c_a, tau)
        + self_entropy(q_b, c_b, tau)
    ) / 4


def _pattern_distances(q: torch.Tensor, centroids: torch.Tensor, tau: float) -> torch.Tensor:
    """D[i, j] = 1 − cos(P[i], P[j]) with P = softmax(q Cᵀ / τ): (B, B)."""
    p = F.normalize(torch.softmax(q @ centroids.T / tau, dim=1), dim=1)
    return 1 - p @ p.T


def dod_loss_batch(
    q_a: torch.Tensor, q_b: torch.Tensor, c_a: torch.Tensor, c_b: torch.Tensor, tau: float = 0.01
) -> torch.Tensor:
    """Distance-of-distance, the batch form (``dod="batch"``): the official code's, with no
    matching of centroids.

    For the queries of each domain, the distance patterns of the batch measured against A's
    centroids and against B's must agree: mean_i ‖D_A[i] − D_B[i]‖², for A's and B's queries,
    averaged. Cluster order never matters: only distances between batch items are compared.
    """
    out = 0.0
    for q in (q_a, q_b):
        diff = _pattern_distances(q, c_a, tau) - _pattern_distances(q, c_b, tau)
        out = out + diff.pow(2).sum(1).mean()
    return out / 2


def match_centroids(
    c_a: torch.Tensor, c_b: torch.Tensor, eps: float = 0.05, max_iter: int = 1000
) -> torch.Tensor:
    """The centroid form's matching: entropic OT between the centroids (uniform 1/K, cost ‖c_i −
    c_j‖²), then each centroid of A is matched to the centroid of B with the largest plan entry.
    Returns π (K,)."""
    # only each row's argmax is used: a plan whose marginals are off by 1e-5 gives the same one
    plan = sinkhorn(torch.cdist(c_a, c_b) ** 2, eps=eps, max_iter=max_iter, warn=False).plan
    return plan.argmax(dim=1)


def dod_loss_centroid(
    c_a: torch.Tensor,
    c_b: torch.Tensor,
    matching: torch.Tensor | None = None,
    eps: float = 0.05,
    reduction: str = "sum",
) -> torch.Tensor:
    """Distance-of-distance, the centroid form (``dod="centroid"``):
    ``Σ_ij abs(d(c_i^A, c_j^A) − d(c_π(i)^B, c_π(j)^B))``.

    Args:
        c_a, c_b: (K, d) centroids; matching: π (K,), default :func:`match_centroids` (on detached
            centroids: the matching is a discrete choice, the gradient flows through the distances).
        reduction: ``"sum"`` over all K² pairs, as written; ``"mean"`` divides by K², so that the
            loss weight need not change with K (what training uses).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    pi = match_centroids(c_a.detach(), c_b.detach(), eps) if matching is None else matching
    # cdist's gradient is NaN at zero distance (the diagonal): compute the distances from the Gram
    # matrix
    d_a = _pairwise_distances(c_a)
    d_b = _pairwise_distances(c_b[pi])
    out = (d_a - d_b).abs()
    return out.sum() if reduction == "sum" else out.mean()


def _pairwise_distances(c: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (K, K) between rows, with a finite gradient everywhere.

    sqrt's gradient is infinite at 0: on the diagonal, and wherever two rows coincide — two empty
    clusters, or a head that has collapsed its centroids (a tiny run on another torch version
    turned that into NaN weights). Squared distances are floored at 1e-12 (a distance of 1e-6).
    """
    sq = (c * c).sum(1)
    d2 = (sq.view(-1, 1) + sq.view(1, -1) - 2 * c @ c.T).clamp(min=1e-12)
    eye = torch.eye(len(c), dtype=torch.bool, device=c.device)
    return torch.where(eye, torch.zeros_like(d2), d2.sqrt())


def cluster_centroids(z: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """L2-normalised cluster means (k, d) of embeddings z (N, d) with cluster ids labels (N,) in
    [0, k); an empty cluster gives a zero row.

    The centroid form's *exact* centroids (``dod="centroid_exact"``): every training image
    through the current encoder, so the loss's gradient reaches each image's embedding, where
    :func:`batch_centroids` lets it reach only the batch's B of N entries.
    """
    sums = torch.zeros(k, z.shape[1], dtype=z.dtype, device=z.device).index_add(0, labels, z)
    return F.normalize(sums, dim=1)


def batch_centroids(
    bank: torch.Tensor, bank_labels: torch.Tensor, ids: torch.Tensor, q: torch.Tensor, k: int
) -> torch.Tensor:
    """Cluster centroids (k, d) of a memory bank whose batch entries are replaced by the current
    queries.

    The k-means centroids are constants of the step; these are the same clusters seen through the
    current query encoder, so a loss on them reaches the network. L2-normalised like the k-means
    centroids; an empty cluster gives a zero row.

    Args:
        bank: (N, d); bank_labels: (N,) cluster of each entry; ids: (B,) the batch's bank ids
            (distinct);
        q: (B, d) the batch's queries; k: number of clusters.
    """
    sums = torch.zeros(k, bank.shape[1], dtype=bank.dtype, device=bank.device).index_add_(
        0, bank_labels, bank
    )
    sums = sums.index_add(0, bank_labels[ids], q - bank[ids])
    return F.normalize(sums, dim=1)
