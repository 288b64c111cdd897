"""The library on a GPU gives what it gives on the CPU (skipped where no GPU is visible).

CI has no GPU; these run where one is (``python -m pytest tests/test_cuda.py`` on a CUDA machine).
Each compares a CUDA result with the CPU result of the same call: exact where the computation
is exact (rankings with ties, ranks, integer votes), close where floating-point sums may differ.
"""
import os
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from cdrlib import metrics, pcme, rerank
from cdrlib.clustering import kmeans
from cdrlib.search import knn_search
from cdrlib.sinkhorn import sinkhorn

# CDR_TEST_DEVICE=cpu runs the same comparisons on the CPU (to check the tests themselves)
CUDA = torch.device(os.environ.get("CDR_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")


def _features(n, d, seed, levels=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x if levels is None else (x * levels).round()   # integer-valued: many exact ties


def test_metrics_with_ties_are_the_same_on_the_gpu():
    q, gal = _features(300, 8, 0, levels=1), _features(700, 8, 1, levels=1)
    ql, gl = torch.arange(300) % 5, torch.arange(700) % 5
    cpu = metrics.retrieval_metrics(q, gal, ql, gl, metric="dot", ks=(1, 10, 100))
    gpu = metrics.retrieval_metrics(q.to(CUDA), gal.to(CUDA), ql.to(CUDA), gl.to(CUDA), metric="dot",
                                    ks=(1, 10, 100))
    assert gpu == pytest.approx(cpu, abs=1e-12)
    scores = q @ gal.T
    rel = ql[:, None] == gl[None, :]
    a = metrics.ranks_from_scores(scores, rel)
    b = metrics.ranks_from_scores(scores.to(CUDA), rel.to(CUDA))
    assert torch.equal(a.ranks, b.ranks) and torch.equal(a.n_rel, b.n_rel)


def test_knn_search_with_ties_is_the_same_on_the_gpu():
    q, gal = _features(200, 6, 2, levels=1), _features(900, 6, 3, levels=1)
    for metric in ("dot", "euclidean"):
        v_cpu, i_cpu = knn_search(q, gal, 20, metric=metric, backend="torch")
        v_gpu, i_gpu = knn_search(q.to(CUDA), gal.to(CUDA), 20, metric=metric, backend="torch")
        assert torch.equal(i_gpu.cpu(), i_cpu)
        torch.testing.assert_close(v_gpu.cpu(), v_cpu)


def test_icfrr_is_the_same_on_the_gpu():
    # the same distance tables on both devices (distances computed on a GPU round differently, and
    # a swapped near-tie changes the votes): from there on the re-ranking is exact on both
    q, gal = F.normalize(_features(50, 16, 4), dim=1).double(), F.normalize(_features(400, 16, 5), dim=1).double()
    qg, gg = torch.cdist(q, gal), torch.cdist(gal, gal)
    for variant in ("official", "paper"):
        cpu = rerank.icfrr(qg, gg, kg=30, kq=20, variant=variant)
        gpu = rerank.icfrr(qg.to(CUDA), gg.to(CUDA), kg=30, kq=20, variant=variant, device=CUDA)
        assert torch.equal(gpu.cpu(), cpu)


def test_sinkhorn_and_kmeans_run_on_the_gpu():
    cost = torch.rand(4, 30, 30, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for method in ("log", "scaling"):
        cpu = sinkhorn(cost, eps=0.1, method=method).plan
        gpu = sinkhorn(cost.to(CUDA), eps=0.1, method=method).plan
        torch.testing.assert_close(gpu.cpu(), cpu)
    x = F.normalize(_features(500, 16, 7), dim=1)
    centroids, labels = kmeans(x.to(CUDA), 8, niter=10, nredo=1, backend="sklearn")
    assert centroids.shape == (8, 16) and labels.shape == (500,) and labels.max() < 8


def test_pcme_scores_and_loss_on_the_gpu():
    g = torch.Generator().manual_seed(8)
    mq, mg = F.normalize(torch.randn(40, 8, generator=g), dim=1), F.normalize(torch.randn(90, 8, generator=g), dim=1)
    lq, lg = torch.randn(40, 8, generator=g) - 2, torch.randn(90, 8, generator=g) - 2
    cpu = pcme.match_scores(mq, lq, mg, lg, 5.0, 5.0, n_samples=7)
    gpu = pcme.match_scores(mq.to(CUDA), lq.to(CUDA), mg.to(CUDA), lg.to(CUDA), 5.0, 5.0, n_samples=7)
    assert gpu.device == CUDA or gpu.device.type == CUDA.type
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-6)
    zq, zg = pcme.sample(mq, lq, 7), pcme.sample(mg[:40], lg[:40], 7)
    matches = torch.eye(40, dtype=torch.bool)
    loss_cpu = pcme.soft_contrastive_loss(zq, zg, matches, 5.0, 5.0)
    loss_gpu = pcme.soft_contrastive_loss(zq.to(CUDA), zg.to(CUDA), matches.to(CUDA), 5.0, 5.0)
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu)


def test_pcme_trains_on_the_gpu():
    from cdrlib.pcme_train import ImageTextData, PCMEConfig, score_tables, train

    g = torch.Generator().manual_seed(9)
    emoji = torch.arange(16).repeat(2)
    data = ImageTextData(torch.randn(32, 8, generator=g), torch.randn(32, 4, 6, generator=g).half(), emoji,
                         {e: [f"item{e}", "face" if e % 2 else "animal"] for e in range(16)},
                         {e: e % 3 for e in range(16)}, {e: torch.tensor([e % 2, 1 - e % 2]) for e in range(16)})
    cfg = replace(PCMEConfig(), dim=4, epochs=2, batch_size=8, embed_dim=8, gru_hidden=4)
    model, history = train(cfg, data, device=CUDA)
    assert len(history) == 2 and all(v == v for v in history[-1].values())
    assert torch.isfinite(score_tables(model, data, device=CUDA)).all()
