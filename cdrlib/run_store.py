"""A chapter's trained runs kept as small checkpoints: load if present, otherwise train.

A method chapter trains many short runs (methods × pairs × seeds × premise-dial settings). On a
2-core CPU they take minutes; a reader re-running the chapter, and CI, need only their results. A
:class:`RunStore` keeps, for each run, what evaluation and the chapter's figures read — the trained
modules (float16: a UCDIR head is 0.4 MB), the last clusters, the training history — in a folder of
the repository, with a manifest (``RUNS.json``) that records each file's sha256, the run's settings
and how long it trained. A stored run is used only when its settings are the ones asked for and its
sha256 matches; otherwise the run trains and is stored again.

The trained weights are always rounded to float16 before evaluation, also when the run was just
trained, so the table a chapter shows is the same whether its runs were loaded or trained.

``CDR_RUN_STORE`` chooses the mode: ``use`` (default), ``retrain`` (train every run and store it
again), ``off`` (train every run, read and write nothing: what ``scripts/measure_variation.py`` does
to measure training's run-to-run variation).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Protocol

import torch

from .checkpoint_io import CheckpointError, load_state
from .data.download import file_sha256
from .paths import REPO_ROOT

MODES = ("use", "retrain", "off")


class StorableMethod(Protocol):
    """What a method gives the store (``UCDIR`` and ``IBNM`` do)."""

    def trainer(self): ...  # a :class:`~cdrlib.training.Trainer` (no checkpoint)
    def kept_state(self) -> dict: ...  # tensors evaluation and figures need
    def load_kept_state(self, state: dict) -> None: ...


def _cast_floats(x, dtype: torch.dtype):
    """Floating tensors (nested in dicts) cast to ``dtype`` on the CPU: float16 to store, float32 to
    use."""
    if isinstance(x, dict):
        return {k: _cast_floats(v, dtype) for k, v in x.items()}
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.detach().cpu().to(dtype)
    return x


class RunStore:
    """Stored runs of one chapter in ``folder``.

    Args:
        folder: e.g. ``book/runs/05_dod_alignment`` (created when the first run is stored).
        command: how to retrain every stored run (recorded in the manifest, for people).
        mode: ``"use"``, ``"retrain"`` or ``"off"``; default ``$CDR_RUN_STORE`` or ``"use"``.
    """

    def __init__(self, folder: str | Path, command: str = "", mode: str | None = None):
        self.folder = Path(folder)
        self.command = command
        self.mode = mode or os.environ.get("CDR_RUN_STORE", "use")
        if self.mode not in MODES:
            raise ValueError(f"CDR_RUN_STORE / mode must be one of {MODES}, got {self.mode!r}")
        self.manifest_file = self.folder / "RUNS.json"
        self.loaded, self.trained = 0, 0

    @classmethod
    def for_chapter(
        cls, chapter: str, mode: str | None = None, root: str | Path | None = None
    ) -> "RunStore":
        """The store of a chapter of the book: ``<root>/<chapter>/``, by default the committed
        ``book/runs/<chapter>/`` (the paper profile passes its own ``root``, ``P.runs_dir``)."""
        return cls(
            Path(root or REPO_ROOT / "book" / "runs") / chapter,
            command=f"CDR_RUN_STORE=retrain python scripts/run_chapters.py {chapter}",
            mode=mode,
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
        """Whether :meth:`fit` would load the run ``key`` (stored with these ``settings``, mode
        ``use``) rather than train it. A caller can then skip preparing what only training reads
        (the cached views of :class:`~cdrlib.ucdir_train.ViewFeatures`)."""
        return self._entry_to_load(key, settings) is not None

    def _entry_to_load(self, key: str, settings: dict) -> dict | None:
        """The manifest entry of ``key`` when :meth:`fit` would load it, otherwise None."""
        entry = self.manifest()["runs"].get(key)
        if (
            self.mode == "use"
            and entry is not None
            and entry["settings"] == self._settings_text(settings)
            and (self.folder / self.file_name(key)).is_file()
        ):
            return entry
        return None

    def fit(self, key: str, method: StorableMethod, settings: dict) -> list[dict]:
        """Load the run ``key`` into ``method`` if stored with these ``settings``, otherwise train
        it.

        Args:
            key: unique within the store (method name, pair, seed).
            settings: everything that defines the run (JSON-serialisable): configuration, dial
                setting, input shapes.
        Returns:
            the training history (one dict per epoch). Either way ``method`` ends with the stored
            (float16-rounded) weights.
        """
        path = self.folder / self.file_name(key)
        entry = self._entry_to_load(key, settings)
        if entry is not None:
            if file_sha256(path) != entry["sha256"]:
                raise CheckpointError(
                    f"the stored run {path} does not match the sha256 in {self.manifest_file}: "
                    f"a damaged or replaced file. Delete it (it will train again) or set "
                    f"CDR_RUN_STORE=retrain"
                )
            state = load_state(path, "stored run")
            method.load_kept_state(_cast_floats(state["kept"], torch.float32))
            self.loaded += 1
            return state["history"]
        t0 = time.time()
        history = method.trainer().fit()
        seconds = time.time() - t0
        kept = _cast_floats(method.kept_state(), torch.float16)
        method.load_kept_state(_cast_floats(kept, torch.float32))  # evaluate exactly what is stored
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
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
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
        return (
            f"{self.loaded} runs loaded from {shown.as_posix()}/, {self.trained} trained and "
            "stored; "
            f"to train every run again: CDR_RUN_STORE=retrain"
        )
