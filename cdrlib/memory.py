"""UCDIR's memory bank (one key per image id, per domain) and the momentum key encoder."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F


class MemoryBank:
    """Holds the latest key of every image of one domain, indexed by image id (not a FIFO queue).

    Args:
        size: number of images N; dim: key dimension d. Initialised with random unit vectors.
    """

    def __init__(self, size: int, dim: int, seed: int = 0, device="cpu"):
        g = torch.Generator().manual_seed(seed)
        self.keys = F.normalize(torch.randn(size, dim, generator=g), dim=1).to(device)

    @torch.no_grad()
    def update(self, ids: torch.Tensor, keys: torch.Tensor) -> None:
        """Overwrite the entries of ``ids`` (B,) with ``keys`` (B, d), normalised."""
        self.keys[ids.to(self.keys.device)] = F.normalize(keys.detach(), dim=1).to(self.keys)

    def state_dict(self) -> dict:
        return {"keys": self.keys.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.keys = state["keys"].to(self.keys.device)


def momentum_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` to serve as the key encoder."""
    key = copy.deepcopy(model)
    for p in key.parameters():
        p.requires_grad_(False)
    return key


@torch.no_grad()
def momentum_update(
    query_encoder: torch.nn.Module, key_encoder: torch.nn.Module, m: float = 0.999
) -> None:
    """θ_k ← m θ_k + (1 − m) θ_q, parameter by parameter (buffers are copied)."""
    for pk, pq in zip(key_encoder.parameters(), query_encoder.parameters(), strict=True):
        pk.mul_(m).add_(pq.detach(), alpha=1 - m)
    for bk, bq in zip(key_encoder.buffers(), query_encoder.buffers(), strict=True):
        bk.copy_(bq)
