"""Argument checks shared by the search, metric and re-ranking code: fail early, name the
argument."""

from __future__ import annotations

import numpy as np
import torch

FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}"
        ) from e
    if arr.dtype.kind == "O":
        raise TypeError(
            f"{name} must be a numpy array or a torch tensor of numbers, got {type(x).__name__}"
        )
    if arr.dtype.kind in "US":
        raise TypeError(
            f"{name} holds {arr.dtype} values (names?); give integer ids, e.g. "
            f"ids = np.unique(names, return_inverse=True)[1]"
        )
    try:
        return torch.as_tensor(arr)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}"
        ) from e


def non_finite_error(name: str, rows: int) -> ValueError:
    """The error for a matrix that holds NaN or infinite values in ``rows`` rows."""
    return ValueError(
        f"{name} holds NaN or infinite values in {rows} row(s); check the model's output "
        f"(a diverged loss?) or drop those rows"
    )


def check_features(
    x, name: str, dim: int | None = None, products: bool = True, finite: bool = True
) -> torch.Tensor:
    """A finite float matrix (N, d) with N ≥ 1.

    ``products``: the rows will be multiplied (inner products, squared distances in float32), so
    values whose products overflow float32 are refused too (not for matrices of distances).
    ``finite=False``: the caller checks for NaN and infinities itself, in a pass over the matrix
    it makes anyway (raising :func:`non_finite_error`), so this pass is left out.
    """
    t = as_tensor(x, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must hold floats, got {t.dtype}; convert with .float()")
    if t.dim() != 2:
        raise ValueError(f"{name} must be a matrix (N, d), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs at least one row")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has rows of dimension 0: it needs at least one feature per row")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} has dimension {t.shape[1]}, the queries have {dim}")
    # aminmax is one pass without a temporary and propagates NaN; isfinite(t).all() builds a full
    # boolean copy first (seconds for a 20k × 20k distance matrix)
    if t.requires_grad:
        t = t.detach()  # scores need no gradient; faiss and NumPy cannot take one
    if not finite and not products:
        return t
    lo, hi = torch.aminmax(t)
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        raise non_finite_error(name, int((~torch.isfinite(t)).any(1).sum()))
    # scores are computed in float32: an inner product of rows this large would overflow to inf
    largest = max(abs(float(lo)), abs(float(hi)))
    if products and largest * largest * t.shape[1] > FLOAT32_MAX / 4:
        raise ValueError(
            f"{name} holds values up to {largest:.3g}: their inner products overflow float32 "
            f"scores. Rescale the features (e.g. L2-normalise them) first"
        )
    return t


def check_labels(x, name: str, n: int | None = None) -> torch.Tensor:
    """An integer vector, of length ``n`` when given."""
    t = as_tensor(x, name)
    if t.dim() != 1:
        raise ValueError(f"{name} must be a vector (N,), got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids, got {t.dtype}")
    if n is not None and len(t) != n:
        raise ValueError(f"{name} has {len(t)} entries but there are {n} feature rows")
    return t.long()


def check_ids(x, name: str) -> torch.Tensor:
    """Non-negative integer ids (N,) (cluster assignments, class ids used as indices)."""
    t = check_labels(x, name)
    if len(t) and int(t.min()) < 0:
        raise ValueError(
            f"{name} must be non-negative ids, got {int(t.min())}; renumber them from 0"
        )
    return t


def check_cluster_ids(x, name: str, n: int, k: int) -> torch.Tensor:
    """(n,) cluster ids in [0, k) as int64, e.g. what a premise dial's relabelling hook returned.

    ``name`` names the hook in the error (``"relabel"``, ``"joint_relabel"``).
    """
    t = torch.as_tensor(x, dtype=torch.int64)
    if t.shape != (n,) or (n and (int(t.min()) < 0 or int(t.max()) >= k)):
        raise ValueError(
            f"{name} must return ({n},) cluster ids in [0, {k}); got shape {tuple(t.shape)}"
            + (f", ids {int(t.min())}..{int(t.max())}" if t.dim() == 1 and len(t) else "")
        )
    return t


def check_positive_int(x, name: str) -> int:
    """A positive integer (chunk sizes, iteration counts)."""
    if not isinstance(x, (int, np.integer)) or isinstance(x, bool) or x < 1:
        raise ValueError(f"{name} must be a positive integer, got {x!r}")
    return int(x)


def check_choice(x, name: str, choices) -> str:
    """One of ``choices``, exactly (``"Cosine"`` is not ``"cosine"``)."""
    if x not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, not {x!r}")
    return x


def check_k(k: int, size: int, name: str = "k", of: str = "the gallery") -> int:
    """A positive integer no larger than ``size`` (the gallery, the number of points, …)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    if k > size:
        raise ValueError(f"{name}={k} is larger than {of} ({size} items); use {name} ≤ {size}")
    return int(k)
