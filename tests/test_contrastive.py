"""NT-Xent (all negatives, and in-domain negatives) against a loop over anchors; the outline augmentation."""
import math

import pytest
import torch
import torch.nn.functional as F

from cdrlib.contrastive import nt_xent_loss
from cdrlib.data import TwoViewAugment


def _nt_xent_loop(z1, z2, t, groups=None):
    """One anchor at a time: −log exp(s⁺/t) / Σ_{k ≠ anchor, same group} exp(s_k/t)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1).double()
    b = len(z1)
    g = None if groups is None else torch.cat([groups, groups])
    total = 0.0
    for i in range(2 * b):
        pos = (i + b) % (2 * b)
        denom = 0.0
        for k in range(2 * b):
            if k == i or (g is not None and g[k] != g[i]):
                continue
            denom += math.exp(float(z[i] @ z[k]) / t)
        total += -(float(z[i] @ z[pos]) / t - math.log(denom))
    return total / (2 * b)


@pytest.mark.parametrize("grouped", [False, True])
def test_nt_xent_matches_loop(grouped):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(10, 5, generator=g), torch.randn(10, 5, generator=g)
    groups = torch.tensor([0, 0, 1, 2, 1, 0, 2, 2, 1, 0]) if grouped else None
    got = nt_xent_loss(z1, z2, 0.3, groups=groups)
    assert got.item() == pytest.approx(_nt_xent_loop(z1, z2, 0.3, groups), rel=1e-5)


def test_in_domain_negatives_ignore_other_domains():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])

    def own(a, b, d):  # one domain's NT-Xent on its own
        return nt_xent_loss(a[groups == d], b[groups == d], 0.2).item()

    # equal-sized domains: the in-domain loss is the mean of each domain's own NT-Xent
    grouped = nt_xent_loss(z1, z2, 0.2, groups=groups).item()
    assert grouped == pytest.approx((own(z1, z2, 0) + own(z1, z2, 1)) / 2, rel=1e-6)
    # moving an image of domain 1 changes the loss only through domain 1's anchors
    z1b, z2b = z1.clone(), z2.clone()
    z1b[4], z2b[4] = torch.randn(4, generator=g), torch.randn(4, generator=g)
    moved = nt_xent_loss(z1b, z2b, 0.2, groups=groups).item()
    assert moved - grouped == pytest.approx((own(z1b, z2b, 1) - own(z1, z2, 1)) / 2, rel=1e-5, abs=1e-7)
    assert moved != pytest.approx(grouped)


def test_nt_xent_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), groups=torch.zeros(3))


def test_outline_only_darkens_the_same_view():
    x = torch.rand(8, 3, 64, 64)
    plain = TwoViewAugment(64, p_gray=0.0, p_sketch=0.0, p_outline=0.0)
    outlined = TwoViewAugment(64, p_gray=0.0, p_sketch=0.0, p_outline=1.0)
    torch.manual_seed(3)
    a = plain(x)
    torch.manual_seed(3)
    b = outlined(x)  # same crop and colour draws; then multiplied by a line map in [0, 1]
    assert (b <= a + 1e-6).all()
    assert (b < a - 0.1).any()
