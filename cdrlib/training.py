"""The training loop the method chapters share: seeded, with a progress bar, checkpoints and resume.

Everything a run needs to continue exactly where it stopped goes into one checkpoint, written
atomically after every epoch: the modules, the optimiser, any extra state (memory banks, the
current clusters) and the random number generators. Data order is drawn from a generator seeded
by (seed, epoch), so a resumed run sees the same batches as an uninterrupted one and ends with
the same weights.

A checkpoint holds only tensors and plain values (generator states as tensors, the run's
configuration as JSON text), so it loads with ``weights_only=True`` (:mod:`cdrlib.checkpoint_io`);
it carries a digest of its contents, so a damaged file is refused, and its configuration, so that
resuming with different settings is refused with the fields that differ.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from .checkpoint_io import CheckpointError, load_state, save_state, state_digest
from .progress import progress


@dataclass
class Trainer:
    """A loop over epochs and batches.

    Attributes:
        modules: name → module, saved and restored with the run.
        optimizer: the optimiser (its state is saved too).
        step: ``step(batch, epoch) -> dict`` of scalar floats (the losses), does the update.
        batches: ``batches(epoch, generator) -> iterable`` of batches for one epoch.
        epochs: the number of epochs to reach.
        checkpoint: where the run is saved after each epoch (``None``: not saved).
        on_epoch_end: ``f(epoch) -> dict`` (re-clustering, evaluation); its numbers join the
            history.
        extra_state: name → object with ``state_dict``/``load_state_dict`` (memory banks, …).
        seed: seeds the data order and the generators.
        config: the run's settings (JSON-serialisable); a checkpoint written with other settings is
            not resumed (``None``: not checked).
        stop: ``f(epoch) -> bool``, asked after each epoch (and its checkpoint): True ends the run
            before ``epochs`` (a time budget, say).
        scheduler: a torch learning-rate scheduler over ``optimizer``, stepped after every batch
            (after ``step`` has updated the weights) and saved with the run (``None``: the rate
            stays as the optimiser has it).
        epoch_means: the mean of each number ``step`` returned over the epoch that just ended, set
            before ``on_epoch_end`` runs (an end-of-epoch log reads the epoch's loss from it).
    """

    modules: dict
    optimizer: torch.optim.Optimizer
    step: Callable[..., dict]
    batches: Callable[[int, torch.Generator], Iterable]
    epochs: int
    checkpoint: str | Path | None = None
    on_epoch_end: Callable[[int], dict] | None = None
    extra_state: dict = field(default_factory=dict)
    seed: int = 0
    history: list = field(default_factory=list)
    config: dict | None = None
    stop: Callable[[int], bool] | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    epoch_means: dict = field(default_factory=dict)

    def _state(self, epoch: int) -> dict:
        state = {
            "epoch": epoch,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "extra": {k: v.state_dict() for k, v in self.extra_state.items()},
            "history": self.history,
            "rng": rng_state(),
            "config": _config_text(self.config),
        }
        state["digest"] = state_digest(state)
        return state

    def save(self, epoch: int) -> None:
        path = Path(self.checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        # whole or not at all: a crash mid-write never leaves a broken checkpoint behind;
        # uncompressed, since it is written every epoch and read back only to resume
        save_state(self._state(epoch), path)

    def check_writable(self) -> None:
        """Fail before the first epoch, not after it, when the checkpoint cannot be written."""
        if self.checkpoint is None:
            return
        path = Path(self.checkpoint)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            probe = path.with_name(path.name + ".probe")
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(
                f"cannot write the run checkpoint {path}: {e}; choose a writable folder"
            ) from None

    def resume(self) -> int:
        """Load the checkpoint if there is one; return the first epoch still to run."""
        if self.checkpoint is None or not Path(self.checkpoint).is_file():
            return 0
        state = load_state(self.checkpoint, "run checkpoint")
        if "digest" not in state:
            raise CheckpointError(
                f"the checkpoint {self.checkpoint} does not belong to this run (it has no digest: "
                f"another program or an older cdrlib wrote it): delete it to start afresh"
            )
        if state["digest"] != state_digest({k: v for k, v in state.items() if k != "digest"}):
            raise CheckpointError(
                f"the run checkpoint {self.checkpoint} is damaged (its contents do not match "
                f"the digest written with them): delete it to start afresh"
            )
        if self.config is not None and state.get("config") is not None:
            saved = json.loads(state["config"])
            now = json.loads(_config_text(self.config))
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            if changed:
                raise CheckpointError(
                    f"the run checkpoint {self.checkpoint} was written with other settings: "
                    + ", ".join(
                        f"{k} = {saved.get(k)!r} there, {now.get(k)!r} now" for k in changed
                    )
                    + ". Resume with the same settings, or write this run elsewhere."
                )
        try:
            for k, m in self.modules.items():
                m.load_state_dict(state["modules"][k])
            self.optimizer.load_state_dict(state["optimizer"])
            if (self.scheduler is None) != (state.get("scheduler") is None):
                # a run with a schedule cannot continue one without, nor the other way round
                raise KeyError("a learning-rate schedule in one of the run and the checkpoint only")
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            for k, v in self.extra_state.items():
                v.load_state_dict(state["extra"][k])
        except (RuntimeError, KeyError, ValueError, EOFError) as e:
            raise RuntimeError(
                f"the checkpoint {self.checkpoint} does not belong to this run (another model, "
                "configuration or "
                "a damaged file): delete it to start afresh, or write this run elsewhere. "
                f"({str(e)[:200]})"
            ) from None
        self.history = state["history"]
        set_rng_state(state["rng"])
        return state["epoch"] + 1

    def fit(self) -> list[dict]:
        """Run (or continue) to ``epochs``; returns the history, one dict per epoch."""
        self.check_writable()
        start = self.resume()
        for epoch in range(start, self.epochs):
            for m in self.modules.values():
                m.train()
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            sums, n = {}, 0
            for batch in progress(
                self.batches(epoch, gen), desc=f"epoch {epoch + 1}/{self.epochs}"
            ):
                parts = {k: float(v) for k, v in self.step(batch, epoch).items()}
                bad = {k: v for k, v in parts.items() if not math.isfinite(v)}
                if bad:
                    # stop at once: every later step would only spread the NaN; the checkpoint of
                    # the last finished epoch is left as it was
                    kept = f"epoch {epoch}" if epoch else "none (no epoch finished)"
                    raise FloatingPointError(
                        f"training diverged at epoch {epoch + 1}, batch {n + 1}: "
                        + ", ".join(f"{k} = {v}" for k, v in bad.items())
                        + f". Lower the learning rate or check the inputs for NaN or infinite "
                        f"values; the checkpoint holds {kept}."
                    )
                if self.scheduler is not None:
                    self.scheduler.step()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
            self.epoch_means = {k: v / max(n, 1) for k, v in sums.items()}
            row = {"epoch": epoch + 1, **self.epoch_means}
            if self.on_epoch_end is not None:
                # plain floats: the history is saved in checkpoints that load without unpickling
                # objects
                row.update({k: _plain(v) for k, v in (self.on_epoch_end(epoch) or {}).items()})
            self.history.append(row)
            if self.checkpoint is not None:
                self.save(epoch)
            if self.stop is not None and self.stop(epoch):
                break
        return self.history

    def history_table(self):
        return pd.DataFrame(self.history)

    def save_history(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.history, indent=1))


class GeneratorState:
    """A torch generator that a run draws from across epochs, saved and restored with the run
    (``extra_state``), so that a resumed run draws what an uninterrupted one would."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


def _plain(v):
    """A NumPy or one-element torch scalar as a Python number (other values unchanged)."""
    return v.item() if isinstance(v, (np.generic, torch.Tensor)) else v


def _config_text(config: dict | None) -> str | None:
    return None if config is None else json.dumps(config, sort_keys=True, default=str)


def rng_state() -> dict:
    """The torch, NumPy and Python generators' states as tensors and plain values (loadable with
    ``weights_only=True``; NumPy's and Python's own forms are a tuple with an array and a
    pickle)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": version,
            "words": torch.tensor(words, dtype=torch.int64),
            "gauss": gauss_next,
        },
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(w) for w in p["words"].tolist()), p["gauss"]))
