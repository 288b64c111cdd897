"""Backbones: the attention-returning ViT, a small ResNet, and the factory for both profiles."""

from .factory import BackboneError, build_backbone, get_backbone, input_size, load_backbone
from .resnet import SmallResNet
from .vit import Attention, Block, VisionTransformer

__all__ = [
    "Attention",
    "BackboneError",
    "Block",
    "SmallResNet",
    "VisionTransformer",
    "build_backbone",
    "get_backbone",
    "input_size",
    "load_backbone",
]
