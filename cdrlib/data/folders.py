"""Your own images: a folder per domain, a folder per class — or a list of files — read into the
same datasets as the emoji.

    root/
      photos/   cat/ 001.png 002.jpg …   dog/ …
      sketches/ cat/ …                   dog/ …

:func:`load_folder_domains` reads such a tree, :func:`load_list_domains` a CSV file (or table) with
the columns ``path, domain, class`` and optionally ``split`` (``train`` or ``heldout``), into one
training and one held-out :class:`~cdrlib.data.DomainDataset` per domain, in memory, ready for the
experiment harness (:class:`cdrlib.experiment.PairBenchmark`), the metrics and re-ranking. What they
guarantee:

* **one class vocabulary** for every domain, by folder name: class ``cat`` has the same id in every
  domain, whatever other folders a domain has or lacks. A class missing (or empty) in a domain is
  reported, never renumbered — different ids across domains would silently break relevance;
* **a held-out part that is held out**: a seeded share of each class of each domain, disjoint from
  the training part (or the list's own ``split`` column);
* **images as drawn**: transparency is composited on white (as the embedded emoji), 16-bit images
  are scaled to 8 bits, palette and greyscale images become RGB;
* **every file checked up front**: all files are read before anything is returned; the unreadable
  ones are listed together in one error (or, with ``bad_files="skip"``, left out, warned about and
  listed in :attr:`FolderDomains.unreadable`) — never found midway through training. Files of a tree
  that are not images (by suffix) are listed in :attr:`FolderDomains.skipped`.
"""

from __future__ import annotations

import csv
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .datasets import DomainDataset
from .errors import DataError
from .image_files import IMAGE_SUFFIXES, read_image

__all__ = ["FolderDomains", "load_folder_domains", "load_list_domains", "read_image"]


@dataclass
class FolderDomains:
    """The domains of a folder tree, split into training and held-out parts.

    Attributes:
        root: the tree's folder. classes: the shared class names (ids are positions here).
        train, heldout: domain → :class:`~cdrlib.data.DomainDataset` (images (N, S, S, 3) uint8).
        missing: domain → the classes it has no image of.
        skipped: files that are not images (by suffix), left out.
        unreadable: ``(file, reason)`` of image files that could not be read, left out
            (``bad_files="skip"`` only; otherwise they stop the load).
        sources: ``"train"`` / ``"heldout"`` → domain → the file of each item, in the datasets'
            order (which file a retrieved item is).
    """

    root: Path
    classes: tuple[str, ...]
    train: dict[str, DomainDataset]
    heldout: dict[str, DomainDataset]
    missing: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    sources: dict[str, dict[str, list[Path]]] = field(default_factory=dict)

    @property
    def domains(self) -> list[str]:
        return list(self.train)

    def summary(self) -> str:
        """One line per domain: images in each part, classes present and missing."""
        lines = [f"{self.root}: {len(self.classes)} classes"]
        for d in self.domains:
            miss = self.missing.get(d, [])
            lines.append(
                f"  {d}: {len(self.train[d])} training and {len(self.heldout[d])} held-out images, "
                f"{len(self.classes) - len(miss)} classes" + (f", missing {miss}" if miss else "")
            )
        if self.skipped:
            lines.append(
                f"  {len(self.skipped)} files that are not images were skipped (first: "
                f"{self.skipped[0]})"
            )
        if self.unreadable:
            lines.append(
                f"  {len(self.unreadable)} unreadable image files were left out (first: "
                f"{self.unreadable[0][0]})"
            )
        return "\n".join(lines)


SPLITS = ("train", "heldout")


def load_folder_domains(
    root: str | Path,
    image_size: int = 64,
    heldout_fraction: float = 0.3,
    seed: int = 0,
    domains: list[str] | None = None,
    bad_files: str = "raise",
) -> FolderDomains:
    """Read ``root/<domain>/<class>/<image>`` into training and held-out datasets per domain.

    Args:
        root: the tree. image_size: the side images are resized to — the backbone's input size
            (:func:`cdrlib.models.input_size`: 64 for the shipped backbones, 224 for the paper
            profile's). heldout_fraction: the share of each class of each domain held out (rounded;
            a class of one image stays in training). seed: which images.
        domains: the domain folders to read (default: every folder under ``root``).
        bad_files: ``"raise"`` (default): unreadable image files stop the load, all of them named in
            one error; ``"skip"``: they are left out, warned about and listed in ``unreadable``.
    Returns:
        :class:`FolderDomains`. Classes missing in a domain are in ``missing`` and warned about.
    Raises:
        DataError: no such folder, fewer than two domains, a domain without images, or unreadable
            image files.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"no folder {root}: give the folder that holds one sub-folder per domain")
    names = domains or sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if len(names) < 2:
        raise DataError(
            f"{root} holds {len(names)} domain folder(s) {names}; cross-domain retrieval needs at "
            f"least two: root/<domain>/<class>/<image>"
        )
    files, skipped = {}, []
    for d in names:
        if not (root / d).is_dir():
            raise DataError(f"no domain folder {root / d}")
        files[d] = {}
        for class_dir in sorted(
            p for p in (root / d).iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            entries = sorted(
                p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith(".")
            )
            images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
            skipped += [p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
            if images:
                files[d][class_dir.name] = images
        if not files[d]:
            raise DataError(
                f"domain {d!r} has no images: expected {root / d}/<class>/<image> "
                f"with suffixes {', '.join(IMAGE_SUFFIXES)}"
            )
    return _read_domains(root, files, None, image_size, heldout_fraction, seed, bad_files, skipped)


def load_list_domains(
    table: str | Path | Iterable[Mapping],
    image_size: int = 64,
    heldout_fraction: float = 0.3,
    seed: int = 0,
    root: str | Path | None = None,
    bad_files: str = "raise",
) -> FolderDomains:
    """Read the images a list names (one row per image) into training and held-out datasets per
    domain.

    Args:
        table: a CSV file with a header row, or rows (dicts, e.g. ``DataFrame.to_dict("records")``),
            with the columns ``path``, ``domain``, ``class`` and optionally ``split`` — ``train`` or
            ``heldout`` for every row (the user's own split, used as given); without it a seeded
            ``heldout_fraction`` of each class of each domain is held out, as for a folder tree.
        root: what relative paths are relative to (default: the CSV file's folder, else the
            working directory).
        image_size, heldout_fraction, seed, bad_files: as for :func:`load_folder_domains`.
    Returns:
        :class:`FolderDomains` (its ``root`` is ``root``).
    Raises:
        DataError: a missing column or file, an unknown split, fewer than two domains, unreadable
            image files.
    """
    if isinstance(table, (str, Path)):
        path = Path(table).expanduser()
        if not path.is_file():
            raise DataError(
                f"no list file {path}: give a CSV file with the columns path, domain, class[, "
                "split]"
            )
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        base = Path(root).expanduser() if root is not None else path.parent
    else:
        rows = [dict(r) for r in table]
        base = Path(root).expanduser() if root is not None else Path.cwd()
    if not rows:
        raise DataError(
            "the list has no rows: one row per image, with the columns path, domain, class[, split]"
        )
    absent = [c for c in ("path", "domain", "class") if c not in rows[0]]
    if absent:
        raise DataError(
            f"the list lacks the column(s) {absent}; it has {list(rows[0])}. "
            f"Columns: path, domain, class, and optionally split (train or heldout)"
        )
    has_split = [bool(str(r.get("split") or "").strip()) for r in rows]
    if any(has_split) and not all(has_split):
        raise DataError(
            f"{has_split.count(False)} of {len(rows)} rows have no split: give a split (train or "
            f"heldout) for every row, or for none (then a seeded share of each class is held out)"
        )
    files, split_of = {}, {} if all(has_split) else None
    for i, r in enumerate(rows):
        p = Path(str(r["path"]).strip()).expanduser()
        p = p if p.is_absolute() else base / p
        d, c = str(r["domain"]).strip(), str(r["class"]).strip()
        if not d or not c:
            raise DataError(f"row {i + 1} ({r['path']}) has an empty domain or class")
        if not p.is_file():
            raise DataError(
                f"row {i + 1}: no file {p} (relative paths are relative to {base}; pass root=)"
            )
        files.setdefault(d, {}).setdefault(c, []).append(p)
        if split_of is not None:
            split = str(r["split"]).strip()
            if split not in SPLITS:
                raise DataError(f"row {i + 1} ({p.name}) has split {split!r}: use one of {SPLITS}")
            split_of[p] = split
    if len(files) < 2:
        raise DataError(
            f"the list names {len(files)} domain(s) {sorted(files)}; cross-domain retrieval needs "
            "at "
            f"least two"
        )
    files = {
        d: {c: sorted(ps) for c, ps in sorted(per_class.items())}
        for d, per_class in sorted(files.items())
    }
    return _read_domains(base, files, split_of, image_size, heldout_fraction, seed, bad_files, [])


def _read_domains(
    root: Path,
    files: dict,
    split_of: dict | None,
    image_size: int,
    heldout_fraction: float,
    seed: int,
    bad_files: str,
    skipped: list,
) -> FolderDomains:
    """Shared by both loaders: one class vocabulary, the split, every file read, the datasets.

    Args:
        files: domain → class name → image paths. split_of: path → ``"train"``/``"heldout"``, or
            ``None`` for the seeded per-class split.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if bad_files not in ("raise", "skip"):
        raise ValueError(f"bad_files must be 'raise' or 'skip', not {bad_files!r}")
    names = list(files)
    classes = tuple(sorted({c for per_class in files.values() for c in per_class}))
    class_id = {c: i for i, c in enumerate(classes)}
    missing = {d: [c for c in classes if c not in files[d]] for d in names}
    missing = {d: m for d, m in missing.items() if m}
    if missing:
        warnings.warn(
            "classes missing in some domains (their ids stay the same everywhere): "
            + "; ".join(f"{d}: {m}" for d, m in missing.items()),
            stacklevel=3,
        )
    # the split is decided on the file list, before reading (a bad file moves no other file between
    # parts), by a generator of its own per (domain, class): files added to one class move no
    # other's
    chosen = {d: {s: [] for s in SPLITS} for d in names}
    for d in names:
        for c in classes:
            paths = files[d].get(c, [])
            if split_of is None:
                rng = np.random.default_rng([seed, zlib.crc32(d.encode()), zlib.crc32(c.encode())])
                n_held = int(round(heldout_fraction * len(paths))) if len(paths) > 1 else 0
                held = set(rng.permutation(len(paths))[:n_held].tolist())
                parts = ["heldout" if i in held else "train" for i in range(len(paths))]
            else:
                parts = [split_of[p] for p in paths]
            for p, part in zip(paths, parts, strict=True):
                chosen[d][part].append((p, class_id[c]))
    pixels, unreadable = {}, []
    for d in names:
        for items in chosen[d].values():
            for p, _ in items:
                try:
                    pixels[p] = read_image(p, image_size)
                except DataError as e:
                    unreadable.append((p, str(e.__cause__ or e)))
    if unreadable:
        listed = "\n".join(f"  {p}: {why}" for p, why in unreadable[:20])
        more = f"\n  … and {len(unreadable) - 20} more" if len(unreadable) > 20 else ""
        if bad_files == "raise":
            raise DataError(
                f"{len(unreadable)} image file(s) cannot be read:\n{listed}{more}\n"
                f"Remove or replace them, or pass bad_files='skip' to leave them out."
            )
        warnings.warn(
            f"{len(unreadable)} unreadable image file(s) left out:\n{listed}{more}", stacklevel=3
        )
    sets, sources = {s: {} for s in SPLITS}, {s: {} for s in SPLITS}
    for d in names:
        for split, items in chosen[d].items():
            items = [(p, y) for p, y in items if p in pixels]
            images = (
                np.stack([pixels[p] for p, _ in items])
                if items
                else np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
            )
            sets[split][d] = DomainDataset(
                root.name,
                d,
                split,
                [y for _, y in items],
                classes,
                images=images,
                image_size=image_size,
            )
            sources[split][d] = [p for p, _ in items]
    empty = [d for d in names if len(sets["train"][d]) == 0]
    if empty:
        raise DataError(f"domain(s) {empty} have no readable training image")
    return FolderDomains(
        root, classes, sets["train"], sets["heldout"], missing, skipped, unreadable, sources
    )
