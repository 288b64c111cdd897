"""Premise dials and the experiment harness, against slow references and hand-computed values."""
from dataclasses import replace
from itertools import permutations
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from cdrlib.clustering import cluster_purity
from cdrlib.experiment import PairBenchmark
from cdrlib.ibnm_train import IBNMConfig
from cdrlib.models.vit import VisionTransformer
from cdrlib.premise import (ClassMixedClusters, OracleJointLabels, OracleMatching, holds,
                            match_clusters_to_classes, premise_record)
from cdrlib.run_store import RunStore
from cdrlib.ucdir_train import UCDIR, UCDIRConfig


def overlap(assign, labels, mapping):
    return sum(int(mapping[a] == y) for a, y in zip(assign.tolist(), labels.tolist()))


@pytest.mark.parametrize("seed", range(5))
def test_cluster_class_map_maximises_agreement_like_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    k = 5
    labels = torch.randint(0, 4, (40,), generator=g)
    assign = torch.randint(0, k, (40,), generator=g)
    mapping = match_clusters_to_classes(assign, labels, k)
    assert sorted(mapping.tolist()) == list(range(k))                  # a permutation of [0, k)
    best = max(overlap(assign, labels, perm) for perm in permutations(range(k)))
    assert overlap(assign, labels, mapping.tolist()) == best


def test_cluster_class_map_needs_enough_clusters():
    with pytest.raises(ValueError, match="k ≥ the number of classes"):
        match_clusters_to_classes(torch.tensor([0, 1, 0]), torch.tensor([0, 1, 2]), 2)


def test_class_mixed_clusters_ends_and_nesting():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (60,), generator=g)
    assign = torch.randint(0, 6, (60,), generator=g)
    ends = {p: ClassMixedClusters({"A": labels}, p, seed=3)("A", assign) for p in (0.0, 0.5, 1.0)}
    # p = 0: the same partition as k-means, only renamed
    same = assign[:, None] == assign[None, :]
    assert torch.equal(ends[0.0][:, None] == ends[0.0][None, :], same)
    # p = 1: the classes
    assert torch.equal(ends[1.0], labels)
    # p = 0.5: half the images carry their class, the rest their renamed cluster
    order = ClassMixedClusters({"A": labels}, 0.5, seed=3).order["A"]
    assert torch.equal(ends[0.5][order[:30]], labels[order[:30]])
    assert torch.equal(ends[0.5][order[30:]], ends[0.0][order[30:]])
    purity = [cluster_purity(ends[p], labels) for p in (0.0, 0.5, 1.0)]
    assert purity[0] <= purity[1] <= purity[2] == 1.0


def test_class_mixed_clusters_rejects_bad_input():
    with pytest.raises(ValueError, match="share"):
        ClassMixedClusters({"A": np.zeros(3, int)}, 1.5)
    with pytest.raises(ValueError, match="3 labels but 2 assignments"):
        ClassMixedClusters({"A": np.zeros(3, int)}, 0.5)("A", torch.zeros(2, dtype=torch.int64))


def test_oracle_matching_share_of_right_matches():
    k = 8
    wrong = lambda c_a, c_b: (torch.arange(k) + 1) % k         # a fallback that is never right
    assert OracleMatching(k, 0.0, fallback=wrong)(None, None).tolist() == wrong(None, None).tolist()
    full = OracleMatching(k, 1.0, fallback=wrong)
    assert full(None, None).tolist() == list(range(k)) and full.agreement == 1.0
    half = OracleMatching(k, 0.5, seed=1, fallback=wrong)
    half(None, None)
    assert half.agreement == 0.5


def test_premise_record_hand_computed():
    r = premise_record("x", "purity", 0.4, "M", "A", {0: 0.30, 1: 0.32, 2: 0.31}, {0: 0.25, 1: 0.26, 2: 0.28})
    assert r["value"] == pytest.approx(0.31) and r["ablation_value"] == pytest.approx(0.79 / 3)
    assert r["gain"] == pytest.approx(0.31 - 0.79 / 3)
    assert r["seed_spread"] == pytest.approx(0.06 - 0.03)        # gains 0.05, 0.06, 0.03
    assert r["seeds"] == 3 and holds(r) is False                 # 0.0467 < 3 × 0.03
    strong = premise_record("x", "p", 1, "M", "A", {0: 0.5, 1: 0.5, 2: 0.5}, {0: 0.2, 1: 0.21, 2: 0.2})
    assert holds(strong)
    assert not holds(premise_record("x", "p", 1, "M", "A", {0: 0.5}, {0: 0.2}))   # one seed is not enough
    with pytest.raises(ValueError, match="same seeds"):
        premise_record("x", "p", 1, "M", "A", {0: 0.5, 1: 0.5}, {0: 0.2})


def test_ucdir_relabel_sets_clusters_and_their_centroids():
    torch.manual_seed(0)
    n, classes = 48, 4
    x = {d: torch.randn(n, 3, 16) for d in "ab"}
    labels = torch.arange(n) % classes
    cfg = replace(UCDIRConfig.frozen(), epochs=2, warmup_epoch=1, batch_size=16, k=classes, proj_hidden=8,
                  proj_dim=4, kmeans_nredo=1)
    m = UCDIR(cfg, x["a"], x["b"], torch.nn.Identity(), relabel=lambda d, a: labels)
    m.recluster(epoch=1)
    c, got = m.clusters.get("A")
    assert torch.equal(got, labels)
    emb = m.embed_all("A")
    want = torch.nn.functional.normalize(torch.stack([emb[labels == i].mean(0) for i in range(classes)]), dim=1)
    torch.testing.assert_close(c, want)
    bad = UCDIR(cfg, x["a"], x["b"], torch.nn.Identity(), relabel=lambda d, a: labels + classes)
    with pytest.raises(ValueError, match="cluster ids in"):
        bad.recluster(epoch=1)


class _Sets(SimpleNamespace):
    def tensor(self):
        return self.images


def _tiny_bench(pairs=(("a", "b"),)):
    g = torch.Generator().manual_seed(0)
    sets = {}
    for part, n in (("train", 24), ("held", 12)):
        sets[part] = {d: _Sets(images=torch.rand(n, 3, 64, 64, generator=g), labels=np.arange(n) % 3)
                      for d in ("a", "b", "c")}
    backbone = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())   # (B, 12)
    return PairBenchmark(backbone, sets["train"], sets["held"], pairs, n_views=3)


def test_pair_benchmark_tables_and_per_seed():
    bench = _tiny_bench()
    assert bench.inputs["a"].shape == (24, 3, 12)
    assert "views" not in vars(bench.inputs["a"])          # the augmented views wait for a run that trains
    assert torch.equal(bench.features["train-as-gallery"]["a"], bench.inputs["a"].views[:, 0])
    bench.baselines()

    def fake(a, b, seed, key):   # a "method" whose table is known: each row's mAP@all is 0.1 × (seed + 1)
        return pd.DataFrame([{"protocol": pr, "query": q, "gallery": "x", "mAP@all": 0.1 * (seed + 1)}
                             for pr in ("heldout", "train-as-gallery") for q in (a, b, "mean")])

    bench.run("fake", fake, seeds=(0, 1))
    assert bench.per_seed("fake") == pytest.approx({0: 0.1, 1: 0.2})
    table = bench.table().set_index("method")
    assert list(table.index) == ["chance", "raw pixels", "backbone features", "fake"]
    assert table.loc["fake", "heldout: mean"] == pytest.approx(0.1)
    assert bench.table(seed=1).set_index("method").loc["fake", "train-as-gallery: a–b"] == pytest.approx(0.2)
    with pytest.raises(KeyError, match="no runs of 'nothing'"):
        bench.per_seed("nothing")


def test_pair_benchmark_names_a_missing_domain():
    with pytest.raises(ValueError, match=r"domain\(s\) \['z'\]"):
        _tiny_bench(pairs=(("a", "z"),))


def test_pair_benchmark_embeddings_are_the_runs_own():
    bench = _tiny_bench()

    class Doubling:   # a trained "method" whose embedding is known
        def embed(self, x, device=None):
            return 2 * x

    def fake(a, b, seed, key):
        table = pd.DataFrame([{"protocol": "heldout", "query": "mean", "gallery": "x", "mAP@all": 0.0}])
        return Doubling(), [], table

    bench.run("fake", fake)
    emb = bench.embeddings("fake", "a", "b")
    torch.testing.assert_close(emb["a"], 2 * bench.features["heldout"]["a"])
    torch.testing.assert_close(bench.embeddings("fake", "a", "b", protocol="train-as-gallery")["b"], 2 * bench.inputs["b"].plain)
    with pytest.raises(KeyError, match="no trained run of 'fake' on a–b with seed 1"):
        bench.embeddings("fake", "a", "b", seed=1)


def test_pair_benchmark_trains_ibnm_and_ucdir_through_one_harness(tmp_path):
    g = torch.Generator().manual_seed(0)
    sets = {part: {d: _Sets(images=torch.rand(n, 3, 32, 32, generator=g), labels=np.arange(n) % 4) for d in "ab"}
            for part, n in (("train", 24), ("held", 12))}
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, dim=32, depth=2, heads=2).eval()
    bench = PairBenchmark(vit, sets["train"], sets["held"], [("a", "b")], n_views=3, store=RunStore(tmp_path))
    cfg = IBNMConfig.frozen(epochs=2, warmup_epoch=1, se_epoch=1, fusion_epoch=1, batch_size=8, k=4, image_size=32,
                            proj_hidden=16, proj_dim=8, kmeans_nredo=1)
    bench.run("IBNM", bench.ibnm(cfg))
    bench.run("UCDIR", bench.ibnm(replace(cfg, fusion=None, noise=False)))
    model, history = bench.trained[("IBNM", "a–b", 0)]
    assert "feat" in history[-1] and "feat" not in bench.trained[("UCDIR", "a–b", 0)][1][-1]
    assert bench.embeddings("IBNM", "a", "b")["a"].shape == (12, 8)
    assert set(bench.table()["method"]) == {"IBNM", "UCDIR"}
    # a second harness loads both runs from the store without computing the augmented views
    again = PairBenchmark(vit, sets["train"], sets["held"], [("a", "b")], n_views=3, store=RunStore(tmp_path))
    again.run("IBNM", again.ibnm(cfg))
    again.run("UCDIR", again.ibnm(replace(cfg, fusion=None, noise=False)))
    assert again.store.loaded == 2 and again.store.trained == 0
    assert all("views" not in vars(v) for v in again.inputs.values())
    assert again.table().equals(bench.table())


def test_oracle_joint_labels_set_classes_and_mark_them_clean():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    assign = torch.tensor([1, 1, 1, 0, 2, 2, 1, 0])  # renamed 1 → 0, 0 → 1, 2 → 2: 7 of 8 right
    split = torch.tensor([True, False, False, True, False, True, False, False])
    none = OracleJointLabels(labels, 0.0)
    out, clean = none(assign, split)
    assert torch.equal(out, ClassMixedClusters({"joint": labels}, 0.0)("joint", assign))
    assert torch.equal(clean, split) and none.agreement == pytest.approx(7 / 8)
    half = OracleJointLabels(labels, 0.5, seed=2)
    out, clean = half(assign, split)
    chosen = half.classes.chosen("joint")
    assert int(chosen.sum()) == 4 and torch.equal(out[chosen], labels[chosen])
    assert torch.equal(clean, split | chosen)                     # the oracle's images are clean
    out, clean = OracleJointLabels(labels, 1.0)(assign, split)
    assert torch.equal(out, labels) and bool(clean.all())
