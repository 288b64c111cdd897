"""Bad and edge inputs across the public API: each gets a clear error that says what to do, never a
wrong answer, a NaN or a trace from deep inside torch. (Search, metrics and ICFRR with exact ties are in
test_ties.py; checkpoints in test_training.py and test_backbone_registry.py; downloads in test_data.py.)"""
import numpy as np
import pytest
import torch

from cdrlib.clustering import cluster_purity
from cdrlib.evaluation import center, cross_domain_table, extract_features
from cdrlib.metrics import ranking_metrics, retrieval_metrics
from cdrlib.pcme import match_scores, soft_contrastive_loss
from cdrlib.rerank import icfrr
from cdrlib.search import knn_search
from cdrlib.sinkhorn import sinkhorn

g = torch.Generator().manual_seed(0)
Q, G = torch.randn(4, 8, generator=g), torch.randn(12, 8, generator=g)
QL, GL = torch.tensor([0, 1, 2, 0]), torch.arange(12) % 3


@pytest.mark.parametrize("chunk", [0, -1, 2.5, True])
def test_chunk_sizes_must_be_positive_integers(chunk):
    for call in (lambda: icfrr(query=Q, gallery=G, kg=3, kq=3, chunk_size=chunk),
                 lambda: knn_search(Q, G, 3, chunk_size=chunk),
                 lambda: retrieval_metrics(Q, G, QL, GL, chunk_size=chunk)):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            call()


def test_metric_names_are_exact():
    with pytest.raises(ValueError, match=r"metric must be one of \('cosine', 'dot', 'euclidean'\), not 'Cosine'"):
        retrieval_metrics(Q, G, QL, GL, metric="Cosine")


def test_a_ranking_that_repeats_an_item_is_refused():
    ranking = torch.tensor([[0, 0, 1], [2, 3, 4], [5, 6, 7], [8, 9, 10]])
    with pytest.raises(ValueError, match="lists a gallery item twice in 1 row"):
        ranking_metrics(ranking, QL, GL)


def test_integer_matches_are_refused_where_a_mask_is_meant():
    z = torch.randn(3, 2, 4, generator=g)
    with pytest.raises(TypeError, match="bool mask"):
        soft_contrastive_loss(z, z, torch.eye(3, dtype=torch.int64), torch.tensor(1.0), torch.tensor(0.0))


def test_features_whose_products_overflow_float32_are_refused():
    big = Q.double() * 1e20
    with pytest.raises(ValueError, match="overflow float32"):
        retrieval_metrics(big, G.double(), QL, GL, metric="dot")
    with pytest.raises(ValueError, match="overflow float32"):
        knn_search(big, G.double(), 3, metric="euclidean")


def test_uint8_images_are_refused_with_the_conversion():
    with pytest.raises(TypeError, match=r"images.float\(\) / 255"):
        extract_features(torch.nn.Flatten(), torch.zeros(2, 3, 4, 4, dtype=torch.uint8))


def test_centring_a_single_item_is_refused():
    with pytest.raises(ValueError, match="at least 2 feature rows"):
        center(Q[:1])


def test_negative_cluster_ids_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        cluster_purity(torch.tensor([0, -1, 1]), torch.tensor([0, 1, 1]))


def test_a_missing_domain_is_named():
    with pytest.raises(KeyError, match=r"domain\(s\) \['sketch'\]"):
        cross_domain_table({"photo": G}, {"photo": GL}, pairs=[("sketch", "photo")])


def test_tensors_that_require_grad_are_searched_without_complaint():
    q = Q.clone().requires_grad_(True)
    for backend in ("torch", "auto"):
        _, idx = knn_search(q, G, 3, backend=backend)
        assert idx.shape == (4, 3)


def test_sinkhorn_takes_numpy_and_refuses_nonsense():
    res = sinkhorn(np.random.default_rng(0).random((3, 3)), eps=0.5)
    assert torch.allclose(res.plan.sum(1), torch.full((3,), 1 / 3, dtype=res.plan.dtype))
    with pytest.raises(TypeError, match="cost must hold floats"):
        sinkhorn(torch.ones(3, 3, dtype=torch.int64))


def test_match_scores_needs_positive_sample_and_chunk_counts():
    mu, ls = torch.randn(3, 4, generator=g), torch.zeros(3, 4)
    for kw in ({"n_samples": 0}, {"chunk_size": 0}):
        with pytest.raises(ValueError, match="must be a positive integer"):
            match_scores(mu, ls, mu, ls, torch.tensor(1.0), torch.tensor(0.0), **kw)


def test_string_labels_are_refused_with_the_mapping_to_ids():
    with pytest.raises(TypeError, match="give integer ids"):
        retrieval_metrics(Q, G, np.array(["cat", "dog", "cat", "cow"]), GL)


def test_features_of_dimension_zero_are_refused():
    with pytest.raises(ValueError, match="dimension 0"):
        knn_search(torch.zeros(3, 0), torch.zeros(5, 0), 2)


def test_mixed_float_types_give_the_same_answer():
    want = retrieval_metrics(Q.double(), G.double(), QL, GL)
    got = retrieval_metrics(Q, G.double(), QL, GL)
    assert got["mAP@all"] == pytest.approx(want["mAP@all"], abs=1e-6)
