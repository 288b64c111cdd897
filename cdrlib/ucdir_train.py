"""UCDIR training: two domains, a memory bank each, momentum keys, k-means every epoch (Hu & Lee,
ECCV 2022).

The loss of one step is

    [(L_IW + w_cw L_CW) for A and B] / 2 + w_se L_SE + w_dd L_DD,

with w_cw ramping from 0 at the warm-up epoch to its maximum, and L_SE, L_DD switched on at their
epochs. Batches of A and B are drawn independently: no image of A is ever paired with one of B.
Runs on one process, or on several through ``torchrun`` (DDP; each process takes its share of
every batch, keys are gathered so that all memory banks stay identical, k-means runs on every
process with the same seed on the same features).

The images of a domain are given in one of three forms:

* a float tensor (N, 3, H, W) in [0, 1] — the embedded data, held in memory;
* a :class:`~cdrlib.data.DomainDataset` of image files — the paper datasets, read per batch by
  worker threads, the next batch decoding while a step trains, and sent to a GPU from page-locked
  memory (:class:`TrainingViews`);
* (N, V, D) features of a frozen backbone for V views of each image (view 0 un-augmented, views
  1.. augmented; :func:`cache_view_features`) — the CPU setting of the book's default profile:
  only the MLP head trains, and "two augmentations" means two of the cached augmented views. The
  papers fine-tune the whole backbone; on 2 CPU cores that costs about 12 s per epoch (minutes per
  run), so the chapters train the head and say so.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import ucdir
from .clustering import kmeans
from .data.transforms import TwoViewAugment, normalize
from .evaluation import cross_domain_table, extract_features
from .inference import evaluating, in_batches
from .memory import MemoryBank, momentum_copy, momentum_update
from .run_store import RunStore, digest, hook_settings
from .training import Trainer
from .validation import check_cluster_ids

# the arithmetic of a training step: float32, or mixed precision under torch.autocast (bfloat16 on
# a recent GPU or a CPU, float16 on a GPU without bfloat16, with a gradient scaler)
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def auto_precision(device) -> str:
    """Mixed precision where it pays: bfloat16 on a GPU that has it, float16 on an older GPU (a
    T4), float32 on a CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


# the distance-of-distance forms: none, the official code's batch form, the centroid-matching form
# on the memory bank's centroids, and on the exact centroids of every training image (frozen
# backbone only: it embeds each domain's whole training part at every step)
DOD_FORMS = (None, "batch", "centroid", "centroid_exact")
# "centroid_exact" embeds a domain in chunks of this many images, each recomputed in the backward
# pass: memory holds one chunk's activations, not the whole domain's
EXACT_CENTROID_CHUNK = 4096


@dataclass
class UCDIRConfig:
    """Hyper-parameters; the defaults are the embedded-data ones, :meth:`paper` gives the
    papers'."""

    backbone: str = "emoji-resnet"
    image_size: int = 64
    proj_hidden: int = 512
    proj_dim: int = 128
    epochs: int = 12
    batch_size: int = 64  # per domain
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    key_momentum: float = 0.99
    temperature: float = 0.2
    k: int = 54  # clusters per domain
    warmup_epoch: int = 2  # L_CW starts (and k-means runs) from this epoch on
    w_cw: float = 1.0  # the maximum of the ramp
    se_epoch: int = 6
    w_se: float = 0.5
    tau_se: float = 0.1
    dd_epoch: int = 6
    w_dd: float = 0.1
    dod: str | None = None  # one of DOD_FORMS (None: no DoD; "batch": the official code's)
    tau_dd: float = 0.01  # "batch": the temperature of the distance patterns
    sinkhorn_eps: float = 0.05  # "centroid": ε of the centroid matching
    use_cw: bool = True
    use_se: bool = True
    kmeans_niter: int = 20
    kmeans_nredo: int = 5
    seed: int = 0

    @staticmethod
    def frozen(**overrides) -> "UCDIRConfig":
        """The chapters' CPU setting: the head trains on cached views of the frozen backbone, so
        epochs are cheap; the schedule keeps the papers' proportions (clusters from 10%, SE and DoD
        from 50%). ``overrides`` change any field (``k=`` the number of classes of one's own
        data)."""
        return UCDIRConfig(
            **{"epochs": 30, "warmup_epoch": 3, "se_epoch": 15, "dd_epoch": 15, **overrides}
        )

    @staticmethod
    def paper(dataset: str = "office_home") -> "UCDIRConfig":
        """The paper's settings for Office-Home or DomainNet."""
        oh = dataset == "office_home"
        return UCDIRConfig(
            backbone="moco-v2-resnet50",
            image_size=224,
            proj_hidden=2048,
            proj_dim=128,
            epochs=200,
            batch_size=64,
            lr=2e-4,
            key_momentum=0.999,
            k=65 if oh else 7,
            warmup_epoch=20,
            w_cw=0.5 if oh else 1.0,
            se_epoch=100,
            w_se=1.0 if oh else 0.5,
            tau_se=0.01 if oh else 0.1,
            dd_epoch=100,
            w_dd=0.5 if oh else 0.1,
            dod="batch",
        )


class Encoder(nn.Module):
    """Backbone + MLP head → L2-normalised embedding (B, proj_dim)."""

    def __init__(self, backbone: nn.Module, hidden: int, out: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(getattr(backbone, "num_features", 2048), hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out),
        )

    def forward(self, x):
        return F.normalize(self.head(self.backbone(x)), dim=1)


class FrozenFeatures(nn.Module):
    """The identity on cached backbone features (N, D): the encoder's "backbone" when it is
    frozen."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def _check_n_views(n_views: int) -> None:
    if n_views < 3:
        raise ValueError(
            f"n_views must be at least 3 (the plain view and two augmented ones), got {n_views}"
        )


def cache_view_features(
    backbone: nn.Module,
    images: torch.Tensor,
    n_views: int = 16,
    image_size: int = 64,
    batch_size: int = 256,
    device="cpu",
    seed: int = 0,
) -> torch.Tensor:
    """Backbone features of ``n_views`` views of every image: (N, n_views, D).

    View 0 is the un-augmented image, views 1.. are :class:`TwoViewAugment` draws (seeded).
    """
    _check_n_views(n_views)
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    augment = TwoViewAugment(image_size)
    backbone.to(device)

    def views(sl: slice) -> torch.Tensor:  # (B, n_views, D)
        x = images[sl].to(device)
        shown = [normalize(x)] + [augment(x) for _ in range(n_views - 1)]
        return torch.stack([backbone(v) for v in shown], dim=1)

    try:
        with evaluating(backbone):
            return in_batches(views, len(images), batch_size, desc="caching view features")
    finally:
        torch.set_rng_state(gen_state)


class ViewFeatures:
    """:func:`cache_view_features` of one domain's training images, computed when first needed.

    The cached views cost ``n_views`` backbone passes per image: most of a chapter's run time when
    its runs load from a :class:`~cdrlib.run_store.RunStore` and never train on them. Given as a
    domain's input to :func:`train_or_load` (or IBNM's ``features``), they are computed only when
    the run trains; a run the store holds loads onto :meth:`stand_ins` of the same shape.

    Args:
        backbone, images, n_views, image_size, batch_size, device, seed: as for
            :func:`cache_view_features` (images (N, 3, H, W) in [0, 1]).
    """

    def __init__(
        self,
        backbone: nn.Module,
        images: torch.Tensor,
        n_views: int = 16,
        image_size: int = 64,
        batch_size: int = 256,
        device="cpu",
        seed: int = 0,
    ):
        _check_n_views(n_views)
        self.backbone, self.images, self.n_views = backbone, images, n_views
        self.batch_size, self.device = batch_size, device
        self.augmented = dict(image_size=image_size, seed=seed)  # what only the views depend on

    @functools.cached_property
    def plain(self) -> torch.Tensor:
        """(N, D) features of the un-augmented images: view 0 of :attr:`views`, bit for bit (the
        same batches through the same function), without the augmented views."""
        if "views" in self.__dict__:
            return self.views[:, 0]
        return extract_features(
            self.backbone.to(self.device), self.images, self.batch_size, self.device
        )

    @functools.cached_property
    def views(self) -> torch.Tensor:
        """(N, n_views, D): every view, computed on first access."""
        return cache_view_features(
            self.backbone,
            self.images,
            self.n_views,
            batch_size=self.batch_size,
            device=self.device,
            **self.augmented,
        )

    @functools.cached_property
    def fingerprint(self) -> str:
        """A :func:`~cdrlib.run_store.digest` of what defines the views — the images, the
        backbone's weights, ``n_views`` and the augmentation's size and seed — the same on every
        machine (the views' own values differ in their last bits from one CPU to another)."""
        return digest(self.images, self.backbone, self.n_views, self.augmented)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, n_views, D) of :attr:`views`, known without computing them."""
        return (len(self.images), self.n_views, self.plain.shape[1])

    def stand_ins(self) -> torch.Tensor:
        """(N, n_views, D) in place of :attr:`views` for a method that only loads a stored run:
        view 0 is :attr:`plain` (what reading the plain view gives), the augmented views are NaN,
        so that a training step on them could only fail loudly."""
        out = torch.full(self.shape, float("nan"), dtype=self.plain.dtype)
        out[:, 0] = self.plain
        return out


PREFETCH_BATCHES = 2  # image-file batches decoded ahead of their step, at most, per domain


class TrainingViews:
    """How a domain's images become inputs of the encoder (see the module docstring)."""

    def __init__(self, images, image_size: int, workers: int = 8):
        self.images = images
        self.cached = isinstance(images, torch.Tensor) and images.dim() == 3
        self.files = not isinstance(images, torch.Tensor)
        if self.cached and images.shape[1] < 3:
            raise ValueError("cached view features need at least 3 views (N, V>=3, D)")
        if not self.cached and not self.files and images.dim() != 4:
            raise ValueError(
                f"images must be (N, 3, H, W), (N, V, D) features or a DomainDataset, "
                f"got shape {tuple(images.shape)}"
            )
        self.augment = TwoViewAugment(image_size)
        self.pool = ThreadPoolExecutor(workers) if self.files else None
        # batches whose files are being decoded ahead of their step: ids → one future per image
        self.ahead: dict[tuple, list] = {}

    def __len__(self):
        return len(self.images)

    def prefetch(self, ids: torch.Tensor) -> None:
        """Start decoding a coming batch's files in the worker threads, so that they are ready when
        its step asks (image files only; a no-op for tensors). At most :data:`PREFETCH_BATCHES`
        batches wait at a time: an older one that was never asked for is dropped."""
        if not self.files:
            return
        key = tuple(ids.tolist())
        if key not in self.ahead:
            while len(self.ahead) >= PREFETCH_BATCHES:
                for f in self.ahead.pop(next(iter(self.ahead))):
                    f.cancel()
            self.ahead[key] = [self.pool.submit(self.images.raw, i) for i in key]

    def _fetch(self, ids: torch.Tensor, device) -> torch.Tensor:
        if self.files:  # decode the batch's files in threads (PIL releases the GIL while decoding)
            futures = self.ahead.pop(tuple(ids.tolist()), None)
            if futures is None:
                x = torch.stack(list(self.pool.map(self.images.raw, ids.tolist())))
            else:
                x = torch.stack([f.result() for f in futures])
        else:
            x = self.images[ids]
        device = torch.device(device)
        if device.type == "cuda" and x.device.type == "cpu":
            # page-locked memory: the copy to the GPU runs without blocking this thread
            return x.pin_memory().to(device, non_blocking=True)
        return x.to(device)

    def two_views(self, ids: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cached:  # two different augmented views of each image
            x = self.images[ids]
            n, v = len(ids), x.shape[1]
            i = torch.randint(1, v, (n,))
            j = (i - 1 + torch.randint(1, v - 1, (n,))) % (v - 1) + 1
            ar = torch.arange(n)
            return x[ar, i].to(device), x[ar, j].to(device)
        return self.augment.two_views(self._fetch(ids, device))

    def plain(self, ids: torch.Tensor, device) -> torch.Tensor:
        if self.cached:
            return self.images[ids][:, 0].to(device)
        return normalize(self._fetch(ids, device))


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world size)`` of a distributed run, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(t: torch.Tensor) -> torch.Tensor:
    rank, world = rank_and_world_size()
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class UCDIR:
    """The method's state and its training step.

    Args:
        cfg: hyper-parameters.
        images_a, images_b: the training images of each domain in one of the three forms of the
            module docstring; their order defines the image ids of the memory banks.
        backbone: the initial backbone (already loaded). With cached features it stays frozen
            outside the encoder and is used by :meth:`retrieval_model` only.
        relabel: optional ``(domain, assignments (N,)) -> assignments (N,)`` applied after every
            k-means (``domain`` is ``"A"`` or ``"B"``). ``None`` keeps k-means's clusters, as the
            paper does; the book's premise dials pass :class:`cdrlib.premise.ClassMixedClusters`.
        matching: optional ``(c_a (K, d), c_b (K, d)) -> π (K,)`` used by the ``"centroid"`` DoD
            form instead of Sinkhorn's matching (chapter 05's premise dial).
        precision: a key of :data:`PRECISIONS`: the forward passes and losses of a step run under
            ``torch.autocast`` with that type (the weights and the optimiser stay float32);
            ``"float16"`` adds a gradient scaler and needs a GPU. :func:`auto_precision` chooses.
    """

    def __init__(
        self,
        cfg: UCDIRConfig,
        images_a,
        images_b,
        backbone: nn.Module,
        device="cpu",
        relabel=None,
        matching=None,
        precision: str = "float32",
    ):
        if cfg.dod not in DOD_FORMS:
            hint = " (the centroid form was called 'seed' before)" if cfg.dod == "seed" else ""
            raise ValueError(f"dod must be one of {DOD_FORMS}, not {cfg.dod!r}{hint}")
        self.cfg, self.device = cfg, torch.device(device)
        self.relabel, self.matching = relabel, matching  # the premise dials' hooks (see above)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
        if precision == "float16" and self.device.type != "cuda":
            raise ValueError("float16 autocast needs a GPU; on a CPU use precision='bfloat16'")
        self.precision = precision
        # float16's small range needs the loss scaled before backward (bfloat16 has float32's)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "float16" else None
        self.views = {
            "A": TrainingViews(images_a, cfg.image_size),
            "B": TrainingViews(images_b, cfg.image_size),
        }
        if self.views["A"].cached != self.views["B"].cached:
            raise ValueError("give both domains as images or both as cached view features")
        if cfg.dod == "centroid_exact" and not self.views["A"].cached:
            raise ValueError(
                "dod='centroid_exact' embeds every training image at every step, which only cached "
                "features of a frozen backbone make affordable; give cached view features "
                "(cache_view_features) or use dod='centroid' to train the whole network"
            )
        self.frozen_backbone = None
        if self.views["A"].cached:
            self.frozen_backbone = backbone.to(self.device).eval()
            backbone = FrozenFeatures(images_a.shape[2])
        torch.manual_seed(cfg.seed)
        self.encoder = Encoder(backbone, cfg.proj_hidden, cfg.proj_dim).to(self.device)
        self.key_encoder = momentum_copy(self.encoder)
        self.banks = {
            d: MemoryBank(len(v), cfg.proj_dim, seed=cfg.seed + i, device=self.device)
            for i, (d, v) in enumerate(self.views.items())
        }
        self.clusters = ClusterState(required=("A", "B"))
        self.model = self.encoder
        if rank_and_world_size()[1] > 1:
            # The encoder runs twice a step (domain A, then B). With DDP's default buffer broadcast
            # before every forward, the second forward overwrites BatchNorm buffers that the first
            # one's graph saved (an in-place error on rank 1 under torch 2.11); each process keeps
            # its own statistics instead, and the checkpoint and evaluation take rank 0's.
            self.model = nn.parallel.DistributedDataParallel(self.encoder, broadcast_buffers=False)

    @functools.cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        """Built on first use, once a subclass has added its own parameters (IBNM)."""
        return self.make_optimizer()

    def make_optimizer(self) -> torch.optim.Optimizer:
        """SGD with momentum over the encoder (the paper's optimiser)."""
        cfg = self.cfg
        return torch.optim.SGD(
            self.encoder.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )

    # -- schedule
    def weights(self, epoch: int) -> dict:
        c = self.cfg
        ramp = (
            0.0
            if epoch < c.warmup_epoch
            else min(1.0, (epoch - c.warmup_epoch + 1) / max(1, c.epochs - c.warmup_epoch))
        )
        return {
            "cw": c.w_cw * ramp if c.use_cw else 0.0,
            "se": c.w_se if (c.use_se and epoch >= c.se_epoch) else 0.0,
            "dd": c.w_dd if (c.dod and epoch >= c.dd_epoch) else 0.0,
        }

    # -- data
    def batches(self, epoch: int, gen: torch.Generator):
        """Index batches (ids_A, ids_B), drawn independently per domain; each process takes its
        share."""
        rank, world = rank_and_world_size()
        na, nb = len(self.views["A"]), len(self.views["B"])
        steps = max(na, nb) // self.cfg.batch_size
        bs = self.cfg.batch_size
        if bs > min(na, nb):
            raise ValueError(
                f"batch_size {bs} is larger than a domain ({na} and {nb} training images)"
            )
        pa, pb = torch.randperm(na, generator=gen), torch.randperm(nb, generator=gen)

        def batch(s: int) -> tuple[torch.Tensor, torch.Tensor]:
            # the smaller domain wraps around its permutation; a batch never holds an image twice
            pos = s * bs + torch.arange(bs)
            return pa[pos % na][rank::world], pb[pos % nb][rank::world]

        for s in range(steps):
            # image files: batch s has been decoding since the step before (the first one starts
            # now, ahead of its successor), and batch s + 1 decodes while s trains
            for t in range(s, min(s + 2, steps)):
                for d, ids in zip(("A", "B"), batch(t), strict=True):
                    self.views[d].prefetch(ids)
            yield batch(s)

    # -- clustering
    def embed_all(
        self, domain: str, encoder: nn.Module | None = None, batch_size: int = 256
    ) -> torch.Tensor:
        """Embeddings (N, proj_dim) of a domain's training images, un-augmented (key encoder by
        default)."""
        enc = encoder or self.key_encoder
        v = self.views[domain]
        with evaluating(enc):
            return in_batches(
                lambda sl: enc(v.plain(torch.arange(sl.start, sl.stop), self.device)),
                len(v),
                batch_size,
            )

    def embed_with_grad(self, domain: str) -> torch.Tensor:
        """Query-encoder embeddings (N, proj_dim) of a domain's training images, un-augmented, with
        their gradient (``dod="centroid_exact"``).

        The encoder runs on chunks of :data:`EXACT_CENTROID_CHUNK` images under activation
        checkpointing, so the backward pass recomputes one chunk at a time: a step costs one more
        forward pass over the domain, and its memory stays that of one chunk plus (N, proj_dim).
        """
        v = self.views[domain]
        chunks = torch.arange(len(v)).split(EXACT_CENTROID_CHUNK)
        return torch.cat(
            [
                checkpoint(self.model, v.plain(ids, self.device), use_reentrant=False)
                for ids in chunks
            ]
        )

    def retrieval_model(self) -> nn.Module:
        """The model whose output is the retrieval embedding (B, proj_dim), from normalised images
        (B, 3, H, W); use it with :func:`~cdrlib.evaluation.extract_features` or
        ``dataset_features``."""
        if self.frozen_backbone is None:
            return self.encoder
        return nn.Sequential(self.frozen_backbone, self.encoder)

    def embed(self, x: torch.Tensor, device=None) -> torch.Tensor:
        """Retrieval embeddings (N, proj_dim) of images (N, 3, H, W) in [0, 1] — or, with a frozen
        backbone, of its features (N, D) (the head only)."""
        device = self.device if device is None else device
        if x.dim() == 2:
            if self.frozen_backbone is None:
                raise ValueError("features (N, D) can be embedded only when the backbone is frozen")
            return extract_features(self.encoder, x, device=device, transform=lambda t: t)
        return extract_features(self.retrieval_model(), x, device=device)

    def recluster(self, epoch: int) -> dict:
        """k-means per domain on the key encoder's plain-view embeddings (from the warm-up epoch
        on).

        With ``relabel`` the assignments are replaced and the centroids become the L2-normalised
        means of the new clusters' embeddings (a cluster left empty gets a zero centroid).
        """
        if epoch + 1 < self.cfg.warmup_epoch:  # clusters are needed from the warm-up epoch on
            return {}
        for d in ("A", "B"):
            emb = self.embed_all(d)
            c, labels = kmeans(
                emb,
                self.cfg.k,
                self.cfg.kmeans_niter,
                self.cfg.kmeans_nredo,
                seed=self.cfg.seed + epoch,
            )
            if self.relabel is not None:
                labels = check_cluster_ids(self.relabel(d, labels), "relabel", len(emb), self.cfg.k)
                c = ucdir.cluster_centroids(emb, labels, self.cfg.k)
            self.clusters.set(d, c.to(self.device), labels.to(self.device))
        return {}

    # -- one step
    def step(self, batch, epoch: int) -> dict:
        ids = {"A": batch[0], "B": batch[1]}
        dtype = PRECISIONS[self.precision]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            loss, parts, k = self.loss(ids, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        momentum_update(self.encoder, self.key_encoder, self.cfg.key_momentum)
        for d in ("A", "B"):
            self.banks[d].update(_gather(ids[d].to(self.device)), _gather(k[d]))
        parts["loss"] = loss.item()
        return parts

    def loss(self, ids: dict, epoch: int):
        """UCDIR's loss of one step: ``(loss, parts, keys)``; methods built on UCDIR add their terms
        here."""
        w = self.weights(epoch)
        cfg = self.cfg
        q, k = {}, {}
        for d in ("A", "B"):
            v1, v2 = self.views[d].two_views(ids[d], self.device)
            q[d] = self.model(v1)
            with torch.no_grad():
                k[d] = self.key_encoder(v2)
        loss, parts = 0.0, {}
        for d in ("A", "B"):
            bank = self.banks[d].keys
            l_iw = ucdir.instance_wise_loss(
                q[d], k[d], bank, ids[d].to(self.device), cfg.temperature
            )
            parts[f"iw_{d}"] = l_iw.item()
            term = l_iw
            if w["cw"] > 0 and self.clusters.ready:
                c, labels = self.clusters.get(d)
                l_cw = ucdir.cluster_wise_loss(
                    q[d], k[d], bank, labels, labels[ids[d].to(self.device)], c, cfg.temperature
                )
                parts[f"cw_{d}"] = l_cw.item()
                term = term + w["cw"] * l_cw
            loss = loss + term / 2
        if self.clusters.ready and (w["se"] > 0 or w["dd"] > 0):
            ca, _ = self.clusters.get("A")
            cb, _ = self.clusters.get("B")
            if w["se"] > 0:
                l_se = ucdir.self_entropy_loss(q["A"], q["B"], ca, cb, cfg.tau_se)
                parts["se"] = l_se.item()
                loss = loss + w["se"] * l_se
            if w["dd"] > 0:
                if cfg.dod == "batch":
                    l_dd = ucdir.dod_loss_batch(q["A"], q["B"], ca, cb, cfg.tau_dd)
                else:
                    # The k-means centroids are constants; the gradient's path is the same clusters
                    # seen through the current encoder: the banks with this batch's entries
                    # replaced by its queries ("centroid"), or every training image's plain view
                    # ("centroid_exact").
                    cur = {}
                    for d in ("A", "B"):
                        c, labels = self.clusters.get(d)
                        if cfg.dod == "centroid":
                            cur[d] = ucdir.batch_centroids(
                                self.banks[d].keys, labels, ids[d].to(self.device), q[d], len(c)
                            )
                        else:
                            cur[d] = ucdir.cluster_centroids(
                                self.embed_with_grad(d), labels, len(c)
                            )
                    pi = (
                        None
                        if self.matching is None
                        else self.matching(cur["A"].detach(), cur["B"].detach())
                    )
                    l_dd = ucdir.dod_loss_centroid(
                        cur["A"], cur["B"], matching=pi, eps=cfg.sinkhorn_eps, reduction="mean"
                    )
                parts["dd"] = l_dd.item()
                loss = loss + w["dd"] * l_dd
        return loss, parts, k

    def trainer(self, checkpoint: str | Path | None = None, on_epoch_end=None) -> Trainer:
        def end(epoch):
            out = self.recluster(epoch)
            if hasattr(
                self.matching, "agreement"
            ):  # an oracle matching reports its share of right matches
                out["matching_agreement"] = self.matching.agreement
            if on_epoch_end is not None:
                out.update(on_epoch_end(epoch) or {})
            return out

        return Trainer(
            self.modules(),
            self.optimizer,
            self.step,
            self.batches,
            self.cfg.epochs,
            checkpoint,
            end,
            self.state(),
            seed=self.cfg.seed,
            config=self.config_dict(),
        )

    def modules(self) -> dict:
        """The trained modules, saved in checkpoints."""
        return {"encoder": self.encoder, "key_encoder": self.key_encoder}

    def state(self) -> dict:
        """Everything else a checkpoint must hold to resume exactly."""
        state = {"bank_A": self.banks["A"], "bank_B": self.banks["B"], "clusters": self.clusters}
        return state if self.scaler is None else {**state, "grad_scaler": self.scaler}

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def kept_state(self) -> dict:
        """What a stored run keeps (:class:`~cdrlib.run_store.RunStore`): the trained modules but
        the key encoder (evaluation reads the query encoder), and the last clusters."""
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items() if k != "key_encoder"},
            "clusters": self.clusters.state_dict(),
        }

    def load_kept_state(self, state: dict) -> None:
        """Restore what :meth:`kept_state` returned."""
        modules = self.modules()
        for k, sd in state["modules"].items():
            modules[k].load_state_dict(sd)
        self.clusters.load_state_dict(state["clusters"])

    @property
    def relative_step(self) -> float | None:
        """How coarsely a run store keeps the trained weights and centroids
        (:func:`cdrlib.run_store.pack_state`, whose comment says what each step moved in the
        book's tables): 0.15 × a row's RMS for a head on cached features of a frozen backbone, as
        measured; 8-bit steps (None) when the whole network trains, which was not measured
        coarser."""
        return 0.15 if self.frozen_backbone is not None else None


class ClusterState:
    """What the last clustering produced, saved with the run: named tensors, or tuples of them.

    UCDIR keeps one ``(centroids (k, d), labels (N,))`` per domain under ``"A"`` and ``"B"``; IBNM
    keeps the shared centroids of A ∪ B and each domain's labels and clean masks by name.

    Args:
        required: the names that must be set before the losses that use clusters may run.
    """

    def __init__(self, required: tuple[str, ...]):
        self.required = required
        self.state: dict = {}

    @property
    def ready(self) -> bool:
        return all(name in self.state for name in self.required)

    def set(self, name: str, *values: torch.Tensor) -> None:
        self.state[name] = values[0] if len(values) == 1 else tuple(values)

    def get(self, name: str):
        return self.state[name]

    def state_dict(self) -> dict:
        def cpu(v):
            if isinstance(v, tuple):
                return tuple(cpu(x) for x in v)
            return v.cpu() if isinstance(v, torch.Tensor) else v

        return {name: cpu(v) for name, v in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state)


def train_and_evaluate(
    cfg: UCDIRConfig,
    inputs: tuple,
    backbone: nn.Module,
    evaluation: dict,
    ks=(10,),
    device="cpu",
    checkpoint: str | Path | None = None,
    relabel=None,
    matching=None,
    store: RunStore | None = None,
    key: str | None = None,
):
    """Train UCDIR on one pair of domains and evaluate it under each protocol.

    Args:
        inputs: (domain A, domain B) training inputs in any form of the module docstring, or
            :class:`ViewFeatures` (views computed only if the run trains).
        evaluation: see :func:`evaluate_method`.
        relabel, matching: see :class:`UCDIR` (None: k-means pseudo-labels and Sinkhorn's matching,
            as the paper).
        checkpoint: a resumable run checkpoint (a long run); or
        store, key: a chapter's :class:`~cdrlib.run_store.RunStore` and the run's unique name in it
            (load if stored, otherwise train and store).
    Returns:
        ``(method, history, table)``: the table has the two directions and their mean per protocol.
    """
    method, history = train_or_load(
        cfg, inputs, backbone, device, checkpoint, relabel, matching, store, key
    )
    return method, history, evaluate_method(method, evaluation, ks, device)


def train_or_load(
    cfg: UCDIRConfig,
    inputs: tuple,
    backbone: nn.Module,
    device="cpu",
    checkpoint: str | Path | None = None,
    relabel=None,
    matching=None,
    store: RunStore | None = None,
    key: str | None = None,
) -> tuple["UCDIR", list[dict]]:
    """Train UCDIR on one pair of domains, or load the run from ``store``; no evaluation.

    Args:
        inputs: as for :func:`train_and_evaluate`: an input may be a :class:`ViewFeatures`, whose
            views are then computed only if the run trains.
        backbone, device, checkpoint, relabel, matching, store, key: as for
            :func:`train_and_evaluate`.
    Returns:
        ``(method, history)``.
    """
    hooks = {"relabel": relabel, "matching": matching}
    settings = None if store is None else run_settings("UCDIR", asdict(cfg), inputs, hooks)
    inputs = training_inputs(inputs, store, key, settings)
    method = UCDIR(
        cfg, inputs[0], inputs[1], backbone, device=device, relabel=relabel, matching=matching
    )
    return method, fit_or_load(method, checkpoint, store, key, settings)


def run_settings(method: str, config: dict, inputs, hooks: dict | None = None) -> dict:
    """What defines a stored run (:meth:`~cdrlib.run_store.RunStore.fit`): the method's class name,
    its configuration, the shapes of its training inputs and a digest of each (a
    :class:`ViewFeatures` by :attr:`~ViewFeatures.fingerprint`, a tensor by its values), and the
    settings of its premise hooks (:func:`~cdrlib.run_store.hook_settings`; name → hook or None).
    """
    return {
        "config": config,
        "data": [x.fingerprint if isinstance(x, ViewFeatures) else digest(x) for x in inputs],
        "hooks": hook_settings(hooks or {}),
        "inputs": [tuple(x.shape) for x in inputs],
        "method": method,
    }


def training_inputs(inputs: tuple, store: RunStore | None, key: str | None, settings: dict | None):
    """The tensors a method is built on: each :class:`ViewFeatures` as its views, or — when
    ``store`` holds the run, which then only loads — as its stand-ins (the views never computed).
    Tensors and other inputs pass through."""
    loads = store is not None and key is not None and store.holds(key, settings)
    return tuple(
        (x.stand_ins() if loads else x.views) if isinstance(x, ViewFeatures) else x for x in inputs
    )


def fit_or_load(
    method, checkpoint, store: RunStore | None, key: str | None, settings: dict | None
) -> list[dict]:
    """Train ``method`` (resumable with ``checkpoint``), or through a run store when one is
    given (``settings``: the run's :func:`run_settings`, None without a store)."""
    if store is None:
        return method.trainer(checkpoint).fit()
    if key is None or checkpoint is not None:
        raise ValueError("a run store needs the run's key, and no run checkpoint beside it")
    return store.fit(key, method, settings)


def evaluate_method(method: UCDIR, evaluation: dict, ks=(10,), device="cpu"):
    """Cross-domain retrieval of a trained method under each protocol.

    Args:
        evaluation: protocol → ``(images, labels)``, each a dict domain → float (N, 3, H, W) images
            in [0, 1] — or, with a frozen backbone, its features (N, D), computed once for all runs
            — and domain → (N,) labels (evaluation only), of the two domains, A first
            (:func:`cdrlib.evaluation.pair_protocols` builds it).
    Returns:
        a table (:func:`~cdrlib.evaluation.cross_domain_table`) per protocol, concatenated.
    """
    tables = [
        cross_domain_table(
            {d: method.embed(x, device) for d, x in images.items()},
            labels,
            ks=ks,
            protocol=protocol,
        )
        for protocol, (images, labels) in evaluation.items()
    ]
    return pd.concat(tables, ignore_index=True)
