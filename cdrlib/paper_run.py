"""The paper profile's runs inside a chapter: a training script launched from the notebook, and the
baselines its table is read against.

A paper-setting run fine-tunes a whole ResNet-50 or ViT-B/16 for many epochs, so the chapters do not
re-implement it in cells: they launch the same script a user would run from a shell
(``scripts/train_ucdir.py``, ``scripts/train_pcme.py``), shorter, with its output streamed into the
notebook. The script checkpoints every epoch into its ``--out`` folder and resumes from it, so a
disconnected Colab session that runs the cell again continues where it stopped (keep ``CDR_RUNS``
on Google Drive).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd
import torch

from .data import get_dataset
from .evaluation import RandomFeatures, cross_domain_table, dataset_features
from .paths import REPO_ROOT

RAW_PIXEL_SIZE = 32  # the raw-pixel baseline at 224 px would be 150k numbers per image


def run_script(script: str, *args: str, out: str | Path) -> dict:
    """Run ``scripts/<script>`` with this Python, its output streamed as it comes; return the
    ``results.json`` it wrote into ``out``.

    Raises:
        RuntimeError: the script failed; the message holds its last lines of output.
    """
    out = Path(out)
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / script), *map(str, args), "--out", str(out)]
    print("$", " ".join(cmd[1:]), flush=True)
    tail = deque(maxlen=20)
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT
    ) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{script} stopped with exit code {proc.returncode}; its last lines:\n{''.join(tail)}"
        )
    return json.loads((out / "results.json").read_text())


def raw_pixels(dataset: str, domain: str, split: str = "heldout") -> torch.Tensor:
    """The raw-pixel baseline of a paper dataset's domain: its images at :data:`RAW_PIXEL_SIZE` px,
    normalised and flattened, (N, 3·RAW_PIXEL_SIZE²), read from the files in batches."""
    small = get_dataset(dataset, domain, split, image_size=RAW_PIXEL_SIZE)
    return dataset_features(lambda x: x.flatten(1), small)


def pair_baselines(
    dataset: str,
    pair: tuple[str, str],
    backbones: Mapping[str, Callable],
    device="cpu",
    split: str = "heldout",
) -> pd.DataFrame:
    """Chance, raw pixels (at :data:`RAW_PIXEL_SIZE` px) and each frozen backbone's features on
    one pair of a paper dataset, both directions, read from the image files in batches.

    Args:
        backbones: row name → a model from normalised images (B, 3, 224, 224) to features (B, D).
    Returns:
        a :func:`~cdrlib.evaluation.cross_domain_table` per baseline, with a ``method`` column.
    """
    sets = {d: get_dataset(dataset, d, split) for d in pair}
    labels = {d: ds.labels for d, ds in sets.items()}
    raw = {d: raw_pixels(dataset, d, split) for d in pair}
    chance = RandomFeatures(seed=0)  # one generator: each domain gets its own draws
    features = {
        "chance": {d: chance(f) for d, f in raw.items()},
        f"raw pixels ({RAW_PIXEL_SIZE} px)": raw,
        **{
            name: {d: dataset_features(model, ds, device=device) for d, ds in sets.items()}
            for name, model in backbones.items()
        },
    }
    ks = [k for k in (1, 10, 50) if k <= min(len(ds) for ds in sets.values())]
    return pd.concat(
        [
            cross_domain_table(f, labels, ks=ks, protocol=split, method=name)
            for name, f in features.items()
        ],
        ignore_index=True,
    )


def results_table(results: dict, method: str) -> pd.DataFrame:
    """The held-out rows of a script's ``results.json``, with a ``method`` column."""
    table = pd.DataFrame(results["metrics"])
    return table[table["protocol"] == "heldout"].assign(method=method)
