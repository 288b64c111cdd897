"""Self-supervised pretraining of the small backbones shipped with the book.

Data: the training part of the embedded dataset, all four domains pooled, each image on its own.
No class label is read, and the same emoji in two styles is never a positive pair: which emoji a
sketch depicts is exactly the correspondence the unsupervised setting forbids. Images of all
domains are shuffled together, so a batch mixes styles at random.

Objectives:

* ``simclr`` — NT-Xent between two augmentations of one image (:mod:`cdrlib.contrastive`), with
  the ``Sketchify`` augmentation so that colour art also appears as line art. This is what makes a
  colour image and a sketch of the same kind of thing land close together without pairing.
* ``distill`` (ViT) — a small ViT learns slowly from 4k images, so it is taught by a finished
  self-supervised CNN: cosine regression of the teacher's *centred* feature of the same augmented
  view (the ViT's CLS output, through a linear map that stays part of the model), plus
  ``simclr_weight`` × NT-Xent. Centring matters: the teacher's pooled ReLU features share one large
  common direction, and regressing them raw teaches the student that direction and nothing else
  (measured: mAP fell below random initialisation). The teacher saw no labels either, so the student
  stays unsupervised.

Run it through ``scripts/pretrain_backbone.py``; the curve (mAP against minutes) is written as
JSON lines beside the checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint_io import save_state
from .contrastive import nt_xent_loss
from .data.emoji import load_emoji_domains
from .data.transforms import TwoViewAugment, normalize, to_float
from .evaluation import evaluate_backbone
from .inference import evaluating, in_batches
from .models.factory import build_backbone, load_backbone
from .profile import seed_everything
from .training import Trainer


@dataclass
class PretrainConfig:
    arch: str = "resnet"  # "resnet" or "vit"
    objective: str = "simclr"  # "simclr" or "distill"
    teacher: str | None = None  # checkpoint of the teacher (distill)
    minutes: float = 60.0  # wall-clock budget; training stops at the first epoch past it
    epochs: int | None = None  # a fixed schedule length instead (then ``minutes`` is only a cap)
    max_epochs: int = 1000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    temperature: float = 0.2
    p_sketch: float = 0.3
    p_outline: float = 0.0
    negatives: str = "all"  # "all" the batch, or "in-domain" (only images of the anchor's domain)
    proj_dim: int = 128
    simclr_weight: float = 1.0  # distill: weight of the NT-Xent term beside the regression
    eval_every: int = 5  # epochs
    seed: int = 0
    threads: int = 0  # 0: torch's default
    arch_kwargs: dict = field(default_factory=dict)


class ProjectionHead(nn.Module):
    """SimCLR's MLP head, discarded after pretraining: D → hidden → out."""

    def __init__(self, dim: int, hidden: int = 512, out: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out),
        )

    def forward(self, x):
        return self.net(x)


def _mean_map(model, device) -> dict:
    out = {}
    for protocol in ("heldout", "train-as-gallery"):
        df = evaluate_backbone(model, protocol=protocol, device=device, ks=(10,))
        mean = df[df["query"] == "mean"].iloc[0]
        out[f"{protocol}_mAP@all"] = round(float(mean["mAP@all"]), 4)
        out[f"{protocol}_P@10"] = round(float(mean["P@10"]), 4)
    return out


# the share of the time budget the cosine schedule is planned for (see pretrain)
BUDGET_MARGIN = 0.9


def cosine_factor(step: int, total_steps: int) -> float:
    """The cosine schedule's share of the base rate at ``step`` of ``total_steps``: 1 at the start,
    0 at the end and after it (computed in float32, as the shipped backbones were trained)."""
    return 0.5 * (1 + torch.cos(torch.tensor(min(step / total_steps, 1.0) * torch.pi)).item())


def pretrain(
    cfg: PretrainConfig, out_path: Path, device: str = "cpu", checkpoint: str | Path | None = None
) -> Path:
    """Train, evaluate every ``eval_every`` epochs, save the backbone (fp16) and the curve.

    The loop is the shared :class:`~cdrlib.training.Trainer`; ``checkpoint`` makes a run resumable
    (exactly with a fixed ``epochs``; a time-budgeted run plans its schedule again after the first
    epoch it resumes with).
    """
    if cfg.negatives not in ("all", "in-domain"):
        raise ValueError(f"negatives must be 'all' or 'in-domain', not {cfg.negatives!r}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    curve_path = out_path.with_suffix(".curve.jsonl")

    ds = load_emoji_domains()
    idx = ds.indices("train")
    images = to_float(ds.images[:, idx].reshape(-1, *ds.images.shape[2:]))  # (4·N_train, 3, 64, 64)

    teacher = None
    if cfg.objective == "distill":
        teacher = load_backbone(cfg.teacher).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        # the student's feature lives in the teacher's space: its linear map is part of the model
        cfg.arch_kwargs = {**cfg.arch_kwargs, "out_dim": teacher.num_features}
        with evaluating(teacher):  # the teacher's mean feature over the training images (no labels)
            t_mean = in_batches(
                lambda sl: teacher(normalize(images[sl]).to(device)), len(images), 512, to_cpu=False
            ).mean(0, keepdim=True)
    model = build_backbone(cfg.arch, **cfg.arch_kwargs).to(device)
    head = ProjectionHead(model.num_features, out=cfg.proj_dim).to(device)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    augment = TwoViewAugment(64, p_sketch=cfg.p_sketch, p_outline=cfg.p_outline)
    steps_per_epoch = len(images) // cfg.batch_size
    # The cosine schedule needs a length: fixed by ``epochs`` (reproducible on any machine), or
    # planned from the time budget after the first epoch (until then the rate stays at cfg.lr).
    plan = {"total_steps": cfg.epochs * steps_per_epoch if cfg.epochs else None, "done": False}
    # torch's LambdaLR applies it after every step (the loop steps it and saves it with the run);
    # until a time-budgeted run has planned its length the rate stays at cfg.lr
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda step: (
            1.0 if plan["total_steps"] is None else cosine_factor(step, plan["total_steps"])
        ),
    )
    t0 = time.time()

    def log(epoch: int, extra: dict) -> None:
        row = {"epoch": epoch, "minutes": round((time.time() - t0) / 60, 2), **extra}
        with open(curve_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def batches(epoch: int, _unused: torch.Generator):
        # the global generator draws the order, as it draws the augmentations (the loop saves and
        # restores it with the checkpoint)
        perm = torch.randperm(len(images))
        for b in range(steps_per_epoch):
            yield perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]

    def step(ids, epoch: int) -> dict:
        x = images[ids].to(device)
        v1, v2 = augment.two_views(x)
        f1, f2 = model(v1), model(v2)
        # images are stacked domain by domain, so an index's domain id is index // N_train (not a
        # label)
        groups = ids // len(idx) if cfg.negatives == "in-domain" else None
        if teacher is None:
            loss = nt_xent_loss(head(f1), head(f2), cfg.temperature, groups=groups)
        else:
            with torch.no_grad():
                t1, t2 = teacher(v1) - t_mean, teacher(v2) - t_mean
            loss = 2 - F.cosine_similarity(f1, t1).mean() - F.cosine_similarity(f2, t2).mean()
            if cfg.simclr_weight:
                loss = loss + cfg.simclr_weight * nt_xent_loss(
                    head(f1), head(f2), cfg.temperature, groups=groups
                )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    def on_epoch_end(epoch: int) -> dict:
        done_epochs, elapsed = epoch + 1, time.time() - t0
        steps = done_epochs * steps_per_epoch
        if plan["total_steps"] is None:
            # the steps that fit the budget at the first epoch's pace, less a margin: evaluations
            # and a slower later epoch must not push the end of the cosine past the budget, where
            # the run would stop with the learning rate still high
            plan["total_steps"] = max(
                int(cfg.minutes * 60 / elapsed * steps_per_epoch * BUDGET_MARGIN), steps + 1
            )
            # the scheduler set the next step's rate before the length was known: set it again
            for g, base in zip(opt.param_groups, schedule.base_lrs, strict=True):
                g["lr"] = base * cosine_factor(schedule.last_epoch, plan["total_steps"])
        plan["done"] = (
            elapsed > cfg.minutes * 60 or steps >= plan["total_steps"] or done_epochs >= max_epochs
        )
        if done_epochs % cfg.eval_every == 0 or plan["done"]:
            mean_loss = round(trainer.epoch_means["loss"], 4)
            log(done_epochs, {"loss": mean_loss, **_mean_map(model, device)})
        return {}

    max_epochs = cfg.epochs or cfg.max_epochs
    trainer = Trainer(
        {"model": model, "head": head},
        opt,
        step,
        batches,
        max_epochs,
        checkpoint=checkpoint,
        on_epoch_end=on_epoch_end,
        stop=lambda epoch: plan["done"],
        scheduler=schedule,
        seed=cfg.seed,
        config=asdict(cfg),
    )
    if checkpoint is None or not Path(checkpoint).is_file():
        curve_path.unlink(missing_ok=True)
        log(0, _mean_map(model, device))
    epochs_run = len(trainer.fit())
    state = {
        k: v.half().contiguous() if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    save_state(
        {
            "arch": cfg.arch,
            "arch_kwargs": cfg.arch_kwargs,
            "config": asdict(cfg),
            "state_dict": state,
            "epochs": epochs_run,
            "minutes": round((time.time() - t0) / 60, 1),
        },
        out_path,
        compress=True,  # float16 weights: 10 % smaller in the repository
    )
    return out_path
