"""The training loop the method chapters share: seeded, with a progress bar, checkpoints and resume.

Everything a run needs to continue exactly where it stopped goes into one checkpoint, written
atomically after every epoch: the modules, the optimiser, any extra state (memory banks, the
current clusters) and the random number generators. Data order is drawn from a generator seeded
by (seed, epoch), so a resumed run sees the same batches as an uninterrupted one and ends with
the same weights.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .profile import progress


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
        on_epoch_end: ``f(epoch) -> dict`` (re-clustering, evaluation); its numbers join the history.
        extra_state: name → object with ``state_dict``/``load_state_dict`` (memory banks, …).
        seed: seeds the data order and the generators.
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

    def _state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "extra": {k: v.state_dict() for k, v in self.extra_state.items()},
            "history": self.history,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }

    def save(self, epoch: int) -> None:
        path = Path(self.checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self._state(epoch), tmp)
        os.replace(tmp, path)  # a crash mid-write never leaves a broken checkpoint behind

    def resume(self) -> int:
        """Load the checkpoint if there is one; return the first epoch still to run."""
        if self.checkpoint is None or not Path(self.checkpoint).is_file():
            return 0
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
            for k, m in self.modules.items():
                m.load_state_dict(state["modules"][k])
            self.optimizer.load_state_dict(state["optimizer"])
            for k, v in self.extra_state.items():
                v.load_state_dict(state["extra"][k])
        except (RuntimeError, KeyError, ValueError, EOFError) as e:
            raise RuntimeError(
                f"the checkpoint {self.checkpoint} does not belong to this run (another model, configuration or "
                f"a damaged file): delete it to start afresh, or write this run elsewhere. ({str(e)[:200]})") from None
        self.history = state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        return state["epoch"] + 1

    def fit(self) -> list[dict]:
        """Run (or continue) to ``epochs``; returns the history, one dict per epoch."""
        start = self.resume()
        for epoch in range(start, self.epochs):
            for m in self.modules.values():
                m.train()
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            sums, n = {}, 0
            for batch in progress(self.batches(epoch, gen), desc=f"epoch {epoch + 1}/{self.epochs}"):
                for k, v in self.step(batch, epoch).items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
            row = {"epoch": epoch + 1, **{k: v / max(n, 1) for k, v in sums.items()}}
            if self.on_epoch_end is not None:
                row.update(self.on_epoch_end(epoch))
            self.history.append(row)
            if self.checkpoint is not None:
                self.save(epoch)
        return self.history

    def history_table(self):
        import pandas as pd

        return pd.DataFrame(self.history)

    def save_history(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.history, indent=1))
