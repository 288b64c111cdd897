"""Your own images: a folder per domain, a folder per class, read into the same datasets as the emoji.

    root/
      photos/   cat/ 001.png 002.jpg …   dog/ …
      sketches/ cat/ …                   dog/ …

:func:`load_folder_domains` reads such a tree into one training and one held-out
:class:`~cdrlib.data.DomainDataset` per domain, in memory, ready for the experiment harness
(:class:`cdrlib.experiment.PairBenchmark`), the metrics and re-ranking. What it guarantees:

* **one class vocabulary** for every domain, by folder name: class ``cat`` has the same id in every
  domain, whatever other folders a domain has or lacks. A class missing (or empty) in a domain is
  reported, never renumbered — different ids across domains would silently break relevance;
* **a held-out part that is held out**: a seeded share of each class of each domain, disjoint from
  the training part;
* **images as drawn**: transparency is composited on white (as the embedded emoji), 16-bit images
  are scaled to 8 bits, palette and greyscale images become RGB; every file is read before
  anything is returned, so an unreadable file stops the load at once, named, not midway through
  training; files that are not images are listed in :attr:`FolderDomains.skipped`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .datasets import DomainDataset
from .errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class FolderDomains:
    """The domains of a folder tree, split into training and held-out parts.

    Attributes:
        root: the tree's folder. classes: the shared class names (ids are positions here).
        train, heldout: domain → :class:`~cdrlib.data.DomainDataset` (images (N, S, S, 3) uint8).
        missing: domain → the classes it has no image of.
        skipped: files that are not images (by suffix), left out.
    """

    root: Path
    classes: tuple[str, ...]
    train: dict[str, DomainDataset]
    heldout: dict[str, DomainDataset]
    missing: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[Path] = field(default_factory=list)

    @property
    def domains(self) -> list[str]:
        return list(self.train)

    def summary(self) -> str:
        """One line per domain: images in each part, classes present and missing."""
        lines = [f"{self.root}: {len(self.classes)} classes"]
        for d in self.domains:
            miss = self.missing.get(d, [])
            lines.append(f"  {d}: {len(self.train[d])} training and {len(self.heldout[d])} held-out images, "
                         f"{len(self.classes) - len(miss)} classes" + (f", missing {miss}" if miss else ""))
        if self.skipped:
            lines.append(f"  {len(self.skipped)} files that are not images were skipped (first: {self.skipped[0]})")
        return "\n".join(lines)


def read_image(path: str | Path, size: int) -> np.ndarray:
    """One image file as uint8 (size, size, 3): transparency on white, 16 bits scaled to 8, resized.

    Raises:
        DataError: the file cannot be read as an image (named in the message).
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit (or 32-bit integer) greyscale: scale the value range to 8 bits
                a = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
                im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
            if im.mode == "P" or im.mode in ("LA", "PA", "RGBA") or "transparency" in im.info:
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}. Remove or replace the file, then load again.") from e


def load_folder_domains(root: str | Path, image_size: int = 64, heldout_fraction: float = 0.3, seed: int = 0,
                        domains: list[str] | None = None) -> FolderDomains:
    """Read ``root/<domain>/<class>/<image>`` into training and held-out datasets per domain.

    Args:
        root: the tree. image_size: the side images are resized to (64 for the shipped backbones,
            224 for the paper profile's). heldout_fraction: the share of each class of each domain
            held out (rounded; a class of one image stays in training). seed: which images.
        domains: the domain folders to read (default: every folder under ``root``).
    Returns:
        :class:`FolderDomains`. Classes missing in a domain are in ``missing`` and warned about.
    Raises:
        DataError: no such folder, fewer than two domains, a domain without images, or an
            unreadable image file.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"no folder {root}: give the folder that holds one sub-folder per domain")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    names = domains or sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise DataError(f"{root} holds {len(names)} domain folder(s) {names}; cross-domain retrieval needs at "
                        f"least two: root/<domain>/<class>/<image>")
    files, skipped = {}, []
    for d in names:
        if not (root / d).is_dir():
            raise DataError(f"no domain folder {root / d}")
        files[d] = {}
        for class_dir in sorted(p for p in (root / d).iterdir() if p.is_dir() and not p.name.startswith(".")):
            entries = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
            images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
            skipped += [p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
            if images:
                files[d][class_dir.name] = images
        if not files[d]:
            raise DataError(f"domain {d!r} has no images: expected {root / d}/<class>/<image> "
                            f"with suffixes {', '.join(IMAGE_SUFFIXES)}")
    classes = tuple(sorted({c for per_class in files.values() for c in per_class}))
    class_id = {c: i for i, c in enumerate(classes)}
    missing = {d: [c for c in classes if c not in files[d]] for d in names}
    missing = {d: m for d, m in missing.items() if m}
    if missing:
        warnings.warn("classes missing in some domains (their ids stay the same everywhere): "
                      + "; ".join(f"{d}: {m}" for d, m in missing.items()), stacklevel=2)
    rng = np.random.default_rng(seed)
    parts = {"train": {}, "heldout": {}}
    for d in names:
        chosen = {"train": [], "heldout": []}
        for c in classes:                                    # the shared order: the split is reproducible
            paths = files[d].get(c, [])
            n_held = int(round(heldout_fraction * len(paths))) if len(paths) > 1 else 0
            held = set(rng.permutation(len(paths))[:n_held].tolist())
            for i, p in enumerate(paths):
                chosen["heldout" if i in held else "train"].append((p, class_id[c]))
        for split, items in chosen.items():
            images = (np.stack([read_image(p, image_size) for p, _ in items]) if items
                      else np.zeros((0, image_size, image_size, 3), dtype=np.uint8))
            parts[split][d] = DomainDataset(root.name, d, split, [y for _, y in items], classes, images=images,
                                            image_size=image_size)
    return FolderDomains(root, classes, parts["train"], parts["heldout"], missing, skipped)
