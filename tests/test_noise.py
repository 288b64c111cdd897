"""IBNM's noise split, relabelling and mixup against direct references."""
import math

import pytest
import torch

from cdrlib import noise


def test_prediction_entropy_against_loop():
    g = torch.Generator().manual_seed(0)
    f, c = torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g)
    tau = 0.5
    got = noise.prediction_entropy(f, c, tau)
    for i in range(5):
        fi = f[i] / f[i].norm()
        s = [float(fi @ (c[k] / c[k].norm())) / tau for k in range(3)]
        z = sum(math.exp(v) for v in s)
        p = [math.exp(v) / z for v in s]
        assert got[i].item() == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-5)
    assert (got >= 0).all() and (got <= math.log(3) + 1e-6).all()
    with pytest.raises(ValueError, match="NaN"):
        noise.prediction_entropy(torch.full((2, 4), float("nan")), c)


def test_split_clean_finds_the_low_entropy_component():
    g = torch.Generator().manual_seed(1)
    low, high = 0.2 + 0.05 * torch.randn(300, generator=g), 2.0 + 0.1 * torch.randn(100, generator=g)
    out = noise.split_clean(torch.cat([low, high]))
    assert out["clean"][:300].all() and not out["clean"][300:].any()
    assert out["means"][0] == pytest.approx(0.2, abs=0.02) and out["means"][1] == pytest.approx(2.0, abs=0.05)
    assert out["weights"][0] == pytest.approx(0.75, abs=0.01)
    with pytest.raises(ValueError, match="NaN"):
        noise.split_clean(torch.tensor([0.1, float("nan"), 0.3]))
    # the official code's EM settings reach the same split here, and are the ones passed on
    official = noise.split_clean(torch.cat([low, high]), max_iter=10, tol=1e-2, reg_covar=5e-4)
    assert torch.equal(official["clean"], out["clean"])
    with pytest.warns(Warning, match="converge"):          # one EM step cannot converge
        noise.split_clean(torch.cat([low, high]), max_iter=1, tol=1e-12)


def test_relabel_noisy_takes_nearest_clean_label():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(30, 6, generator=g)
    labels = torch.randint(0, 4, (30,), generator=g)
    clean = torch.rand(30, generator=g) > 0.4
    got = noise.relabel_noisy(f, labels, clean)
    fn = f / f.norm(dim=1, keepdim=True)
    for i in range(30):
        if clean[i]:
            assert got[i] == labels[i]
        else:
            sims = [(float(fn[i] @ fn[j]), j) for j in range(30) if clean[j]]
            assert got[i] == labels[max(sims)[1]]
    assert torch.equal(noise.relabel_noisy(f, labels, torch.zeros(30, dtype=torch.bool)), labels)
    with pytest.raises(ValueError, match="clean"):
        noise.relabel_noisy(f, labels, clean[:10])


def test_mixup_mixes_each_sample_with_another_and_kl_matches_formula():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 4, 4, generator=g)
    y = torch.arange(6)
    x_mix, y_i, y_j, lam = noise.intra_domain_mixup(x, y, 0.3, generator=g)
    for i in range(6):
        assert torch.allclose(x_mix[i], lam[i] * x[y_i[i]] + (1 - lam[i]) * x[y_j[i]])
    logits = torch.randn(6, 6, generator=g)
    k = 6
    total = 0.0
    for i in range(6):
        t = [0.0] * k
        t[y_i[i]] += float(lam[i])
        t[y_j[i]] += 1 - float(lam[i])
        p = logits[i].softmax(0)
        total += sum(tk * math.log(tk / float(p[c])) for c, tk in enumerate(t) if tk > 0)
    assert noise.mixup_kl_loss(logits, y_i, y_j, lam).item() == pytest.approx(total / 6, rel=1e-5)
    # a prediction equal to the target costs nothing
    target = torch.nn.functional.one_hot(torch.tensor([1, 2]), 3).float() * 0.7 + \
        torch.nn.functional.one_hot(torch.tensor([0, 0]), 3).float() * 0.3
    lam = torch.tensor([0.7, 0.7])
    assert noise.mixup_kl_loss(target.log(), torch.tensor([1, 2]), torch.tensor([0, 0]), lam).item() == pytest.approx(0, abs=1e-6)
