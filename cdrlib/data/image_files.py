"""Reading one image file as the book's images are held: uint8 RGB on white, at a given size.

Shared by the paper datasets (read per batch) and one's own folders and lists (read up front).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def read_image(path: str | Path, size: int) -> np.ndarray:
    """One image file as uint8 (size, size, 3): transparency on white, 16 bits scaled to 8, resized.

    Raises:
        DataError: the file cannot be read as an image (named in the message).
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit (or 32-bit integer) greyscale: scale the value range to 8 bits
                a = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
                im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
            if im.mode == "P" or im.mode in ("LA", "PA", "RGBA") or "transparency" in im.info:
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(
            f"cannot read image {path}: {e}. Remove or replace the file, then load again."
        ) from e
