"""Entropic optimal transport by Sinkhorn iterations in the log domain (Cuturi 2013).

For a cost C (n×m) and marginals a (n) and b (m), the plan

    P = argmin_{P 1 = a, Pᵀ 1 = b}  ⟨P, C⟩ + ε Σ P log P

has the form P_ij = exp((f_i + g_j − C_ij) / ε). Sinkhorn alternates the two dual updates

    f ← ε log a − ε LSE_j((g_j − C_ij)/ε),     g ← ε log b − ε LSE_i((f_i − C_ij)/ε).

Written with log-sum-exp they never form exp(−C/ε), which underflows to zero for small ε (the
textbook scaling form u ← a / (K v) then divides by zero). Batched over a leading dimension,
stopped by a tolerance on the row marginals or an iteration cap, differentiable by autograd.
Used by the seed's distance-of-distance formulation (UCDIR chapters).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SinkhornResult:
    """plan: (B, n, m) or (n, m); f, g: dual potentials; iterations run; err: final row-marginal L1 error."""

    plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    iterations: int
    err: float


def sinkhorn(cost: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
             eps: float = 0.05, max_iter: int = 1000, tol: float = 1e-6) -> SinkhornResult:
    """Entropic OT plan(s) between a and b under ``cost``.

    Args:
        cost: (n, m) or (B, n, m).
        a: (n,) or (B, n) source marginal, positive; default uniform 1/n.
        b: (m,) or (B, m) target marginal, positive, same total mass as a; default uniform 1/m.
        eps: entropic regularisation ε > 0 (smaller: closer to the exact plan, slower to converge).
        max_iter: iteration cap. tol: stop when ``sum_i abs(P 1 − a)_i < tol`` for every problem of the batch.
    """
    if cost.dim() not in (2, 3):
        raise ValueError(f"cost must be (n, m) or (B, n, m), got shape {tuple(cost.shape)}")
    if not torch.isfinite(cost).all():
        raise ValueError("cost holds NaN or infinite values")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    single = cost.dim() == 2
    c = cost.unsqueeze(0) if single else cost
    bsz, n, m = c.shape
    a = torch.full((bsz, n), 1.0 / n, dtype=c.dtype, device=c.device) if a is None else a.to(c).expand(bsz, n)
    b = torch.full((bsz, m), 1.0 / m, dtype=c.dtype, device=c.device) if b is None else b.to(c).expand(bsz, m)
    if (a <= 0).any() or (b <= 0).any():
        raise ValueError("marginals must be positive (drop empty bins first)")
    if not torch.allclose(a.sum(-1), b.sum(-1), rtol=1e-5, atol=1e-8):
        raise ValueError(f"a and b must have the same total mass, got {a.sum(-1).tolist()} and {b.sum(-1).tolist()}")
    log_a, log_b = a.log(), b.log()
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    err, it = float("inf"), 0
    for it in range(1, max_iter + 1):
        f = eps * (log_a - torch.logsumexp((g.unsqueeze(1) - c) / eps, dim=2))
        g = eps * (log_b - torch.logsumexp((f.unsqueeze(2) - c) / eps, dim=1))
        # checking costs about an iteration's work: at every one of the first ten (UCDIR's centroid
        # matchings converge within a few), then every tenth
        if it <= 10 or it % 10 == 0 or it == max_iter:
            with torch.no_grad():
                rows = torch.exp((f.unsqueeze(2) + g.unsqueeze(1) - c) / eps).sum(2)
                err = (rows - a).abs().sum(-1).max().item()
            if err < tol:
                break
    plan = torch.exp((f.unsqueeze(2) + g.unsqueeze(1) - c) / eps)
    if single:
        plan, f, g = plan[0], f[0], g[0]
    return SinkhornResult(plan, f, g, it, err)
