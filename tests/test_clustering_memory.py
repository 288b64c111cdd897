"""k-means backends agree on well-separated data; the memory bank and momentum update do what they say."""
import numpy as np
import pytest
import torch

from cdrlib.clustering import kmeans
from cdrlib.memory import MemoryBank, momentum_copy, momentum_update
from cdrlib.search import faiss_available


def blobs(n_per=30, k=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 5
    labels = torch.arange(k).repeat_interleave(n_per)
    return centres[labels] + 0.3 * torch.randn(k * n_per, d, generator=g), labels


def same_partition(a, b):
    return all(len(set(b[a == c].tolist())) == 1 for c in a.unique())


@pytest.mark.parametrize("backend", ["sklearn"] + (["faiss"] if faiss_available() else []))
def test_kmeans_recovers_blobs(backend):
    x, truth = blobs()
    c, labels = kmeans(x, 4, backend=backend)
    assert c.shape == (4, 8) and torch.allclose(c.norm(dim=1), torch.ones(4), atol=1e-5)
    assert same_partition(labels, truth) and same_partition(truth, labels)


@pytest.mark.parametrize("backend", ["sklearn"] + (["faiss"] if faiss_available() else []))
def test_kmeans_thread_count_changes_nothing_but_the_threads(backend):
    x, _ = blobs(n_per=40, k=5, seed=3)
    c1, l1 = kmeans(x, 5, backend=backend, threads=1)
    c2, l2 = kmeans(x, 5, backend=backend, threads=2)
    assert torch.equal(l1, l2)
    torch.testing.assert_close(c1, c2)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            kmeans(x, 5, backend=backend, threads=bad)


def test_kmeans_bad_k():
    x, _ = blobs(n_per=2, k=2)
    with pytest.raises(ValueError, match="k=5 is larger than the number of points"):
        kmeans(x, 5)


def test_memory_bank_updates_by_id():
    bank = MemoryBank(10, 4)
    before = bank.keys.clone()
    bank.update(torch.tensor([2, 7]), torch.tensor([[3.0, 0, 0, 0], [0, 0, 0, -2.0]]))
    assert torch.equal(bank.keys[2], torch.tensor([1.0, 0, 0, 0]))
    assert torch.equal(bank.keys[7], torch.tensor([0, 0, 0, -1.0]))
    untouched = [i for i in range(10) if i not in (2, 7)]
    assert torch.equal(bank.keys[untouched], before[untouched])


def test_momentum_update():
    q = torch.nn.Linear(3, 2)
    k = momentum_copy(q)
    with torch.no_grad():
        q.weight.add_(1.0)
    old = k.weight.clone()
    momentum_update(q, k, m=0.9)
    assert torch.allclose(k.weight, 0.9 * old + 0.1 * q.weight)
    assert not k.weight.requires_grad


def test_cluster_purity_against_loop():
    from collections import Counter

    from cdrlib.clustering import cluster_purity

    rng = np.random.default_rng(0)
    assign, labels = rng.integers(0, 6, 200), rng.integers(0, 4, 200)
    want = sum(Counter(labels[assign == c]).most_common(1)[0][1] for c in set(assign.tolist())) / 200
    assert cluster_purity(assign, labels) == pytest.approx(want)
    assert cluster_purity([0, 0, 1, 1], [3, 3, 5, 5]) == 1.0
    with pytest.raises(ValueError, match="both be"):
        cluster_purity([0, 1], [0])
