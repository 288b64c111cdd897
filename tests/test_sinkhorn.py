"""Sinkhorn: marginals, agreement with POT, batching, stability for small ε, gradients."""
import pytest
import torch

from cdrlib.sinkhorn import sinkhorn

ot = pytest.importorskip("ot")


def problem(n=6, m=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(m, 2, generator=g, dtype=torch.float64)
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.1
    return torch.cdist(x, y) ** 2, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("eps", [1.0, 0.1, 0.05])
def test_agrees_with_pot_sinkhorn_log(eps):
    C, a, b = problem()
    ours = sinkhorn(C, a, b, eps=eps, max_iter=20000, tol=1e-12)
    ref = ot.sinkhorn(a.numpy(), b.numpy(), C.numpy(), reg=eps, method="sinkhorn_log", numItermax=20000, stopThr=1e-12)
    torch.testing.assert_close(ours.plan, torch.from_numpy(ref), atol=1e-9, rtol=1e-6)


def test_marginals_and_uniform_default():
    C, _, _ = problem(7, 7, seed=1)
    res = sinkhorn(C, eps=0.2, tol=1e-9, max_iter=20000)
    torch.testing.assert_close(res.plan.sum(1), torch.full((7,), 1 / 7, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(res.plan.sum(0), torch.full((7,), 1 / 7, dtype=torch.float64), atol=1e-8, rtol=0)
    assert res.err < 1e-9 and res.iterations < 20000


def test_batched_equals_one_by_one():
    problems = [problem(5, 4, seed=s) for s in range(3)]
    C = torch.stack([p[0] for p in problems])
    a = torch.stack([p[1] for p in problems])
    b = torch.stack([p[2] for p in problems])
    batched = sinkhorn(C, a, b, eps=0.1, tol=1e-11, max_iter=5000).plan
    for i, (c, ai, bi) in enumerate(problems):
        torch.testing.assert_close(batched[i], sinkhorn(c, ai, bi, eps=0.1, tol=1e-11, max_iter=5000).plan)


def test_small_eps_is_stable_and_near_the_exact_plan():
    C, a, b = problem(6, 6, seed=2)
    res = sinkhorn(C, a, b, eps=1e-3, max_iter=50000, tol=1e-8)
    assert torch.isfinite(res.plan).all()
    exact = torch.from_numpy(ot.emd(a.numpy(), b.numpy(), C.numpy()))
    assert (res.plan * C).sum().item() == pytest.approx((exact * C).sum().item(), abs=5e-3)


def test_differentiable():
    C, a, b = problem(4, 3, seed=3)
    C = C.clone().requires_grad_(True)
    torch.autograd.gradcheck(lambda c: sinkhorn(c, a, b, eps=0.5, max_iter=30, tol=0.0).plan, (C,))


def test_bad_input():
    C, a, b = problem()
    with pytest.raises(ValueError, match="same total mass"):
        sinkhorn(C, a * 2, b)
    for eps in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be a positive finite number"):
            sinkhorn(C, eps=eps)
    for max_iter in (0, -3, 2.5):
        with pytest.raises(ValueError, match="max_iter must be a positive integer"):
            sinkhorn(C, max_iter=max_iter)
    with pytest.raises(ValueError, match="a must be"):
        sinkhorn(C, a[:-1], b)
    with pytest.raises(ValueError, match="cost must be"):
        sinkhorn(C[0])
    bad = C.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sinkhorn(bad)


def textbook(C, a, b, eps, iters):
    """The scaling iterations written out entry by entry (float64 numpy; small problems only)."""
    import numpy as np

    K = np.exp(-C.numpy() / eps)
    a, b = a.numpy(), b.numpy()
    v = np.ones(len(b))
    for _ in range(iters):
        u = np.array([a[i] / sum(K[i, j] * v[j] for j in range(len(b))) for i in range(len(a))])
        v = np.array([b[j] / sum(K[i, j] * u[i] for i in range(len(a))) for j in range(len(b))])
    return torch.from_numpy(u[:, None] * K * v[None, :])


@pytest.mark.parametrize("eps", [1.0, 0.1])
def test_scaling_and_log_forms_are_the_same_iterates(eps):
    C, a, b = problem(5, 4, seed=4)
    C = C / C.max()                                  # a spread of 1: both forms are safe at these ε
    ref = textbook(C, a, b, eps, iters=40)
    for method in ("log", "scaling", "auto"):
        res = sinkhorn(C, a, b, eps=eps, max_iter=40, tol=0.0, method=method)
        torch.testing.assert_close(res.plan, ref, rtol=1e-9, atol=1e-12)
    log, scaling = (sinkhorn(C, a, b, eps=eps, max_iter=40, tol=0.0, method=m) for m in ("log", "scaling"))
    torch.testing.assert_close(scaling.f, log.f)
    torch.testing.assert_close(scaling.g, log.g)


def test_scaling_form_in_float32_matches_float64_log_form():
    C, a, b = problem(6, 6, seed=5)
    C = 4 * C / C.max()                              # UCDIR's range: squared distances of unit vectors
    ref = sinkhorn(C, a, b, eps=0.05, max_iter=200, tol=0.0, method="log").plan
    res = sinkhorn(C.float(), a.float(), b.float(), eps=0.05, max_iter=200, tol=0.0, method="scaling")
    assert res.plan.dtype == torch.float32
    torch.testing.assert_close(res.plan.double(), ref, rtol=1e-5, atol=1e-7)


def test_auto_falls_back_to_the_log_form_where_scaling_would_underflow():
    C, a, b = problem(6, 6, seed=2)
    C = C * 50                                       # a spread of many hundred ε at ε = 0.02
    res = sinkhorn(C, a, b, eps=0.02, max_iter=3000, method="auto", warn=False)
    assert torch.isfinite(res.plan).all()
    torch.testing.assert_close(res.plan, sinkhorn(C, a, b, eps=0.02, max_iter=3000, method="log", warn=False).plan)
    with pytest.raises(ValueError, match="scaling form would underflow"):
        sinkhorn(C, a, b, eps=0.02, method="scaling")
    with pytest.raises(ValueError, match="method must be"):
        sinkhorn(C, a, b, method="exact")


def test_numpy_input_and_a_warning_when_not_converged():
    C, a, b = problem()
    with pytest.warns(RuntimeWarning, match="stopped at max_iter=2"):
        res = sinkhorn(C.numpy(), a.numpy(), b.numpy(), eps=0.05, max_iter=2, tol=1e-12)
    assert res.iterations == 2 and res.err > 1e-12
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinkhorn(C, a, b, eps=0.05, max_iter=2, tol=1e-12, warn=False)


def first_converged_iteration(C, a, b, eps, tol, cap=500):
    """The first iteration count after which the row marginals are within tol (textbook scaling)."""
    for it in range(1, cap + 1):
        plan = textbook(C, a, b, eps, iters=it)
        err = (plan.sum(1) - a).abs().sum().item()
        if err < tol:
            return it, err
    raise AssertionError("the reference did not converge")


@pytest.mark.parametrize("method", ["log", "scaling"])
@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-7])
def test_stops_at_the_first_iteration_that_meets_tol(method, tol):
    C, a, b = problem(5, 4, seed=6)
    C = C / C.max()
    want_it, want_err = first_converged_iteration(C, a, b, 0.1, tol)
    res = sinkhorn(C, a, b, eps=0.1, max_iter=500, tol=tol, method=method)
    assert res.iterations == want_it
    assert res.err == pytest.approx(want_err, rel=1e-6, abs=1e-14)
    torch.testing.assert_close(res.plan, textbook(C, a, b, 0.1, iters=want_it), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["log", "scaling"])
def test_float32_iterations_reach_a_marginal_error_near_1e_6(method):
    C, a, b = problem(6, 6, seed=7)
    C = 1.5 * C / C.max()
    ref = sinkhorn(C, a, b, eps=0.05, max_iter=5000, tol=1e-12, method="log").plan
    res = sinkhorn(C, a, b, eps=0.05, max_iter=5000, tol=1e-5, method=method, dtype=torch.float32)
    assert res.plan.dtype == torch.float64 and res.err < 1e-5   # computed in float32, returned as given
    torch.testing.assert_close(res.plan, ref, rtol=0, atol=1e-5)


def test_float32_scaling_form_needs_a_smaller_spread():
    C, a, b = problem(6, 6, seed=8)
    C = 3.0 * C / C.max()                            # a spread of 60 ε at ε = 0.05: safe in float64 only
    sinkhorn(C, a, b, eps=0.05, method="scaling", warn=False)
    with pytest.raises(ValueError, match="scaling form would underflow"):
        sinkhorn(C, a, b, eps=0.05, method="scaling", dtype=torch.float32)
    res = sinkhorn(C, a, b, eps=0.05, max_iter=2000, tol=1e-5, dtype=torch.float32, warn=False)
    assert torch.isfinite(res.plan).all()          # "auto" ran the log form in float32
    with pytest.raises(ValueError, match="dtype must be"):
        sinkhorn(C, a, b, dtype=torch.float16)
