"""Cross-domain evaluation: every ordered pair of domains, under either protocol, as a tidy table.

Protocols (the papers' and the book's held-out one):

* ``"train-as-gallery"`` — UCDIR's and IBNM's: the images the model trained on are also the queries
  and the gallery.
* ``"heldout"`` — the honest one: queries and gallery are the held-out emoji (never seen in
  training).

Queries come from one domain and the gallery from another; relevance is "same class".
"""

from __future__ import annotations

from itertools import permutations
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from .data.emoji import load_emoji_domains
from .data.transforms import normalize, to_float
from .inference import evaluating, in_batches
from .metrics import ranking_metrics, retrieval_metrics
from .progress import progress
from .rerank import icfrr

PROTOCOL_SPLIT = {"train-as-gallery": "train", "heldout": "heldout"}


def extract_features(
    model: Callable,
    images: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    transform: Callable | None = None,
) -> torch.Tensor:
    """Run ``model`` over float images (N, 3, H, W) in [0, 1] in batches; returns (N, D) on the CPU.

    ``transform`` (default: the evaluation normalisation) is applied per batch.
    """
    if not images.is_floating_point():
        raise TypeError(
            f"images must be float in [0, 1], got {images.dtype}; for 8-bit images pass "
            f"images.float() / 255"
        )
    prepare = transform if transform is not None else normalize
    with evaluating(model):
        return in_batches(
            lambda sl: model(prepare(images[sl].to(device))).float(),
            len(images),
            batch_size,
            desc="features",
        )


def dataset_features(
    model: Callable, dataset, batch_size: int = 256, device="cpu", num_workers: int = 0
) -> torch.Tensor:
    """Features (N, D) of a :class:`~cdrlib.data.DomainDataset`, in memory or read from files.

    The dataset's own (evaluation) transform is applied; in-memory images are batched directly.
    """
    if dataset.images is not None:
        return extract_features(
            model, dataset.tensor(), batch_size, device, transform=dataset.transform
        )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    with evaluating(model):
        return torch.cat(
            [model(x.to(device)).float().cpu() for x, _, _ in progress(loader, desc="features")]
        )


class RandomFeatures(torch.nn.Module):
    """Chance: seeded noise features that ignore the image, i.e. a random ranking."""

    def __init__(self, dim: int = 64, seed: int = 0):
        super().__init__()
        self.dim, self.g = dim, torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(x), self.dim, generator=self.g)


def raw_pixel_features(images: torch.Tensor) -> torch.Tensor:
    """The raw-pixel baseline: float images (N, 3, H, W) in [0, 1], normalised and flattened."""
    return normalize(images).flatten(1)


def center(features: torch.Tensor) -> torch.Tensor:
    """Subtract the mean feature (of one domain). Uses no label; removes a domain's common offset.

    A domain of one item would become the zero vector (every score then ties): refused.
    """
    if features.dim() != 2 or len(features) < 2:
        raise ValueError(
            f"centring needs a domain of at least 2 feature rows (N, D), got shape "
            f"{tuple(features.shape)}; pass center_domains=False for a single item"
        )
    return features - features.mean(0, keepdim=True)


def _ordered_pairs(features: Mapping, labels: Mapping, pairs) -> list[tuple[str, str]]:
    """The (query, gallery) domain pairs of a table (default: every ordered pair), each domain
    checked."""
    pairs = list(pairs) if pairs is not None else list(permutations(features, 2))
    missing = sorted({d for pair in pairs for d in pair if d not in features or d not in labels})
    if missing:
        raise KeyError(
            f"no features or labels for domain(s) {missing}; features have {sorted(features)}, "
            f"labels have {sorted(labels)}"
        )
    return pairs


def _with_mean_row(rows: list[dict], tags: Mapping) -> pd.DataFrame:
    """One row per pair, then a ``mean`` row averaging every numeric column over the pairs."""
    df = pd.DataFrame(rows)
    mean = {
        **tags,
        "query": "mean",
        "gallery": f"{len(rows)} pairs",
        **df.drop(columns=[*tags, "query", "gallery"]).mean().to_dict(),
    }
    return pd.concat([df, pd.DataFrame([mean])], ignore_index=True)


def cross_domain_table(
    features: Mapping[str, torch.Tensor],
    labels: Mapping[str, np.ndarray],
    pairs: Iterable[tuple[str, str]] | None = None,
    ks: Iterable[int] = (1, 5, 10, 15, 50),
    metric: str = "cosine",
    center_domains: bool = True,
    **tags,
):
    """Metrics for each ordered (query domain, gallery domain) pair, plus their mean.

    Args:
        features: domain → (N_d, D) features. labels: domain → (N_d,) class ids (evaluation only).
        pairs: the ordered pairs; default all of them (12 for four domains).
        center_domains: centre each domain's features on its own mean first (label-free; it removes
            the offset a style adds to every feature and helps every model a little).
        tags: constant columns to add (``method="raw pixels"``, ``protocol="heldout"``, …).
    Returns:
        a pandas DataFrame, one row per pair and a final ``mean`` row.
    """
    pairs = _ordered_pairs(features, labels, pairs)
    feats = {d: center(f) if center_domains else f for d, f in features.items()}
    rows = []
    for qd, gd in pairs:
        m = retrieval_metrics(feats[qd], feats[gd], labels[qd], labels[gd], metric=metric, ks=ks)
        m.pop("n_queries_without_relevant")
        rows.append({**tags, "query": qd, "gallery": gd, **m})
    return _with_mean_row(rows, tags)


def icfrr_cross_domain_table(
    features: Mapping[str, torch.Tensor],
    labels: Mapping[str, np.ndarray],
    pairs: Iterable[tuple[str, str]] | None = None,
    kg: int | None = None,
    kq: int | None = None,
    beta: float = 0.5,
    n_iter: int = 5,
    variant: str = "official",
    **tags,
):
    """mAP@all of each ordered (query domain, gallery domain) pair before and after ICFRR
    re-ranking.

    Both rankings come from :func:`cdrlib.rerank.icfrr` on per-domain centred features (``n_iter=0``
    is the plain cosine ranking), so before and after differ only by the re-ranking.

    Args:
        features, labels, pairs, tags: as for :func:`cross_domain_table`.
        kg, kq: ICFRR's neighbour and voter counts; default the gallery's mean class size
            (round(G / number of classes), at least 2), which needs no label beyond the class count.
        beta, n_iter, variant: as for :func:`cdrlib.rerank.icfrr`.
    Returns:
        a pandas DataFrame with columns ``query``, ``gallery``, ``KG``, ``mAP@all``,
        ``mAP@all + ICFRR`` and ``ICFRR gain``, one row per pair and a final ``mean`` row.
    """
    pairs = _ordered_pairs(features, labels, pairs)
    rows = []
    for qd, gd in pairs:
        q, g = center(features[qd]), center(features[gd])
        n_classes = len(np.unique(np.asarray(labels[gd])))
        k_g = kg or max(2, round(len(g) / n_classes))
        k_q = kq or k_g
        before = icfrr(query=q, gallery=g, kg=k_g, kq=k_q, n_iter=0)
        after = icfrr(query=q, gallery=g, kg=k_g, kq=k_q, beta=beta, n_iter=n_iter, variant=variant)
        m0 = ranking_metrics(before, labels[qd], labels[gd])["mAP@all"]
        m1 = ranking_metrics(after, labels[qd], labels[gd])["mAP@all"]
        rows.append(
            {
                **tags,
                "query": qd,
                "gallery": gd,
                "KG": k_g,
                "mAP@all": m0,
                "mAP@all + ICFRR": m1,
                "ICFRR gain": m1 - m0,
            }
        )
    return _with_mean_row(rows, tags)


def evaluate_backbone(
    model: Callable | None,
    protocol: str = "heldout",
    dataset: str = "emoji",
    domains: Iterable[str] | None = None,
    device="cpu",
    **kwargs,
):
    """Features of every domain of the embedded data under a protocol, then
    :func:`cross_domain_table`.

    ``model=None`` evaluates raw pixels (the flattened, normalised image).
    """
    if protocol not in PROTOCOL_SPLIT:
        raise ValueError(f"protocol must be one of {list(PROTOCOL_SPLIT)}, not {protocol!r}")
    if dataset != "emoji":
        raise ValueError(
            "evaluate_backbone reads the embedded dataset; for the paper datasets build "
            "features with extract_features and call cross_domain_table"
        )
    ds = load_emoji_domains()
    idx = ds.indices(PROTOCOL_SPLIT[protocol])
    domains = list(domains or ds.domains)
    feats, labels = {}, {}
    for d in domains:
        imgs = to_float(ds.images[ds.domain_index(d), idx])
        feats[d] = (
            raw_pixel_features(imgs)
            if model is None
            else extract_features(model, imgs, device=device)
        )
        labels[d] = ds.labels[idx]
    kwargs.setdefault("protocol", protocol)
    return cross_domain_table(feats, labels, **kwargs)


def pair_protocols(a: str, b: str, heldout: tuple, train_as_gallery: tuple) -> dict:
    """The evaluation inputs of one domain pair under both protocols.

    Args:
        heldout, train_as_gallery: ``(inputs, labels)``, each a dict domain → tensor (images or
            features) and domain → (N,) labels, covering at least ``a`` and ``b``.
    Returns:
        protocol → ``({a: …, b: …}, {a: labels, b: labels})``, what the methods' ``evaluation``
        argument and :func:`pair_rows` take.
    """
    return {
        protocol: ({a: x[a], b: x[b]}, {a: y[a], b: y[b]})
        for protocol, (x, y) in (("heldout", heldout), ("train-as-gallery", train_as_gallery))
    }


def pair_rows(
    method: str,
    feature_fn: Callable,
    pairs: Iterable[tuple[str, str]],
    protocols_of: Callable,
    ks: Iterable[int] = (10,),
) -> list:
    """Tables of a fixed feature map (a baseline) for every pair and protocol, tagged for
    :func:`pivot_results`.

    Args:
        feature_fn: inputs (N, …) → features (N, D); protocols_of: (a, b) → :func:`pair_protocols`.
    """
    out = []
    for a, b in pairs:
        for protocol, (inputs, labels) in protocols_of(a, b).items():
            t = cross_domain_table(
                {d: feature_fn(x) for d, x in inputs.items()}, labels, ks=ks, protocol=protocol
            )
            out.append(t.assign(pair=f"{a}–{b}", method=method))
    return out


def pivot_results(tables, value: str = "mAP@all"):
    """One row per method, one column per (protocol, pair), plus each protocol's mean over pairs.

    Args:
        tables: frames from :func:`cross_domain_table` tagged with ``method``, ``protocol`` and
            ``pair`` (each pair's ``mean`` row, over its two directions, is the one used).
    Returns:
        a DataFrame with the method as a column and columns ``"heldout: sketch–twemoji"``, …,
        ``"heldout: mean"``, ``"train-as-gallery: …"``.
    """
    every = pd.concat(list(tables), ignore_index=True)
    means = every[every["query"] == "mean"]
    table = means.pivot_table(
        index="method", columns=["protocol", "pair"], values=value, sort=False
    )
    for protocol in table.columns.get_level_values(0).unique():
        table[(protocol, "mean")] = table[protocol].mean(axis=1)
    table = table.sort_index(axis=1, level=0, sort_remaining=False)
    table.columns = [f"{protocol}: {pair}" for protocol, pair in table.columns]
    return table.reset_index()
