"""IBNM's attention-guided dynamic fusion, as in its paper and official code.

IBNM: an anonymous SIGIR 2024 submission; its code is the GitHub repository sigir2024anonymous/IBNM.

* :func:`cls_patch_attention` — the per-patch importance s a ViT's CLS attention gives (steps 1–3);
* :func:`patch_ink` — what the importance is compared with: how much of each patch is drawn on;
* :class:`PatchMixing` — learnable Beta weights λ, one per patch, sampled with the
  reparameterisation (4);
* :func:`mix_patch_tokens` — m_i = λ_i x_i^A + (1 − λ_i) x_i^B, before CLS and positions (5);
* :func:`label_weights` — the image-level weights of the two sources (6);
* :func:`fuse` — all of it for a batch of A and a batch of B, each image's importance from its
  *own* attention (the official code swaps the two domains' halves of the token batch; see the
  tests);
* :func:`mixed_contrastive_loss`, :func:`mixed_label_loss` and :class:`FusionLossWeights` — the
  losses on the mixed image (7).

The noise split is :mod:`cdrlib.noise`, the training loop :mod:`cdrlib.ibnm_train`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def cls_patch_attention(attentions: torch.Tensor, softmax: bool = True) -> torch.Tensor:
    """Per-patch importance from the CLS row of every block's attention.

    Args:
        attentions: (B, L, H, n+1, n+1) post-softmax attention of L blocks, H heads
            (:meth:`cdrlib.models.VisionTransformer.attention_maps`).
        softmax: apply the softmax over the n patches, as IBNM's official code does; without it
            the result is λ' = (1/L) Σ_l mean_h attn_l[CLS, patches].
    Returns:
        (B, n): s' (``softmax=False``) or s = softmax(s') over patches.
    """
    if attentions.dim() != 5 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(f"expected attentions (B, L, H, n+1, n+1), got {tuple(attentions.shape)}")
    s = attentions[:, :, :, 0, 1:].mean(dim=2).mean(dim=1)  # heads, then blocks
    return s.softmax(dim=-1) if softmax else s


def patch_ink(images: torch.Tensor, patch_size: int, white: float = 0.9) -> torch.Tensor:
    """The share of each patch's pixels that are ink (not near-white background).

    Args:
        images: (B, 3, H, W) in [0, 1], H and W multiples of ``patch_size``.
        patch_size: patch side in pixels (``vit.patch_embed.patch_size``).
        white: a pixel is ink when its darkest channel is below this.
    Returns:
        (B, n) in [0, 1], patches in the ViT's row-major order; ``> 0`` marks patches holding any
        ink.
    """
    if (
        images.dim() != 4
        or images.shape[1] != 3
        or images.shape[-1] % patch_size
        or images.shape[-2] % patch_size
    ):
        raise ValueError(
            f"expected images (B, 3, H, W) with H, W multiples of patch_size={patch_size}, "
            f"got {tuple(images.shape)}"
        )
    dark = (images.min(dim=1).values < white).float()  # (B, H, W)
    return F.avg_pool2d(dark[:, None], patch_size).flatten(1)


class PatchMixing(nn.Module):
    """Per-patch mixing weights λ_i ~ Beta(softplus(α_i), softplus(β_i)), α, β learnable (init 1).

    ``forward(batch_size)`` draws λ (B, n) with ``rsample`` so that a loss on the mixed image
    reaches α and β. ``shared=True`` is the official code's form: one learnable Beta (scalar α, β)
    for all patches, a λ still drawn for every patch (its ``rsample((B, num_patch))``). One λ for
    a whole image would make the importance cancel out of :func:`label_weights` (each side's
    importance sums to 1), so attention fusion would be random fusion.
    """

    def __init__(self, num_patches: int, init: float = 1.0, shared: bool = False):
        super().__init__()
        self.num_patches, self.shared = num_patches, shared
        size = 1 if shared else num_patches
        self.alpha = nn.Parameter(torch.full((size,), float(init)))
        self.beta = nn.Parameter(torch.full((size,), float(init)))

    def distribution(self) -> torch.distributions.Beta:
        return torch.distributions.Beta(F.softplus(self.alpha), F.softplus(self.beta))

    def forward(self, batch_size: int) -> torch.Tensor:
        if self.shared:  # (B, n, 1) draws of the one Beta
            return self.distribution().rsample((batch_size, self.num_patches)).squeeze(-1)
        return self.distribution().rsample((batch_size,))  # (B, n): patch i from Beta i


def mix_patch_tokens(
    tokens_a: torch.Tensor, tokens_b: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """m_i = λ_i x_i^A + (1 − λ_i) x_i^B.

    Args:
        tokens_a, tokens_b: (B, n, D) patch embeddings of an image of A and one of B (no CLS, no
            position embeddings yet); lam: (B, n) in [0, 1].
    """
    if tokens_a.shape != tokens_b.shape or tokens_a.dim() != 3 or lam.shape != tokens_a.shape[:2]:
        raise ValueError(
            f"expected tokens (B, n, D) twice and lam (B, n), got {tuple(tokens_a.shape)}, "
            f"{tuple(tokens_b.shape)} and {tuple(lam.shape)}"
        )
    lam = lam.unsqueeze(-1)
    return lam * tokens_a + (1 - lam) * tokens_b


def label_weights(s_a: torch.Tensor, s_b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Image-level weights of the two sources: l_A ∝ Σ_i s_i^A λ_i / n, l_B ∝ Σ_i s_i^B (1 − λ_i) /
    n.

    Args:
        s_a, s_b: (B, n) per-patch importance of each source image (uniform 1/n for random fusion);
        lam: (B, n).
    Returns:
        (B, 2): (l_A, l_B), each row summing to 1.
    """
    if not (s_a.shape == s_b.shape == lam.shape) or s_a.dim() != 2:
        raise ValueError(
            f"s_a, s_b and lam must all be (B, n), got {tuple(s_a.shape)}, {tuple(s_b.shape)}, "
            f"{tuple(lam.shape)}"
        )
    n = lam.shape[1]
    w = torch.stack([(s_a * lam).sum(1) / n, (s_b * (1 - lam)).sum(1) / n], dim=1)
    return w / w.sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)


def uniform_importance(batch_size: int, num_patches: int, device=None) -> torch.Tensor:
    """s for the "random fusion" ablation: every patch 1/n, (B, n)."""
    return torch.full((batch_size, num_patches), 1.0 / num_patches, device=device)


def fuse(
    vit,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    mixing: PatchMixing,
    use_attention: bool = True,
    importance: tuple[torch.Tensor, torch.Tensor] | None = None,
    softmax: bool = True,
):
    """Mix a batch of A with a batch of B (pairs drawn independently: no cross-domain pairing).

    Args:
        vit: a :class:`~cdrlib.models.VisionTransformer`; x_a, x_b: (B, 3, H, W) normalised images.
        mixing: the learnable λ; use_attention: False gives the uniform "random fusion" ablation.
        importance: (s_a, s_b), each (B, n), when already known (a frozen ViT's attention, read
            once, or another importance); otherwise read from ``vit`` now.
        softmax: how attention read now becomes importance (see :func:`cls_patch_attention`).
    Returns:
        dict with ``tokens`` (B, n, D) the mixed patch embeddings (feed to ``vit.forward_tokens``),
        ``lam`` (B, n), ``weights`` (B, 2) = (l_A, l_B), ``s_a``, ``s_b`` (B, n).
    """
    if x_a.shape != x_b.shape:
        raise ValueError(
            f"x_a and x_b must have the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}"
        )
    b, n = x_a.shape[0], vit.num_patches
    if use_attention and importance is not None:
        s_a, s_b = importance
    elif use_attention:
        with torch.no_grad():  # the importance is read from the current model, not trained through
            # A's attention, for A's patches
            s_a = cls_patch_attention(vit.attention_maps(x_a), softmax)
            s_b = cls_patch_attention(vit.attention_maps(x_b), softmax)
    else:
        s_a = s_b = uniform_importance(b, n, x_a.device)
    lam = mixing(b)
    tokens = mix_patch_tokens(vit.patch_tokens(x_a), vit.patch_tokens(x_b), lam)
    return {
        "tokens": tokens,
        "lam": lam,
        "weights": label_weights(s_a, s_b, lam),
        "s_a": s_a,
        "s_b": s_b,
    }


def _check_mixed(f_mix, weights, y_a, y_b):
    b = f_mix.shape[0]
    if f_mix.dim() != 2 or weights.shape != (b, 2) or y_a.shape != (b,) or y_b.shape != (b,):
        raise ValueError(
            f"expected f_mix (B, d), weights (B, 2), y_a and y_b (B,), got {tuple(f_mix.shape)}, "
            f"{tuple(weights.shape)}, {tuple(y_a.shape)}, {tuple(y_b.shape)}"
        )


def mixed_contrastive_loss(
    f_mix: torch.Tensor,
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    weights: torch.Tensor,
    temperature: float = 0.2,
) -> torch.Tensor:
    """L_feat: supervised-contrastive loss of each mixed image against both source batches.

    Mixed image i was made from z_a[i] and z_b[i]. Against batch A its positives are the A images
    with A-source's pseudo-label y_a[i] (itself included), the softmax runs over batch A; the same
    for B. The two terms are weighted by the image's (l_A, l_B).

    Args:
        f_mix, z_a, z_b: (B, d) L2-normalised embeddings; y_a, y_b: (B,) pseudo-labels of the
            sources; weights: (B, 2) from :func:`label_weights`.
    Returns:
        scalar, the batch mean.
    """
    _check_mixed(f_mix, weights, y_a, y_b)
    terms = []
    for z, y in ((z_a, y_a), (z_b, y_b)):
        log_p = (f_mix @ z.t() / temperature).log_softmax(dim=1)  # (B, B) over the source batch
        pos = (y.unsqueeze(1) == y.unsqueeze(0)).to(log_p.dtype)  # row i: same label as source i
        terms.append(-(log_p * pos).sum(1) / pos.sum(1))  # pos.sum ≥ 1: the source itself
    return (weights[:, 0] * terms[0] + weights[:, 1] * terms[1]).mean()


def mixed_label_loss(
    f_mix: torch.Tensor,
    centroids: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    weights: torch.Tensor,
    tau: float = 0.1,
) -> torch.Tensor:
    """L_label: cross-entropy of the mixed image's cluster prediction, l_A·CE(y_A) + l_B·CE(y_B).

    Args:
        f_mix: (B, d) L2-normalised; centroids: (K, d) the joint (shared-id) centroids;
        y_a, y_b: (B,) shared pseudo-labels of the sources; weights: (B, 2); tau: temperature
        of softmax(cos(f, C)/τ).
    """
    _check_mixed(f_mix, weights, y_a, y_b)
    log_p = (f_mix @ centroids.t() / tau).log_softmax(dim=1)
    ce_a = -log_p.gather(1, y_a.unsqueeze(1)).squeeze(1)
    ce_b = -log_p.gather(1, y_b.unsqueeze(1)).squeeze(1)
    return (weights[:, 0] * ce_a + weights[:, 1] * ce_b).mean()


class FusionLossWeights(nn.Module):
    """softplus(r_1) L_feat + softplus(r_2) L_label with r learnable, initialised at −2 as in IBNM's
    code.

    Nothing but the loss itself acts on r, so minimising drives both weights towards 0 — in effect
    a learning rate for the fusion terms that decays with their size (the chapter shows it).
    """

    def __init__(self, init: float = -2.0):
        super().__init__()
        self.r = nn.Parameter(torch.full((2,), float(init)))

    def forward(self, l_feat: torch.Tensor, l_label: torch.Tensor) -> torch.Tensor:
        w = F.softplus(self.r)
        return w[0] * l_feat + w[1] * l_label
