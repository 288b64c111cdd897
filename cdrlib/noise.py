"""IBNM's noise mitigation: which pseudo-labels to trust, and what to do with the others (IBNM,
SIGIR 2024 submission).

* :func:`prediction_entropy` — H(softmax(cos(f, C)/τ)) per sample: low when a sample sits close to
  one centroid and far from the rest;
* :func:`split_clean` — a two-component Gaussian mixture (scikit-learn) on those entropies; a
  sample is *clean* when the posterior of the low-entropy component is at least 0.8;
* :func:`relabel_noisy` — a noisy sample takes the pseudo-label of its cosine-nearest clean sample;
* :func:`intra_domain_mixup` and :func:`mixup_kl_loss` — image-level mixup of clean samples of one
  domain, λ ~ Beta(0.3, 0.3), trained towards the mixed one-hot pseudo-labels with a KL term.

No class labels enter anywhere: the pseudo-labels are k-means cluster ids.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .search import knn_search
from .validation import check_features, check_labels


def prediction_entropy(
    features: torch.Tensor, centroids: torch.Tensor, tau: float = 0.1
) -> torch.Tensor:
    """Entropy of each sample's soft cluster assignment softmax(cos(f, C)/τ).

    Args:
        features: (N, d); centroids: (K, d) (both are L2-normalised here).
    Returns:
        (N,) entropies in nats, between 0 and log K.
    """
    f = F.normalize(check_features(features, "features").float(), dim=1)
    c = F.normalize(
        check_features(centroids, "centroids", dim=f.shape[1]).float().to(f.device), dim=1
    )
    log_p = (f @ c.t() / tau).log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def split_clean(
    entropy,
    threshold: float = 0.8,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
) -> dict:
    """Fit a 2-component Gaussian mixture to the entropies and call the confident part clean.

    Args:
        entropy: (N,) from :func:`prediction_entropy`; threshold: the clean posterior (0.8 in IBNM).
        max_iter, tol, reg_covar: the mixture's EM settings; the defaults are scikit-learn's with a
            smaller ``reg_covar``; the official IBNM code uses ``max_iter=10, tol=1e-2,
            reg_covar=5e-4`` (:meth:`cdrlib.ibnm_train.IBNMConfig.paper` does too).
    Returns:
        dict with ``clean`` (N,) bool, ``posterior`` (N,) of the low-entropy component, and the
        mixture's ``means``, ``stds``, ``weights`` (low-entropy component first) for plotting.
    """
    from sklearn.mixture import GaussianMixture

    e = torch.as_tensor(entropy).detach().double().cpu().reshape(-1, 1).numpy()
    if len(e) < 2:
        raise ValueError(f"the noise split needs at least 2 samples, got {len(e)}")
    if not np.isfinite(e).all():
        raise ValueError("entropies contain NaN or inf: check the features and centroids for NaN")
    gmm = GaussianMixture(
        2, random_state=seed, max_iter=max_iter, tol=tol, reg_covar=reg_covar
    ).fit(e)
    low = int(np.argmin(gmm.means_[:, 0]))
    order = [low, 1 - low]
    posterior = torch.from_numpy(gmm.predict_proba(e)[:, low]).float()
    return {
        "clean": posterior >= threshold,
        "posterior": posterior,
        "means": gmm.means_[order, 0],
        "stds": np.sqrt(gmm.covariances_.reshape(2)[order]),
        "weights": gmm.weights_[order],
    }


def relabel_noisy(
    features: torch.Tensor, labels: torch.Tensor, clean: torch.Tensor
) -> torch.Tensor:
    """Give each noisy sample the pseudo-label of its cosine-nearest clean sample.

    Args:
        features: (N, d); labels: (N,) pseudo-labels; clean: (N,) bool.
    Returns:
        (N,) labels: unchanged for clean samples (and for all when none is clean).
    """
    f = check_features(features, "features")
    labels = check_labels(labels, "labels", len(f))
    clean = torch.as_tensor(clean, dtype=torch.bool)
    if clean.shape != labels.shape:
        raise ValueError(f"clean must be (N,) = {tuple(labels.shape)}, got {tuple(clean.shape)}")
    out = labels.clone()
    if clean.all() or not clean.any():
        return out
    _, nn_idx = knn_search(f[~clean], f[clean], k=1, metric="cosine")
    out[~clean] = labels[clean][nn_idx[:, 0].cpu()]
    return out


def intra_domain_mixup(
    x: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.3,
    generator: torch.Generator | None = None,
):
    """Mix each image with another image of the same batch (one domain): λ x_i + (1 − λ) x_j.

    Args:
        x: (B, ...) images (or any per-sample tensor); labels: (B,) pseudo-labels; alpha: λ ~
            Beta(α, α).
    Returns:
        ``(x_mix, y_i, y_j, lam)`` with lam (B,).
    """
    b = len(x)
    if b < 2:
        raise ValueError("mixup needs at least 2 samples in the batch")
    perm = torch.randperm(b, generator=generator)
    lam = torch.distributions.Beta(alpha, alpha).sample((b,)).to(x.device)
    shape = (b,) + (1,) * (x.dim() - 1)
    return lam.view(shape) * x + (1 - lam.view(shape)) * x[perm], labels, labels[perm], lam


def mixup_kl_loss(
    logits: torch.Tensor, y_i: torch.Tensor, y_j: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """KL(t ‖ softmax(logits)) with the target t = λ onehot(y_i) + (1 − λ) onehot(y_j), batch mean.

    Args:
        logits: (B, K); y_i, y_j: (B,); lam: (B,).
    """
    k = logits.shape[1]
    t = lam.unsqueeze(1) * F.one_hot(y_i, k).to(logits.dtype) + (1 - lam.unsqueeze(1)) * F.one_hot(
        y_j, k
    ).to(logits.dtype)
    log_p = logits.log_softmax(dim=1)
    # classes outside the target contribute 0 (0 log 0 = 0), even where the prediction is exactly 0
    kl = torch.where(
        t > 0, t * (t.clamp_min(torch.finfo(t.dtype).tiny).log() - log_p), torch.zeros_like(t)
    )
    return kl.sum(dim=1).mean()
