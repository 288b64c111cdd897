"""The chapters' experiment harness: one frozen backbone, a few domain pairs, baselines, runs over
seeds.

Chapters 04–06, their premise dials and the closing page's comparison run the same experiment with
different methods: cache the backbone's features of several views of every training image (the
methods' inputs, since on a CPU only a head trains), evaluate every run under both protocols on both
directions of each pair, put chance, raw pixels and the backbone's own features beside it, and pivot
the runs into one table. :class:`PairBenchmark` holds all of that once per chapter.

The cached views are most of a chapter's run time, and a run loaded from the chapter's run store
never reads them: they are computed the first time a run trains (:class:`ViewFeatures`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from . import ibnm_train
from .clustering import cluster_purity
from .evaluation import (
    RandomFeatures,
    extract_features,
    pair_protocols,
    pair_rows,
    pivot_results,
    raw_pixel_features,
)
from .ibnm_train import IBNMConfig
from .run_store import RunStore
from .ucdir_train import UCDIRConfig, ViewFeatures, train_and_evaluate


class PairBenchmark:
    """Cached inputs, evaluation inputs of both protocols, and every run's table, for domain pairs.

    Args:
        backbone: the frozen backbone (images (B, 3, H, W) → features (B, D)).
        train_sets, held_sets: domain → :class:`~cdrlib.data.DomainDataset` of the training and
            held-out parts (in memory).
        pairs: the (A, B) domain pairs of the chapter.
        n_views: cached views per training image (view 0 plain, the others augmented).
        store: a :class:`~cdrlib.run_store.RunStore`: trained runs are loaded from it when stored
            (with the same settings), otherwise trained and stored. ``None``: every run trains.

    Attributes:
        inputs: domain → :class:`~cdrlib.ucdir_train.ViewFeatures` of the training part (what
            methods train on: (N, n_views, D), computed when the first run trains).
        features: protocol → domain → (N, D) frozen features of the images it evaluates on.
        images: protocol → domain → (N, 3, H, W) images in [0, 1] (for the raw-pixel baseline).
        labels: protocol → domain → (N,) class ids (evaluation and marked analysis only).
        runs: every table :meth:`run` and :meth:`baselines` produced, tagged with method, pair,
            seed.
        trained: (method, "A–B", seed) → ``(model, history)`` of every run whose ``train`` returned
            them.
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        train_sets: Mapping,
        held_sets: Mapping,
        pairs: Iterable[tuple[str, str]],
        n_views: int = 8,
        device="cpu",
        store: RunStore | None = None,
    ):
        self.backbone, self.device, self.store = backbone, device, store
        self.pairs = [tuple(p) for p in pairs]
        self.domains = sorted({d for p in self.pairs for d in p})
        missing = [d for d in self.domains if d not in train_sets or d not in held_sets]
        if missing:
            raise ValueError(f"no training or held-out set for domain(s) {missing}")
        self.images = {
            "heldout": {d: held_sets[d].tensor() for d in self.domains},
            "train-as-gallery": {d: train_sets[d].tensor() for d in self.domains},
        }
        # the views are augmented at the images' own size, and computed only for runs that train
        self.inputs = {
            d: ViewFeatures(backbone, x, n_views=n_views, image_size=x.shape[-1], device=device)
            for d, x in self.images["train-as-gallery"].items()
        }
        self.features = {
            "heldout": {
                d: extract_features(backbone, x, device=device)
                for d, x in self.images["heldout"].items()
            },
            "train-as-gallery": {d: self.inputs[d].plain for d in self.domains},
        }
        self.labels = {
            "heldout": {d: held_sets[d].labels for d in self.domains},
            "train-as-gallery": {d: train_sets[d].labels for d in self.domains},
        }
        self.runs: list[pd.DataFrame] = []
        self.trained: dict[tuple[str, str, int], tuple] = {}

    def evaluation(self, a: str, b: str) -> dict:
        """Protocol → (frozen features, labels) of the pair: what a head-only method is evaluated
        on."""
        return pair_protocols(
            a,
            b,
            (self.features["heldout"], self.labels["heldout"]),
            (self.features["train-as-gallery"], self.labels["train-as-gallery"]),
        )

    def image_evaluation(self, a: str, b: str) -> dict:
        """Protocol → (images, labels) of the pair (for baselines that read pixels)."""
        return pair_protocols(
            a,
            b,
            (self.images["heldout"], self.labels["heldout"]),
            (self.images["train-as-gallery"], self.labels["train-as-gallery"]),
        )

    def baselines(self, backbone_name: str = "backbone features") -> list[pd.DataFrame]:
        """Chance, raw pixels and the frozen backbone's features on every pair (added to
        :attr:`runs`)."""
        chance = RandomFeatures(seed=0)  # one generator: every domain gets its own draws
        tables = pair_rows("chance", chance, self.pairs, self.evaluation)
        tables += pair_rows("raw pixels", raw_pixel_features, self.pairs, self.image_evaluation)
        tables += pair_rows(backbone_name, lambda x: x, self.pairs, self.evaluation)
        tables = [t.assign(seed=0) for t in tables]
        self.runs += tables
        return tables

    def run(
        self,
        method: str,
        train: Callable,
        seeds: Iterable[int] = (0,),
        pairs: Iterable[tuple[str, str]] | None = None,
    ) -> pd.DataFrame:
        """Train and evaluate ``method`` on each pair with each seed.

        Args:
            train: ``(a, b, seed, key) → table`` (a :func:`~cdrlib.evaluation.cross_domain_table`
                per protocol, concatenated), or ``→ (model, history, table)`` as
                ``train_and_evaluate`` returns (model and history are then kept in :attr:`trained`);
                ``key`` names the run in the run store: ``"<method> | <A>–<B> | seed <seed>"``.
            pairs: default all of the chapter's pairs.
        Returns:
            the runs' tables, tagged with ``method``, ``pair`` and ``seed`` (also added to
            :attr:`runs`).
        """
        out = []
        for seed in seeds:
            for a, b in pairs or self.pairs:
                result = train(a, b, seed, f"{method} | {a}–{b} | seed {seed}")
                if isinstance(result, tuple):
                    model, history, result = result
                    self.trained[(method, f"{a}–{b}", seed)] = (model, history)
                out.append(result.assign(pair=f"{a}–{b}", method=method, seed=seed))
        self.runs += out
        return pd.concat(out, ignore_index=True)

    def table(self, value: str = "mAP@all", seed: int = 0) -> pd.DataFrame:
        """One row per method (runs of ``seed`` only), one column per protocol and pair, plus
        means."""
        every = pd.concat(self.runs, ignore_index=True)
        return pivot_results([every[every["seed"] == seed]], value=value)

    def per_seed(
        self,
        method: str,
        protocol: str = "heldout",
        value: str = "mAP@all",
        pairs: Iterable[tuple[str, str]] | None = None,
    ) -> dict[int, float]:
        """Seed → the method's ``value`` under ``protocol``, averaged over pairs (and both
        directions).

        ``pairs`` restricts the average (default: every pair the method ran on).
        """
        every = pd.concat(self.runs, ignore_index=True)
        rows = every[
            (every["method"] == method)
            & (every["protocol"] == protocol)
            & (every["query"] == "mean")
        ]
        if pairs is not None:
            rows = rows[rows["pair"].isin([f"{a}–{b}" for a, b in pairs])]
        if rows.empty:
            raise KeyError(
                f"no runs of {method!r} under {protocol!r}; ran: {sorted(every['method'].unique())}"
            )
        return {int(s): float(np.mean(g[value])) for s, g in rows.groupby("seed")}

    def ucdir(
        self,
        cfg: UCDIRConfig,
        relabel_of: Callable | None = None,
        matching_of: Callable | None = None,
        ks=(10,),
    ) -> Callable:
        """A ``train`` for :meth:`run`: UCDIR's head on the cached views, ``cfg`` with the run's
        seed.

        Args:
            relabel_of, matching_of: optional ``(a, b, seed) → relabel`` and ``→ matching`` (see
                :class:`~cdrlib.ucdir_train.UCDIR`), for the premise dials.
        The run's table gets a column ``cluster purity``: the mean over both domains of the purity
        of the clusters the last epoch trained with (labels: an analysis, computed after training).
        """

        def train(a: str, b: str, seed: int, key: str):
            relabel = relabel_of(a, b, seed) if relabel_of is not None else None
            matching = matching_of(a, b, seed) if matching_of is not None else None
            method, history, table = train_and_evaluate(
                replace(cfg, seed=seed),
                (self.inputs[a], self.inputs[b]),
                self.backbone,
                self.evaluation(a, b),
                ks=ks,
                device=self.device,
                relabel=relabel,
                matching=matching,
                store=self.store,
                key=key,
            )
            purity = float("nan")
            if method.clusters.ready:
                purity = float(
                    np.mean(
                        [
                            cluster_purity(
                                method.clusters.get(key)[1].cpu(),
                                self.labels["train-as-gallery"][d],
                            )
                            for key, d in (("A", a), ("B", b))
                        ]
                    )
                )
            return method, history, table.assign(**{"cluster purity": purity})

        return train

    def ibnm(self, cfg: IBNMConfig, joint_relabel_of: Callable | None = None, ks=(10,)) -> Callable:
        """A ``train`` for :meth:`run`: IBNM on the cached views (the backbone must be a cdrlib
        ViT), ``cfg`` with the run's seed. ``fusion=None, noise=False`` trains UCDIR through the
        same code.

        Args:
            joint_relabel_of: optional ``(a, b, seed) → joint_relabel`` (see
                :class:`~cdrlib.ibnm_train.IBNM`), for chapter 06's premise dial.
        """

        def train(a: str, b: str, seed: int, key: str):
            return ibnm_train.train_and_evaluate(
                replace(cfg, seed=seed),
                (self.images["train-as-gallery"][a], self.images["train-as-gallery"][b]),
                self.backbone,
                self.evaluation(a, b),
                features=(self.inputs[a], self.inputs[b]),
                ks=ks,
                device=self.device,
                store=self.store,
                key=key,
                joint_relabel=None if joint_relabel_of is None else joint_relabel_of(a, b, seed),
            )

        return train

    def embeddings(
        self, method: str, a: str, b: str, seed: int = 0, protocol: str = "heldout"
    ) -> dict:
        """Domain → (N, proj_dim) embeddings, by a run :meth:`run` trained, of the pair's evaluation
        images under ``protocol`` (before the per-domain centring that evaluation applies)."""
        run = self.trained.get((method, f"{a}–{b}", seed))
        if run is None:
            raise KeyError(
                f"no trained run of {method!r} on {a}–{b} with seed {seed}; "
                f"trained: {sorted(self.trained)}"
            )
        features, _ = self.evaluation(a, b)[protocol]
        return {d: run[0].embed(f, self.device) for d, f in features.items()}
