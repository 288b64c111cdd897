"""One dataset object for every source: the embedded arrays and the paper datasets' image files.

A chapter asks :func:`get_dataset` for ``(dataset, domain, split, transform)`` and gets a
:class:`DomainDataset` whichever profile runs; items are ``(image, label, index)`` where ``image``
is whatever the transform returns (one tensor, or two views for contrastive training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError
from .image_files import read_image
from .transforms import EvalTransform, to_float


class DomainDataset(Dataset):
    """Images of one domain with their class labels.

    Exactly one of ``images`` (uint8 array (N, H, W, 3), held in memory) or ``files`` (paths read
    on access, resized to ``image_size``) is given.

    Attributes:
        name, domain, split: where the images come from.
        labels: int64 array (N,) of class indices (for evaluation; training code must not read
            them).
        classes: the class names.
        ids: int64 array (N,), the item's index in its source (the same emoji has the same id in
            every domain of the embedded data; used for memory banks and for analysis only).
    """

    def __init__(
        self,
        name: str,
        domain: str,
        split: str,
        labels: Sequence[int],
        classes: Sequence[str],
        images: np.ndarray | None = None,
        files: Sequence[str | Path] | None = None,
        transform: Callable | None = None,
        image_size: int = 64,
        ids: Sequence[int] | None = None,
    ):
        if (images is None) == (files is None):
            raise ValueError("give exactly one of images= or files=")
        self.name, self.domain, self.split = name, domain, split
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = tuple(classes)
        self.images = images
        self.files = [Path(f) for f in files] if files is not None else None
        self.image_size = image_size
        self.transform = transform if transform is not None else EvalTransform(image_size)
        self.ids = np.asarray(
            ids if ids is not None else np.arange(len(self.labels)), dtype=np.int64
        )
        n = len(images) if images is not None else len(self.files)
        if n != len(self.labels):
            raise ValueError(f"{n} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> torch.Tensor:
        """Image ``i`` as float (3, H, W) in [0, 1], before the transform."""
        if self.images is not None:
            return to_float(self.images[i])
        # transparency on white, 16-bit scaled: as the embedded images; an unreadable file is named
        return to_float(read_image(self.files[i], self.image_size))

    def __getitem__(self, i: int):
        return self.transform(self.raw(i)), int(self.labels[i]), int(i)

    def tensor(self) -> torch.Tensor:
        """All images as float (N, 3, H, W) in [0, 1] (in-memory datasets only)."""
        if self.images is None:
            raise DataError("tensor() needs an in-memory dataset; use a DataLoader for image files")
        return to_float(self.images)

    def __repr__(self) -> str:
        return (
            f"DomainDataset({self.name}/{self.domain}, split={self.split}, n={len(self)}, "
            f"classes={len(self.classes)})"
        )


def get_dataset(
    name: str,
    domain: str,
    split: str = "train",
    transform: Callable | None = None,
    root: str | Path | None = None,
    image_size: int | None = None,
) -> DomainDataset:
    """The images of one domain of a dataset.

    Args:
        name: ``"emoji"`` (embedded) or a paper dataset: ``"office_home"``, ``"pacs"``,
            ``"domainnet"``, ``"sketchy"``, ``"tu_berlin"``, ``"cub"``.
        domain: the domain's name (``cdrlib.data.DOMAINS[name]`` lists them).
        split: ``"train"``, ``"heldout"`` (the honest protocol's evaluation part) or ``"all"``;
            for Sketchy and TU-Berlin ``"heldout"`` is the zero-shot test classes.
        transform: per-item transform; default :class:`EvalTransform`.
        root: the dataset's folder (paper datasets; default ``$CDR_DATA/<name>``).
        image_size: 64 for the embedded data, 224 for the paper datasets unless given.
    """
    if name == "emoji":
        from .emoji import load_emoji_domains

        ds = load_emoji_domains(root)
        d = ds.domain_index(domain)
        idx = ds.indices(split)
        return DomainDataset(
            "emoji",
            domain,
            split,
            ds.labels[idx],
            ds.classes,
            images=ds.images[d, idx],
            transform=transform,
            image_size=image_size or 64,
            ids=idx,
        )
    from .paper import load_paper_split

    files, labels, classes = load_paper_split(name, domain, split, root)
    return DomainDataset(
        name,
        domain,
        split,
        labels,
        classes,
        files=files,
        transform=transform,
        image_size=image_size or 224,
    )
