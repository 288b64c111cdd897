"""IBNM training: UCDIR plus attention-guided cross-domain fusion and noise mitigation.

IBNM: an anonymous SIGIR 2024 submission; its code is the GitHub repository sigir2024anonymous/IBNM.

IBNM keeps UCDIR's loop and losses (:class:`~cdrlib.ucdir_train.UCDIR`) and adds, from
``fusion_epoch`` on:

* **joint clusters** — k-means on the embeddings of A ∪ B together, so that both domains share
  cluster ids (the official code's cross-domain correspondence); every epoch;
* **the noise split** — the entropy of each sample's soft assignment to the joint centroids, a
  2-component Gaussian mixture, clean = posterior ≥ 0.8; noisy samples take the pseudo-label of
  their nearest clean sample of the same domain (:mod:`cdrlib.noise`);
* **fusion** — an image of A and an image of B (drawn independently: not a pair) mixed patch by
  patch with learnable Beta weights λ; the mixed image is trained towards both sources'
  pseudo-labels with the weights (l_A, l_B) its patches' attention gives (:mod:`cdrlib.fusion`), or
  uniform weights for the "random fusion" ablation;
* **intra-domain mixup** of clean samples, λ ~ Beta(0.3, 0.3), KL to the mixed one-hot labels.

As with UCDIR, the book's CPU setting freezes the backbone: UCDIR's part trains the head on
cached view features, while fusion and mixup need the images (the mixing happens in the ViT's
token space), so those go through the frozen ViT every step — the attention importance of each
training image is computed once. The paper profile trains the whole ViT (give images only).
One process only (fusion goes around DDP's wrapper).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fusion, noise, ucdir
from .clustering import kmeans
from .inference import evaluating, in_batches
from .models.vit import VisionTransformer
from .run_store import RunStore
from .ucdir_train import (
    UCDIR,
    ClusterState,
    TrainingViews,
    UCDIRConfig,
    evaluate_method,
    fit_or_load,
    rank_and_world_size,
    run_settings,
    training_inputs,
)
from .validation import check_cluster_ids

FUSION_MODES = (None, "random", "attention", "attention_raw", "ink")


@dataclass
class IBNMConfig(UCDIRConfig):
    """UCDIR's hyper-parameters plus IBNM's; :meth:`frozen` and :meth:`paper` as for UCDIR."""

    backbone: str = "emoji-vit"
    # None: UCDIR only; "random": uniform importance; "attention": the softmax of the CLS attention
    # (the official code); "attention_raw": the CLS attention before that softmax (s′);
    # "ink": each patch's share of drawn pixels (drawings on white only; no labels — the premise
    # dial)
    fusion: str | None = "attention"
    noise: bool = True  # the noise split, relabelling and intra-domain mixup
    fusion_epoch: int = 20  # joint clusters, noise split, fusion and mixup from here on
    fusion_batch: int = 16  # mixed images per step (and mixup images per domain)
    tau_label: float = 0.1  # softmax(cos(f, C)/τ) of the label loss, entropy and mixup
    clean_threshold: float = 0.8
    # the noise split's mixture (scikit-learn's EM defaults, a smaller reg_covar; the official
    # code's are 10, 1e-2 and 5e-4, which paper() uses)
    gmm_max_iter: int = 100
    gmm_tol: float = 1e-3
    gmm_reg_covar: float = 1e-6
    # one Beta and one λ per mixed image (the official code), or one of each per patch
    shared_mixing: bool = False
    mixup_alpha: float = 0.3
    w_mixup: float = 1.0
    r_init: float = -2.0  # the fusion loss weights softplus(r)
    optimizer: str = "sgd"  # "adamw" in the paper

    @staticmethod
    def frozen(**overrides) -> "IBNMConfig":
        """The chapter's CPU setting: UCDIR's frozen schedule (30 epochs), fusion in the last
        third."""
        return IBNMConfig(**{**asdict(UCDIRConfig.frozen()), "backbone": "emoji-vit", **overrides})

    @staticmethod
    def paper(dataset: str = "office_home", **overrides) -> "IBNMConfig":
        """The paper's settings: AdamW lr 5e-6, wd 0.05, batch 32, 50 epochs (30 for PACS), k 65 /
        7, τ 0.01 / 0.1."""
        oh = dataset == "office_home"
        base = {
            **asdict(UCDIRConfig.paper("office_home" if oh else "domainnet")),
            "backbone": "dino-vitb16",
            "optimizer": "adamw",
            "lr": 5e-6,
            "weight_decay": 0.05,
            "batch_size": 32,
            "epochs": 30 if dataset == "pacs" else 50,
            "k": 65 if oh else 7,
            "tau_se": 0.01 if oh else 0.1,
            "tau_label": 0.01 if oh else 0.1,
        }
        base.update(
            warmup_epoch=5, se_epoch=25, dd_epoch=25, dod=None, fusion_epoch=base["epochs"] // 2
        )
        # the official code's noise split and patch mixing
        base.update(gmm_max_iter=10, gmm_tol=1e-2, gmm_reg_covar=5e-4, shared_mixing=True)
        return IBNMConfig(**{**base, **overrides})


class IBNM(UCDIR):
    """UCDIR with IBNM's fusion and noise mitigation.

    Args:
        cfg: :class:`IBNMConfig`.
        images_a, images_b: the training images of each domain, float (N, 3, H, W) in [0, 1] or
            :class:`~cdrlib.data.DomainDataset` — what fusion and mixup mix.
        vit: a :class:`~cdrlib.models.VisionTransformer` (``emoji-vit``, ``dino-vitb16``).
        features_a, features_b: optional cached view features (N, V, D) of the same images in the
            same order (:func:`~cdrlib.ucdir_train.cache_view_features`): the backbone is then
            frozen.
        joint_relabel: optional ``(labels (N,), clean (N,) bool) -> (labels, clean)``, with N =
            N_A + N_B (A's images first), applied to the joint pseudo-labels and the noise split's
            clean mask after the split's relabelling; the joint centroids become the L2-normalised
            means of the new labels. ``None`` keeps IBNM's own. Chapter 06's premise dial passes
            :class:`cdrlib.premise.OracleJointLabels` (an oracle); when the hook has an
            ``agreement`` attribute, the history records it as ``joint_agreement``.
        precision: see :class:`~cdrlib.ucdir_train.UCDIR`.
    """

    def __init__(
        self,
        cfg: IBNMConfig,
        images_a,
        images_b,
        vit: nn.Module,
        features_a=None,
        features_b=None,
        device="cpu",
        precision: str = "float32",
        joint_relabel=None,
    ):
        if cfg.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, not {cfg.fusion!r}")
        if not isinstance(vit, VisionTransformer):
            raise TypeError(
                f"IBNM mixes ViT patch tokens and reads ViT attention: give a "
                f"cdrlib VisionTransformer (emoji-vit, dino-vitb16), not {type(vit).__name__}"
            )
        if rank_and_world_size()[1] > 1:
            raise RuntimeError(
                "IBNM trains on one process (its fusion step runs outside the DDP wrapper)"
            )
        if (features_a is None) != (features_b is None):
            raise ValueError("give cached features for both domains or for neither")
        if joint_relabel is not None and cfg.fusion is None and not cfg.noise:
            raise ValueError(
                "joint_relabel replaces the joint pseudo-labels, which fusion=None, noise=False "
                "(UCDIR alone) never makes: switch fusion or the noise split on, or pass no hook"
            )
        frozen = features_a is not None
        super().__init__(
            cfg,
            features_a if frozen else images_a,
            features_b if frozen else images_b,
            vit,
            device,
            precision=precision,
        )
        # fusion and mixup need the images; when the backbone trains they are UCDIR's own inputs
        self.images = (
            {
                "A": TrainingViews(images_a, cfg.image_size),
                "B": TrainingViews(images_b, cfg.image_size),
            }
            if frozen
            else self.views
        )
        for d, feats in (("A", features_a), ("B", features_b)):
            if frozen and len(feats) != len(self.images[d]):
                raise ValueError(
                    f"domain {d}: {len(feats)} cached features but {len(self.images[d])} images; "
                    "they must be the same images in the same order"
                )
        self.vit = self.frozen_backbone if frozen else self.encoder.backbone
        if frozen:
            self.vit.requires_grad_(False)
        torch.manual_seed(cfg.seed)
        self.mixing = fusion.PatchMixing(self.vit.num_patches, shared=cfg.shared_mixing).to(
            self.device
        )
        self.fusion_weights = fusion.FusionLossWeights(cfg.r_init).to(self.device)
        self.joint = ClusterState(required=("centroids",))
        self.joint_relabel = joint_relabel  # the premise dial's hook (see above)
        self.importance = {}
        if cfg.fusion == "ink":
            self.importance = {
                d: ink_importance(x, self.vit) for d, x in (("A", images_a), ("B", images_b))
            }
        elif frozen and cfg.fusion in (
            "attention",
            "attention_raw",
        ):  # a frozen ViT's attention never changes
            self.importance = {
                d: self._importance(d, torch.arange(len(self.images[d]))) for d in ("A", "B")
            }
        if cfg.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {cfg.optimizer!r}")

    def make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW or SGD (``cfg.optimizer``) over the encoder, the mixing and the fusion weights."""
        cfg = self.cfg
        params = [
            *self.encoder.parameters(),
            *self.mixing.parameters(),
            *self.fusion_weights.parameters(),
        ]
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )

    # -- pieces
    def _importance(self, d: str, ids: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        """s (len(ids), n): each image's own CLS attention over its patches (fusion steps 1–3)."""
        softmax = self.cfg.fusion != "attention_raw"
        with evaluating(self.vit):
            return in_batches(
                lambda sl: fusion.cls_patch_attention(
                    self.vit.attention_maps(self.images[d].plain(ids[sl], self.device)),
                    softmax=softmax,
                ),
                len(ids),
                batch_size,
                to_cpu=False,
            )

    def _embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder.head(self.vit.feature_from_tokens(tokens)), dim=1)

    def _embed_images(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed_tokens(self.vit.patch_tokens(x))

    def fusion_active(self, epoch: int) -> bool:
        return epoch >= self.cfg.fusion_epoch and self.joint.ready

    # -- clustering
    def recluster(self, epoch: int) -> dict:
        """UCDIR's per-domain k-means, then (from the epoch before fusion on) the joint clusters and
        noise split."""
        out = super().recluster(epoch)
        cfg = self.cfg
        if epoch + 1 < cfg.fusion_epoch or (cfg.fusion is None and not cfg.noise):
            return out
        emb = {d: self.embed_all(d) for d in ("A", "B")}
        na = len(emb["A"])
        both = torch.cat([emb["A"], emb["B"]])
        centroids, labels = kmeans(
            both, cfg.k, cfg.kmeans_niter, cfg.kmeans_nredo, seed=cfg.seed + 1000 + epoch
        )
        clean = torch.ones(len(both), dtype=torch.bool)
        if cfg.noise:
            entropy = noise.prediction_entropy(both, centroids, cfg.tau_label)
            clean = noise.split_clean(
                entropy,
                cfg.clean_threshold,
                seed=cfg.seed,
                max_iter=cfg.gmm_max_iter,
                tol=cfg.gmm_tol,
                reg_covar=cfg.gmm_reg_covar,
            )["clean"]
            # the nearest clean sample of the same domain: across domains neighbours are far less
            # reliable
            labels = torch.cat(
                [
                    noise.relabel_noisy(emb[d], labels[sl], clean[sl])
                    for d, sl in (("A", slice(0, na)), ("B", slice(na, None)))
                ]
            )
            out["clean_fraction"] = clean.float().mean().item()
        if self.joint_relabel is not None:
            labels, clean = self.joint_relabel(labels, clean)
            labels = check_cluster_ids(labels, "joint_relabel", len(both), cfg.k)
            clean = torch.as_tensor(clean, dtype=torch.bool).cpu()
            if clean.shape != (len(both),):
                raise ValueError(
                    f"joint_relabel must return a ({len(both)},) clean mask beside the labels; "
                    f"got shape {tuple(clean.shape)}"
                )
            centroids = ucdir.cluster_centroids(both, labels, cfg.k)
            if hasattr(self.joint_relabel, "agreement"):  # an oracle reports its share of classes
                out["joint_agreement"] = self.joint_relabel.agreement
        self.joint.set("centroids", centroids.to(self.device))
        self.joint.set("labels_A", labels[:na].to(self.device))
        self.joint.set("labels_B", labels[na:].to(self.device))
        self.joint.set("clean_A", clean[:na])
        self.joint.set("clean_B", clean[na:])
        return out

    # -- the loss of one step
    def loss(self, ids: dict, epoch: int):
        loss, parts, k = super().loss(ids, epoch)
        if not self.fusion_active(epoch):
            return loss, parts, k
        cfg, dev = self.cfg, self.device
        c = self.joint.get("centroids")
        fb = min(cfg.fusion_batch, len(ids["A"]), len(ids["B"]))
        ia, ib = ids["A"][:fb], ids["B"][:fb]
        y_a, y_b = (
            self.joint.get("labels_A")[ia.to(dev)],
            self.joint.get("labels_B")[ib.to(dev)],
        )
        if cfg.fusion is not None:
            x_a, x_b = self.images["A"].plain(ia, dev), self.images["B"].plain(ib, dev)
            known = (
                (self.importance["A"][ia].to(dev), self.importance["B"][ib].to(dev))
                if self.importance
                else None
            )
            mixed = fusion.fuse(
                self.vit,
                x_a,
                x_b,
                self.mixing,
                cfg.fusion != "random",
                known,
                softmax=cfg.fusion != "attention_raw",
            )
            lam, weights = mixed["lam"], mixed["weights"]
            f_mix = self._embed_tokens(mixed["tokens"])
            l_feat = fusion.mixed_contrastive_loss(
                f_mix, k["A"][:fb], k["B"][:fb], y_a, y_b, weights, cfg.temperature
            )
            l_label = fusion.mixed_label_loss(f_mix, c, y_a, y_b, weights, cfg.tau_label)
            loss = loss + self.fusion_weights(l_feat, l_label)
            parts.update(
                feat=l_feat.item(),
                label=l_label.item(),
                lam=lam.mean().item(),
                l_A=weights[:, 0].mean().item(),
            )
        if cfg.noise:
            l_mix = []
            for d, i in (("A", ia), ("B", ib)):
                keep = i[self.joint.get(f"clean_{d}")[i]]
                if len(keep) < 2:
                    continue
                y = self.joint.get(f"labels_{d}")[keep.to(dev)]
                x_mix, y_i, y_j, lam = noise.intra_domain_mixup(
                    self.images[d].plain(keep, dev), y, cfg.mixup_alpha
                )
                logits = self._embed_images(x_mix) @ c.t() / cfg.tau_label
                l_mix.append(noise.mixup_kl_loss(logits, y_i, y_j, lam))
            if l_mix:
                l_mix = torch.stack(l_mix).mean()
                parts["mixup"] = l_mix.item()
                loss = loss + cfg.w_mixup * l_mix
        return loss, parts, k

    def modules(self) -> dict:
        return {**super().modules(), "mixing": self.mixing, "fusion_weights": self.fusion_weights}

    def state(self) -> dict:
        return {**super().state(), "joint": self.joint}


def ink_importance(images, vit: VisionTransformer) -> torch.Tensor:
    """Importance (N, n) from the images alone: each patch's share of drawn pixels, rows summing to
    1.

    For drawings on a white background (the embedded emoji) this marks the object's patches without
    any label or model; a blank image gets uniform importance. Images must be tensors (N, 3, H, W)
    in [0, 1] whose patch grid is the ViT's.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(
            'fusion="ink" reads in-memory images (N, 3, H, W) in [0, 1] of drawings on white'
        )
    ink = fusion.patch_ink(images, vit.patch_embed.patch_size)
    if ink.shape[1] != vit.num_patches:
        raise ValueError(
            f"images of {tuple(images.shape[-2:])} px give {ink.shape[1]} patches, the ViT has "
            f"{vit.num_patches}: give images at the ViT's size"
        )
    total = ink.sum(1, keepdim=True)
    return torch.where(
        total > 0, ink / total.clamp_min(1e-12), torch.full_like(ink, 1.0 / ink.shape[1])
    )


def train_and_evaluate(
    cfg: IBNMConfig,
    images: tuple,
    vit: nn.Module,
    evaluation: dict,
    features: tuple | None = None,
    ks=(10,),
    device="cpu",
    checkpoint: str | Path | None = None,
    store: RunStore | None = None,
    key: str | None = None,
    joint_relabel=None,
):
    """Train IBNM on one pair of domains and evaluate it under each protocol.

    Args:
        images: (A, B) training images; features: optional (A, B) cached view features of them
            (frozen backbone), tensors or :class:`~cdrlib.ucdir_train.ViewFeatures` (computed
            only if the run trains); evaluation: see :func:`~cdrlib.ucdir_train.evaluate_method`.
        checkpoint, store, key: as for :func:`cdrlib.ucdir_train.train_and_evaluate`.
        joint_relabel: see :class:`IBNM`.
    Returns:
        ``(method, history, table)``.
    """
    features = features or (None, None)
    inputs = features if features[0] is not None else images
    hooks = {"joint_relabel": joint_relabel}
    settings = None if store is None else run_settings("IBNM", asdict(cfg), inputs, hooks)
    features = training_inputs(features, store, key, settings)
    method = IBNM(
        cfg,
        images[0],
        images[1],
        vit,
        features[0],
        features[1],
        device=device,
        joint_relabel=joint_relabel,
    )
    history = fit_or_load(method, checkpoint, store, key, settings)
    return method, history, evaluate_method(method, evaluation, ks, device)
