"""Image transforms: evaluation preprocessing and the two-view augmentation of contrastive training.

Everything works on float tensors in [0, 1], on a single image (3, H, W) or a batch (B, 3, H, W),
with an independent random draw per image. The batched form matters on two CPU cores: augmenting
a whole batch with a few tensor operations is many times faster than a PIL pipeline per image, and
the same code runs per image inside a ``DataLoader`` for datasets read from files.

``Sketchify`` turns colour art into black line art on white (an edge map). It is the augmentation
that lets a self-supervised model see colour images and sketches as the same kind of object
without ever pairing an image with its sketch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MEAN = 0.5  # images are on white; a symmetric normalisation keeps white at +1 and black at -1
STD = 0.5


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (…, H, W, 3) → float (…, 3, H, W) in [0, 1]."""
    dtype = images.dtype
    if dtype not in (np.uint8, torch.uint8):
        raise TypeError(f"expected uint8 images (…, H, W, 3), got {dtype}")
    if isinstance(images, torch.Tensor):
        return images.movedim(-1, -3).float().div_(255.0)
    # The arrays are read-only (shared, cached); the float copy is the only one made.
    return torch.from_numpy(images.astype(np.float32)).movedim(-1, -3).div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Back to [0, 1] for display."""
    return (x * STD + MEAN).clamp(0, 1)


def _batched(fn):
    """Let a batch transform take a single (3, H, W) image too."""

    def wrapper(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return fn(self, x.unsqueeze(0)).squeeze(0)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected images (3, H, W) or (B, 3, H, W), got shape {tuple(x.shape)}"
            )
        return fn(self, x)

    return wrapper


class EvalTransform:
    """Resize to ``size`` (when needed) and normalise; deterministic."""

    def __init__(self, size: int = 64):
        self.size = size

    @_batched
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        return normalize(x)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) → (B, 1, H, W) luma."""
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of images (B, 3, H, W) by ``angle`` (B,) radians: a rotation of the chroma
    plane of YIQ, one linear map per image. Luma (:func:`grayscale`) is kept; not clamped."""
    c, s = angle.cos(), angle.sin()
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rot = torch.zeros(len(angle), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x)


class Sketchify:
    """Colour art → black lines on white: the Sobel edge magnitude of the luma, inverted.

    Args:
        gain: edge strength scale; larger makes darker, thicker lines. A range draws one per image.
    """

    def __init__(self, gain: tuple[float, float] = (2.0, 5.0)):
        self.gain = gain
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.kernel = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)

    @_batched
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g = grayscale(x)
        edges = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), self.kernel.to(x))
        mag = edges.pow(2).sum(1, keepdim=True).sqrt()
        gain = torch.empty(x.shape[0], 1, 1, 1, device=x.device).uniform_(*self.gain)
        return (1.0 - (mag * gain).clamp(0, 1)).expand(-1, 3, -1, -1).contiguous()


class TwoViewAugment:
    """SimCLR-style augmentation, drawn independently per image, plus ``Sketchify``.

    Applied to one batch it returns one augmented view; :meth:`two_views` returns two.

    Args:
        size: output side in pixels (64 for the embedded data, 224 for the paper datasets).
        scale: area range of the random resized crop. ratio: its aspect-ratio range (drawn
            log-uniformly); ``scale=(1, 1), ratio=(1, 1)`` and ``p_flip=0`` leave the image as is.
        jitter: strength of brightness/contrast/saturation jitter (hue rotates by up to ±0.5·jitter
            turns).
        p_gray: probability of turning the image to grey.
        p_sketch: probability of replacing the image by its line drawing.
        p_flip: probability of a horizontal flip.
        p_outline: probability of drawing the line art over the colour image (dark outlines on
            colour, the look of outlined styles such as OpenMoji's) when it is not replaced by it.
    """

    def __init__(
        self,
        size: int = 64,
        scale=(0.35, 1.0),
        ratio=(3 / 4, 4 / 3),
        jitter: float = 0.4,
        p_gray: float = 0.2,
        p_sketch: float = 0.3,
        p_flip: float = 0.5,
        p_outline: float = 0.0,
    ):
        self.size, self.scale, self.ratio, self.jitter = size, scale, ratio, jitter
        self.p_gray, self.p_sketch, self.p_flip, self.p_outline = (
            p_gray,
            p_sketch,
            p_flip,
            p_outline,
        )
        self.sketchify = Sketchify()

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        area = torch.empty(b).uniform_(*self.scale)
        log_r = torch.empty(b).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        ratio = log_r.exp()
        sw = (area * ratio).sqrt().clamp(max=1.0)  # crop width / image width
        sh = (area / ratio).sqrt().clamp(max=1.0)
        cx = (torch.rand(b) * 2 - 1) * (1 - sw)
        cy = (torch.rand(b) * 2 - 1) * (1 - sh)
        flip = torch.where(torch.rand(b) < self.p_flip, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = sw * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = sh, cy
        grid = F.affine_grid(theta.to(x), [b, 3, self.size, self.size], align_corners=False)
        # Sample 1 - x with zero padding, so that anything outside the image is white.
        return 1.0 - F.grid_sample(
            1.0 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )

    def _color(self, x: torch.Tensor) -> torch.Tensor:
        b, j = x.shape[0], self.jitter
        if j <= 0:
            return x

        def draw():
            return torch.empty(b, 1, 1, 1, device=x.device).uniform_(1 - j, 1 + j)

        x = x * draw()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * draw() + mean
        g = grayscale(x)
        x = (x - g) * draw() + g
        angle = (torch.rand(b, device=x.device) - 0.5) * j * math.pi
        return hue_rotate(x, angle).clamp(0, 1)

    @_batched
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = self._crop(x)
        x = self._color(x)
        if self.p_outline > 0:
            outline = torch.rand(b, 1, 1, 1, device=x.device) < self.p_outline
            if outline.any():
                x = torch.where(outline, x * self.sketchify(x), x)
        gray = torch.rand(b, 1, 1, 1, device=x.device) < self.p_gray
        x = torch.where(gray, grayscale(x).expand_as(x), x)
        sketch = torch.rand(b, 1, 1, 1, device=x.device) < self.p_sketch
        if sketch.any():
            x = torch.where(sketch, self.sketchify(x), x)
        return normalize(x)

    def two_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent augmentations of the same images."""
        return self(x), self(x)


class TwoViews:
    """A per-item transform for datasets: returns ``(view1, view2)`` of one image."""

    def __init__(self, augment: TwoViewAugment):
        self.augment = augment

    def __call__(self, x: torch.Tensor):
        return self.augment.two_views(x)
