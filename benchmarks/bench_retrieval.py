"""Benchmark: exact search + every metric at 20k × 20k and 50k × 50k, d = 384: faiss, torch, and
the two fused into one pass (``search_and_evaluate``: one matrix product for both), beside two
peers: pytorch-metric-learning's ``AccuracyCalculator`` (mAP@R, R-precision, P@1: no mAP@all,
no @K beyond them) and torchmetrics' ``RetrievalMAP`` (mAP@all) on a sample of 200 queries,
its time scaled to all of them.

Each configuration runs in a fresh subprocess so that its peak memory (max RSS) is its own. The
floor is the bare matrix product of the same size (chunked like the real work, nothing kept); the
floor and the fused pass take the best of three runs each, since their ratio is the target.
A peer that is not installed is left out (``pip install pytorch-metric-learning torchmetrics``).
Results go to benchmarks/results/retrieval.json and are shown in the Metrics chapter.

    python benchmarks/bench_retrieval.py            # both sizes
    python benchmarks/bench_retrieval.py --sizes 20000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import machine, peak_rss_mb, run_child

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "retrieval.json"


def data(n: int, d: int = 384, classes: int = 100, seed: int = 0):
    """n features around ``classes`` centres, with their labels. The centres are the same for every
    ``seed`` (drawn from their own generator): queries and gallery share their classes, so the
    metrics measure retrieval, not chance; ``seed`` draws the labels and the noise."""
    import torch

    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(12345))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    feats = centres[labels] + 2.0 * torch.randn(n, d, generator=g)
    return feats, labels


def child(n: int, what: str) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from cdrlib.metrics import retrieval_metrics
    from cdrlib.search import knn_search, search_and_evaluate

    q, ql = data(n, seed=1)
    g, gl = data(n, seed=2)
    # A process's first call loads the library's compiled selection loop from numba's cache
    # (compiles it on the very first run): done on a tiny problem, reported apart.
    t0 = time.perf_counter()
    if what in ("fused", "faiss", "torch"):
        search_and_evaluate(q[:64], g[:64], 10, ql[:64], gl[:64], ks=(1, 10))
        knn_search(q[:64], g[:64], 10, backend=what if what != "fused" else "torch")
    load_s = round(time.perf_counter() - t0, 2) if what in ("fused", "faiss", "torch") else None
    t0 = time.perf_counter()
    if what == "floor":
        qn, gn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
        step = max(1, (1 << 24) // n)
        for s in range(0, n, step):
            qn[s:s + step] @ gn.T
        out = {}
    elif what == "fused":
        m = search_and_evaluate(q, g, 100, ql, gl, ks=(1, 10, 100))[2]
        out = {"search_s": None, "metrics_s": None, "mAP@all": round(m["mAP@all"], 4)}
    elif what == "pytorch-metric-learning":
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(
            include=("mean_average_precision_at_r", "r_precision", "precision_at_1"),
            k="max_bin_count",
        )
        m = calc.get_accuracy(torch.nn.functional.normalize(q, dim=1), ql,
                              torch.nn.functional.normalize(g, dim=1), gl)
        out = {"search_s": None, "metrics_s": None, "mAP@all": None,
               "mAP@R": round(m["mean_average_precision_at_r"], 4)}
    elif what == "torchmetrics":
        from torchmetrics.retrieval import RetrievalMAP

        sample = 200  # its per-query loop is slow: a sample, the time scaled to every query
        scores = torch.nn.functional.normalize(q[:sample], dim=1) @ torch.nn.functional.normalize(g, dim=1).T
        target = ql[:sample, None] == gl[None, :]
        indexes = torch.arange(sample)[:, None].expand_as(scores)
        value = RetrievalMAP()(scores.flatten(), target.flatten(), indexes=indexes.flatten())
        out = {"search_s": None, "metrics_s": None, "mAP@all": None,
               "mAP@all (sample)": round(float(value), 4)}
        out["total_s"] = round((time.perf_counter() - t0) * n / sample, 2)
        out["peak_rss_mb"] = peak_rss_mb()
        return out
    elif what in ("faiss", "torch"):
        knn_search(q, g, 100, backend=what)
        t_search = time.perf_counter() - t0
        m = retrieval_metrics(q, g, ql, gl, ks=(1, 10, 100))
        out = {"search_s": round(t_search, 2), "metrics_s": round(time.perf_counter() - t0 - t_search, 2),
               "mAP@all": round(m["mAP@all"], 4)}
    out["total_s"] = round(time.perf_counter() - t0, 2)
    out["load_s"] = load_s
    out["peak_rss_mb"] = peak_rss_mb()
    return out


PEERS = ("pytorch-metric-learning", "torchmetrics")
REPEATS = 3
NOTES = {
    "pytorch-metric-learning": "mAP@R, R-precision, P@1 only (its own faiss k-NN to the largest class)",
    "torchmetrics": "mAP@all only; 200 queries timed, scaled to all",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000])
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1])))
        return
    rows = []
    for n in args.sizes:
        res = {}
        for what in ("floor", "torch", "faiss", "fused", *PEERS):
            try:
                # the floor and the fused pass, the ratio's two sides: best of REPEATS (the other
                # configurations take far longer; their ratio does not depend on a few percent)
                runs = [run_child(__file__, n, what) for _ in range(REPEATS if what in ("floor", "fused") else 1)]
                res[what] = min(runs, key=lambda r: r["total_s"])
            except SystemExit as e:  # a peer that is not installed
                if what not in PEERS:
                    raise
                print(f"{what} left out: {str(e).strip().splitlines()[-1]}", flush=True)
        for backend in ("torch", "faiss", "fused", *PEERS):
            if backend not in res:
                continue
            r = res[backend]
            rows.append({"Q = G": n, "d": 384, "backend": backend, "search (s)": r["search_s"],
                         "metrics (s)": r["metrics_s"], "total (s)": r["total_s"],
                         "matmul floor (s)": res["floor"]["total_s"],
                         "total / floor": round(r["total_s"] / res["floor"]["total_s"], 2),
                         "first call's kernel load (s, not counted)": r.get("load_s"),
                         "peak RSS (MB)": r["peak_rss_mb"], "mAP@all": r["mAP@all"],
                         "note": NOTES.get(backend, "")})
            print(json.dumps(rows[-1]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
