"""Batched inference: a model run over many inputs without gradients and in eval mode, with every
module put back in the mode it was in (a caller's training run goes on training after a feature
pass, as it would not if the pass left its model in eval mode)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn as nn

from .progress import progress
from .validation import check_positive_int


@contextmanager
def evaluating(*models):
    """No gradients, and eval mode for each ``nn.Module`` among ``models``, inside the block; each
    module's own mode is restored afterwards, also when the block raises. Other callables (a
    function of the images, say) pass through."""
    modules = [m for m in models if isinstance(m, nn.Module)]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, was in zip(modules, modes, strict=True):
            m.train(was)


def in_batches(
    fn: Callable[[slice], torch.Tensor | tuple],
    n: int,
    batch_size: int,
    desc: str | None = None,
    to_cpu: bool = True,
):
    """``fn`` over consecutive slices of ``range(n)``, its outputs concatenated along dim 0.

    Args:
        fn: ``slice → (B, …)`` tensor, or a tuple of such tensors (concatenated element-wise).
        n: items; batch_size: items per call; desc: a progress bar's label (None: no bar).
        to_cpu: move each output to the CPU as it comes (bounded accelerator memory).
    Returns:
        (n, …), or a tuple of them when ``fn`` returns tuples.
    """
    check_positive_int(batch_size, "batch_size")
    if n < 1:
        raise ValueError("no items to run the model on (n = 0)")
    starts = range(0, n, batch_size)
    parts = []
    for start in progress(starts, desc=desc) if desc else starts:
        out = fn(slice(start, min(start + batch_size, n)))
        if to_cpu:
            out = tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()
        parts.append(out)
    if parts and isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))
    return torch.cat(parts)
