"""Backbones by name, for both profiles.

Default profile (64-px emoji, CPU): small backbones whose weights ship in ``checkpoints/``, made by
self-supervised pretraining on the embedded data (:mod:`cdrlib.pretrain`). "Load if present,
otherwise train": delete a checkpoint and :func:`get_backbone` retrains it with the exact command
recorded in ``checkpoints/CHECKPOINTS.json``.

Paper profile (224-px, GPU): DINO ViT-B/16 (timm ``vit_base_patch16_224.dino``) and ResNet-50 with
MoCo v2 (800 epochs) weights, as UCDIR starts from.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn as nn

from ..data.download import file_sha256 as sha256
from ..profile import REPO_ROOT
from .resnet import SmallResNet
from .vit import VisionTransformer

CHECKPOINT_DIR = REPO_ROOT / "checkpoints"
REGISTRY = CHECKPOINT_DIR / "CHECKPOINTS.json"

# The small architectures of the default profile (sized so that both checkpoints fit in 10 MB as fp16).
ARCHS = {
    "resnet": lambda **kw: SmallResNet(**{"widths": (32, 64, 128, 256), **kw}),
    "vit": lambda **kw: VisionTransformer(**{"img_size": 64, "patch_size": 8, "dim": 192, "depth": 6,
                                            "heads": 3, "mlp_ratio": 2.0, **kw}),
}

MOCO_V2_800EP = {
    "url": "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
    "filename": "moco_v2_800ep_pretrain.pth.tar",
}


class BackboneError(RuntimeError):
    """A backbone's weights are missing or cannot be fetched; the message says what to do."""


def build_backbone(arch: str, **kwargs) -> nn.Module:
    """A randomly initialised small backbone: ``"resnet"`` or ``"vit"``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {list(ARCHS)}")
    return ARCHS[arch](**kwargs)


def load_backbone(path: str | Path) -> nn.Module:
    """A small backbone from a checkpoint written by :func:`cdrlib.pretrain.pretrain` (float32, eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_backbone(ckpt["arch"], **ckpt.get("arch_kwargs", {}))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    return model.eval()


def registry() -> dict:
    return json.loads(REGISTRY.read_text()) if REGISTRY.is_file() else {}


def get_backbone(name: str, retrain: bool = True) -> nn.Module:
    """A backbone by name.

    Args:
        name: ``"emoji-resnet"``, ``"emoji-vit"`` (shipped, default profile), ``"random-resnet"``,
            ``"random-vit"`` (untrained, the ablation baseline), ``"dino-vitb16"``,
            ``"moco-v2-resnet50"`` (paper profile, downloaded).
        retrain: for a shipped backbone whose checkpoint is missing, run its recorded command
            (otherwise raise).
    """
    if name.startswith("random-"):
        return build_backbone(name.split("-", 1)[1]).eval()
    if name.startswith("emoji-"):
        entry = registry().get(name)
        if entry is None:
            raise BackboneError(f"{name} is not in {REGISTRY}; known: {list(registry())}")
        path = REPO_ROOT / entry["path"]
        if not path.is_file():
            if not retrain:
                raise BackboneError(f"{path} is missing; retrain it with: {entry['command']}")
            print(f"{path.name} is missing: retraining with `{entry['command']}` "
                  f"(about {entry['minutes']} min)", file=sys.stderr)
            cmd = shlex.split(entry["command"])
            subprocess.run([sys.executable, *cmd[1:]] if cmd[0] == "python" else cmd, cwd=REPO_ROOT, check=True)
        elif sha256(path) != entry["sha256"]:
            print(f"note: {path.name} differs from the shipped checkpoint (sha256 mismatch); using it as it is.",
                  file=sys.stderr)
        return load_backbone(path)
    if name == "dino-vitb16":
        return dino_vitb16()
    if name == "moco-v2-resnet50":
        return moco_v2_resnet50()
    raise ValueError(f"unknown backbone {name!r}")


def dino_vitb16() -> nn.Module:
    """DINO ViT-B/16 from timm, loaded into :class:`VisionTransformer` (so attention can be read)."""
    import timm

    try:
        ref = timm.create_model("vit_base_patch16_224.dino", pretrained=True, num_classes=0)
    except Exception as e:  # noqa: BLE001 - any hub failure gets the same advice
        raise BackboneError(
            "could not download DINO ViT-B/16 weights (timm 'vit_base_patch16_224.dino' from the Hugging Face "
            f"hub): {e}. Check the network, or download them once on a connected machine and point "
            "HF_HOME at the cache; the default profile does not need them.") from e
    model = VisionTransformer(img_size=224, patch_size=16, dim=768, depth=12, heads=12, mlp_ratio=4.0)
    model.load_state_dict(ref.state_dict(), strict=True)
    return model.eval()


def moco_v2_resnet50(cache_dir: Path | None = None) -> nn.Module:
    """torchvision ResNet-50 with the MoCo v2 800-epoch query-encoder weights (fc removed)."""
    import torchvision

    from ..data.download import download

    cache_dir = Path(cache_dir or Path.home() / ".cache" / "cdrlib" / "weights")
    path = download(MOCO_V2_800EP["url"], cache_dir / MOCO_V2_800EP["filename"], sha256=None,
                    what="MoCo v2 ResNet-50 weights")
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    prefix = "module.encoder_q."
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and ".fc." not in k}
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BackboneError(f"{path} does not look like MoCo v2 weights (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}); delete it and download again.")
    return model.eval()
