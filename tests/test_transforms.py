"""The augmentations' values: identity at zero strength, Sobel edges as scipy computes them, hue
rotation by 0 and by a full turn."""

import math

import pytest
import torch

from cdrlib.data.transforms import Sketchify, TwoViewAugment, grayscale, hue_rotate, normalize


def images(n=4, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_zero_strength_augmentation_is_the_identity():
    x = images()
    plain = TwoViewAugment(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0, p_gray=0.0,
                           p_sketch=0.0, p_flip=0.0, p_outline=0.0)
    torch.testing.assert_close(plain(x), normalize(x), atol=1e-5, rtol=0)
    flipped = TwoViewAugment(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0, p_gray=0.0,
                             p_sketch=0.0, p_flip=1.0)
    torch.testing.assert_close(flipped(x), normalize(x.flip(-1)), atol=1e-5, rtol=0)


def test_sketchify_edges_are_scipys_sobel_magnitude():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = images(n=3, size=12, seed=1)
    got = Sketchify(gain=(1.0, 1.0))(x)
    for i in range(len(x)):
        g = grayscale(x[i : i + 1])[0, 0].double().numpy()
        mag = (ndimage.sobel(g, axis=0, mode="nearest") ** 2
               + ndimage.sobel(g, axis=1, mode="nearest") ** 2) ** 0.5
        want = torch.from_numpy(1.0 - mag.clip(0, 1)).float()
        for c in range(3):   # the same line drawing in every channel
            torch.testing.assert_close(got[i, c], want, atol=1e-5, rtol=0)


def test_hue_rotation_by_zero_and_a_full_turn_changes_nothing_and_keeps_luma():
    x = images(seed=2).double()
    for turn in (0.0, 2 * math.pi, -2 * math.pi):
        torch.testing.assert_close(hue_rotate(x, torch.full((4,), turn, dtype=torch.float64)), x)
    a = torch.tensor([0.3, -1.0, 2.0, 3.1], dtype=torch.float64)
    b = torch.tensor([0.5, 0.25, -2.0, 1.0], dtype=torch.float64)
    turned = hue_rotate(x, a)
    torch.testing.assert_close(grayscale(turned), grayscale(x))          # luma is kept
    torch.testing.assert_close(hue_rotate(turned, b), hue_rotate(x, a + b))  # rotations compose
    assert (turned - x).abs().max() > 0.05                                # and hue does change
