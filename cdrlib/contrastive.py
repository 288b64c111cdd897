"""The instance-discrimination loss used to pretrain the small backbones (SimCLR's NT-Xent)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalised-temperature cross-entropy over a batch of positive pairs (Chen et al. 2020).

    Row i of ``z1`` and row i of ``z2`` are two augmentations of one image (the positive pair);
    the other 2B − 2 embeddings of the batch are the negatives.

    Args:
        z1, z2: (B, d) embeddings (normalised inside).
        groups: optional (B,) integer group of each image (its domain). When given, an anchor's
            negatives are only the images of its own group ("in-domain instance discrimination"):
            contrasting a twemoji against sketches would reward features that tell the styles
            apart, which is what cross-domain retrieval must ignore. Domain ids are not labels.
    Returns:
        the mean loss over the 2B anchors, a scalar.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(
            f"z1 and z2 must both be (B, d), got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    if groups is not None:
        if groups.shape != (b,):
            raise ValueError(f"groups must be (B,) = ({b},), got {tuple(groups.shape)}")
        g = torch.cat([groups, groups]).to(z.device)
        logits = logits.masked_fill(g[:, None] != g[None, :], float("-inf"))
    logits.fill_diagonal_(float("-inf"))  # an anchor is not its own negative
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, target)
