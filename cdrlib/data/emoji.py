"""The embedded *emoji-domains* dataset: 1,365 emoji in four visual styles, 54 classes.

Built by ``scripts/build_emoji_dataset.py`` from pinned npm packages and committed under
``data/emoji_domains``; see that folder's ``ATTRIBUTION.md`` for sources and licences. Loading
needs neither network nor npm, verifies the sha256 manifest, and takes well under a second.

Domains: ``twemoji`` (flat cartoon), ``noto`` (glossy), ``openmoji`` (outlined colour) and
``sketch`` (OpenMoji's black line art). Classes are Unicode subgroups (``animal-mammal``,
``face-smiling``, ...). Each emoji is held out or not by a fixed, seeded per-class split
(``split`` = ``"train"`` or ``"heldout"``), the same in every domain.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import REPO_ROOT
from .download import file_sha256
from .errors import DataError

DEFAULT_ROOT = REPO_ROOT / "data" / "emoji_domains"
EXPECTED_FILES = ("images.npz", "metadata.json", "MANIFEST.sha256")


@dataclass(frozen=True)
class EmojiDomains:
    """All four domains in memory.

    Attributes:
        images: uint8 array, (4, N, 64, 64, 3), RGB on white; ``images[d, i]`` is emoji ``i`` in
            domain ``d``.
        labels: int64 array, (N,), class index of each emoji (the same in every domain).
        split: array of str, (N,), ``"train"`` or ``"heldout"``.
        tags: uint8 array, (N, V), multi-hot tag vectors over ``tag_vocabulary`` (for PMRP).
        domains, classes, tag_vocabulary: names.
        records: per emoji: hexcode, emoji, class, label (CLDR), tags, keywords, short_names.
    """

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    tags: np.ndarray
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    tag_vocabulary: tuple[str, ...]
    records: tuple[dict, ...]

    def domain_index(self, domain: str) -> int:
        if domain not in self.domains:
            raise DataError(
                f"unknown emoji domain {domain!r}; the domains are {list(self.domains)}"
            )
        return self.domains.index(domain)

    def indices(self, split: str = "all") -> np.ndarray:
        """Emoji indices of a split: ``"train"``, ``"heldout"`` or ``"all"``."""
        if split == "all":
            return np.arange(len(self.labels))
        if split not in ("train", "heldout"):
            raise DataError(f"split must be 'train', 'heldout' or 'all', not {split!r}")
        return np.flatnonzero(self.split == split)

    def captions(self, i: int) -> list[str]:
        """The captions of emoji ``i``: its CLDR label, its tags and its keywords, without
        repeats."""
        r = self.records[i]
        seen, out = set(), []
        for c in [r["label"], *r["tags"], *r["keywords"]]:
            if c not in seen:
                seen.add(c)
                out.append(c)
        return out


def verify_manifest(root: Path) -> None:
    """Check every file listed in ``MANIFEST.sha256`` against its checksum."""
    manifest = root / "MANIFEST.sha256"
    for line in manifest.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = root / name
        if not path.is_file():
            raise DataError(
                f"{path} is listed in {manifest} but missing; restore it with "
                f"`git checkout -- {path}` or rebuild with scripts/build_emoji_dataset.py."
            )
        got = file_sha256(path)
        if got != digest:
            raise DataError(
                f"{path} does not match its checksum in {manifest} (sha256 {got[:12]}…, "
                f"expected {digest[:12]}…): the file is corrupted or was changed. Restore it "
                f"with `git checkout -- {path}` or rebuild with scripts/build_emoji_dataset.py."
            )


@functools.lru_cache(maxsize=2)
def _load(root: str, verify: bool) -> EmojiDomains:
    path = Path(root)
    missing = [f for f in EXPECTED_FILES if not (path / f).is_file()]
    if missing:
        raise DataError(
            f"no emoji-domains dataset at {path} (missing: {', '.join(missing)}). Expected "
            "layout:\n"
            f"  {path}/images.npz\n  {path}/metadata.json\n  {path}/MANIFEST.sha256\n"
            f"It ships with the repository under data/emoji_domains; pass root=None to use it."
        )
    if verify:
        verify_manifest(path)
    meta = json.loads((path / "metadata.json").read_text())
    with np.load(path / "images.npz") as z:
        images, tags = z["images"], z["tags"]
    classes = tuple(meta["classes"])
    records = tuple(meta["emoji"])
    cls_index = {c: i for i, c in enumerate(classes)}
    for a in (images, tags):
        a.setflags(write=False)
    return EmojiDomains(
        images=images,
        labels=np.array([cls_index[r["class"]] for r in records], dtype=np.int64),
        split=np.array([r["split"] for r in records]),
        tags=tags,
        domains=tuple(meta["domains"]),
        classes=classes,
        tag_vocabulary=tuple(meta["tag_vocabulary"]),
        records=records,
    )


def clear_emoji_cache() -> None:
    """Forget the loaded dataset: the next :func:`load_emoji_domains` reads (and verifies) the
    files again (what chapter 01 times)."""
    _load.cache_clear()


def load_emoji_domains(root: str | Path | None = None, verify: bool = True) -> EmojiDomains:
    """Load the embedded dataset (cached: a second call costs nothing).

    Args:
        root: the dataset folder; ``None`` for the copy in the repository.
        verify: check the sha256 manifest first (about 30 ms).

    Raises:
        DataError: the folder is missing files, or a file does not match the manifest.
    """
    return _load(str(Path(root or DEFAULT_ROOT).resolve()), verify)
