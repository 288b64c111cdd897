"""Every metric against a slow reference written as plain loops over queries and ranks."""
import math

import numpy as np
import pytest
import torch

from cdrlib import metrics as M

# ------------------------------------------------------------------ slow references

def ref_ranking(scores_row):
    """Gallery indices by score descending, exact ties by ascending index: a plain sort on tuples."""
    return [j for _, j in sorted((-s, j) for j, s in enumerate(scores_row))]


def ref_all(scores, relevant, ks):
    """All metrics from plain loops."""
    Q = len(scores)
    out = {}
    rankings = [ref_ranking(scores[q]) for q in range(Q)]
    rels = [[bool(relevant[q][j]) for j in rankings[q]] for q in range(Q)]
    n_rel = [sum(r) for r in rels]
    aps, rps, mapr = [], [], []
    for q in range(Q):
        if n_rel[q] == 0:
            continue
        hits, s = 0, 0.0
        for r, is_rel in enumerate(rels[q]):
            if is_rel:
                hits += 1
                s += hits / (r + 1)
        aps.append(s / n_rel[q])
        R = n_rel[q]
        rps.append(sum(rels[q][:R]) / R)
        hits, s = 0, 0.0
        for r in range(R):
            if rels[q][r]:
                hits += 1
                s += hits / (r + 1)
        mapr.append(s / R)
    out["mAP@all"] = float(np.mean(aps))
    out["R-Precision"] = float(np.mean(rps))
    out["mAP@R"] = float(np.mean(mapr))
    for k in ks:
        out[f"P@{k}"] = float(np.mean([sum(rels[q][:k]) / k for q in range(Q)]))
        num = sum(sum(rels[q][:min(k, n_rel[q])]) for q in range(Q))
        den = sum(min(k, n_rel[q]) for q in range(Q))
        out[f"P@{k}(capped)"] = num / den
        out[f"R@{k}"] = float(np.mean([any(rels[q][:k]) for q in range(Q) if n_rel[q] > 0]))
        maps = []
        for q in range(Q):
            hits, s = 0, 0.0
            for r in range(k):
                if rels[q][r]:
                    hits += 1
                    s += hits / (r + 1)
            maps.append(s / hits if hits else 0.0)
        out[f"mAP@{k}(icfrr)"] = float(np.mean(maps))
    return out


def check_equal(got, want):
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


# ------------------------------------------------------------------ hand-made cases

def test_hand_made_ranking():
    # one query, gallery of 5; ranking by score: items 3, 1, 4, 0, 2; relevant: 1 and 2
    scores = torch.tensor([[0.2, 0.8, 0.1, 0.9, 0.5]])
    rel = torch.tensor([[False, True, True, False, False]])
    rr = M.ranks_from_scores(scores, rel)
    assert rr.ranks.tolist() == [[1.0, 4.0]]
    # AP = (1/2)(1/2 + 2/5) = 0.45
    assert M.mean_average_precision(rr) == pytest.approx(0.45)
    assert M.precision_at_k(rr, 2) == pytest.approx(0.5)
    assert M.precision_at_k(rr, 5) == pytest.approx(0.4)
    # capped: min(5, 2) = 2 → 1 hit out of 2
    assert M.precision_at_k_capped(rr, 5) == pytest.approx(0.5)
    assert M.recall_at_k(rr, 1) == 0.0 and M.recall_at_k(rr, 2) == 1.0
    # ICFRR mAP@3: one positive found at rank 2 → AP = 1/2 / 1
    assert M.map_at_k_icfrr(rr, 3) == pytest.approx(0.5)
    assert M.r_precision(rr) == pytest.approx(0.5)
    assert M.map_at_r(rr) == pytest.approx(0.25)


def test_ties_break_by_gallery_index():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    rel = torch.tensor([[False, False, True, True]])
    rr = M.ranks_from_scores(scores, rel)
    assert rr.ranks.tolist() == [[2.0, 3.0]]
    rel2 = torch.tensor([[True, False, False, True]])
    assert M.ranks_from_scores(scores, rel2).ranks.tolist() == [[0.0, 3.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [1, 3, 1000])
def test_ranks_from_scores_equal_a_loop_with_few_and_many_ties(levels, dtype):
    """Rows with no ties, a few tied relevant items (counted one by one) and more than
    TIES_COUNTED_DIRECTLY of them (a stable sort of the row), against a plain loop."""
    g = torch.Generator().manual_seed(levels)
    scores = torch.randint(0, levels, (6, 200), generator=g).to(dtype) / levels
    scores[0] = torch.rand(200, generator=g, dtype=dtype)          # no ties
    scores[1, :5] = scores[1, 5]                                    # a few ties
    scores[2, ::2] = -0.0                                           # ±0 compare equal
    scores[2, 1::2] = 0.0
    rel = torch.rand(6, 200, generator=g) < 0.4
    rel[3] = False                                                  # a query without relevant items
    got = M.ranks_from_scores(scores, rel).ranks
    for q in range(6):
        s = scores[q].tolist()
        want = sorted(
            sum(s[j] > s[c] or (s[j] == s[c] and j < c) for j in range(200))
            for c in range(200) if rel[q, c]
        )
        row = got[q]
        assert row[: len(want)].tolist() == want
        assert torch.isinf(row[len(want):]).all()


def test_query_without_relevant_items_is_left_out_of_ap():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.4, 0.6]])
    rel = torch.tensor([[True, False, False], [False, False, False]])
    rr = M.ranks_from_scores(scores, rel)
    assert M.mean_average_precision(rr) == pytest.approx(1.0)
    assert M.summarize(rr, ks=(1,))["n_queries_without_relevant"] == 1
    # P@K counts that query as zero hits: it is a mean over all queries
    assert M.precision_at_k(rr, 1) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quantize", [False, True])
def test_random_against_loops(seed, quantize):
    g = torch.Generator().manual_seed(seed)
    Q, G = 7, 23
    scores = torch.rand(Q, G, generator=g, dtype=torch.float64)
    if quantize:  # many exact ties
        scores = (scores * 4).floor() / 4
    relevant = torch.rand(Q, G, generator=g) < 0.3
    relevant[0] = False  # a query without relevant items
    relevant[1, :] = False
    relevant[1, 5] = True  # one relevant item: K ≫ n_rel
    ks = (1, 3, 10, 23)
    got = M.summarize(M.ranks_from_scores(scores, relevant), ks)
    check_equal(got, ref_all(scores.tolist(), relevant.tolist(), ks))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("direct", [0, 2, 10_000])
def test_ties_counted_directly_or_by_a_row_sort_give_the_stable_ranks(seed, direct, monkeypatch):
    """Rows with at most TIES_COUNTED_DIRECTLY tied relevant items count them one by one, the others
    sort the row: 0 sends every row to the sort, 10 000 every row to the direct count, 2 mixes."""
    monkeypatch.setattr(M, "TIES_COUNTED_DIRECTLY", direct)
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(9, 40, generator=g) * 6).floor()   # many exact ties, some rows more than others
    scores[0] = torch.rand(40, generator=g)                  # a row without ties
    relevant = torch.rand(9, 40, generator=g) < 0.4
    got = M.ranks_from_scores(scores, relevant)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)      # the slow reference
    position = torch.empty_like(order).scatter_(1, order, torch.arange(40).expand(9, -1))
    for q in range(9):
        want = sorted(position[q, relevant[q]].tolist())
        assert got.ranks[q, : len(want)].tolist() == want
        assert torch.isinf(got.ranks[q, len(want):]).all()


@pytest.mark.parametrize("seed", range(3))
def test_ranking_input_equals_score_input(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(9, 30, generator=g)
    relevant = torch.rand(9, 30, generator=g) < 0.25
    ranking = torch.tensor([ref_ranking(row) for row in scores.tolist()])
    a = M.summarize(M.ranks_from_scores(scores, relevant), (1, 5, 30))
    b = M.summarize(M.ranks_from_ranking(ranking, relevant), (1, 5, 30))
    check_equal(b, a)


def test_truncated_ranking_counts_missing_items_as_not_retrieved():
    relevant = torch.tensor([[True, False, True, False, False]])
    ranking = torch.tensor([[0, 1]])  # item 2 never retrieved
    rr = M.ranks_from_ranking(ranking, relevant)
    assert M.mean_average_precision(rr) == pytest.approx(0.5)  # (1/1)/2


def test_features_chunked_equals_unchunked_and_labels_relevance():
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(50, 8, generator=g), torch.randn(70, 8, generator=g)
    ql, gl = torch.randint(0, 4, (50,), generator=g), torch.randint(0, 4, (70,), generator=g)
    full = M.retrieval_metrics(q, gal, ql, gl, ks=(1, 10))
    chunked = M.retrieval_metrics(q, gal, ql, gl, ks=(1, 10), chunk_size=7)
    check_equal(chunked, full)
    scores = (torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(gal, dim=1).T).double()
    rel = ql[:, None] == gl[None, :]
    check_equal(full, ref_all(scores.tolist(), rel.tolist(), (1, 10)))


def test_euclidean_ranks_by_distance():
    g = torch.Generator().manual_seed(1)
    q, gal = torch.randn(10, 5, generator=g, dtype=torch.float64), torch.randn(40, 5, generator=g, dtype=torch.float64)
    ql, gl = torch.randint(0, 3, (10,), generator=g), torch.randint(0, 3, (40,), generator=g)
    got = M.retrieval_metrics(q, gal, ql, gl, metric="euclidean", ks=(5,))
    neg_dist = -torch.cdist(q, gal)
    check_equal(got, ref_all(neg_dist.tolist(), (ql[:, None] == gl[None, :]).tolist(), (5,)))


def test_pmrp_against_loops():
    g = torch.Generator().manual_seed(3)
    q, gal = torch.randn(12, 6, generator=g, dtype=torch.float64), torch.randn(25, 6, generator=g, dtype=torch.float64)
    qt = (torch.rand(12, 5, generator=g) < 0.4).to(torch.uint8)
    gt = (torch.rand(25, 5, generator=g) < 0.4).to(torch.uint8)
    got = M.pmrp(q, gal, qt, gt)
    scores = (torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(gal, dim=1).T).tolist()
    per_z = []
    for z in (0, 1, 2):
        vals = []
        for i in range(12):
            plaus = [int((qt[i] != gt[j]).sum()) <= z for j in range(25)]
            R = sum(plaus)
            if R == 0:
                continue
            top = ref_ranking(scores[i])[:R]
            vals.append(sum(plaus[j] for j in top) / R)
        per_z.append(np.mean(vals))
        assert got[f"PMRP@{z}"] == pytest.approx(per_z[-1])
    assert got["PMRP"] == pytest.approx(np.mean(per_z))


# ------------------------------------------------------------------ torchmetrics, where it defines the same quantity

def test_against_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.retrieval")
    g = torch.Generator().manual_seed(5)
    scores = torch.rand(15, 40, generator=g) + 0.01  # positive, no ties
    relevant = torch.rand(15, 40, generator=g) < 0.3
    relevant[:, 0] = True  # every query has a relevant item
    rr = M.ranks_from_scores(scores, relevant)
    ap = np.mean([tm.retrieval_average_precision(scores[i], relevant[i]).item() for i in range(15)])
    assert M.mean_average_precision(rr) == pytest.approx(ap, abs=1e-6)
    p5 = np.mean([tm.retrieval_precision(scores[i], relevant[i], top_k=5).item() for i in range(15)])
    assert M.precision_at_k(rr, 5) == pytest.approx(p5, abs=1e-6)
    rp = np.mean([tm.retrieval_r_precision(scores[i], relevant[i]).item() for i in range(15)])
    assert M.r_precision(rr) == pytest.approx(rp, abs=1e-6)
    hit = np.mean([tm.retrieval_hit_rate(scores[i], relevant[i], top_k=3).item() for i in range(15)])
    assert M.recall_at_k(rr, 3) == pytest.approx(hit, abs=1e-6)


def test_torchmetrics_pitfall_with_negative_scores():
    """torchmetrics masks targets with preds > 0, so negative distances give mAP 0."""
    tm = pytest.importorskip("torchmetrics.functional.retrieval")
    dist = torch.tensor([0.1, 0.5, 0.9])
    relevant = torch.tensor([True, False, True])
    ours = M.mean_average_precision(M.ranks_from_scores(-dist[None], relevant[None]))
    assert ours == pytest.approx((1 + 2 / 3) / 2)
    if tm.retrieval_average_precision(-dist, relevant).item() == 0.0:
        # the pitfall is present in this torchmetrics release; positive scores give the right answer
        assert tm.retrieval_average_precision(1 - dist, relevant).item() == pytest.approx(ours)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("bad,match", [
    (dict(k=0), "positive integer"),
    (dict(k=100), "larger than the gallery"),
])
def test_bad_k(bad, match):
    rr = M.ranks_from_scores(torch.rand(2, 5), torch.rand(2, 5) < 0.5)
    with pytest.raises(ValueError, match=match):
        M.precision_at_k(rr, **bad)


def test_bad_features_and_labels():
    q, g = torch.randn(4, 3), torch.randn(6, 3)
    ql, gl = torch.zeros(4, dtype=torch.long), torch.zeros(6, dtype=torch.long)
    nan = q.clone()
    nan[1, 0] = math.nan
    with pytest.raises(ValueError, match="query holds NaN"):
        M.retrieval_metrics(nan, g, ql, gl)
    inf = g.clone()
    inf[0, 0] = math.inf
    with pytest.raises(ValueError, match="gallery holds NaN or infinite"):
        M.retrieval_metrics(q, inf, ql, gl)
    with pytest.raises(ValueError, match="gallery is empty"):
        M.retrieval_metrics(q, torch.zeros(0, 3), ql, gl[:0])
    with pytest.raises(ValueError, match="query_labels has 3 entries but there are 4"):
        M.retrieval_metrics(q, g, ql[:3], gl)
    with pytest.raises(ValueError, match="gallery has dimension 2"):
        M.retrieval_metrics(q, g[:, :2], ql, gl)
    with pytest.raises(TypeError, match="query must hold floats"):
        M.retrieval_metrics(q.long(), g, ql, gl)
    with pytest.raises(TypeError, match="gallery_labels must hold integer"):
        M.retrieval_metrics(q, g, ql, gl.float())
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        M.retrieval_metrics(q, g, ql, {"a": 1})
    with pytest.raises(ValueError, match="k=7 is larger than the gallery"):
        M.retrieval_metrics(q, g, ql, gl, ks=(1, 7))
    assert "P@10" not in M.retrieval_metrics(q, g, ql, gl)  # default Ks are cut to the gallery


@pytest.mark.parametrize("chunk", [1, 3, 50])
def test_chunked_metrics_with_exact_ties_and_few_classes(chunk):
    # integer features: many exact ties; two classes: every query has half the gallery relevant
    g = torch.Generator().manual_seed(4)
    q = torch.randint(0, 3, (17, 4), generator=g).double()
    gal = torch.randint(0, 3, (41, 4), generator=g).double()
    ql, gl = torch.randint(0, 2, (17,), generator=g), torch.randint(0, 2, (41,), generator=g)
    got = M.retrieval_metrics(q, gal, ql, gl, metric="dot", ks=(1, 5, 41), chunk_size=chunk)
    check_equal(got, ref_all((q @ gal.T).tolist(), (ql[:, None] == gl[None, :]).tolist(), (1, 5, 41)))
    # a ranking, ranked by the same rule, gives the same numbers through the chunked ranking path
    ranking = torch.tensor([ref_ranking(row) for row in (q @ gal.T).tolist()])
    check_equal(M.ranking_metrics(ranking, ql, gl, ks=(1, 5, 41)), got)


def test_metric_sums_over_chunks_equal_one_summary():
    g = torch.Generator().manual_seed(5)
    scores = (torch.rand(12, 30, generator=g) * 5).floor()
    relevant = torch.rand(12, 30, generator=g) < 0.4
    relevant[3] = False
    whole = M.summarize(M.ranks_from_scores(scores, relevant), (1, 10))
    sums = M.MetricSums(30, (1, 10))
    for sl in (slice(0, 5), slice(5, 6), slice(6, 12)):
        sums.add(M.ranks_from_scores(scores[sl], relevant[sl]))
    check_equal(sums.result(), whole)
    with pytest.raises(ValueError, match="gallery has 31"):
        M.MetricSums(31, (1,)).add(M.ranks_from_scores(scores, relevant))


_PEAK = """
import resource, sys, torch
torch.set_num_threads(1)
from cdrlib import metrics, pcme
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
{setup}
base = peak_mb()
{work}
print(peak_mb() - base)
"""


def _peak_increase_mb(setup: str, work: str) -> float:
    import subprocess
    import sys
    code = _PEAK.format(setup=setup, work=work)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_of_metrics_stays_bounded_with_few_classes():
    # Q = 30k queries, G = 6k, two classes: a (Q, max n_rel) float64 table of every query's relevant
    # ranks would take 30k × 3k × 8 B ≈ 720 MB (twice that while concatenated); the chunked sums keep
    # one chunk's ranks and a few numbers per query.
    setup = ("g = torch.Generator().manual_seed(0)\n"
             "q, gal = torch.randn(30000, 8, generator=g), torch.randn(6000, 8, generator=g)\n"
             "ql, gl = torch.randint(0, 2, (30000,), generator=g), torch.randint(0, 2, (6000,), generator=g)")
    grown = _peak_increase_mb(setup, "metrics.retrieval_metrics(q, gal, ql, gl, ks=(1, 10))")
    assert grown < 800, f"peak memory grew by {grown:.0f} MB"   # measured: 356 MB (the whole table: 3.9 GB)


@pytest.mark.slow
def test_memory_of_match_scores_stays_bounded():
    # 256 queries × 20k gallery items × J² = 49 sample pairs would be 250M distances (1 GB in
    # float32, several such temporaries); the budget keeps about 16M at a time.
    setup = ("g = torch.Generator().manual_seed(0)\n"
             "mq, mg = torch.randn(256, 16, generator=g), torch.randn(20000, 16, generator=g)\n"
             "lq, lg = torch.full((256, 16), -3.0), torch.full((20000, 16), -3.0)")
    grown = _peak_increase_mb(setup, "pcme.match_scores(mq, lq, mg, lg, 5.0, 5.0, n_samples=7)")
    assert grown < 800, f"peak memory grew by {grown:.0f} MB"   # measured: 229 MB (one chunk: 2.9 GB)


def test_label_columns_pack_exactly_the_mask_and_give_the_same_ranks():
    g = torch.Generator().manual_seed(11)
    ql = torch.tensor([0, 3, 1, 7, 3, 0])                 # class 7 is not in the gallery
    gl = torch.randint(0, 4, (40,), generator=g)
    scores = torch.randint(0, 5, (6, 40), generator=g).double()   # many exact ties
    mask = M.label_relevance(ql, gl)(slice(None))
    cols, n_rel = M.label_columns(ql, gl)(slice(None))
    assert torch.equal(n_rel, mask.sum(1))
    for row in range(6):   # each row's first n_rel columns are its relevant columns, ascending
        assert cols[row, :n_rel[row]].tolist() == mask[row].nonzero().flatten().tolist()
    by_mask, by_cols = M.ranks_from_scores(scores, mask), M.ranks_from_scores(scores, (cols, n_rel))
    assert torch.equal(by_mask.ranks, by_cols.ranks) and torch.equal(by_mask.n_rel, by_cols.n_rel)
    assert n_rel[3] == 0 and not by_cols.valid[3]
