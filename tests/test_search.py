"""kNN search against brute force, tolerant of exact ties, for both backends."""
import pytest
import torch

from cdrlib.metrics import retrieval_metrics
from cdrlib.search import faiss_available, knn_search, search_and_evaluate

BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])


def brute_force(q, g, k, metric):
    if metric == "cosine":
        q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    rows = []
    for qi in q:
        if metric == "euclidean":
            key = [(float(((qi - gj) ** 2).sum()), j) for j, gj in enumerate(g)]
        else:
            key = [(-float(qi @ gj), j) for j, gj in enumerate(g)]
        rows.append([j for _, j in sorted(key)[:k]])
    return torch.tensor(rows)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_against_brute_force(backend, metric):
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(30, 16, generator=g), torch.randn(200, 16, generator=g)
    vals, idx = knn_search(q, gal, 10, metric=metric, backend=backend, chunk_size=7)
    ref = brute_force(q.double(), gal.double(), 10, metric)
    # float32 kernels may swap neighbours whose scores differ by rounding only; compare values there
    mismatch = idx != ref
    assert mismatch.float().mean() < 0.02
    assert vals.shape == (30, 10)
    if metric == "euclidean":
        assert (vals[:, 1:] >= vals[:, :-1] - 1e-5).all()
    else:
        assert (vals[:, 1:] <= vals[:, :-1] + 1e-5).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_ties_come_out_by_gallery_index(backend):
    gal = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
    q = torch.tensor([[1.0, 0.0]])
    _, idx = knn_search(q, gal, 4, metric="dot", backend=backend)
    assert idx.tolist() == [[0, 2, 3, 4]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree(backend):
    g = torch.Generator().manual_seed(1)
    q, gal = torch.randn(100, 32, generator=g), torch.randn(500, 32, generator=g)
    v1, i1 = knn_search(q, gal, 20, backend="torch")
    v2, i2 = knn_search(q, gal, 20, backend=backend)
    assert torch.allclose(v1, v2, atol=1e-5)
    assert (i1 == i2).float().mean() > 0.99


def test_bad_input():
    q, g = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="k=6 is larger than the gallery"):
        knn_search(q, g, 6)
    with pytest.raises(ValueError, match="metric must be one of"):
        knn_search(q, g, 2, metric="manhattan")
    with pytest.raises(ValueError, match="backend must be"):
        knn_search(q, g, 2, backend="annoy")
    bad = g.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="gallery holds NaN"):
        knn_search(q, bad, 2)


@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_search_and_evaluate_equals_search_then_metrics(metric, chunk_size):
    g = torch.Generator().manual_seed(3)
    q, gal = torch.randn(40, 8, generator=g), torch.randn(120, 8, generator=g)
    gal[50] = gal[10]                     # exact ties: every query scores items 10 and 50 the same
    gal[90] = 2 * gal[10] if metric == "cosine" else gal[90]   # a cosine tie at another length
    ql, gl = torch.randint(0, 5, (40,), generator=g), torch.randint(0, 5, (120,), generator=g)
    gl[50] = gl[10]
    v, i, m = search_and_evaluate(q, gal, 15, ql, gl, metric=metric, ks=(1, 10), chunk_size=chunk_size)
    v_ref, i_ref = knn_search(q, gal, 15, metric=metric, backend="torch")
    assert torch.equal(i, i_ref)
    # the same scores up to the last bit: a product of 7 query rows may take another BLAS kernel
    # (another summation order) than one of all 40, as under ATEN_CPU_CAPABILITY=avx2
    torch.testing.assert_close(v, v_ref, rtol=1e-6, atol=1e-6)
    assert m == retrieval_metrics(q, gal, ql, gl, metric=metric, ks=(1, 10))


@pytest.mark.parametrize("workers", [1, 3])
def test_search_and_evaluate_is_the_same_with_any_number_of_workers(workers):
    g = torch.Generator().manual_seed(5)
    q, gal = torch.randn(50, 8, generator=g), torch.randn(90, 8, generator=g)
    gal[40] = gal[3]                                                   # exact ties
    ql, gl = torch.randint(0, 4, (50,), generator=g), torch.randint(0, 4, (90,), generator=g)
    before = torch.get_num_threads()
    v, i, m = search_and_evaluate(q, gal, 12, ql, gl, ks=(1, 10), chunk_size=6, workers=workers)
    assert torch.get_num_threads() == before          # the thread count is given back
    v_ref, i_ref = knn_search(q, gal, 12, backend="torch")
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(v, v_ref, rtol=1e-6, atol=1e-6)
    assert m == retrieval_metrics(q, gal, ql, gl, ks=(1, 10))
    with pytest.raises(ValueError, match="workers"):
        search_and_evaluate(q, gal, 12, ql, gl, workers=0)


def test_a_failing_chunk_gives_the_thread_count_back(monkeypatch):
    import cdrlib.search as search_module

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory in a chunk")

    monkeypatch.setattr(search_module, "select_and_rank", broken)
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="out of memory in a chunk"):
        search_and_evaluate(torch.randn(20, 4), torch.randn(30, 4), 5, torch.zeros(20, dtype=torch.long),
                            torch.zeros(30, dtype=torch.long), chunk_size=4, workers=2)
    assert torch.get_num_threads() == before


def test_search_and_evaluate_euclidean_matches_brute_force():
    g = torch.Generator().manual_seed(4)
    q, gal = torch.randn(20, 6, generator=g, dtype=torch.float64), torch.randn(90, 6, generator=g, dtype=torch.float64)
    ql, gl = torch.randint(0, 4, (20,), generator=g), torch.randint(0, 4, (90,), generator=g)
    _, i, m = search_and_evaluate(q, gal, 5, ql, gl, metric="euclidean", ks=(5,))
    assert torch.equal(i, brute_force(q.float().double(), gal.float().double(), 5, "euclidean"))
    ref = retrieval_metrics(q, gal, ql, gl, metric="euclidean", ks=(5,))
    assert m["mAP@all"] == pytest.approx(ref["mAP@all"], abs=1e-9)


def test_search_and_evaluate_explains_bad_labels():
    q, gal = torch.randn(4, 3), torch.randn(6, 3)
    with pytest.raises(ValueError, match="gallery_labels"):
        search_and_evaluate(q, gal, 2, torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("larger_first", [True, False])
@pytest.mark.parametrize("k", [1, 7, 200])
def test_compiled_best_k_equals_a_stable_sort(k, larger_first, dtype):
    """The compiled selection of the k best given the k-th value, on rows full of exact ties, against
    the first k columns of a stable sort."""
    from cdrlib.search import _best_k

    g = torch.Generator().manual_seed(k)
    x = torch.randint(-2, 3, (30, 200), generator=g).to(dtype)
    x[0] = 0.0  # all tied
    x[1, ::2] = -0.0  # ±0 compare equal
    order = torch.argsort(-x if larger_first else x, dim=1, stable=True)[:, :k]
    kth = torch.gather(x, 1, order[:, -1:])
    values, columns = _best_k(x, kth, k, larger_first)
    assert torch.equal(columns, order)
    assert torch.equal(values, torch.gather(x, 1, order))


def test_compiled_best_k_refuses_a_kth_from_another_row():
    from cdrlib.search import _best_k

    x = torch.arange(10.0).repeat(2, 1)
    with pytest.raises(ValueError, match="k-th best value"):
        _best_k(x, torch.tensor([[3.5], [7.0]]), 3, True)  # row 0: 6 larger than 3.5, not 3
    with pytest.raises(ValueError, match="k-th best value"):
        _best_k(x, torch.tensor([[9.5], [7.0]]), 3, True)  # row 0: nothing reaches 9.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("larger_first", [True, False])
def test_top_k_exact_in_half_precision(dtype, larger_first):
    """Half precision is selected in float32 (exact) and comes back in its own dtype; bfloat16
    used to fail inside NumPy."""
    from cdrlib.search import top_k_exact

    x = torch.randint(0, 5, (6, 50), generator=torch.Generator().manual_seed(1)).to(dtype)
    values, columns = top_k_exact(x, 7, larger_first)
    want = torch.argsort(-x.float() if larger_first else x.float(), dim=1, stable=True)[:, :7]
    assert torch.equal(columns, want)
    assert values.dtype == dtype and torch.equal(values, torch.gather(x, 1, want))
