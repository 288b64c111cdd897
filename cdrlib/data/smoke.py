"""Small stand-ins for the six paper datasets in their real layouts, made of the embedded emoji.

The paper profile reads Office-Home, PACS, DomainNet, Sketchy, TU-Berlin and CUB from the folders
and split files their releases ship (:mod:`cdrlib.data.paper`). To prove that every chapter runs in
that profile without a GPU or the network, :func:`write_paper_layouts` writes each layout at a
small size — the same folder names, split lists and caption files — filled with emoji images
scaled up to the papers' 224 px. Their numbers mean nothing; what they test is that the code path
of the paper profile runs end to end (``scripts/smoke_paper.py``).

Each dataset's domains take the four emoji styles in turn; its classes are the first emoji classes
that have enough images; the zero-shot datasets hold their last classes out as unseen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .emoji import load_emoji_domains
from .paper import PAPER_DATASETS

EMOJI_STYLES = ("twemoji", "noto", "openmoji", "sketch")


def _pick(n_classes: int, per_class: int) -> list[tuple[str, np.ndarray]]:
    """``(class name, emoji ids)`` of the first ``n_classes`` emoji classes with ≥ ``per_class``
    emoji (the first ``per_class`` of each)."""
    data = load_emoji_domains()
    picked = []
    for c, name in enumerate(data.classes):
        ids = np.flatnonzero(data.labels == c)
        if len(ids) >= per_class:
            picked.append((name, ids[:per_class]))
        if len(picked) == n_classes:
            return picked
    raise ValueError(f"the emoji data has fewer than {n_classes} classes of {per_class} emoji")


def _save(path: Path, style: str, emoji_id: int, size: int) -> None:
    data = load_emoji_domains()
    pixels = data.images[data.domain_index(style), emoji_id]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).resize((size, size), Image.BICUBIC).save(path)


def _folders(name: str, root: Path, picked, size: int) -> dict:
    """``<root>/<domain folder>/<class>/<image>`` for every domain; returns domain → list of
    (relative path, class index)."""
    spec = PAPER_DATASETS[name]
    out = {}
    for d_i, (domain, folder) in enumerate(spec.folders.items()):
        style = EMOJI_STYLES[d_i % len(EMOJI_STYLES)]
        ext = "png" if domain == "sketch" else "jpg"
        rows = []
        for c_i, (cls, ids) in enumerate(picked):
            for i in ids:
                rel = f"{folder}/{cls}/{domain}_{int(i):05d}.{ext}"
                _save(root / rel, style, int(i), size)
                rows.append((rel, c_i))
        out[domain] = rows
    return out


def _write_list(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{rel} {label}\n" for rel, label in rows))


def write_paper_layouts(
    root: str | Path,
    datasets=tuple(PAPER_DATASETS),
    n_classes: int = 6,
    per_class: int = 4,
    unseen: int = 3,
    image_size: int = 224,
) -> Path:
    """Write small copies of the paper datasets in their real layouts under ``root/<dataset>/``.

    Args:
        root: the folder to use as ``CDR_DATA``.
        datasets: which of :data:`~cdrlib.data.paper.PAPER_DATASETS` to write.
        n_classes, per_class: classes per dataset, images per class and domain (the defaults:
            domains of 24 images, as few as k-means and a batch of 8 need, because the smoke run's
            time is mostly the paper backbones training on them).
        unseen: classes held out as unseen by the zero-shot datasets (Sketchy, TU-Berlin, CUB);
            the default leaves their galleries 12 items, more than chapter 08's P@10 needs.
        image_size: side of the written images (the papers' 224).
    Returns:
        ``root``.
    """
    root = Path(root)
    unknown = sorted(set(datasets) - set(PAPER_DATASETS))
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; choose from {list(PAPER_DATASETS)}")
    if not 0 < unseen < n_classes:
        raise ValueError(f"unseen must be between 1 and n_classes − 1 = {n_classes - 1}")
    picked = _pick(n_classes, per_class)
    classes = [c for c, _ in picked]
    for name in datasets:
        base = root / name
        spec = PAPER_DATASETS[name]
        if name == "cub":
            _write_cub(base, picked, unseen, image_size)
            continue
        rows = _folders(name, base, picked, image_size)
        if spec.split == "lists":  # DomainNet: every image in one of its official lists
            for domain, items in rows.items():
                _write_list(base / f"{domain}_train.txt", items[0::3] + items[1::3])
                _write_list(base / f"{domain}_test.txt", items[2::3])
            (base / "class_subset.txt").write_text("\n".join(classes) + "\n")
        if spec.sake is not None:  # SAKE's split files, and the flattened-layout list as well
            folder = base / spec.sake.folders[0]
            for domain, items in rows.items():
                prefix = spec.sake.prefixes[domain]
                seen = [r for r in items if r[1] < n_classes - unseen]
                zero = [r for r in items if r[1] >= n_classes - unseen]
                if domain == "sketch":  # the sketches also list seen-class test items
                    _write_list(folder / f"{prefix}_filelist_train.txt", seen[0::2])
                    _write_list(folder / f"{prefix}_filelist_test.txt", seen[1::2])
                else:
                    _write_list(folder / f"{prefix}_filelist_train.txt", seen)
                _write_list(folder / f"{prefix}_filelist_zero.txt", zero)
            (base / "zeroshot_test_classes.txt").write_text("\n".join(classes[-unseen:]) + "\n")
    return root


def _write_cub(base: Path, picked, unseen: int, size: int) -> None:
    """CUB-200-2011's image folders and index files, Reed et al.'s ``text_c10`` captions (the
    emoji's own names and keywords) and PCME's ``testclasses.txt``."""
    data = load_emoji_domains()
    cub = base / "CUB_200_2011"
    images, labels, names = [], [], []
    for c_i, (cls, ids) in enumerate(picked):
        folder = f"{c_i + 1:03d}.{cls}"
        names.append(f"{c_i + 1} {folder}")
        for i in ids:
            rel = f"{folder}/emoji_{int(i):05d}.jpg"
            _save(cub / "images" / rel, "twemoji", int(i), size)
            images.append(rel)
            labels.append(c_i + 1)
            txt = base / "text_c10" / folder / f"emoji_{int(i):05d}.txt"
            txt.parent.mkdir(parents=True, exist_ok=True)
            txt.write_text("\n".join(data.captions(int(i))) + "\n")
    (cub / "images.txt").write_text("".join(f"{n + 1} {r}\n" for n, r in enumerate(images)))
    (cub / "image_class_labels.txt").write_text(
        "".join(f"{n + 1} {y}\n" for n, y in enumerate(labels))
    )
    (cub / "classes.txt").write_text("\n".join(names) + "\n")
    unseen_folders = [f"{c_i + 1:03d}.{cls}" for c_i, (cls, _) in enumerate(picked)][-unseen:]
    (base / "testclasses.txt").write_text("\n".join(unseen_folders) + "\n")
