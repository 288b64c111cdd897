"""UCDIR's losses against slow loop references; distance-of-distance is invariant to centroid order."""
import math

import pytest
import torch
import torch.nn.functional as F

from cdrlib import ucdir


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


def test_instance_wise_against_loop():
    q, k, bank = unit(4, 5, 0), unit(4, 5, 1), unit(9, 5, 2)
    ids = torch.tensor([0, 3, 4, 8])
    T = 0.2
    want = 0.0
    for i in range(4):
        pos = math.exp(float(q[i] @ k[i]) / T)
        negs = sum(math.exp(float(q[i] @ bank[j]) / T) for j in range(9) if j != int(ids[i]))
        want += -math.log(pos / (pos + negs))
    assert ucdir.instance_wise_loss(q, k, bank, ids, T).item() == pytest.approx(want / 4)


def test_cluster_wise_against_loop():
    q, k, bank, cent = unit(5, 4, 3), unit(5, 4, 4), unit(12, 4, 5), unit(3, 4, 6)
    bank_labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1])
    labels = torch.tensor([0, 1, 2, 1, 0])
    T, thr = 0.2, 0.2
    terms = []
    for i in range(5):
        conf = torch.softmax(k[i] @ cent.T / T, 0)[labels[i]].item()
        if conf <= thr:
            continue
        z = sum(math.exp(float(q[i] @ bank[j]) / T) for j in range(12))
        pos = [j for j in range(12) if bank_labels[j] == labels[i]]
        terms.append(-sum(float(q[i] @ bank[j]) / T - math.log(z) for j in pos) / len(pos))
    got = ucdir.cluster_wise_loss(q, k, bank, bank_labels, labels, cent, T, thr)
    assert terms, "the case should keep some anchors"
    assert got.item() == pytest.approx(sum(terms) / len(terms))
    # no confident anchor: zero, and still differentiable
    qq = q.clone().requires_grad_(True)
    zero = ucdir.cluster_wise_loss(qq, k, bank, bank_labels, labels, cent, T, threshold=1.1)
    zero.backward()
    assert zero.item() == 0.0


def test_self_entropy_against_loop():
    qa, qb, ca, cb = unit(3, 4, 7), unit(2, 4, 8), unit(5, 4, 9), unit(5, 4, 10)
    tau = 0.1

    def ent(q, c):
        total = 0.0
        for i in range(len(q)):
            logits = [float(q[i] @ c[j]) / tau for j in range(len(c))]
            z = sum(math.exp(v) for v in logits)
            total += -sum(math.exp(v) / z * (v - math.log(z)) for v in logits)
        return total / len(q)

    want = (ent(qa, ca) + ent(qa, cb) + ent(qb, ca) + ent(qb, cb)) / 4
    assert ucdir.self_entropy_loss(qa, qb, ca, cb, tau).item() == pytest.approx(want)


def test_dod_code_against_loop_and_permutation():
    qa, qb, ca, cb = unit(4, 6, 11), unit(3, 6, 12), unit(5, 6, 13), unit(5, 6, 14)
    tau = 0.1

    def pattern(q, c):
        p = [torch.softmax(q[i] @ c.T / tau, 0) for i in range(len(q))]
        return [[1 - float(F.cosine_similarity(p[i], p[j], dim=0)) for j in range(len(q))] for i in range(len(q))]

    want = 0.0
    for q in (qa, qb):
        da, db = pattern(q, ca), pattern(q, cb)
        want += sum(sum((da[i][j] - db[i][j]) ** 2 for j in range(len(q))) for i in range(len(q))) / len(q)
    got = ucdir.dod_loss_batch(qa, qb, ca, cb, tau)
    assert got.item() == pytest.approx(want / 2)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert ucdir.dod_loss_batch(qa, qb, ca[perm], cb.flip(0), tau).item() == pytest.approx(got.item())


def test_dod_seed_against_loop_and_permutation():
    ca = unit(4, 3, 15)
    cb = F.normalize(ca + 0.05 * unit(4, 3, 16), dim=1)        # B's centroids: A's, moved a little
    perm = torch.tensor([2, 0, 3, 1])
    cb_shuffled = cb[perm]
    pi = ucdir.match_centroids(ca, cb_shuffled)
    assert torch.equal(cb_shuffled[pi], cb)                     # the matching undoes the shuffle
    want = sum(abs(float((ca[i] - ca[j]).norm()) - float((cb[i] - cb[j]).norm())) for i in range(4) for j in range(4))
    assert ucdir.dod_loss_centroid(ca, cb_shuffled).item() == pytest.approx(want)
    assert ucdir.dod_loss_centroid(ca, cb).item() == pytest.approx(want)


def test_dod_seed_mean_reduction_and_finite_gradient():
    ca, cb = unit(5, 4, 17).requires_grad_(), unit(5, 4, 18).requires_grad_()
    total = ucdir.dod_loss_centroid(ca, cb)
    mean = ucdir.dod_loss_centroid(ca, cb, reduction="mean")
    assert mean.item() == pytest.approx(total.item() / 25)
    mean.backward()
    assert torch.isfinite(ca.grad).all() and torch.isfinite(cb.grad).all()   # the zero diagonal is harmless
    assert ca.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reduction"):
        ucdir.dod_loss_centroid(ca, cb, reduction="max")


def test_batch_centroids_against_loop():
    bank, labels = unit(12, 5, 19), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 1, 2, 3])
    ids = torch.tensor([3, 7, 10])
    q = unit(3, 5, 20).requires_grad_()
    got = ucdir.batch_centroids(bank, labels, ids, q, k=5)
    entries = bank.clone()
    entries[ids] = q.detach()
    for c in range(5):
        members = entries[labels == c]
        want = F.normalize(members.sum(0), dim=0) if len(members) else torch.zeros(5, dtype=bank.dtype)
        assert torch.allclose(got[c].detach(), want, atol=1e-6)
    got[labels[ids]].sum().backward()       # the gradient reaches the queries
    assert q.grad.abs().sum() > 0
    # with the queries equal to their bank entries, these are the bank's own centroids
    same = ucdir.batch_centroids(bank, labels, ids, bank[ids], k=4)
    assert torch.allclose(same, F.normalize(torch.stack([bank[labels == c].sum(0) for c in range(4)]), dim=1))


def test_cluster_centroids_against_loop():
    z = unit(11, 4, 21).requires_grad_()
    labels = torch.tensor([2, 0, 2, 2, 0, 1, 1, 2, 0, 0, 1])
    got = ucdir.cluster_centroids(z, labels, k=4)   # cluster 3 is empty
    for c in range(4):
        members = z.detach()[labels == c]
        want = F.normalize(members.sum(0), dim=0) if len(members) else torch.zeros(4, dtype=z.dtype)
        assert torch.allclose(got[c].detach(), want, atol=1e-6)
    assert got.shape == (4, 4) and torch.equal(got[3].detach(), torch.zeros(4, dtype=z.dtype))
    got[0].sum().backward()         # the gradient reaches every member of the cluster, and only them
    touched = z.grad.abs().sum(1) > 0
    assert torch.equal(touched, labels == 0)


def test_dod_seed_gradient_is_finite_when_centroids_coincide():
    # two coincident centroids (a collapsed head, or two empty clusters): sqrt at 0 must not give NaN
    c_a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    c_b = torch.tensor([[0.0, 1.0], [0.6, 0.8], [0.6, 0.8]], dtype=torch.float64, requires_grad=True)
    loss = ucdir.dod_loss_centroid(c_a, c_b, matching=torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(c_a.grad).all() and torch.isfinite(c_b.grad).all()
