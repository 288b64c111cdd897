"""IBNM's attention-guided fusion coefficients (METHODS.md §2, steps 1–3).

Only the first piece lives here so far: the per-patch importance that IBNM reads from a ViT's
CLS attention. The mixing itself (Beta weights, patch mixing, label weights) belongs to the IBNM
chapter.
"""
from __future__ import annotations

import torch


def cls_patch_attention(attentions: torch.Tensor, softmax: bool = True) -> torch.Tensor:
    """Per-patch importance from the CLS row of every block's attention.

    Args:
        attentions: (B, L, H, n+1, n+1) post-softmax attention of L blocks, H heads
            (:meth:`cdrlib.models.VisionTransformer.attention_maps`).
        softmax: apply the softmax over the n patches, as IBNM's official code does; without it
            the result is the seed's λ' = (1/L) Σ_l mean_h attn_l[CLS, patches].
    Returns:
        (B, n): s' (``softmax=False``) or s = softmax(s') over patches.
    """
    if attentions.dim() != 5 or attentions.shape[-1] != attentions.shape[-2]:
        raise ValueError(f"expected attentions (B, L, H, n+1, n+1), got {tuple(attentions.shape)}")
    s = attentions[:, :, :, 0, 1:].mean(dim=2).mean(dim=1)   # heads, then blocks
    return s.softmax(dim=-1) if softmax else s
