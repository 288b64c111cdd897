"""IBNM's fusion pieces against direct references; each domain's attention goes with its own patches."""
import pytest
import torch

from cdrlib import fusion
from cdrlib.models.vit import VisionTransformer


def test_mixing_with_lambda_one_and_zero_returns_each_source():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    assert torch.equal(fusion.mix_patch_tokens(a, b, torch.ones(2, 5)), a)
    assert torch.equal(fusion.mix_patch_tokens(a, b, torch.zeros(2, 5)), b)
    lam = torch.rand(2, 5, generator=g)
    want = torch.stack([torch.stack([lam[i, j] * a[i, j] + (1 - lam[i, j]) * b[i, j] for j in range(5)])
                        for i in range(2)])
    assert torch.allclose(fusion.mix_patch_tokens(a, b, lam), want)
    with pytest.raises(ValueError, match="lam"):
        fusion.mix_patch_tokens(a, b, torch.ones(2, 4))


def test_label_weights_against_loop_and_sum_to_one():
    g = torch.Generator().manual_seed(1)
    s_a, s_b = torch.rand(3, 6, generator=g).softmax(1), torch.rand(3, 6, generator=g).softmax(1)
    lam = torch.rand(3, 6, generator=g)
    got = fusion.label_weights(s_a, s_b, lam)
    for i in range(3):
        la = sum(float(s_a[i, j] * lam[i, j]) for j in range(6)) / 6
        lb = sum(float(s_b[i, j] * (1 - lam[i, j])) for j in range(6)) / 6
        assert got[i].tolist() == pytest.approx([la / (la + lb), lb / (la + lb)], rel=1e-5)
    assert torch.allclose(got.sum(1), torch.ones(3))
    # random fusion: uniform s gives weights mean(λ) and mean(1 − λ)
    u = fusion.uniform_importance(3, 6)
    assert torch.allclose(fusion.label_weights(u, u, lam)[:, 0], lam.mean(1), atol=1e-6)


def test_beta_weights_are_reparameterised():
    mix = fusion.PatchMixing(7)
    lam = mix(64)
    assert lam.shape == (64, 7) and ((lam >= 0) & (lam <= 1)).all()
    lam.mean().backward()
    assert mix.alpha.grad.abs().sum() > 0 and mix.beta.grad.abs().sum() > 0


def test_shared_beta_is_one_distribution_with_a_lambda_per_patch():
    # the official code: Beta(softplus(α), softplus(β)) with scalar α, β, .rsample((B, num_patch))
    mix = fusion.PatchMixing(7, shared=True)
    torch.manual_seed(0)
    lam = mix(64)
    assert lam.shape == (64, 7) and mix.alpha.shape == mix.beta.shape == (1,)
    assert (lam != lam[:, :1]).any(dim=1).all()                 # patches of one image differ
    torch.manual_seed(0)
    want = torch.distributions.Beta(torch.nn.functional.softplus(mix.alpha),
                                    torch.nn.functional.softplus(mix.beta)).rsample((64, 7))[..., 0]
    torch.testing.assert_close(lam, want)
    lam.sum().backward()
    assert mix.alpha.grad.abs().sum() > 0 and mix.beta.grad.abs().sum() > 0


def test_one_lambda_per_image_would_cancel_the_importance():
    # why λ is drawn per patch: with one λ for all patches, l_A = λ whatever the (normalised) importance
    g = torch.Generator().manual_seed(2)
    s_a, s_b = torch.rand(5, 9, generator=g).softmax(1), torch.rand(5, 9, generator=g).softmax(1)
    one = torch.rand(5, 1, generator=g).expand(5, 9)
    torch.testing.assert_close(fusion.label_weights(s_a, s_b, one)[:, 0], one[:, 0])
    per_patch = torch.rand(5, 9, generator=g)
    uniform = fusion.uniform_importance(5, 9)
    assert not torch.allclose(fusion.label_weights(s_a, s_b, per_patch),
                              fusion.label_weights(uniform, uniform, per_patch))


def test_each_domain_attention_goes_with_its_own_patches():
    # The official code swaps the halves of the token batch, so A's attention weighs B's patches.
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, dim=32, depth=2, heads=2).eval()
    x_a, x_b = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32) * 3
    mix = fusion.PatchMixing(vit.num_patches)
    torch.manual_seed(1)
    out = fusion.fuse(vit, x_a, x_b, mix)
    with torch.no_grad():
        s_a = fusion.cls_patch_attention(vit.attention_maps(x_a))
        s_b = fusion.cls_patch_attention(vit.attention_maps(x_b))
    assert torch.allclose(out["s_a"], s_a) and torch.allclose(out["s_b"], s_b)
    assert not torch.allclose(s_a, s_b)
    assert torch.allclose(out["weights"], fusion.label_weights(s_a, s_b, out["lam"]))
    want = fusion.mix_patch_tokens(vit.patch_tokens(x_a), vit.patch_tokens(x_b), out["lam"])
    assert torch.allclose(out["tokens"], want)
    # with λ = 1 everywhere the mixed image is A's, and so is all the label weight
    ones = fusion.label_weights(s_a, s_b, torch.ones_like(out["lam"]))
    assert torch.allclose(ones[:, 0], torch.ones(2))
    uniform = fusion.fuse(vit, x_a, x_b, mix, use_attention=False)
    assert torch.allclose(uniform["s_a"], torch.full_like(s_a, 1 / vit.num_patches))


# -- the fusion losses (IBNM's feature and label losses) against loops over the batch

def _mixed_batch(seed=3, b=6, d=5, k=3):
    g = torch.Generator().manual_seed(seed)
    norm = torch.nn.functional.normalize
    f, za, zb = (norm(torch.randn(b, d, generator=g), dim=1) for _ in range(3))
    ya, yb = torch.randint(0, k, (b,), generator=g), torch.randint(0, k, (b,), generator=g)
    w = fusion.label_weights(torch.rand(b, 4, generator=g), torch.rand(b, 4, generator=g), torch.rand(b, 4, generator=g))
    return f, za, zb, ya, yb, w


def test_mixed_contrastive_loss_against_loop():
    import math

    f, za, zb, ya, yb, w = _mixed_batch()
    t = 0.2
    total = 0.0
    for i in range(len(f)):
        for wi, z, y in ((w[i, 0], za, ya), (w[i, 1], zb, yb)):
            logits = [float(f[i] @ z[j]) / t for j in range(len(z))]
            log_norm = math.log(sum(math.exp(v) for v in logits))
            pos = [j for j in range(len(z)) if y[j] == y[i]]
            total += float(wi) * -sum(logits[j] - log_norm for j in pos) / len(pos)
    got = fusion.mixed_contrastive_loss(f, za, zb, ya, yb, w, t)
    assert got.item() == pytest.approx(total / len(f), rel=1e-5)


def test_mixed_label_loss_against_loop_and_weights():
    import math

    f, _, _, ya, yb, w = _mixed_batch(4)
    c = torch.nn.functional.normalize(torch.randn(3, 5, generator=torch.Generator().manual_seed(9)), dim=1)
    tau = 0.1
    total = 0.0
    for i in range(len(f)):
        logits = [float(f[i] @ c[k]) / tau for k in range(3)]
        log_norm = math.log(sum(math.exp(v) for v in logits))
        total += float(w[i, 0]) * (log_norm - logits[ya[i]]) + float(w[i, 1]) * (log_norm - logits[yb[i]])
    assert fusion.mixed_label_loss(f, c, ya, yb, w, tau).item() == pytest.approx(total / len(f), rel=1e-5)
    with pytest.raises(ValueError, match="weights"):
        fusion.mixed_label_loss(f, c, ya, yb, w[:, :1], tau)


def test_fusion_loss_weights_start_at_softplus_minus_two():
    lw = fusion.FusionLossWeights()
    out = lw(torch.tensor(2.0), torch.tensor(3.0))
    sp = torch.nn.functional.softplus(torch.tensor(-2.0))
    assert out.item() == pytest.approx(float(sp * 5.0), rel=1e-6)
    out.backward()
    assert lw.r.grad is not None and (lw.r.grad > 0).all()  # minimising pushes both weights down


def test_patch_ink_against_pixel_loop():
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 8, 12, generator=g) ** 0.05   # about a third of the pixels dark
    got = fusion.patch_ink(images, 4)
    assert got.shape == (2, 6)
    for b in range(2):
        for r in range(2):
            for c in range(3):
                dark = sum(float(min(images[b, ch, y, x] for ch in range(3)) < 0.9)
                           for y in range(4 * r, 4 * r + 4) for x in range(4 * c, 4 * c + 4))
                assert got[b, r * 3 + c].item() == pytest.approx(dark / 16)
    with pytest.raises(ValueError, match="multiples of patch_size"):
        fusion.patch_ink(images, 5)
