"""The introduction's pipeline figure: query, gallery, encoder, ranking, where each chapter acts.

    python scripts/make_pipeline_figure.py      # writes book/figures/pipeline.png

Drawn with matplotlib only (boxes and arrows), so it changes with this script, not by hand.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "book" / "figures" / "pipeline.png"
STAGE, CHAPTER = "#dbe8f6", "#fbe3c8"


def box(ax, x, y, w, h, text, colour, size=9.5, weight="normal"):
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=colour,
            edgecolor="#44546a",
            linewidth=1.0,
        )
    )
    ax.text(
        x + w / 2,
        y + h / 2,
        text,
        ha="center",
        va="center",
        fontsize=size,
        weight=weight,
        wrap=True,
    )


def arrow(ax, start, end, style="-|>", colour="#44546a", dashed=False):
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=12,
            color=colour,
            linewidth=1.2,
            linestyle="--" if dashed else "-",
        )
    )


def main() -> None:
    fig, ax = plt.subplots(figsize=(9.0, 3.8))
    ax.set_xlim(0, 10.5)
    ax.set_ylim(0, 4.4)
    ax.axis("off")
    # the retrieval pipeline
    box(ax, 0.1, 2.9, 1.7, 0.8, "query\n(domain A: sketch)", STAGE)
    box(ax, 0.1, 1.4, 1.7, 0.8, "gallery\n(domain B: colour)", STAGE)
    box(ax, 2.4, 2.1, 1.9, 0.9, "encoder\nbackbone + head", STAGE, weight="bold")
    box(ax, 4.9, 2.1, 1.5, 0.9, "embeddings\n(unit vectors)", STAGE)
    box(ax, 7.0, 2.1, 1.45, 0.9, "ranking\nby cosine", STAGE)
    box(ax, 8.95, 2.1, 1.45, 0.9, "re-ranked\nlist", STAGE)
    arrow(ax, (1.8, 3.3), (2.4, 2.75))
    arrow(ax, (1.8, 1.8), (2.4, 2.35))
    arrow(ax, (4.3, 2.55), (4.9, 2.55))
    arrow(ax, (6.4, 2.55), (7.0, 2.55))
    arrow(ax, (8.45, 2.55), (8.95, 2.55))
    # where each chapter acts
    box(ax, 0.1, 0.15, 1.7, 0.75, "01 the data:\nstyles as domains", CHAPTER, size=8.5)
    box(ax, 2.15, 3.55, 2.4, 0.75, "03 ViT: attention,\nthe shipped backbones", CHAPTER, size=8.5)
    box(
        ax,
        2.15,
        0.15,
        2.4,
        1.3,
        "trained without labels:\n04 UCDIR clusters\n05 DoD alignment\n"
        "06 IBNM fusion, noise",
        CHAPTER,
        size=8.5,
    )
    box(ax, 4.75, 3.55, 1.8, 0.75, "07 PCME: images\nand captions", CHAPTER, size=8.5)
    box(ax, 8.8, 3.55, 1.6, 0.75, "08 ICFRR:\nre-ranking", CHAPTER, size=8.5)
    box(
        ax,
        6.85,
        0.15,
        3.55,
        1.0,
        "02 metrics (the only place labels enter):\nmAP@all, P@K, R@K, PMRP\n"
        "09 when each method helps; your own images",
        CHAPTER,
        size=8.5,
    )
    arrow(ax, (0.95, 0.9), (0.95, 1.4), dashed=True)
    arrow(ax, (3.35, 3.55), (3.35, 3.0), dashed=True)
    arrow(ax, (3.35, 1.45), (3.35, 2.1), dashed=True)
    arrow(ax, (5.65, 3.55), (5.65, 3.0), dashed=True)
    arrow(ax, (9.6, 3.55), (9.6, 3.0), dashed=True)
    arrow(ax, (9.6, 2.1), (9.6, 1.15), dashed=True)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=150)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
