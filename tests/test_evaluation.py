"""The tables every chapter shows: per-domain centring, both directions, a mean row — against loops."""
import numpy as np
import pandas as pd
import pytest
import torch

from cdrlib.evaluation import (center, cross_domain_table, icfrr_cross_domain_table, pair_protocols,
                               pivot_results)
from cdrlib.rerank import icfrr_dense


def slow_map_all(ranking, q_lab, g_lab):
    """mAP@all of an explicit ranking, one query at a time, from the definition."""
    aps = []
    for q, row in enumerate(ranking.tolist()):
        hits, precisions = 0, []
        for pos, j in enumerate(row, start=1):
            if g_lab[j] == q_lab[q]:
                hits += 1
                precisions.append(hits / pos)
        if hits:
            aps.append(sum(precisions) / hits)
    return float(np.mean(aps))


def cosine_ranking(q, g):
    """Best first by cosine of the centred features; exact ties by gallery index."""
    qn, gn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    return torch.stack([torch.argsort(-(qn[i] @ gn.T), stable=True) for i in range(len(qn))])


def problem(seed=0, tie=False):
    gen = torch.Generator().manual_seed(seed)
    feats = {"a": torch.randn(14, 5, generator=gen, dtype=torch.float64) + 3.0,   # an offset centring removes
             "b": torch.randn(18, 5, generator=gen, dtype=torch.float64) - 1.0}
    if tie:   # two gallery items with the same feature: every query ties them exactly
        feats["b"][7] = feats["b"][3]
    labels = {"a": np.arange(14) % 4, "b": np.arange(18) % 4}
    return feats, labels


@pytest.mark.parametrize("tie", [False, True])
def test_cross_domain_table_matches_a_loop(tie):
    feats, labels = problem(tie=tie)
    table = cross_domain_table(feats, labels, ks=(5,), method="m")
    assert list(table["query"]) == ["a", "b", "mean"] and set(table["method"]) == {"m"}
    for qd, gd in (("a", "b"), ("b", "a")):
        ranking = cosine_ranking(center(feats[qd]), center(feats[gd]))
        row = table[table["query"] == qd].iloc[0]
        assert row["mAP@all"] == pytest.approx(slow_map_all(ranking, labels[qd], labels[gd]), abs=1e-9)
    assert table.iloc[-1]["mAP@all"] == pytest.approx(table.iloc[:2]["mAP@all"].mean())


@pytest.mark.parametrize("tie", [False, True])
def test_icfrr_table_matches_the_dense_reference(tie):
    feats, labels = problem(seed=1, tie=tie)
    table = icfrr_cross_domain_table(feats, labels, beta=0.5, n_iter=3, method="m")
    for qd, gd in (("a", "b"), ("b", "a")):
        q = torch.nn.functional.normalize(center(feats[qd]), dim=1)
        g = torch.nn.functional.normalize(center(feats[gd]), dim=1)
        kg = max(2, round(len(g) / 4))                # the gallery's mean class size
        qg, gg = torch.cdist(q, g), torch.cdist(g, g)
        before = slow_map_all(icfrr_dense(qg, gg, kg, kg, 0.5, 0), labels[qd], labels[gd])
        after = slow_map_all(icfrr_dense(qg, gg, kg, kg, 0.5, 3), labels[qd], labels[gd])
        row = table[table["query"] == qd].iloc[0]
        assert row["KG"] == kg
        assert row["mAP@all"] == pytest.approx(before, abs=1e-9)
        assert row["mAP@all + ICFRR"] == pytest.approx(after, abs=1e-9)
        assert row["ICFRR gain"] == pytest.approx(after - before, abs=1e-9)
    # n_iter = 0 is the plain cosine ranking: the same mAP@all as the plain table
    plain = cross_domain_table(feats, labels, ks=(5,))
    assert table["mAP@all"].to_numpy() == pytest.approx(plain["mAP@all"].to_numpy(), abs=1e-9)


def test_icfrr_table_names_a_missing_domain():
    feats, labels = problem()
    with pytest.raises(KeyError, match=r"domain\(s\) \['c'\]"):
        icfrr_cross_domain_table(feats, labels, pairs=[("a", "c")])


def test_centring_removes_any_offset_of_one_domain_and_only_that():
    feats, labels = problem(seed=3)
    shifted = {**feats, "b": feats["b"] + torch.linspace(-4, 4, 5, dtype=torch.float64)}
    pd.testing.assert_frame_equal(cross_domain_table(feats, labels, ks=(1, 5)), cross_domain_table(shifted, labels, ks=(1, 5)))
    by_hand = {d: f - f.mean(0) for d, f in shifted.items()}
    pd.testing.assert_frame_equal(cross_domain_table(shifted, labels, ks=(1, 5)),
                                  cross_domain_table(by_hand, labels, ks=(1, 5), center_domains=False))
    assert not cross_domain_table(shifted, labels, ks=(1, 5), center_domains=False).equals(
        cross_domain_table(feats, labels, ks=(1, 5), center_domains=False))


def test_pair_protocols_takes_the_pair_from_each_protocol():
    held = ({"a": "A-held", "b": "B-held", "c": "C-held"}, {"a": 1, "b": 2, "c": 3})
    train = ({"a": "A-train", "b": "B-train"}, {"a": 10, "b": 20})
    assert pair_protocols("b", "a", held, train) == {
        "heldout": ({"b": "B-held", "a": "A-held"}, {"b": 2, "a": 1}),
        "train-as-gallery": ({"b": "B-train", "a": "A-train"}, {"b": 20, "a": 10}),
    }


def test_pivot_results_on_hand_made_tables():
    def table(method, protocol, pair, a_to_b, b_to_a):
        q, g = pair.split("–")
        return pd.DataFrame([
            {"protocol": protocol, "query": q, "gallery": g, "mAP@all": a_to_b},
            {"protocol": protocol, "query": g, "gallery": q, "mAP@all": b_to_a},
            {"protocol": protocol, "query": "mean", "gallery": "2 pairs", "mAP@all": (a_to_b + b_to_a) / 2},
        ]).assign(pair=pair, method=method)

    tables = [table("m1", "heldout", "x–y", 0.2, 0.4), table("m1", "heldout", "x–z", 0.6, 0.8),
              table("m1", "train-as-gallery", "x–y", 0.1, 0.1), table("m2", "heldout", "x–y", 0.0, 1.0),
              table("m2", "heldout", "x–z", 0.5, 0.5), table("m2", "train-as-gallery", "x–y", 0.3, 0.5)]
    want = pd.DataFrame({"method": ["m1", "m2"],
                         "heldout: x–y": [0.3, 0.5], "heldout: x–z": [0.7, 0.5], "heldout: mean": [0.5, 0.5],
                         "train-as-gallery: x–y": [0.1, 0.4], "train-as-gallery: mean": [0.1, 0.4]})
    got = pivot_results(tables)
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got, want, check_names=False, atol=1e-12, rtol=0)
