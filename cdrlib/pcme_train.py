"""PCME training and evaluation on images and their captions (the embedded emoji data by default).

* :class:`ImageTextData` — image items (emoji × domain) with frozen-ViT features (the CLS feature
  and the patch tokens, computed once) and text items (every caption of every emoji), with what
  relevance needs: the emoji of each item, its class (evaluation only) and its tag vector (PMRP);
  :meth:`ImageTextData.from_cub` builds the same from CUB and its captions (the paper profile);
* :class:`PCME` — the image and text heads and the learnable a, b; ``probabilistic=False`` gives
  the deterministic baseline with the same encoders;
* :func:`train` — batches of images, each with one of its emoji's captions drawn at random;
  a caption *matches* every image of the batch whose emoji has that caption (so "face" drawn for
  one face matches every face in the batch); :func:`train_or_load` keeps runs in a run store;
* :func:`specific_captions`, :func:`general_captions` — the captions restricted to those that fit
  few (or many) emoji: the premise dial on how one-to-many the training captions are;
* :func:`sigma_from_pairs` — captions' σ set from the training pairs instead of learnt (the
  spread of the images each caption fits): the far end of the chapter's dial on σ;
* :func:`evaluate` — image→text and text→image: R@1/5/10 (relevant = the same emoji),
  R-Precision (relevant = the same class) and PMRP (relevant = tag vectors within Hamming ζ).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import pcme
from .data import get_dataset
from .data.emoji import load_emoji_domains
from .data.errors import DataError
from .data.paper import dataset_root
from .data.transforms import normalize, to_float
from .evaluation import raw_pixel_features
from .inference import evaluating, in_batches
from .metrics import MetricSums, hamming_relevance, label_relevance, ranks_from_scores
from .run_store import RunStore, digest
from .text import BiGRUText, Vocabulary
from .training import GeneratorState, Trainer
from .validation import check_choice


@dataclass
class PCMEConfig:
    """Hyper-parameters; the defaults are the embedded data's, :meth:`paper` gives CUB's."""

    dim: int = 64  # embedding dimension D
    n_samples: int = 7  # J, training and evaluation (the official code's 7)
    a_init: float = 5.0  # CUB's initial a and b
    b_init: float = 5.0
    kl_weight: float = 1e-3  # CUB's
    # "mean": matching and non-matching pairs averaged separately, the KL a batch mean; "sum": the
    # official code's totals (every pair, both directions; the KL summed over the batch)
    reduction: str = "mean"
    uniform_weight: float = 0.0  # the uniformity loss on all samples (the official CUB's 10)
    temperature: float = 0.1  # the deterministic baseline's InfoNCE
    probabilistic: bool = True
    positives: str = (
        "caption"  # "caption": every image the caption fits; "pair": only its own image (COCO's)
    )
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    embed_dim: int = 128  # word embeddings
    gru_hidden: int = 128
    seed: int = 0

    @staticmethod
    def paper() -> "PCMEConfig":
        """CUB, as in the official configuration: its a = b = 5 under its sigmoid(2x), which is
        a = b = 10 under the true logistic used here; the loss summed over all pairs in both
        directions; KL weight 1e-3 (summed); the uniformity loss with weight 10; J = 7; D = 512,
        bi-GRU 512 (GloVe-sized words)."""
        return PCMEConfig(
            dim=512,
            epochs=50,
            batch_size=128,
            lr=2e-4,
            embed_dim=300,
            gru_hidden=512,
            a_init=10.0,
            b_init=10.0,
            reduction="sum",
            uniform_weight=10.0,
        )


class ImageTextData:
    """Image and text items of one split.

    Args:
        pooled: (N_img, d_pooled) image features; tokens: (N_img, T, d_local) patch tokens;
        image_emoji: (N_img,) the emoji of each image; captions: emoji → list of its captions
            (for the emoji of this split); labels: emoji → class; tags: emoji → (V,) multi-hot.
        source: a :func:`~cdrlib.run_store.digest` of what the image features were computed
            from (images, backbone, split), as the ``from_*`` constructors give it; None: the
            features themselves (see :attr:`fingerprint`).
    """

    def __init__(
        self,
        pooled,
        tokens,
        image_emoji,
        captions: dict,
        labels: dict,
        tags: dict,
        source: str | None = None,
    ):
        self.pooled, self.tokens, self.source = pooled, tokens, source
        self.image_emoji = torch.as_tensor(image_emoji)
        self.captions = captions
        self.text_emoji = torch.tensor([e for e in captions for _ in captions[e]])
        self.texts = [c for e in captions for c in captions[e]]
        self.caption_sets = {e: set(c) for e, c in captions.items()}
        self.labels, self.tags = labels, tags

    @property
    def fingerprint(self) -> str:
        """A digest of the image side, for a stored run's settings: the ``source`` and which images
        (the captions are digested apart). Without a source, the features' values: the same run
        stored on another machine then trains again, as their last bits differ."""
        images = self.source if self.source is not None else (self.pooled, self.tokens)
        return digest(images, self.image_emoji)

    @classmethod
    def from_emoji(
        cls, vit: nn.Module, split: str, device="cpu", batch_size: int = 256
    ) -> "ImageTextData":
        """Every domain's images of the split, through the frozen ViT once."""
        ds = load_emoji_domains()
        idx = ds.indices(split)
        vit = vit.to(device)

        def domain_features(d: int) -> tuple:  # (pooled (N, D), tokens (N, n, d)) of domain d
            return in_batches(
                lambda sl: _vit_features(
                    vit, normalize(to_float(ds.images[d, idx[sl]])).to(device)
                ),
                len(idx),
                batch_size,
            )

        with evaluating(vit):
            per_domain = [domain_features(d) for d in range(len(ds.domains))]
        return cls(
            torch.cat([pooled for pooled, _ in per_domain]),
            torch.cat([tokens for _, tokens in per_domain]),
            torch.cat([torch.as_tensor(idx)] * len(ds.domains)),
            {int(e): ds.captions(int(e)) for e in idx},
            {int(e): int(ds.labels[e]) for e in idx},
            {int(e): torch.tensor(ds.tags[e]) for e in idx},
            source=digest("emoji", split, ds.images[:, idx], vit),
        )

    @classmethod
    def from_cub(
        cls,
        vit: nn.Module,
        split: str,
        root=None,
        device="cpu",
        batch_size: int = 64,
        local_grid: int = 7,
    ) -> "ImageTextData":
        """CUB-200-2011 with Reed et al.'s captions (the paper profile): every image is its own
        item.

        Captions: ``<root>/text_c10/<class>/<image>.txt`` (10 per image). Tags for PMRP: the image's
        312 binary attributes (``CUB_200_2011/attributes/image_attribute_labels.txt``) when present,
        otherwise its class one-hot (then PMRP@0 is R-Precision by class). The patch tokens are
        average-pooled to ``local_grid`` × ``local_grid`` positions to keep the cache in memory
        (ViT-B/16: 196 → 49).
        """
        ds = get_dataset("cub", "image", split, root=root, image_size=vit.patch_embed.img_size)
        base = dataset_root("cub", root)
        captions = {}
        for i, f in enumerate(ds.files):
            txt = base / "text_c10" / f.parent.name / (f.stem + ".txt")
            if not txt.is_file():
                raise DataError(
                    f"caption file {txt} is missing: put Reed et al.'s text_c10 folder at "
                    f"{base / 'text_c10'}"
                )
            captions[i] = [ln.strip() for ln in txt.read_text().splitlines() if ln.strip()]
        tags = cls._cub_attributes(base, ds) or {
            i: F.one_hot(torch.tensor(int(y)), len(ds.classes)).to(torch.uint8)
            for i, y in enumerate(ds.labels)
        }
        vit = vit.to(device)
        with evaluating(vit):
            pooled, tokens = in_batches(
                lambda sl: _vit_features(
                    vit,
                    torch.stack([ds[j][0] for j in range(sl.start, sl.stop)]).to(device),
                    local_grid,
                ),
                len(ds),
                batch_size,
            )
        return cls(
            pooled,
            tokens,
            torch.arange(len(ds)),
            captions,
            {i: int(y) for i, y in enumerate(ds.labels)},
            tags,
            # the images by name (reading every file again would cost minutes)
            source=digest(
                "cub", split, [f"{f.parent.name}/{f.name}" for f in ds.files], vit, local_grid
            ),
        )

    @staticmethod
    def _cub_attributes(base, ds) -> dict | None:
        attr = base / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt"
        images = base / "CUB_200_2011" / "images.txt"
        if not (attr.is_file() and images.is_file()):
            return None
        image_id = {
            ln.split()[1]: int(ln.split()[0])
            for ln in images.read_text().splitlines()
            if ln.strip()
        }
        present: dict[int, set] = {}
        for ln in attr.read_text().splitlines():
            parts = ln.split()
            if len(parts) >= 3 and parts[2] == "1":
                present.setdefault(int(parts[0]), set()).add(int(parts[1]) - 1)
        n_attr = 1 + max((a for s in present.values() for a in s), default=311)
        out = {}
        for i, f in enumerate(ds.files):
            v = torch.zeros(n_attr, dtype=torch.uint8)
            v[list(present.get(image_id.get(f"{f.parent.name}/{f.name}", -1), ()))] = 1
            out[i] = v
        return out

    def with_captions(self, captions: dict) -> "ImageTextData":
        """The same images with other captions (emoji → list of captions, every emoji of the
        split)."""
        if set(captions) != set(self.captions):
            raise ValueError(
                "captions must give a list for every emoji of the split, and no other emoji"
            )
        return ImageTextData(
            self.pooled,
            self.tokens,
            self.image_emoji,
            captions,
            self.labels,
            self.tags,
            self.source,
        )

    def subset(self, emoji) -> "ImageTextData":
        """The images and captions of the given emoji only (an iterable of emoji of this split)."""
        keep = {int(e) for e in emoji}
        if not keep <= set(self.captions):
            raise ValueError(f"emoji {sorted(keep - set(self.captions))[:5]} are not in this split")
        rows = torch.tensor([int(e) in keep for e in self.image_emoji])
        captions = {e: c for e, c in self.captions.items() if e in keep}
        return ImageTextData(
            self.pooled[rows],
            self.tokens[rows],
            self.image_emoji[rows],
            captions,
            {e: self.labels[e] for e in captions},
            {e: self.tags[e] for e in captions},
            self.source,
        )

    def caption_fits(self) -> Counter:
        """caption → the number of emoji of this split it fits (one-to-many when above 1)."""
        return Counter(c for cs in self.caption_sets.values() for c in cs)

    def matches(self, image_emoji: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """bool (len(image_emoji), len(texts)): which caption fits which image."""
        return torch.tensor([[t in self.caption_sets[int(e)] for t in texts] for e in image_emoji])


@torch.no_grad()
def _vit_features(vit: nn.Module, x: torch.Tensor, local_grid: int | None = None):
    """The image side's inputs: the ViT's feature (B, D) and its patch tokens (B, n, d) in half
    precision (the cache of every image stays in memory), average-pooled to ``local_grid``² if
    given."""
    t = vit.forward_features(x)
    pooled = vit.proj(t[:, 0]) if vit.proj is not None else t[:, 0]
    local = t[:, 1:]
    if local_grid is not None:
        side = int(local.shape[1] ** 0.5)
        grid = local.transpose(1, 2).reshape(len(x), -1, side, side)
        local = F.adaptive_avg_pool2d(grid, local_grid).flatten(2).transpose(1, 2)
    return pooled.cpu(), local.half().cpu()


class PCME(nn.Module):
    """Image head over frozen ViT features, text encoder (bi-GRU) with its head, and a, b."""

    def __init__(self, cfg: PCMEConfig, vocab: Vocabulary, d_pooled: int, d_local: int):
        super().__init__()
        self.cfg, self.vocab = cfg, vocab
        self.image_head = pcme.GaussianHead(d_pooled, d_local, cfg.dim, cfg.probabilistic)
        self.text_encoder = BiGRUText(len(vocab), cfg.embed_dim, cfg.gru_hidden)
        self.text_head = pcme.GaussianHead(
            self.text_encoder.num_features,
            self.text_encoder.num_features,
            cfg.dim,
            cfg.probabilistic,
        )
        self.a = nn.Parameter(torch.tensor(float(cfg.a_init)))
        self.b = nn.Parameter(torch.tensor(float(cfg.b_init)))

    def embed_images(self, pooled, tokens):
        """(B, d_pooled), (B, T, d_local) → (μ, log σ or None), each (B, D)."""
        return self.image_head(pooled.float(), tokens.float())

    def embed_texts(self, texts: list[str]):
        ids, mask = self.vocab.encode(texts)
        dev = self.a.device
        pooled, local = self.text_encoder(ids.to(dev), mask.to(dev))
        return self.text_head(pooled, local, mask.to(dev))

    def loss(self, img, txt, matches) -> tuple[torch.Tensor, dict]:
        (mu_i, ls_i), (mu_t, ls_t) = img, txt
        c = self.cfg
        if not c.probabilistic:
            loss = pcme.contrastive_loss(mu_i, mu_t, matches, c.temperature)
            return loss, {"loss": loss.item()}
        z_i, z_t = pcme.sample(mu_i, ls_i, c.n_samples), pcme.sample(mu_t, ls_t, c.n_samples)
        match = pcme.soft_contrastive_loss(z_i, z_t, matches, self.a, self.b, c.reduction)
        kl_i, kl_t = pcme.kl_to_standard_normal(mu_i, ls_i), pcme.kl_to_standard_normal(mu_t, ls_t)
        if c.reduction == "sum":  # the official totals: summed over the batch, images + captions
            kl = kl_i * len(mu_i) + kl_t * len(mu_t)
        else:
            kl = (kl_i + kl_t) / 2
        loss = match + c.kl_weight * kl
        parts = {}
        if c.uniform_weight:
            uniform = pcme.uniformity_loss(torch.cat([z_i.flatten(0, 1), z_t.flatten(0, 1)]))
            loss = loss + c.uniform_weight * uniform
            parts["uniformity"] = uniform.item()
        return loss, {
            "loss": loss.item(),
            "match": match.item(),
            "kl": kl.item(),
            **parts,
            "a": self.a.item(),
            "b": self.b.item(),
            "sigma_img": ls_i.exp().mean().item(),
            "sigma_txt": ls_t.exp().mean().item(),
        }


def train(
    cfg: PCMEConfig,
    data: ImageTextData,
    device="cpu",
    vocab: Vocabulary | None = None,
    checkpoint: str | Path | None = None,
):
    """Train PCME (or the deterministic baseline) on ``data``; returns ``(model, history)``.

    No class labels are read: the supervision is which captions belong to which emoji. The loop is
    the shared :class:`~cdrlib.training.Trainer`: ``checkpoint`` makes the run resumable (exactly).
    """
    check_choice(cfg.positives, "PCMEConfig.positives", ("caption", "pair"))
    check_choice(cfg.reduction, "PCMEConfig.reduction", ("mean", "sum"))
    torch.manual_seed(cfg.seed)
    vocab = vocab or Vocabulary.build(data.texts)
    model = PCME(cfg, vocab, data.pooled.shape[1], data.tokens.shape[2]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(data.pooled)
    if cfg.batch_size > n:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {n} training images")
    # one generator over the whole run draws the data order and each image's caption (saved with
    # the checkpoint); the loop's per-epoch generator is not used, so runs stored before the move
    # to the shared loop train the same way
    order = GeneratorState(torch.Generator().manual_seed(cfg.seed))
    started = {}  # epoch → when its first batch was drawn (the history's seconds per epoch)

    def batches(epoch: int, _unused: torch.Generator):
        started[epoch] = time.perf_counter()
        gen = order.generator
        perm = torch.randperm(n, generator=gen)
        for s in range(n // cfg.batch_size):
            ids = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            emoji = data.image_emoji[ids]
            texts = [
                data.captions[int(e)][
                    int(torch.randint(len(data.captions[int(e)]), (1,), generator=gen))
                ]
                for e in emoji
            ]
            yield ids, emoji, texts

    def step(batch, epoch: int) -> dict:
        ids, emoji, texts = batch
        matches = (
            data.matches(emoji, texts)
            if cfg.positives == "caption"
            else torch.eye(len(ids), dtype=torch.bool)
        ).to(device)
        img = model.embed_images(data.pooled[ids].to(device), data.tokens[ids].to(device))
        loss, parts = model.loss(img, model.embed_texts(texts), matches)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return parts

    trainer = Trainer(
        {"model": model},
        opt,
        step,
        batches,
        cfg.epochs,
        checkpoint=checkpoint,
        on_epoch_end=lambda epoch: {"seconds": time.perf_counter() - started[epoch]},
        extra_state={"data_order": order},
        seed=cfg.seed,
        config=asdict(cfg),
    )
    return model.eval(), trainer.fit()


def specific_captions(data: ImageTextData, max_fits: int | None) -> ImageTextData:
    """Training captions restricted to those that fit at most ``max_fits`` emoji of the split.

    An emoji left with none keeps its most specific caption (fewest emoji; the first such in its
    list), so every image still has one. ``max_fits=None`` keeps every caption. No class label is
    read: only which captions the emoji carry.
    """
    return _captions_where(data, max_fits, lambda n, bound: n <= bound, min, "max_fits")


def general_captions(data: ImageTextData, min_fits: int | None) -> ImageTextData:
    """Training captions restricted to those that fit at least ``min_fits`` emoji of the split.

    The other end of the dial from :func:`specific_captions`: an emoji left with none keeps its most
    general caption (most emoji; the first such in its list). ``min_fits=None`` keeps every caption.
    """
    return _captions_where(data, min_fits, lambda n, bound: n >= bound, max, "min_fits")


def _captions_where(data: ImageTextData, bound, keep, fallback, name: str) -> ImageTextData:
    if bound is None:
        return data
    if not isinstance(bound, int) or isinstance(bound, bool) or bound < 1:
        raise ValueError(f"{name} must be a positive int or None, got {bound!r}")
    fits = data.caption_fits()
    kept = {
        e: [c for c in caps if keep(fits[c], bound)] or [fallback(caps, key=lambda c: fits[c])]
        for e, caps in data.captions.items()
    }
    return data.with_captions(kept)


def mean_caption_fits(data: ImageTextData) -> float:
    """How one-to-many the training signal is: the mean, over the (emoji, caption) items training
    draws from, of the number of emoji the caption fits (1.0: every caption names one emoji)."""
    fits = data.caption_fits()
    return float(np.mean([fits[c] for c in data.texts]))


def sigma_from_pairs(mu_img: torch.Tensor, data: ImageTextData, texts: list[str]) -> torch.Tensor:
    """Captions' σ set from the image–caption pairs of ``data`` instead of learnt (a plug-in σ).

    A caption's σ is the per-dimension standard deviation of μ over every image of ``data`` that it
    fits (every style of every emoji that carries it): wide for a caption that fits many different
    images, the spread of one emoji's styles for a caption of one emoji — σ that follows the
    one-to-many premise by construction. A caption of ``texts`` that ``data`` never carries gets
    the median σ of ``data``'s captions of a single emoji (an unseen caption is most likely a
    specific one). Reads only which caption goes with which image — the pairs PCME trains on —
    never a class label.

    Args:
        mu_img: (N_img, D) μ of ``data``'s images, in the order of ``data.image_emoji``.
        texts: the captions to give a σ (any strings, e.g. another split's ``texts``).
    Returns:
        (len(texts), D) log σ (σ floored at 1e-6, so that a caption whose images share one μ
        stays finite).
    """
    if mu_img.dim() != 2 or len(mu_img) != len(data.image_emoji):
        raise ValueError(
            f"mu_img must be (images, D) with one row per image of data ({len(data.image_emoji)}), "
            f"got {tuple(mu_img.shape)}"
        )
    rows_of = {}  # emoji → its rows of mu_img
    for i, e in enumerate(data.image_emoji.tolist()):
        rows_of.setdefault(e, []).append(i)
    holders = {}  # caption → the emoji that carry it
    for e, caps in data.caption_sets.items():
        for c in caps:
            holders.setdefault(c, []).append(e)
    wanted = set(texts)
    sigma = {
        c: mu_img[[i for e in es for i in rows_of[e]]].std(0, unbiased=False)
        for c, es in holders.items()
        if c in wanted or len(es) == 1
    }
    single = [sigma[c] for c, es in holders.items() if len(es) == 1]
    if not single and not wanted <= set(sigma):
        raise ValueError("data has no caption of a single emoji to give unseen captions a σ")
    unseen = torch.stack(single).median(0).values if single else None
    out = torch.stack([sigma[c] if c in sigma else unseen for c in texts])
    return out.clamp_min(1e-6).log()


class PCMERun:
    """One training run of :func:`train` in the form a :class:`~cdrlib.run_store.RunStore` takes.

    ``model`` is set once the run is trained or loaded.
    """

    # 8-bit steps: coarser ones moved chapter 07's tables past their tolerance (the bi-GRU text
    # encoder compounds the error; cdrlib.run_store.pack_state)
    relative_step = None

    def __init__(self, cfg: PCMEConfig, data: ImageTextData, device="cpu"):
        self.cfg, self.data, self.device = cfg, data, device
        self.vocab = Vocabulary.build(data.texts)
        self.model: PCME | None = None

    def trainer(self):
        return self  # the store calls trainer().fit()

    def fit(self) -> list[dict]:
        self.model, history = train(self.cfg, self.data, device=self.device, vocab=self.vocab)
        return history

    def kept_state(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_kept_state(self, state: dict) -> None:
        model = PCME(self.cfg, self.vocab, self.data.pooled.shape[1], self.data.tokens.shape[2])
        model.load_state_dict(state["model"])
        self.model = model.to(self.device).eval()


def train_or_load(
    cfg: PCMEConfig,
    data: ImageTextData,
    store: RunStore | None = None,
    key: str | None = None,
    device="cpu",
):
    """:func:`train`, or the run ``key`` of ``store`` when it is stored with the same settings.

    Returns ``(model, history)``; with a store the weights are the stored, rounded ones
    (:func:`~cdrlib.run_store.pack_state`; also right after training), so a chapter shows the same
    table whether its runs were loaded or trained.
    """
    if store is None:
        return train(cfg, data, device=device)
    if key is None:
        raise ValueError("a run store needs the run's key")
    run = PCMERun(cfg, data, device)
    settings = {
        "config": asdict(cfg),
        "images": list(data.pooled.shape),
        "tokens": list(data.tokens.shape),
        "texts": len(data.texts),
        "vocabulary": len(run.vocab),
        "captions": hashlib.sha256("\n".join(data.texts).encode()).hexdigest()[:16],
        "data": data.fingerprint,
    }
    history = store.fit(key, run, settings)
    return run.model, history


@torch.no_grad()
def embed(model: PCME, data: ImageTextData, batch_size: int = 512, device="cpu") -> dict:
    """μ and log σ of every image and text item: ``{"img": (mu, log_sigma), "txt": (mu,
    log_sigma)}``."""
    img = [
        model.embed_images(
            data.pooled[i : i + batch_size].to(device), data.tokens[i : i + batch_size].to(device)
        )
        for i in range(0, len(data.pooled), batch_size)
    ]
    txt = [
        model.embed_texts(data.texts[i : i + batch_size])
        for i in range(0, len(data.texts), batch_size)
    ]

    def cat(parts):
        mu = torch.cat([p[0] for p in parts]).cpu()
        ls = torch.cat([p[1] for p in parts]).cpu() if parts[0][1] is not None else None
        return mu, ls

    return {"img": cat(img), "txt": cat(txt)}


def score_tables(
    model: PCME, data: ImageTextData, by: str = "match", device="cpu", seed: int = 0
) -> torch.Tensor:
    """Image × text scores (N_img, N_txt): ``"match"`` (match probability, J samples) or ``"mu"``
    (cosine of μ)."""
    e = embed(model, data, device=device)
    (mu_i, ls_i), (mu_t, ls_t) = e["img"], e["txt"]
    if by == "mu" or ls_i is None:
        return mu_i @ mu_t.t()
    if by != "match":
        raise ValueError(f"by must be 'match' or 'mu', not {by!r}")
    return pcme.match_scores(
        mu_i,
        ls_i,
        mu_t,
        ls_t,
        model.a.detach().cpu(),
        model.b.detach().cpu(),
        model.cfg.n_samples,
        seed=seed,
    )


def evaluate(
    scores: torch.Tensor, data: ImageTextData, ks=(1, 5, 10), zetas=(0, 1, 2)
) -> list[dict]:
    """Both directions from one image × text score table (larger is better).

    Returns one row per direction: R@K (relevant = the same emoji), R-Precision (the same class)
    and PMRP@ζ with their mean (tag vectors within Hamming distance ζ).
    """
    if scores.shape != (len(data.image_emoji), len(data.texts)):
        raise ValueError(
            f"scores must be (images, texts) = {(len(data.image_emoji), len(data.texts))}, "
            f"got {tuple(scores.shape)}"
        )
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")

    def lab(emo):
        return torch.tensor([data.labels[int(e)] for e in emo])

    def tag(emo):
        return torch.stack([data.tags[int(e)] for e in emo])

    rows = []
    for name, s, q_emo, g_emo in (
        ("image→text", scores, data.image_emoji, data.text_emoji),
        ("text→image", scores.t(), data.text_emoji, data.image_emoji),
    ):
        row = {"direction": name}

        def metrics(relevance, ks=(), s=s):  # 1024 queries at a time: a few numbers per query kept
            sums = MetricSums(s.shape[1], ks)
            for i in range(0, len(s), 1024):
                sums.add(ranks_from_scores(s[i : i + 1024], relevance(slice(i, i + 1024))))
            return sums.result()

        same_emoji = metrics(label_relevance(q_emo, g_emo), ks)
        for k in ks:
            row[f"R@{k}"] = same_emoji[f"R@{k}"]
        row["R-Precision"] = metrics(label_relevance(lab(q_emo), lab(g_emo)))["R-Precision"]
        qt, gt = tag(q_emo), tag(g_emo)
        for z in zetas:
            row[f"PMRP@{z}"] = metrics(hamming_relevance(qt, gt, z))["R-Precision"]
        row["PMRP"] = float(np.mean([row[f"PMRP@{z}"] for z in zetas]))
        rows.append(row)
    return rows


def raw_pixel_scores(
    query_images: torch.Tensor,
    train_images: torch.Tensor,
    train_emoji,
    train_captions: dict,
    texts: list[str],
) -> torch.Tensor:
    """The raw-pixel baseline: a text's score for an image is the cosine similarity (raw pixels)
    of the image to the most similar training image whose emoji has that caption; −1 if none has it.

    Args:
        query_images: (Q, 3, H, W); train_images: (N, 3, H, W) with their emoji (N,) and
        train_captions: emoji → captions; texts: the gallery's captions.
    Returns:
        (Q, len(texts)).
    """
    q = F.normalize(raw_pixel_features(query_images), dim=1)
    g = F.normalize(raw_pixel_features(train_images), dim=1)
    sim = q @ g.t()
    holders: dict[str, list[int]] = {}
    for i, e in enumerate(torch.as_tensor(train_emoji).tolist()):
        for c in train_captions[e]:
            holders.setdefault(c, []).append(i)
    best = {c: sim[:, idx].max(dim=1).values for c, idx in holders.items()}
    none = torch.full((len(q),), -1.0)
    return torch.stack([best.get(t, none) for t in texts], dim=1)
