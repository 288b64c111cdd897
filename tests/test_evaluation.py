"""The tables every chapter shows: per-domain centring, both directions, a mean row — against loops."""
import numpy as np
import pytest
import torch

from cdrlib.evaluation import center, cross_domain_table, icfrr_cross_domain_table
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
