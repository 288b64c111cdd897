"""PCME: probabilistic cross-modal embeddings (Chun et al., CVPR 2021, arXiv 2101.05068).

Every image and every caption becomes a Gaussian N(μ, diag(σ²)) in R^D:

* :class:`AttentionPool` — one-head attention pooling over local features (patch tokens, words);
* :class:`GaussianHead` — the μ-head (pooled feature → FC, plus a sigmoid-gated attention-pooled
  residual, LayerNorm, L2 normalisation) and the σ-head (the same pooling and FC, no sigmoid, no
  LayerNorm, no normalisation) giving **log σ** (not log σ²: the KL below is written for log σ);
* :func:`sample` — J samples z = μ + σ ε;
* :func:`match_logprob` — log p(m | x, y) with p ≈ (1/J²) Σ_j Σ_j' sigmoid(−a‖z_j − z'_j'‖ + b),
  and the matching log(1 − p), both by log-sum-exp over the J² terms (stable for any distance);
  the true logistic sigmoid (the official code's "sigmoid" is sigmoid(2x));
* :func:`soft_contrastive_loss` — −log p for matching pairs, −log(1 − p) otherwise, over all
  N×N image–caption pairs of a batch (the two kinds averaged separately, or, as the official code,
  summed over all pairs in both directions);
  :func:`kl_to_standard_normal` — the regulariser; :func:`uniformity_loss` — the official CUB
  configuration's spreading term on the samples;
* :func:`match_scores` — a query × gallery table of match probabilities, chunked (retrieval), from
  :func:`match_log_p` (log p alone);
* :func:`contrastive_loss` — the deterministic baseline's loss on μ alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .validation import check_positive_int


class AttentionPool(nn.Module):
    """One-head attention pooling: weights softmax(w · tanh(W h_t)) over the T local features h_t.

    forward(local (B, T, d), mask (B, T) bool or None) → (B, d).
    """

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, local: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s = self.score(torch.tanh(self.proj(local))).squeeze(-1)  # (B, T)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        return (s.softmax(dim=1).unsqueeze(-1) * local).sum(1)


class GaussianHead(nn.Module):
    """μ and log σ of one modality from its pooled feature (B, d_pooled) and local features (B, T,
    d_local).

    Args:
        d_pooled, d_local: feature widths (the ViT's CLS feature and patch tokens; the GRU's mean
            and per-word outputs); dim: embedding dimension D; probabilistic: False gives the
            deterministic baseline (μ only, ``log_sigma`` is None).
    """

    def __init__(self, d_pooled: int, d_local: int, dim: int, probabilistic: bool = True):
        super().__init__()
        self.mu_fc, self.mu_pool = nn.Linear(d_pooled, dim), AttentionPool(d_local)
        self.mu_res = nn.Linear(d_local, dim)
        self.norm = nn.LayerNorm(dim)
        self.probabilistic = probabilistic
        if probabilistic:
            self.sig_fc, self.sig_pool = nn.Linear(d_pooled, dim), AttentionPool(d_local)
            self.sig_res = nn.Linear(d_local, dim)

    def forward(self, pooled: torch.Tensor, local: torch.Tensor, mask: torch.Tensor | None = None):
        """Returns ``(mu (B, D) L2-normalised, log_sigma (B, D) or None)``."""
        mu = self.norm(self.mu_fc(pooled) + torch.sigmoid(self.mu_res(self.mu_pool(local, mask))))
        mu = F.normalize(mu, dim=1)
        if not self.probabilistic:
            return mu, None
        log_sigma = self.sig_fc(pooled) + self.sig_res(self.sig_pool(local, mask))
        return mu, log_sigma


def sample(
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
):
    """z = μ + σ ε, ε ~ N(0, I): (B, D) twice → (B, J, D). J = 1 with σ = 0 gives μ itself.

    ε is drawn on the generator's device (a CPU generator gives the same ε for CPU and GPU tensors).
    """
    where = generator.device if generator is not None else mu.device
    eps = torch.randn(
        (mu.shape[0], n_samples, mu.shape[1]), generator=generator, device=where, dtype=mu.dtype
    ).to(mu.device)
    return mu.unsqueeze(1) + log_sigma.exp().unsqueeze(1) * eps


def _pair_distances(z_x: torch.Tensor, z_y: torch.Tensor) -> torch.Tensor:
    """‖z_x[i, j] − z_y[k, j']‖ for all i, k, j, j': (N, J, D), (M, J', D) → (N, M, J, J')."""
    n, j, d = z_x.shape
    m, jp, _ = z_y.shape
    dist = torch.cdist(z_x.reshape(n * j, d), z_y.reshape(m * jp, d))  # (N·J, M·J')
    return dist.reshape(n, j, m, jp).permute(0, 2, 1, 3)


def match_logprob(z_x: torch.Tensor, z_y: torch.Tensor, a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """log p and log(1 − p) of the match probability for every pair.

    Args:
        z_x: (N, J, D) samples of N items; z_y: (M, J', D); a, b: scalars (tensors when learnt).
    Returns:
        ``(log_p, log_not_p)``, each (N, M): log of (1/JJ') Σ sigmoid(−a d + b) and of
        (1/JJ') Σ sigmoid(a d − b), each through log-sum-exp of log-sigmoids.
    """
    logits = -a * _pair_distances(z_x, z_y) + b  # (N, M, J, J')
    log_jj = math.log(logits.shape[-1] * logits.shape[-2])
    log_sig = F.logsigmoid(logits).flatten(2)
    log_p = torch.logsumexp(log_sig, dim=2) - log_jj
    # log sigmoid(−x) = log sigmoid(x) − x: one log-sigmoid pass instead of two (the step's main
    # cost)
    log_not_p = torch.logsumexp(log_sig - logits.flatten(2), dim=2) - log_jj
    return log_p, log_not_p


def match_log_p(z_x: torch.Tensor, z_y: torch.Tensor, a, b) -> torch.Tensor:
    """log p alone, (N, M), for retrieval: the first half of :func:`match_logprob` at about half its
    cost."""
    logits = (-a * _pair_distances(z_x, z_y) + b).flatten(2)  # (N, M, J·J')
    return torch.logsumexp(F.logsigmoid(logits), dim=2) - math.log(logits.shape[-1])


def soft_contrastive_loss(
    z_img: torch.Tensor,
    z_txt: torch.Tensor,
    matches: torch.Tensor,
    a,
    b,
    reduction: str = "mean",
) -> torch.Tensor:
    """−log p over the matching pairs plus −log(1 − p) over the others, over all N×M image–caption
    pairs of a batch.

    ``reduction="mean"`` averages the two kinds separately: in a batch of 128 about 1 % of the
    pairs match, and one mean over all pairs would let the non-matching ones drown the matching
    ones. ``"sum"`` is the official code's total: every pair's term summed, image→caption and
    caption→image (the same pairs twice, so twice the one-way sum); its weight against the
    regularisers is what the official configurations were tuned with.

    Args:
        z_img: (N, J, D); z_txt: (M, J, D); matches: bool (N, M), which caption fits which image.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    if matches.shape != (z_img.shape[0], z_txt.shape[0]):
        raise ValueError(
            f"matches must be ({z_img.shape[0]}, {z_txt.shape[0]}), got {tuple(matches.shape)}"
        )
    if (
        matches.dtype != torch.bool
    ):  # an integer 0/1 tensor would index rows instead of masking pairs
        raise TypeError(f"matches must be a bool mask, got {matches.dtype}; pass matches.bool()")
    log_p, log_not_p = match_logprob(z_img, z_txt, a, b)
    if reduction == "sum":
        return -2 * (log_p[matches].sum() + log_not_p[~matches].sum())
    pos = -log_p[matches].mean() if matches.any() else log_p.new_zeros(())
    neg = -log_not_p[~matches].mean() if (~matches).any() else log_p.new_zeros(())
    return pos + neg


def uniformity_loss(
    z: torch.Tensor, t: float = 2.0, max_points: int = 128, generator=None
) -> torch.Tensor:
    """log mean_{i<j} exp(−t ‖z_i − z_j‖²): lower when the points spread out (Wang and Isola's
    uniformity; the official PCME CUB configuration adds it with weight 10 on all samples of a
    batch, images and captions together).

    Args:
        z: (P, D) points (samples flattened); at most ``max_points`` of them, drawn without
            replacement, enter the O(P²) distances (the official code keeps 128).
    Computed by log-sum-exp, so distances of any size give a finite value (the official
    exp-then-log underflows to −inf when σ is large).
    """
    if z.dim() != 2 or len(z) < 2:
        raise ValueError(f"uniformity_loss needs (P, D) points with P ≥ 2, got {tuple(z.shape)}")
    check_positive_int(max_points, "max_points")
    if len(z) > max_points:
        z = z[torch.randperm(len(z), generator=generator)[:max_points].to(z.device)]
    d2 = torch.pdist(z).pow(2)
    return torch.logsumexp(-t * d2, dim=0) - math.log(len(d2))


def kl_to_standard_normal(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_d (σ² + μ² − 1 − 2 log σ), the batch mean. (B, D) twice →
    scalar."""
    return 0.5 * ((2 * log_sigma).exp() + mu.pow(2) - 1 - 2 * log_sigma).sum(dim=1).mean()


def contrastive_loss(
    mu_img: torch.Tensor, mu_txt: torch.Tensor, matches: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """The deterministic baseline: InfoNCE on cosine similarity, both directions, every matching
    caption a positive (a multi-positive form, since a caption like "face" fits many images).

    Args:
        mu_img: (N, D), mu_txt: (M, D) L2-normalised; matches: bool (N, M), every row and column
            with at least one match.
    """
    logits = mu_img @ mu_txt.t() / temperature
    m = matches.to(logits.dtype)
    i2t = -(logits.log_softmax(dim=1) * m).sum(1) / m.sum(1)
    t2i = -(logits.t().log_softmax(dim=1) * m.t()).sum(1) / m.t().sum(1)
    return (i2t.mean() + t2i.mean()) / 2


@torch.no_grad()
def match_scores(
    mu_q,
    log_sigma_q: torch.Tensor | None,
    mu_g,
    log_sigma_g,
    a,
    b,
    n_samples: int = 7,
    chunk_size: int = 256,
    seed: int = 0,
    budget: int = 1 << 24,
) -> torch.Tensor:
    """The match probability of every query with every gallery item, (Q, G), larger is better.

    Samples are drawn once per item (seeded, by a CPU generator) and reused for all pairs.
    ``log_sigma_q=None`` makes every query a point (σ = 0): its J samples would all be μ, so one
    stands for them and a pair costs J distances instead of J² (the same probability). Memory:
    the (Q, G) result plus at most about ``budget`` sample-pair distances at a time (``chunk_size``
    queries against as many gallery items as fit), whatever the gallery's size.
    """
    check_positive_int(n_samples, "n_samples")
    check_positive_int(chunk_size, "chunk_size")
    check_positive_int(budget, "budget")
    # on the CPU: the same samples, so the same table, on any device
    g = torch.Generator().manual_seed(seed)
    if log_sigma_q is None:
        z_q = mu_q.unsqueeze(1)  # (Q, 1, D)
    else:
        z_q = sample(mu_q, log_sigma_q, n_samples, g)
    z_g = sample(mu_g, log_sigma_g, n_samples, g)
    out = torch.empty(len(z_q), len(z_g), dtype=z_q.dtype, device=z_q.device)
    per_pair = z_q.shape[1] * n_samples
    g_step = max(1, budget // (min(chunk_size, max(len(z_q), 1)) * per_pair))
    for i in range(0, len(z_q), chunk_size):
        for j in range(0, len(z_g), g_step):
            out[i : i + chunk_size, j : j + g_step] = match_log_p(
                z_q[i : i + chunk_size], z_g[j : j + g_step], a, b
            ).exp()
    return out
