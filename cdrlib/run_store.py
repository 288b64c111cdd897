"""A chapter's trained runs kept as small checkpoints: load if present, otherwise train.

A method chapter trains many short runs (methods × pairs × seeds × premise-dial settings). On a
2-core CPU they take minutes; a reader re-running the chapter, and CI, need only their results. A
:class:`RunStore` keeps, for each run, what evaluation and the chapter's figures read — the
trained modules, the last clusters, the training history — in a folder of the repository, with a
manifest (``RUNS.json``) that records each file's sha256, the run's settings and how long it
trained. A stored run is used only when its settings are the ones asked for and its sha256 matches;
otherwise the run trains and is stored again.

The settings say everything that defines a run besides the code: the configuration, a
:func:`digest` of the training data (the images and the backbone that sees them, not only their
shapes) and the settings of the premise hooks that replace a step of the method
(:func:`hook_settings`). So a chapter whose data or dial changed trains again instead of loading a
run of other data. A change of the code itself is not seen: after one, retrain
(``CDR_RUN_STORE=retrain``).

What is stored is compact (:func:`pack_state`): each weight matrix (and the clusters' centroids)
as integer codes with one step per row, as coarse as the method's tables allow
(``relative_step``), other floating tensors as float16, cluster labels in the smallest integer
type that holds them; the file is xz-compressed (:func:`~cdrlib.checkpoint_io.save_state`), which
stores each code in about as many bits as it carries — a UCDIR head and its clusters take 0.14 MB.
The trained state is always rounded this way before evaluation, also when the run was just
trained (:func:`unpack_state` of :func:`pack_state`), so the table a chapter shows is the same
whether its runs were loaded or trained.

A run is stored once in the book: a chapter that evaluates a run an earlier chapter trained (the
same settings) loads it from that chapter's store.

``CDR_RUN_STORE`` chooses the mode: ``use`` (default), ``retrain`` (train every run this store
holds and store it again), ``off`` (train every run, read and write nothing: what
``scripts/measure_variation.py`` does to measure training's run-to-run variation).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .checkpoint_io import CheckpointError, ChecksumError, load_state, save_state, state_digest
from .data.download import file_sha256
from .paths import REPO_ROOT

MODES = ("use", "retrain", "off")


def digest(*parts) -> str:
    """A short :func:`~cdrlib.checkpoint_io.state_digest` (16 hex digits) of tensors, numpy arrays,
    modules and plain containers and values, the same on every machine for the same values.

    A module counts by its ``state_dict`` and an array as the tensor of its values (a plain value
    counts by its ``repr``, which elides a large array's values). Floating values computed on
    this machine (features) differ in their last bits from another CPU's: digest what defines them
    (images, weights), not them, where a stored run should load on every machine.
    """

    def as_state(x):
        if isinstance(x, torch.nn.Module):
            return x.state_dict()
        if isinstance(x, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(x))
        if isinstance(x, dict):
            return {k: as_state(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [as_state(v) for v in x]
        return x

    return state_digest(as_state(parts))[:16]


def hook_settings(hooks: dict) -> dict:
    """Name → settings of the premise hooks given to a method (``relabel``, ``matching``,
    ``joint_relabel``), for a stored run's settings: None for a hook not given, otherwise what the
    hook's ``settings()`` returns (the premise dials' oracles, :mod:`cdrlib.premise`, say their
    share, seed and a digest of their labels).

    Raises:
        ValueError: a hook without a ``settings()`` method — a function of one's own. A run store
            could not tell its runs from the method's own ones, so it refuses them.
    """
    out = {}
    for name, hook in hooks.items():
        if hook is None:
            out[name] = None
        elif callable(getattr(hook, "settings", None)):
            out[name] = hook.settings()
        else:
            raise ValueError(
                f"a run store identifies a run by its settings, and the {name} hook "
                f"{hook!r} has no settings() method saying what defines it: give it one (returning "
                f"a JSON-serialisable dict, as cdrlib.premise's oracles do), or train without a "
                f"store (store=None)"
            )
    return out


class StorableMethod(Protocol):
    """What a method gives the store (``UCDIR``, ``IBNM`` and ``PCMERun`` do)."""

    relative_step: float | None  # how coarsely its weights may be stored (:func:`pack_state`)

    def trainer(self): ...  # a :class:`~cdrlib.training.Trainer` (no checkpoint)
    def kept_state(self) -> dict: ...  # tensors evaluation and figures need
    def load_kept_state(self, state: dict) -> None: ...


# Why these steps. A stored run is mostly its weight matrices, and the book stores about a hundred
# runs. Each matrix of at least QUANTIZED_MIN_VALUES values (weights, word embeddings, the
# clusters' centroids) keeps integer codes with one float32 step per row; smaller tensors (biases,
# norms, the fusion's two weights) stay float16. The step is the row's largest absolute value / 127
# (8 bits), or `relative_step` × the row's RMS where that is coarser. The xz compression of the file
# then stores a code in about as many bits as it carries: 8-bit steps take 7.6 bits a weight (a
# text encoder's word embeddings), a step of 0.15 × RMS 4.8 bits (a UCDIR head). Plain 4-bit codes
# with one scale per 32 values take 4.5 bits, with a step about twice as coarse (≈ 0.28 × RMS for
# Gaussian weights: twice their largest value, ≈ 2.1 × RMS, over 15 steps).
# Measured on the book's tables (held-out and train-as-gallery) by re-running chapters 04–09:
# - 8-bit steps moved every table by at most 0.0008 from float16 weights (one R@10 of chapter 07
#   by 0.0024);
# - UCDIR's and IBNM's heads on cached features at 0.1, 0.15 and 0.2 × RMS moved every table of
#   chapters 04–06, 08 and 09 by at most 0.0027, 0.0023 and 0.0018 from 8-bit steps (the largest in
#   chapter 08's ICFRR rows), under a quarter of each table's measured re-run tolerance. They use
#   0.15: re-rounding the shipped runs' 8-bit codes so moved the tables by at most 0.0017, a sixth
#   of their tolerance or less (a whole network fine-tuned on images keeps 8-bit steps: not
#   measured coarser);
# - PCME's bi-GRU text encoder compounds the error over a caption's words: 0.05 × RMS moved chapter
#   07's premise table by 0.0046 from 8-bit steps (its tolerance is 0.001), and 0.1 × RMS on the
#   word embeddings alone by 0.0052. PCME keeps 8-bit steps (relative_step None).
QUANTIZED_MIN_VALUES = 4096
INT8_ROWS, INT64_AS = "int8 codes", "int64 as"  # the markers of a packed tensor (one-key dicts)


def pack_state(state, relative_step: float | None = None):
    """A kept state as stored: compact, and exactly what :func:`unpack_state` gives back.

    Floating tensors are first rounded to float16. Those with ≥ 2 dimensions and at least
    ``QUANTIZED_MIN_VALUES`` values become ``{"int8 codes": (codes, scale)}`` over their R =
    shape[0] rows: scale (R,) float32 = the row's largest absolute value / 127, or
    ``relative_step`` × the row's root mean square where that is larger; codes (same shape, int8)
    = round(value / scale), ties to even (a tensor holding NaN or inf stays float16). int64
    tensors become ``{"int64 as": t}`` in the smallest of int8/int16/int32 that holds their
    values. Dicts, lists and tuples are walked; other values pass through.

    Args:
        relative_step: None for 8-bit steps; e.g. 0.15 rounds each value to within 0.075 × its
            row's RMS (the comment above says what each method tolerates).
    """
    if isinstance(state, dict):
        return {k: pack_state(v, relative_step) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(pack_state(v, relative_step) for v in state)
    if not isinstance(state, torch.Tensor):
        return state
    t = state.detach().cpu()
    if t.dtype == torch.int64:
        low, high = (int(t.min()), int(t.max())) if t.numel() else (0, 0)
        for small in (torch.int8, torch.int16, torch.int32):
            if torch.iinfo(small).min <= low and high <= torch.iinfo(small).max:
                return {INT64_AS: t.to(small)}
        return t
    if not t.is_floating_point():
        return t
    t = t.to(torch.float16)
    if t.dim() < 2 or t.numel() < QUANTIZED_MIN_VALUES:
        return t
    if not bool(torch.isfinite(t).all()):
        return t  # a diverged run keeps its NaN/inf, which the evaluation then shows, in float16
    rows = t.float().reshape(t.shape[0], -1)
    scale = rows.abs().amax(dim=1) / 127
    if relative_step is not None:
        scale = torch.maximum(scale, relative_step * rows.square().mean(dim=1).sqrt())
    # an all-zero row keeps scale 0 and codes 0 (divided by the smallest float instead of 0)
    codes = torch.round(rows / scale.clamp_min(torch.finfo(torch.float32).tiny)[:, None])
    codes = codes.clamp(-127, 127)  # float32 division can land a hair past ±127
    return {INT8_ROWS: (codes.to(torch.int8).reshape(t.shape), scale)}


def unpack_state(stored):
    """The state :func:`pack_state` stored, with float32 and int64 tensors (the plain float16
    tensors of an older store are read too)."""
    if isinstance(stored, dict):
        if len(stored) == 1 and INT8_ROWS in stored:
            codes, scale = stored[INT8_ROWS]
            rows = codes.reshape(codes.shape[0], -1).float() * scale[:, None]
            return rows.reshape(codes.shape)
        if len(stored) == 1 and INT64_AS in stored:
            return stored[INT64_AS].to(torch.int64)
        return {k: unpack_state(v) for k, v in stored.items()}
    if isinstance(stored, (list, tuple)):
        return type(stored)(unpack_state(v) for v in stored)
    if isinstance(stored, torch.Tensor) and stored.is_floating_point():
        return stored.to(torch.float32)
    return stored


class RunStore:
    """Stored runs of one chapter in ``folder``.

    Args:
        folder: e.g. ``book/runs/05_dod_alignment`` (created when the first run is stored).
        command: how to retrain every stored run (recorded in the manifest, for people).
        mode: ``"use"``, ``"retrain"`` or ``"off"``; default ``$CDR_RUN_STORE`` or ``"use"``.
        shared: whether the stores beside this one (the other chapters' stores in the same runs
            folder, as :meth:`for_chapter` makes them) lend their runs: a run one of them holds
            with the same settings is loaded from there instead of trained and stored again.
    """

    def __init__(
        self, folder: str | Path, command: str = "", mode: str | None = None, shared: bool = False
    ):
        self.folder = Path(folder)
        self.command, self.shared = command, shared
        self.mode = mode or os.environ.get("CDR_RUN_STORE", "use")
        if self.mode not in MODES:
            raise ValueError(f"CDR_RUN_STORE / mode must be one of {MODES}, got {self.mode!r}")
        self.manifest_file = self.folder / "RUNS.json"
        self.loaded, self.trained = 0, 0
        self.borrowed = 0  # of the loaded runs, those another chapter's store holds

    @classmethod
    def for_chapter(
        cls, chapter: str, mode: str | None = None, root: str | Path | None = None
    ) -> "RunStore":
        """The store of a chapter of the book: ``<root>/<chapter>/``, by default the committed
        ``book/runs/<chapter>/`` (the paper profile passes its own ``root``, ``P.runs_dir``),
        sharing runs with the other chapters' stores there."""
        return cls(
            Path(root or REPO_ROOT / "book" / "runs") / chapter,
            command=f"CDR_RUN_STORE=retrain python scripts/run_chapters.py {chapter}",
            mode=mode,
            shared=True,
        )

    def train_seconds(self, key: str) -> float:
        """How long the stored run ``key`` trained (NaN when it is not stored)."""
        entry = self.manifest()["runs"].get(key)
        return float("nan") if entry is None else float(entry["train_seconds"])

    def manifest(self) -> dict:
        if not self.manifest_file.is_file():
            return {"command": self.command, "runs": {}}
        return json.loads(self.manifest_file.read_text())

    @staticmethod
    def file_name(key: str) -> str:
        """A readable, unique file name for a run key."""
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", key).strip("-")[:80]
        return f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.pt"

    @staticmethod
    def _settings_text(settings: dict) -> str:
        return json.dumps(settings, sort_keys=True, default=str)

    def holds(self, key: str, settings: dict) -> bool:
        """Whether :meth:`fit` would load the run ``key`` (stored here with these ``settings``,
        or by another chapter with them) rather than train it. A caller can then skip preparing
        what only training reads (the cached views of :class:`~cdrlib.ucdir_train.ViewFeatures`).
        """
        return self._entry_to_load(key, settings) is not None

    def _entry_to_load(self, key: str, settings: dict) -> tuple[Path, dict, Path] | None:
        """``(file, manifest entry, manifest file)`` of the run :meth:`fit` would load, or None.

        First, in mode ``use``: this store's run ``key`` stored with these settings. Then, in
        modes ``use`` and ``retrain`` of a ``shared`` store: a run with the same settings in a
        store beside this one (another chapter's). The settings define a run, so the book stores
        it once, and a chapter that evaluates a run of another chapter loads it from there; mode
        ``retrain`` trains again only the runs that this store holds itself.
        """
        if self.mode == "off":
            return None
        text = self._settings_text(settings)
        if self.mode == "use":
            entry = self.manifest()["runs"].get(key)
            path = self.folder / self.file_name(key)
            if entry is not None and entry["settings"] == text and path.is_file():
                return path, entry, self.manifest_file
        if not self.shared:
            return None
        for manifest_file in sorted(self.folder.parent.glob("*/RUNS.json")):
            if manifest_file.parent.resolve() == self.folder.resolve():
                continue
            for other_key, entry in json.loads(manifest_file.read_text())["runs"].items():
                # the file's name comes from the key, never from the manifest's text
                path = manifest_file.parent / self.file_name(other_key)
                if entry["settings"] == text and path.is_file():
                    return path, entry, manifest_file
        return None

    def fit(self, key: str, method: StorableMethod, settings: dict) -> list[dict]:
        """Load the run ``key`` into ``method`` if stored with these ``settings``, otherwise train
        it.

        Args:
            key: unique within the store (method name, pair, seed).
            settings: everything that defines the run (JSON-serialisable): configuration, digests
                of the data, the premise hooks' settings, input shapes (as
                :func:`~cdrlib.ucdir_train.run_settings` gives them).
        Returns:
            the training history (one dict per epoch). Either way ``method`` ends with the stored
            (rounded, :func:`pack_state`) weights.
        """
        path = self.folder / self.file_name(key)
        found = self._entry_to_load(key, settings)
        if found is not None:
            stored, entry, manifest_file = found
            try:  # the bytes checked are the bytes loaded
                state = load_state(stored, "stored run", sha256=entry["sha256"])
            except ChecksumError:
                raise CheckpointError(
                    f"the stored run {stored} does not match the sha256 in {manifest_file}: "
                    "a damaged or replaced file. Delete it: the run then trains again and is "
                    "stored"
                ) from None
            method.load_kept_state(unpack_state(state["kept"]))
            self.loaded += 1
            self.borrowed += manifest_file != self.manifest_file
            return state["history"]
        t0 = time.time()
        history = method.trainer().fit()
        seconds = time.time() - t0
        kept = pack_state(method.kept_state(), method.relative_step)
        method.load_kept_state(unpack_state(kept))  # evaluate exactly what is stored
        self.trained += 1
        if self.mode != "off":
            self._write(
                key,
                path,
                {"kept": kept, "history": history},
                self._settings_text(settings),
                seconds,
            )
        return history

    def _write(self, key: str, path: Path, state: dict, settings: str, seconds: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        save_state(state, path, compress=True)
        manifest = self.manifest()
        manifest["command"] = self.command or manifest.get("command", "")
        manifest["runs"][key] = {
            "file": path.name,
            "sha256": file_sha256(path),
            "settings": settings,
            "train_seconds": round(seconds, 1),
        }
        manifest["runs"] = dict(sorted(manifest["runs"].items()))
        tmp = self.manifest_file.with_name(self.manifest_file.name + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, self.manifest_file)

    def summary(self) -> str:
        """One line for the chapter: how many runs were loaded and trained, and how to retrain
        them."""
        if self.mode == "off":
            return f"{self.trained} runs trained (run store off)"
        folder = self.folder.resolve()
        shown = folder.relative_to(REPO_ROOT) if folder.is_relative_to(REPO_ROOT) else folder
        borrowed = (
            f" ({self.borrowed} of them from other chapters' stores)" if self.borrowed else ""
        )
        return (
            f"{self.loaded} runs loaded from {shown.as_posix()}/{borrowed}, {self.trained} trained "
            "and stored; to train this chapter's runs again: CDR_RUN_STORE=retrain"
        )
