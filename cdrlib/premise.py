"""Premise dials: how much a method gains over its own ablation as the quality of what it relies on
varies.

Every method of the book rests on one premise — UCDIR's cluster-wise loss on clusters that are
classes, DoD on matched clusters that are the same class, ICFRR on neighbours that are relevant.
A *dial* sets that quality from the value the default data gives up to the value where the premise
holds, and records the method's gain over its ablation at each setting, over several seeds.

Labels may *build* a dial (an oracle analysis, marked as such in the chapters); they never train a
method's reported result.

The records follow one schema (:data:`PREMISE_FIELDS`), saved by each chapter as its ``premise``
table and gathered by the closing page.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .run_store import digest
from .ucdir import match_centroids

PREMISE_FIELDS = (
    "regime",
    "premise",
    "premise_value",
    "method",
    "ablation",
    "metric",
    "value",
    "ablation_value",
    "gain",
    "seed_spread",
    "seeds",
    "protocol",
)


def match_clusters_to_classes(assignments, labels, k: int) -> torch.Tensor:
    """A one-to-one map cluster → class that maximises the images on which the two agree
    (Hungarian).

    Args:
        assignments: (N,) cluster ids in [0, k). labels: (N,) class ids in [0, C), C ≤ k.
    Returns:
        (k,) int64: the class of each matched cluster; the k − C unmatched clusters get the ids
        C, C+1, … (so the result is a permutation of [0, k)).
    """
    a = torch.as_tensor(np.asarray(assignments), dtype=torch.int64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    n_classes = int(y.max()) + 1
    if n_classes > k:
        raise ValueError(
            f"{n_classes} classes but only k={k} clusters: the map needs k ≥ the number of classes"
        )
    overlap = torch.zeros(k, k, dtype=torch.int64)
    # (clusters, classes padded to k)
    overlap.index_put_((a, y), torch.ones_like(a), accumulate=True)
    rows, cols = linear_sum_assignment(overlap.numpy(), maximize=True)
    out = torch.empty(k, dtype=torch.int64)
    out[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.int64)
    return out


class ClassMixedClusters:
    """Oracle analysis: k-means pseudo-labels of which a fraction ``p`` is replaced by the true
    class.

    Each k-means cluster is first renamed to the class it overlaps most (one-to-one), then the
    images of a fixed random subset (a share ``p`` of each domain, nested as ``p`` grows, so one
    seed's dial moves one set of images) take their class id. ``p = 0`` is k-means (renamed),
    ``p = 1`` is the classes. Uses labels: an oracle that builds a premise dial, never a method.

    Args:
        labels: domain (``"A"``, ``"B"``) → (N,) class ids of that domain's training images.
        p: share of each domain's images given their class, in [0, 1].
        seed: which images are in the share.

    Attributes:
        agreement: share of the last call's output that equals the class (NaN before a call).
    """

    def __init__(self, labels: Mapping[str, np.ndarray], p: float, seed: int = 0):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a share in [0, 1], got {p}")
        self.labels = {
            d: torch.as_tensor(np.asarray(y), dtype=torch.int64) for d, y in labels.items()
        }
        self.p, self.seed = p, seed
        g = torch.Generator().manual_seed(seed)
        self.order = {d: torch.randperm(len(y), generator=g) for d, y in self.labels.items()}
        self.agreement = float("nan")

    def settings(self) -> dict:
        """What defines the oracle, for a stored run's settings (:mod:`cdrlib.run_store`)."""
        return {
            "oracle": type(self).__name__,
            "p": self.p,
            "seed": self.seed,
            "labels": digest(self.labels),
        }

    def __call__(self, domain: str, assignments: torch.Tensor) -> torch.Tensor:
        y = self.labels[domain]
        a = torch.as_tensor(assignments, dtype=torch.int64).cpu()
        if a.shape != y.shape:
            raise ValueError(f"domain {domain} has {len(y)} labels but {len(a)} assignments")
        k = max(int(a.max()) + 1, int(y.max()) + 1)
        out = match_clusters_to_classes(a, y, k)[a]
        chosen = self.chosen(domain)
        out[chosen] = y[chosen]
        self.agreement = float((out == y).float().mean())
        return out

    def chosen(self, domain: str) -> torch.Tensor:
        """(N,) bool: the images of ``domain`` that take their class."""
        n = len(self.labels[domain])
        mask = torch.zeros(n, dtype=torch.bool)
        mask[self.order[domain][: int(round(self.p * n))]] = True
        return mask


class OracleJointLabels:
    """Oracle analysis of IBNM's joint pseudo-labels: a share ``p`` of the images of A ∪ B take
    their class, and the noise split counts them clean.

    The joint clusters are renamed to classes and a fixed share ``p`` of the images takes its class,
    as :class:`ClassMixedClusters` does for one domain. Those images join the clean set — the oracle
    knows their labels are right, which is what the noise split tries to find out; the others keep
    the split's verdict. ``p = 0`` leaves IBNM's labels (renamed) and split; ``p = 1`` gives every
    image its class, all clean. Pass it as :class:`~cdrlib.ibnm_train.IBNM`'s ``joint_relabel``.

    Args:
        labels: (N_A + N_B,) class ids of the training images, A's first (IBNM's joint order).
        p: share in [0, 1]. seed: which images are in the share.

    Attributes:
        agreement: share of the last call's labels that equal the class (NaN before a call).
    """

    def __init__(self, labels, p: float, seed: int = 0):
        self.classes = ClassMixedClusters({"joint": labels}, p, seed=seed)

    @property
    def agreement(self) -> float:
        return self.classes.agreement

    def settings(self) -> dict:
        """What defines the oracle, for a stored run's settings (:mod:`cdrlib.run_store`)."""
        return {**self.classes.settings(), "oracle": type(self).__name__}

    def __call__(self, assignments: torch.Tensor, clean: torch.Tensor):
        """(N,) joint pseudo-labels and (N,) bool clean mask → the same two, replaced."""
        out = self.classes("joint", assignments)
        return out, torch.as_tensor(clean, dtype=torch.bool).cpu() | self.classes.chosen("joint")


class OracleMatching:
    """Oracle analysis: a centroid matching π of which a share ``q`` of A's clusters is right.

    With clusters renamed by :class:`ClassMixedClusters`, cluster *i* of A and cluster *i* of B
    stand for the same class, so the right match of *i* is *i*. A fixed random share ``q`` of A's
    clusters gets it; the others keep the matching of ``fallback`` (Sinkhorn's, as the method
    computes it). The share of right matches of the last call is kept in :attr:`agreement`.

    Args:
        k: number of clusters. q: share in [0, 1]. seed: which clusters are in the share.
        fallback: ``(c_a, c_b) → π``, default :func:`cdrlib.ucdir.match_centroids`.
    """

    def __init__(self, k: int, q: float, seed: int = 0, fallback=None):
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be a share in [0, 1], got {q}")
        self.fallback = fallback or match_centroids
        self.k, self.q, self.seed = k, q, seed
        g = torch.Generator().manual_seed(seed)
        self.right = torch.randperm(k, generator=g)[: int(round(q * k))]
        self.agreement = float("nan")

    def settings(self) -> dict:
        """What defines the oracle, for a stored run's settings (:mod:`cdrlib.run_store`); the
        fallback by its qualified name."""
        fallback = (
            getattr(self.fallback, "__module__", "")
            + "."
            + getattr(self.fallback, "__qualname__", type(self.fallback).__name__)
        )
        return {
            "oracle": type(self).__name__,
            "k": self.k,
            "q": self.q,
            "seed": self.seed,
            "fallback": fallback,
        }

    def __call__(self, c_a: torch.Tensor, c_b: torch.Tensor) -> torch.Tensor:
        pi = self.fallback(c_a, c_b).clone()
        pi[self.right.to(pi.device)] = self.right.to(pi.device)
        self.agreement = float((pi == torch.arange(len(pi), device=pi.device)).float().mean())
        return pi


def premise_record(
    regime: str,
    premise: str,
    premise_value: float,
    method: str,
    ablation: str,
    values: Mapping[int, float],
    ablation_values: Mapping[int, float],
    metric: str = "mAP@all",
    protocol: str = "heldout",
) -> dict:
    """One row of a chapter's ``premise`` table from per-seed results.

    Args:
        values, ablation_values: seed → the metric of the method and of its ablation with that seed
            (mean over the chapter's pairs). The seeds of both must be the same.
    Returns:
        a dict with :data:`PREMISE_FIELDS`: ``value`` and ``ablation_value`` are means over seeds,
        ``gain`` their difference, ``seed_spread`` the range (max − min) over seeds of the per-seed
        gain — the run-to-run variation a gain has to clear.
    """
    if set(values) != set(ablation_values) or not values:
        raise ValueError(
            f"the method and its ablation need the same seeds, got {sorted(values)} and "
            f"{sorted(ablation_values)}"
        )
    seeds = sorted(values)
    gains = np.array([values[s] - ablation_values[s] for s in seeds])
    value = float(np.mean([values[s] for s in seeds]))
    ablation_value = float(np.mean([ablation_values[s] for s in seeds]))
    return {
        "regime": regime,
        "premise": premise,
        "premise_value": float(premise_value),
        "method": method,
        "ablation": ablation,
        "metric": metric,
        "value": value,
        "ablation_value": ablation_value,
        "gain": value - ablation_value,
        "seed_spread": float(gains.max() - gains.min()),
        "seeds": len(seeds),
        "protocol": protocol,
    }


def holds(record: Mapping) -> bool:
    """Whether a premise record shows the method working: gain > 3 × its seed spread, over ≥ 3
    seeds."""
    return record["seeds"] >= 3 and record["gain"] > 3 * record["seed_spread"]


def plot_dial(ax, records, label: str | None = None, default_value: float | None = None, **plot_kw):
    """Gain over the ablation against the premise's value, with the seed spread as error bars.

    Args:
        records: premise records (dicts) of one method along one dial.
        default_value: where the default data sits on the dial (marked with a dashed line).
    """
    recs = sorted(records, key=lambda r: r["premise_value"])
    x = [r["premise_value"] for r in recs]
    y = [r["gain"] for r in recs]
    half = [r["seed_spread"] / 2 for r in recs]
    ax.errorbar(x, y, yerr=half, marker="o", capsize=3, label=label, **plot_kw)
    ax.axhline(0.0, color="grey", lw=0.8)
    if default_value is not None:
        ax.axvline(default_value, color="grey", ls="--", lw=0.8)
    ax.set_xlabel(recs[0]["premise"] if recs else "premise")
    ax.set_ylabel(f"gain in {recs[0]['metric'] if recs else 'metric'} over the ablation")
    return ax
