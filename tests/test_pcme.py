"""PCME's pieces against direct references: match probability, loss stability, KL, heads, text side."""
import math

import pytest
import torch

from cdrlib import pcme
from cdrlib.text import BiGRUText, Vocabulary, words


def test_match_probability_against_loop_over_samples():
    g = torch.Generator().manual_seed(0)
    zx, zy = torch.randn(3, 4, 5, generator=g, dtype=torch.float64), torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    a, b = 2.0, 1.5
    log_p, log_not_p = pcme.match_logprob(zx, zy, a, b)
    for i in range(3):
        for k in range(2):
            terms = [1 / (1 + math.exp(-(-a * float((zx[i, j] - zy[k, jj]).norm()) + b)))
                     for j in range(4) for jj in range(3)]
            p = sum(terms) / len(terms)
            assert log_p[i, k].item() == pytest.approx(math.log(p), rel=1e-10)
            assert log_not_p[i, k].item() == pytest.approx(math.log(1 - p), rel=1e-10)


def test_loss_is_finite_for_extreme_distances_and_tiny_sigma():
    mu = torch.tensor([[0.0, 0.0], [1e4, -1e4]], dtype=torch.float32, requires_grad=True)
    log_sigma = torch.full((2, 2), -30.0, requires_grad=True)              # σ ≈ 1e-13
    far = torch.tensor([[False, True], [True, False]])   # the two far-apart items declared matching
    for a in (5.0, 1e3):
        z = pcme.sample(mu, log_sigma, 7)
        loss = pcme.soft_contrastive_loss(z, z, far, a, 5.0)
        assert torch.isfinite(loss) and loss.item() > 1e4                   # enormous, but a number
        loss.backward()
        assert torch.isfinite(mu.grad).all() and torch.isfinite(log_sigma.grad).all()
        mu.grad = log_sigma.grad = None
    # all pairs non-matching with a huge b: the identical pairs cost −log(1 − sigmoid(500)) = 500,
    # the far ones ≈ 0; the mean is finite and exact
    z = pcme.sample(mu, log_sigma, 7)
    loss = pcme.soft_contrastive_loss(z, z, torch.zeros(2, 2, dtype=torch.bool), 5.0, 500.0)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(250.0, rel=1e-4)


def test_soft_contrastive_loss_against_reference():
    g = torch.Generator().manual_seed(1)
    zi, zt = torch.randn(3, 2, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    m = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    pos, neg = [], []
    for i in range(3):
        for k in range(3):
            p = sum(torch.sigmoid(-3.0 * (zi[i, j] - zt[k, jj]).norm() + 2.0).item() for j in range(2) for jj in range(2)) / 4
            (pos if m[i, k] else neg).append(-math.log(p) if m[i, k] else -math.log(1 - p))
    want = sum(pos) / len(pos) + sum(neg) / len(neg)
    assert pcme.soft_contrastive_loss(zi, zt, m, 3.0, 2.0).item() == pytest.approx(want, rel=1e-10)
    # the official total: every pair's term summed, image→caption and caption→image
    summed = pcme.soft_contrastive_loss(zi, zt, m, 3.0, 2.0, reduction="sum").item()
    assert summed == pytest.approx(2 * (sum(pos) + sum(neg)), rel=1e-10)
    with pytest.raises(ValueError, match="reduction must be"):
        pcme.soft_contrastive_loss(zi, zt, m, 3.0, 2.0, reduction="none")
    with pytest.raises(ValueError, match="matches"):
        pcme.soft_contrastive_loss(zi, zt, m[:2], 3.0, 2.0)


def test_kl_against_closed_form_and_monte_carlo():
    g = torch.Generator().manual_seed(2)
    mu, log_sigma = torch.randn(4, 3, generator=g, dtype=torch.float64), 0.3 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    got = pcme.kl_to_standard_normal(mu, log_sigma)
    want = 0.0
    for i in range(4):
        q = torch.distributions.Normal(mu[i], log_sigma[i].exp())
        want += torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum().item()
    assert got.item() == pytest.approx(want / 4, rel=1e-10)
    assert pcme.kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_sampling_and_match_scores_shapes_and_chunking():
    g = torch.Generator().manual_seed(3)
    mu_q, ls_q = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g) - 2
    mu_g, ls_g = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g) - 2
    z = pcme.sample(mu_q, torch.full_like(mu_q, -40.0), 3)
    assert z.shape == (5, 3, 4) and torch.allclose(z, mu_q.unsqueeze(1).expand(-1, 3, -1))
    whole = pcme.match_scores(mu_q, ls_q, mu_g, ls_g, 5.0, 5.0, n_samples=4, chunk_size=100)
    chunked = pcme.match_scores(mu_q, ls_q, mu_g, ls_g, 5.0, 5.0, n_samples=4, chunk_size=2)
    assert whole.shape == (5, 7) and torch.allclose(whole, chunked) and ((whole > 0) & (whole < 1)).all()


def test_match_scores_with_point_queries_against_a_loop():
    g = torch.Generator().manual_seed(5)
    mu_q, mu_g = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    ls_g = torch.randn(6, 3, generator=g, dtype=torch.float64) - 1
    a, b, J = 4.0, 2.0, 5
    got = pcme.match_scores(mu_q, None, mu_g, ls_g, a, b, n_samples=J, seed=7, chunk_size=3, budget=8)
    z_g = pcme.sample(mu_g, ls_g, J, torch.Generator().manual_seed(7))   # the gallery's samples, as drawn there
    for i in range(4):
        for k in range(6):
            want = sum(1 / (1 + math.exp(a * float((mu_q[i] - z_g[k, j]).norm()) - b)) for j in range(J)) / J
            assert got[i, k].item() == pytest.approx(want, rel=1e-12)
    # a point query is the limit σ → 0 of a Gaussian one, whatever the query's samples
    near = pcme.match_scores(mu_q, torch.full_like(mu_q, -60.0), mu_g, ls_g, a, b, n_samples=J)
    z_near = pcme.sample(mu_g, ls_g, J, _after(mu_q, J))
    want = torch.tensor([[sum(1 / (1 + math.exp(a * float((mu_q[i] - z_near[k, j]).norm()) - b)) for j in range(J)) / J
                          for k in range(6)] for i in range(4)], dtype=torch.float64)
    torch.testing.assert_close(near, want, rtol=1e-10, atol=0)


def _after(mu_q, J):
    """The seed-0 generator after the queries' samples were drawn (match_scores draws them first)."""
    gen = torch.Generator().manual_seed(0)
    pcme.sample(mu_q, torch.zeros_like(mu_q), J, gen)
    return gen


def test_contrastive_baseline_against_loop():
    g = torch.Generator().manual_seed(4)
    norm = torch.nn.functional.normalize
    mi, mt = norm(torch.randn(3, 4, generator=g), dim=1), norm(torch.randn(3, 4, generator=g), dim=1)
    m = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    t = 0.1
    s = (mi @ mt.T / t).tolist()
    i2t = sum(-sum(s[i][k] - math.log(sum(math.exp(v) for v in s[i])) for k in range(3) if m[i, k]) / int(m[i].sum())
              for i in range(3)) / 3
    t2i = sum(-sum(s[i][k] - math.log(sum(math.exp(s[r][k]) for r in range(3))) for i in range(3) if m[i, k]) / int(m[:, k].sum())
              for k in range(3)) / 3
    assert pcme.contrastive_loss(mi, mt, m, t).item() == pytest.approx((i2t + t2i) / 2, rel=1e-5)


def test_gaussian_head_and_attention_pool_respect_the_mask():
    torch.manual_seed(0)
    head = pcme.GaussianHead(6, 5, 4)
    pooled, local = torch.randn(2, 6), torch.randn(2, 3, 5)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    mu, ls = head(pooled, local, mask)
    assert mu.shape == ls.shape == (2, 4) and torch.allclose(mu.norm(dim=1), torch.ones(2))
    changed = local.clone()
    changed[0, 2] = 100.0                                   # a padded position: must not matter
    mu2, ls2 = head(pooled, changed, mask)
    assert torch.allclose(mu[0], mu2[0]) and torch.allclose(ls[0], ls2[0])
    det = pcme.GaussianHead(6, 5, 4, probabilistic=False)
    assert det(pooled, local, mask)[1] is None


def test_vocabulary_and_bigru():
    vocab = Vocabulary.build(["red apple", "Apple!", "face"])
    assert words("Red-apple 2") == ["red", "apple", "2"]
    ids, mask = vocab.encode(["red apple", "unknown thing", ""])
    assert ids.shape == (3, 2) and ids[1].tolist() == [1, 1] and mask[2].tolist() == [True, False]
    enc = BiGRUText(len(vocab), 8, 5)
    pooled, local = enc(ids, mask)
    assert pooled.shape == (3, 10) and local.shape == (3, 2, 10)
    # padding does not change a caption's encoding
    p1, _ = enc(*vocab.encode(["face"]))
    assert torch.allclose(p1[0], enc(*vocab.encode(["face", "red apple"]))[0][0], atol=1e-6)


def test_match_scores_do_not_depend_on_how_they_are_chunked():
    g = torch.Generator().manual_seed(7)
    mq, mg = torch.randn(9, 4, generator=g), torch.randn(13, 4, generator=g)
    lq, lg = torch.randn(9, 4, generator=g) - 2, torch.randn(13, 4, generator=g) - 2
    whole = pcme.match_scores(mq, lq, mg, lg, 5.0, 3.0, n_samples=3, chunk_size=9, budget=1 << 20)
    for chunk, budget in ((2, 9), (4, 50), (9, 1)):
        part = pcme.match_scores(mq, lq, mg, lg, 5.0, 3.0, n_samples=3, chunk_size=chunk, budget=budget)
        # equal up to the distance kernel's rounding (torch.cdist picks its algorithm by size)
        assert torch.allclose(part, whole, rtol=1e-5, atol=1e-12)
    with pytest.raises(ValueError, match="budget"):
        pcme.match_scores(mq, lq, mg, lg, 5.0, 3.0, budget=0)


def test_uniformity_loss_against_a_pair_loop_and_far_points():
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    pairs = [(z[i] - z[j]).pow(2).sum().item() for i in range(6) for j in range(i + 1, 6)]
    want = math.log(sum(math.exp(-2 * d) for d in pairs) / len(pairs))
    assert pcme.uniformity_loss(z).item() == pytest.approx(want, rel=1e-12)
    # spread-out points score lower; points 1e3 apart give a finite value (exp then log: −inf)
    assert pcme.uniformity_loss(3 * z) < pcme.uniformity_loss(z)
    assert torch.isfinite(pcme.uniformity_loss(1e3 * z))
    # more points than max_points: a subset of exactly max_points enters
    big = torch.randn(300, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sub = pcme.uniformity_loss(big, max_points=5, generator=torch.Generator().manual_seed(0))
    keep = torch.randperm(300, generator=torch.Generator().manual_seed(0))[:5]
    assert sub.item() == pytest.approx(pcme.uniformity_loss(big[keep]).item(), rel=1e-12)
    with pytest.raises(ValueError, match="P ≥ 2"):
        pcme.uniformity_loss(z[:1])


def test_the_paper_configuration_is_the_official_one():
    from cdrlib.pcme_train import PCMEConfig

    c = PCMEConfig.paper()
    # the official a = b = 5 under sigmoid(2x) is a = b = 10 under the logistic
    assert (c.a_init, c.b_init, c.reduction, c.uniform_weight, c.kl_weight) == (10.0, 10.0, "sum", 10.0, 1e-3)
    x = torch.linspace(-2, 2, 9)
    official = torch.exp(-5 * x + 5) / (torch.exp(-5 * x + 5) + torch.exp(5 * x - 5))
    torch.testing.assert_close(torch.sigmoid(-c.a_init * x + c.b_init), official)
