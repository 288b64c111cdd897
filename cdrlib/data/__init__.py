"""The data layer: the embedded emoji-domains dataset, the paper datasets, transforms, downloads."""

from .datasets import DomainDataset, get_dataset
from .emoji import EmojiDomains, clear_emoji_cache, load_emoji_domains
from .errors import DataError
from .folders import FolderDomains, load_folder_domains, load_list_domains
from .transforms import (
    EvalTransform,
    Sketchify,
    TwoViewAugment,
    TwoViews,
    denormalize,
    normalize,
    to_float,
)

__all__ = [
    "DataError",
    "DomainDataset",
    "EmojiDomains",
    "EvalTransform",
    "FolderDomains",
    "Sketchify",
    "TwoViewAugment",
    "TwoViews",
    "clear_emoji_cache",
    "denormalize",
    "get_dataset",
    "load_emoji_domains",
    "load_folder_domains",
    "load_list_domains",
    "normalize",
    "to_float",
]
