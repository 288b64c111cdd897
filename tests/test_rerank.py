"""ICFRR: the sparse implementation against the slow dense reference, and the reference by hand."""
import pytest
import torch

from cdrlib.rerank import icfrr, icfrr_dense, neighbours_from_distances


def random_problem(q=12, g=40, d=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qf = torch.nn.functional.normalize(torch.randn(q, d, generator=gen, dtype=torch.float64), dim=1)
    gf = torch.nn.functional.normalize(torch.randn(g, d, generator=gen, dtype=torch.float64), dim=1)
    return qf, gf, torch.cdist(qf, gf), torch.cdist(gf, gf)


def loop_reference(qg, gg, kg, kq, beta, n_iter, variant):
    """Plain Python lists, written from the official algorithm's steps without any vectorisation."""
    G = len(gg)
    R = [[0] * G for _ in range(G)]
    for g in range(G):
        order = sorted(range(G), key=lambda j: (gg[g][j], j))
        for pos, j in enumerate(order):
            R[g][j] = pos - 1

    def w(r):
        return 0.0 if r < 0 or r >= kg else 1.0 - r / (G - 1)

    out = []
    for q in range(len(qg)):
        pi = sorted(range(G), key=lambda j: (qg[q][j], j))
        v = [-qg[q][j] for j in pi]
        s = [-x for x in qg[q]]
        for _ in range(n_iter):
            delta = [sum(w(R[g][j]) for g in pi[:kq]) / kq for j in range(G)]
            if variant == "official":
                new = [v[p] + beta * delta[pi[p]] for p in range(G)]
                pi = [pi[p] for p in sorted(range(G), key=lambda p: (-new[p], p))]
            else:
                s = [s[j] + beta * delta[j] for j in range(G)]
                pi = sorted(range(G), key=lambda j: (-s[j], j))
        out.append(pi)
    return torch.tensor(out)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_dense_reference_equals_plain_loops(variant):
    _, _, qg, gg = random_problem(q=4, g=15)
    ref = loop_reference(qg.tolist(), gg.tolist(), kg=5, kq=4, beta=0.5, n_iter=3, variant=variant)
    assert torch.equal(icfrr_dense(qg, gg, kg=5, kq=4, beta=0.5, n_iter=3, variant=variant), ref)


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("kg,kq,beta,n_iter", [(10, 8, 0.5, 5), (39, 40, 1.0, 2), (1, 1, 0.3, 1), (20, 5, 2.0, 4), (5, 5, 0.5, 0)])
def test_sparse_equals_dense(variant, kg, kq, beta, n_iter):
    _, _, qg, gg = random_problem(seed=kg + kq)
    got = icfrr(qg, gg, kg=kg, kq=kq, beta=beta, n_iter=n_iter, variant=variant, chunk_size=5)
    want = icfrr_dense(qg, gg, kg=kg, kq=kq, beta=beta, n_iter=n_iter, variant=variant)
    assert torch.equal(got, want)


@pytest.mark.parametrize("workers", [1, 3])
def test_chunks_side_by_side_give_the_same_rankings_as_one_after_another(workers):
    _, _, qg, gg = random_problem(q=23, g=60, seed=7)
    gg[5, 9] = gg[5, 11] = gg[9, 5] = gg[11, 5] = gg[5].sort().values[3]   # ties at a KG boundary
    before = torch.get_num_threads()
    got = icfrr(qg, gg, kg=4, kq=6, n_iter=3, chunk_size=4, workers=workers)
    assert torch.get_num_threads() == before
    assert torch.equal(got, icfrr_dense(qg, gg, kg=4, kq=6, n_iter=3))


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_features_input_equals_distance_input(variant):
    qf, gf, qg, gg = random_problem(q=10, g=60, d=8, seed=3)
    from_features = icfrr(query=qf, gallery=gf, kg=12, kq=10, n_iter=3, variant=variant, keep=20)
    want = icfrr_dense(qg, gg, kg=12, kq=10, n_iter=3, variant=variant)[:, :20]
    assert torch.equal(from_features, want)


def test_reranking_changes_ranks_and_variants_differ():
    _, _, qg, gg = random_problem(q=20, g=50, seed=7)
    base = icfrr(qg, gg, kg=10, kq=10, n_iter=0)
    assert torch.equal(base, torch.argsort(qg, dim=1, stable=True))
    official = icfrr(qg, gg, kg=10, kq=10, beta=0.5, n_iter=5)
    paper = icfrr(qg, gg, kg=10, kq=10, beta=0.5, n_iter=5, variant="paper")
    assert not torch.equal(official, base)
    assert not torch.equal(official, paper)


def test_bad_arguments():
    _, _, qg, gg = random_problem(q=3, g=10)
    with pytest.raises(ValueError, match="kq=11 is larger than the gallery"):
        icfrr(qg, gg, kq=11, kg=3)
    with pytest.raises(ValueError, match="kg=10 is larger than the gallery"):
        icfrr(qg, gg, kq=3, kg=10)
    with pytest.raises(ValueError, match="variant must be"):
        icfrr(qg, gg, kq=3, kg=3, variant="cluster")
    with pytest.raises(ValueError, match="gg must be"):
        icfrr(qg, gg[:5], kq=3, kg=3)
    with pytest.raises(ValueError, match="either qg= and gg="):
        icfrr(qg, kq=3, kg=3)
    bad = qg.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="qg holds NaN"):
        icfrr(bad, gg, kq=3, kg=3)
    for dtype in (torch.float64, torch.float32, torch.float16):  # compiled pass; torch check
        bad = gg.clone().to(dtype)
        bad[2, 5], bad[7, 1] = float("nan"), float("-inf")
        with pytest.raises(ValueError, match=r"gg holds NaN or infinite values in 2 row\(s\)"):
            icfrr(qg.to(dtype), bad, kq=3, kg=3)
        with pytest.raises(ValueError, match="gg holds NaN or infinite values"):
            neighbours_from_distances(bad, 3)


def hard_rows(cols, dtype, seed):
    """Rows that stress an ordering: all tied, ±0, many exact ties, neighbours one ulp apart (equal
    truncated keys), negative and subnormal-scale values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, cols, generator=g, dtype=torch.float64)
    x[0] = 1.0                                                   # all tied: index order
    x[1, ::3] = -0.0
    x[2] = torch.randint(-3, 3, (cols,), generator=g).double()   # many exact ties
    x = x.to(dtype)
    base = torch.rand(cols, generator=g, dtype=dtype)
    h = cols // 2                                                # pairs one ulp apart
    x[5] = base
    x[5, h:2 * h] = torch.nextafter(base[:h], torch.tensor(2.0, dtype=dtype))
    x[6] = -x[5]
    x[7:20] = x[7:20] * 1e-300 if dtype == torch.float64 else x[7:20] * 1e-40
    return x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cols", [1, 2, 300, 5000])
def test_compiled_ordering_equals_a_stable_sort(cols, dtype):
    """The ordering keys (score bits above the index, NumPy's sort, exact redo of rows whose keys
    cannot separate two scores) against torch's stable argsort."""
    from cdrlib.rerank import _argsort_desc_compiled

    x = hard_rows(cols, dtype, cols)
    want = torch.argsort(x, dim=1, descending=True, stable=True)
    assert torch.equal(_argsort_desc_compiled(x), want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cols,k", [(1, 1), (300, 1), (300, 64), (300, 300), (5000, 257)])
def test_nearest_columns_equal_a_stable_sort(cols, k, dtype):
    """The compiled k-nearest selection (sampled threshold, candidates' keys) against the first k
    columns of a stable argsort — ties at the k-th value included."""
    from cdrlib.rerank import _nearest_compiled

    x = hard_rows(cols, dtype, 100 + cols)
    x[20:25] = torch.round(x[20:25] * 4) / 4                     # ties at the k-th value
    stride = max(1, k // 16)
    x[25, ::stride] = -5.0   # the sample holds the row's smallest only: its threshold is too low
    x[26, 1::max(2, stride)] = -5.0   # the sample misses the smallest: its threshold is too high
    if k + 2 <= cols:  # k + 1 copies of b, then a one ulp below b: all share a truncated key
        b = torch.tensor(0.5, dtype=dtype)
        x[27] = 10.0
        x[27, : k + 1] = b
        x[27, k + 1] = torch.nextafter(b, torch.tensor(0.0, dtype=dtype))
    want = torch.argsort(x, dim=1, stable=True)[:, :k]
    assert torch.equal(_nearest_compiled(x.contiguous(), k)[0], want)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_torch_path_equals_dense(variant):
    """The GPU path (torch operations), run here on the CPU, gives the reference's rankings."""
    from cdrlib.rerank import GalleryNeighbours, _rerank_chunk_torch, neighbours_from_distances

    _, _, qg, gg = random_problem(q=9, g=50, seed=11)
    nb = neighbours_from_distances(gg, 7)
    got = _rerank_chunk_torch(qg, GalleryNeighbours(nb.index, nb.weight), 6, 0.7, 4, variant)
    assert torch.equal(got, icfrr_dense(qg, gg, kg=7, kq=6, beta=0.7, n_iter=4, variant=variant))


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_float32_and_half_precision(variant):
    """float32 distances re-rank as the reference computes in float32; half precision as float32."""
    _, _, qg, gg = random_problem(q=10, g=70, seed=5)
    qg, gg = qg.float(), gg.float()
    got = icfrr(qg, gg, kg=9, kq=7, beta=0.3, n_iter=4, variant=variant, chunk_size=4)
    assert torch.equal(got, icfrr_dense(qg, gg, kg=9, kq=7, beta=0.3, n_iter=4, variant=variant))
    half = icfrr(qg.half(), gg.half(), kg=9, kq=7, beta=0.3, n_iter=4, variant=variant)
    want = icfrr(
        qg.half().float(), gg.half().float(), kg=9, kq=7, beta=0.3, n_iter=4, variant=variant
    )
    assert torch.equal(half, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("beta", [0.0, 0.002, 0.05, 0.5, -0.3])
@pytest.mark.parametrize("keep", [1, 7, 30])
def test_head_only_ordering_gives_the_references_top(keep, beta, dtype, monkeypatch):
    """With ``keep`` < G the official update orders only the head of each row that can still reach
    the top (cdrlib.rerank.head_thresholds); the first ``keep`` places must still be the
    reference's, ties included — and for β ≥ 0 the head must actually be smaller than the row."""
    from cdrlib import rerank_kernels

    _, _, qg, gg = random_problem(q=11, g=150, seed=13)
    qg, gg = qg.to(dtype), gg.to(dtype)
    qg[3] = torch.round(qg[3] * 8) / 8                         # many exact ties in one query
    heads = []
    order_keys = rerank_kernels.order_keys_official

    def spy(*args):
        counts = order_keys(*args)
        heads.append(int(counts.max()))
        return counts

    monkeypatch.setattr(rerank_kernels, "order_keys_official", spy)
    got = icfrr(qg, gg, kg=9, kq=6, beta=beta, n_iter=4, keep=keep, chunk_size=4)
    want = icfrr_dense(qg, gg, kg=9, kq=6, beta=beta, n_iter=4)[:, :keep]
    assert torch.equal(got, want)
    assert (min(heads) < 150) == (beta >= 0)


def test_head_thresholds_by_hand():
    """v = (0, −1, −2, −3), m = 2: the threshold is v[1] − (remaining − 1)·β, a little lower for
    rounding, and −inf for β < 0."""
    import numpy as np

    from cdrlib.rerank import head_thresholds

    v = np.array([[0.0, -1.0, -2.0, -3.0]])
    assert head_thresholds(v, 2, 1, 0.5)[0] == -1.0            # the last update: v[m−1] exactly
    tau = head_thresholds(v, 2, 3, 0.5)[0]
    assert -2.0 - 1e-3 < tau < -2.0
    assert head_thresholds(v, 2, 3, -0.5)[0] == -np.inf
