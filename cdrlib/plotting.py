"""Figures the chapters share: image grids, ranked lists, retrieval results."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _as_hwc(img) -> np.ndarray:
    """uint8 (H, W, 3), float [0, 1] (3, H, W) or (H, W, 3) → something imshow takes."""
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 1)
    return a.squeeze(-1) if a.shape[-1] == 1 else a


def image_grid(
    rows: Sequence[Sequence],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    size: float = 1.1,
    title: str | None = None,
    frames: Sequence[Sequence[str | None]] | None = None,
    colorbar: tuple[str, float, float, str] | None = None,
):
    """Show images in a grid. ``rows[r][c]`` is an image; ``frames[r][c]`` an optional border
    colour; ``colorbar = (cmap, vmin, vmax, label)`` adds the colour scale of the maps drawn with
    :func:`value_colours` on that scale."""
    import matplotlib.pyplot as plt

    n_r, n_c = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_r, n_c, figsize=(size * n_c + (1.2 if row_labels else 0), size * n_r + 0.3), squeeze=False
    )
    for r in range(n_r):
        for c in range(n_c):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(rows[r]) and rows[r][c] is not None:
                ax.imshow(
                    _as_hwc(rows[r][c]), cmap="gray" if _as_hwc(rows[r][c]).ndim == 2 else None
                )
                colour = frames[r][c] if frames is not None else None
                if colour:
                    for side in ax.spines.values():
                        side.set_visible(True)
                        side.set_color(colour)
                        side.set_linewidth(3)
            if row_labels and c == 0:
                ax.set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=9)
            if col_labels and r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if colorbar is not None:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        cmap, vmin, vmax, label = colorbar
        bar = fig.colorbar(
            ScalarMappable(Normalize(vmin, vmax), cmap),
            ax=axes.ravel().tolist(),
            fraction=0.03,
            pad=0.02,
        )
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig


def value_colours(values, vmin: float, vmax: float, cmap: str = "viridis") -> np.ndarray:
    """A map of values (H, W) as RGB (H, W, 3) on a fixed scale [vmin, vmax] (clipped), so that maps
    drawn side by side compare, and :func:`image_grid`'s ``colorbar`` can show the scale."""
    import matplotlib.pyplot as plt

    a = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return plt.get_cmap(cmap)(np.clip((a - vmin) / (vmax - vmin), 0.0, 1.0))[..., :3]


def ranked_list(relevant: Sequence[bool], ax=None, label: str = "", k_marks: Sequence[int] = ()):
    """A ranked list as a row of boxes: green = relevant, grey = not; vertical lines at each K."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * len(relevant) + 1, 0.9))
    for r, rel in enumerate(relevant):
        ax.add_patch(plt.Rectangle((r, 0), 0.9, 0.9, color="#2e9e44" if rel else "#c8c8c8"))
        ax.text(
            r + 0.45,
            0.45,
            str(r + 1),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if rel else "black",
        )
    for k in k_marks:
        ax.axvline(k - 0.05, color="#d62728", lw=1.5)
        ax.text(k - 0.05, 1.0, f"K={k}", color="#d62728", fontsize=8, ha="center", va="bottom")
    ax.set_xlim(-0.1, len(relevant))
    ax.set_ylim(0, 1.3)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_ylabel(label, rotation=0, ha="right", va="center")
    for side in ax.spines.values():
        side.set_visible(False)
    return ax
