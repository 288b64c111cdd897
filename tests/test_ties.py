"""Exact ties where the library promises them: kNN search and ICFRR's neighbour lists.

Integer-valued features make float32 scores exact, so many items tie exactly; every result must then
equal a stable sort of each whole row (ties by ascending gallery index), also at the k-th place.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cdrlib.rerank import icfrr, icfrr_dense, neighbours_from_distances
from cdrlib.metrics import retrieval_metrics, sorted_ascending
from cdrlib.search import faiss_available, knn_search, search_and_evaluate, top_k_exact, top_k_from_sorted

BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])


def stable_order(q, g, metric):
    """Gallery ids of every query by a plain sort of (key, index) tuples in float64."""
    rows = []
    for qi in q.double():
        if metric == "euclidean":
            keys = [(float(((qi - gj) ** 2).sum()), j) for j, gj in enumerate(g.double())]
        else:
            keys = [(-float(qi @ gj), j) for j, gj in enumerate(g.double())]
        rows.append([j for _, j in sorted(keys)])
    return torch.tensor(rows)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_identical_gallery_rows_come_out_from_the_smallest_index(backend, metric):
    gallery = torch.ones(10, 4)                       # ten identical items: all tie for every query
    _, idx = knn_search(torch.ones(2, 4), gallery, 3, metric=metric, backend=backend)
    assert idx.tolist() == [[0, 1, 2], [0, 1, 2]]


def test_top_k_exact_by_hand():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 3.0],
                           [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    v, i = top_k_exact(scores, 3)
    assert i.tolist() == [[1, 2, 4], [0, 1, 2]] and v.tolist() == [[3.0] * 3, [5.0] * 3]
    v, i = top_k_exact(scores, 2, larger_first=False)
    assert i.tolist() == [[0, 3], [0, 1]]


features = st.integers(1, 6).flatmap(lambda d: st.tuples(
    st.lists(st.lists(st.integers(-2, 2), min_size=d, max_size=d), min_size=1, max_size=5),
    st.lists(st.lists(st.integers(-2, 2), min_size=d, max_size=d), min_size=2, max_size=40)))


@settings(max_examples=60, deadline=None)
@given(data=features, metric=st.sampled_from(["dot", "euclidean"]), backend=st.sampled_from(BACKENDS),
       k_frac=st.floats(0, 1), chunk=st.integers(1, 4))
def test_knn_search_equals_a_stable_sort_with_ties(data, metric, backend, k_frac, chunk):
    q, g = (torch.tensor(x, dtype=torch.float32) for x in data)
    k = 1 + int(k_frac * (len(g) - 1))
    _, idx = knn_search(q, g, k, metric=metric, backend=backend, chunk_size=chunk)
    assert torch.equal(idx, stable_order(q, g, metric)[:, :k])


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.integers(0, 3), min_size=4, max_size=144), kg_frac=st.floats(0, 1))
def test_neighbour_lists_equal_a_stable_argsort_with_ties(values, kg_frac):
    n = int(len(values) ** 0.5)
    gg = torch.tensor(values[:n * n], dtype=torch.float64).view(n, n)
    kg = 1 + int(kg_frac * (n - 2))
    want = torch.argsort(gg, dim=1, stable=True)[:, 1:kg + 1]
    assert torch.equal(neighbours_from_distances(gg, kg).index, want)


@settings(max_examples=300, deadline=None)
@given(data=features, variant=st.sampled_from(["official", "paper"]), n_iter=st.integers(0, 3),
       kq_frac=st.floats(0, 1), kg_frac=st.floats(0, 1), keep_frac=st.floats(0, 1),
       beta=st.sampled_from([0.5, 0.0, 0.01, 3.0, -0.5]))
def test_sparse_icfrr_equals_the_dense_reference_with_ties(data, variant, n_iter, kq_frac, kg_frac,
                                                           keep_frac, beta):
    """Also with ``keep`` (the official update then orders only each row's head) and small β, where
    the head shrinks early."""
    q, g = (torch.tensor(x, dtype=torch.float64) for x in data)
    qg, gg = torch.cdist(q, g) ** 2, torch.cdist(g, g) ** 2     # integers: exact, with many ties
    kq, kg = 1 + int(kq_frac * (len(g) - 1)), 1 + int(kg_frac * (len(g) - 2))
    keep = 1 + int(keep_frac * (len(g) - 1))
    want = icfrr_dense(qg, gg, kg=kg, kq=kq, beta=beta, n_iter=n_iter, variant=variant)[:, :keep]
    got = icfrr(qg, gg, kg=kg, kq=kq, beta=beta, n_iter=n_iter, variant=variant, chunk_size=2,
                keep=keep)
    assert torch.equal(got, want)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(-3, 3), min_size=1, max_size=60), rows=st.integers(1, 4),
       k_frac=st.floats(0, 1))
def test_top_k_from_sorted_rows_equals_a_stable_argsort(values, rows, k_frac):
    cols = max(1, len(values) // rows)
    scores = torch.tensor(values[:rows * cols], dtype=torch.float32).view(-1, cols)
    k = 1 + int(k_frac * (cols - 1))
    v, i = top_k_from_sorted(scores, sorted_ascending(scores), k)
    want = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    assert torch.equal(i, want) and torch.equal(v, torch.gather(scores, 1, want))


@settings(max_examples=60, deadline=None)
@given(data=features, metric=st.sampled_from(["dot", "euclidean", "cosine"]), k_frac=st.floats(0, 1),
       chunk=st.integers(1, 4))
def test_search_and_evaluate_equals_a_stable_sort_with_ties(data, metric, k_frac, chunk):
    q, g = (torch.tensor(x, dtype=torch.float32) for x in data)
    if metric == "cosine" and ((q == 0).all(1).any() or (g == 0).all(1).any()):
        return  # a zero vector has no direction
    k = 1 + int(k_frac * (len(g) - 1))
    labels_q, labels_g = torch.arange(len(q)) % 2, torch.arange(len(g)) % 2
    _, idx, m = search_and_evaluate(q, g, k, labels_q, labels_g, metric=metric, ks=(1,), chunk_size=chunk)
    _, want = knn_search(q, g, k, metric=metric, backend="torch", chunk_size=chunk)
    assert torch.equal(idx, want)
    if metric != "cosine":
        # integer features: dot products and squared distances are exact, so every tie is one here
        # as in the references. (Cosine scores of normalised vectors are not exact: a product of one
        # query row and one of many may round differently, and break a near-tie the other way.)
        assert m == retrieval_metrics(q, g, labels_q, labels_g, metric=metric, ks=(1,))
        assert torch.equal(idx, stable_order(q, g, metric)[:, :k])
