"""The run profile, the device and seeding: the first code cell of every chapter.

Two profiles share one text (the BoTorch ``SMOKE_TEST`` idea, turned the other way round):

* ``default`` — CPU, offline, the embedded emoji-domains dataset, small backbones shipped in
  ``checkpoints/``, sizes chosen so that every chapter runs in minutes on two cores.
* ``paper`` — a GPU, the papers' datasets and backbones, the papers' hyper-parameters.

The profile is chosen by the environment variable ``CDR_PROFILE`` (``default`` when unset), so
that one switch changes every chapter, on a laptop, in CI and on Colab alike::

    import cdrlib
    P = cdrlib.setup(seed=0)        # reads CDR_PROFILE, seeds everything, picks the device
    P.pick(default=20, paper=200)   # one knob, two values
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.paper import data_home, load_paper_split
from .paths import REPO_ROOT, default_results_dir
from .progress import progress

PROFILES = ("default", "paper")
# REPO_ROOT, default_results_dir and progress are re-exported for chapters
__all__ = [
    "PROFILES",
    "REPO_ROOT",
    "Profile",
    "default_results_dir",
    "pick_device",
    "profile_name",
    "progress",
    "seed_everything",
    "setup",
]


@dataclass(frozen=True)
class Profile:
    """What a chapter needs to know about the run it is part of.

    Attributes:
        name: ``"default"`` or ``"paper"``.
        device: where tensors go (``cuda`` when present, else ``cpu``).
        seed: the seed given to :func:`setup`.
        data_root: where the paper datasets live (:func:`cdrlib.data.paper.data_home`).
        results_dir: where chapters save their results tables (``CDR_RESULTS_DIR``).
    """

    name: str
    device: torch.device
    seed: int
    data_root: Path
    results_dir: Path

    @property
    def is_paper(self) -> bool:
        return self.name == "paper"

    def pick(self, default, paper):
        """Return ``default`` in the default profile and ``paper`` in the paper profile."""
        return paper if self.is_paper else default

    def require_data(self, dataset: str, domains) -> None:
        """In the paper profile, stop at once (with the download steps) when a dataset is missing.

        The default profile reads the embedded data, which ships with the repository.
        """
        if self.is_paper:
            for d in domains:
                load_paper_split(dataset, d, "all", self.data_root / dataset)

    def __repr__(self) -> str:  # shown in every chapter's first cell
        return (
            f"Profile(name={self.name!r}, device={self.device.type}, seed={self.seed}, "
            f"threads={torch.get_num_threads()})"
        )


def profile_name() -> str:
    """The profile named by ``CDR_PROFILE`` (``default`` when unset)."""
    name = os.environ.get("CDR_PROFILE", "default").strip().lower() or "default"
    if name not in PROFILES:
        raise ValueError(
            f"CDR_PROFILE={name!r} is not a profile; use one of {PROFILES} "
            f"(for example: export CDR_PROFILE=paper)."
        )
    return name


def pick_device(prefer: str | None = None) -> torch.device:
    """``cuda`` when a GPU is visible, otherwise ``cpu``; ``prefer`` (or ``CDR_DEVICE``)
    overrides."""
    prefer = prefer or os.environ.get("CDR_DEVICE")
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Kernels stay free to be non-deterministic on
    GPUs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(seed: int = 0, profile: str | None = None) -> Profile:
    """Read the profile, seed everything and choose the device: call it once per chapter.

    In the paper profile a missing GPU is allowed (it only makes the run slow) but announced.
    """
    name = profile or profile_name()
    seed_everything(seed)
    device = pick_device() if name == "paper" else pick_device(os.environ.get("CDR_DEVICE", "cpu"))
    if name == "paper" and device.type != "cuda":
        print(
            "note: the paper profile runs without a GPU here; expect hours, not minutes.",
            file=sys.stderr,
        )
    return Profile(
        name=name,
        device=device,
        seed=seed,
        data_root=data_home(),
        results_dir=default_results_dir(),
    )
