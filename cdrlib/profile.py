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

A third setting, ``CDR_SMOKE=1`` with the paper profile, runs the paper profile's code at a tiny
size (``P.pick(20, 200, smoke=1)``): ``scripts/smoke_paper.py`` uses it, with small copies of the
paper datasets (:mod:`cdrlib.data.smoke`) and randomly initialised paper backbones
(``CDR_RANDOM_WEIGHTS=1``), to prove on any CPU that every chapter runs in the paper profile.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.download import cache_dir
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
        runs_dir: where chapters keep their trained runs: ``book/runs`` in the default profile
            (committed), ``$CDR_RUNS`` or ``<cache>/runs`` in the paper profile (on Colab, a
            folder on Google Drive lets a disconnected session resume).
        smoke: the paper profile at a tiny size (``CDR_SMOKE=1``), see :meth:`pick`.
    """

    name: str
    device: torch.device
    seed: int
    data_root: Path
    results_dir: Path
    runs_dir: Path = REPO_ROOT / "book" / "runs"
    smoke: bool = False

    @property
    def is_paper(self) -> bool:
        return self.name == "paper"

    def pick(self, default, paper, smoke=None):
        """Return ``default`` in the default profile and ``paper`` in the paper profile; ``smoke``
        (when given) in a smoke run of the paper profile."""
        if self.smoke and smoke is not None:
            return smoke
        return paper if self.is_paper else default

    def require_data(self, dataset: str, domains) -> None:
        """In the paper profile, stop at once (with the download steps) when a dataset is missing.

        The default profile reads the embedded data, which ships with the repository.
        """
        if self.is_paper:
            for d in domains:
                load_paper_split(dataset, d, "all", self.data_root / dataset)

    def __repr__(self) -> str:  # shown in every chapter's first cell
        smoke = ", smoke=True" if self.smoke else ""
        return (
            f"Profile(name={self.name!r}, device={self.device.type}, seed={self.seed}, "
            f"threads={torch.get_num_threads()}{smoke})"
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


def _register_only_magic(name: str) -> None:
    """In IPython, the cell magic ``%%only <profile>``: the cell runs in that profile and is skipped
    (with one printed line) in the other — how a chapter keeps a section that needs the embedded
    data, or a GPU run, in one text for both profiles."""
    try:
        from IPython import get_ipython  # optional: IPython comes with the book's extras only
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def only(line: str, cell: str):
        wanted = line.strip()
        if wanted not in PROFILES:
            raise ValueError(f"%%only takes a profile, one of {PROFILES}; got {wanted!r}")
        if wanted != name:
            print(f"(this cell runs in the {wanted} profile only; the {name} profile skips it)")
            return None
        result = shell.run_cell(cell)
        result.raise_error()  # an error in the cell is an error of the cell, not a silent skip
        return None

    shell.register_magic_function(only, magic_kind="cell", magic_name="only")


def setup(seed: int = 0, profile: str | None = None) -> Profile:
    """Read the profile, seed everything and choose the device: call it once per chapter. In a
    notebook it also defines the cell magic ``%%only default`` / ``%%only paper``.

    In the paper profile a missing GPU is allowed (it only makes the run slow) but announced.
    """
    name = profile or profile_name()
    seed_everything(seed)
    device = pick_device() if name == "paper" else pick_device(os.environ.get("CDR_DEVICE", "cpu"))
    smoke = os.environ.get("CDR_SMOKE", "0").strip() == "1"
    if smoke and name != "paper":
        raise ValueError("CDR_SMOKE=1 is a size of the paper profile: set CDR_PROFILE=paper too")
    if name == "paper" and device.type != "cuda" and not smoke:
        print(
            "note: the paper profile runs without a GPU here; expect hours, not minutes.",
            file=sys.stderr,
        )
    _register_only_magic(name)
    return Profile(
        name=name,
        device=device,
        seed=seed,
        data_root=data_home(),
        results_dir=default_results_dir(),
        runs_dir=(
            Path(os.environ.get("CDR_RUNS", cache_dir() / "runs")).expanduser()
            if name == "paper"
            else REPO_ROOT / "book" / "runs"
        ),
        smoke=smoke,
    )
