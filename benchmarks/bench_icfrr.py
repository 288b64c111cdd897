"""Benchmark: sparse ICFRR against the dense reference (the official algorithm's G×G rank table).

Q = 2,000 queries, KG = KQ = 256, 5 iterations, the "official" variant. G = 5,000 and 20,000
compare time, peak memory and rankings (float64, so that float32 ties do not blur the comparison);
G = 100,000 runs the sparse form alone, from features (the dense rank table alone would need 80 GB).
Each run is a fresh subprocess, so peak RSS is its own.

The dense reference costs about a second per query at G = 20,000, so it runs the first
DENSE_QUERIES queries only; its time for all Q is its table-building time plus Q times its measured
time per query (reported as such), and the rankings are compared on those queries.
Each size also runs the sparse form with ``keep=KEEP`` (the first KEEP places of each ranking, as
for P@100 and mAP@100), where the official update orders only the head of each row that can still
reach them; its first KEEP places are compared with the full ranking's.
The sparse form is also timed as the library was at BASELINE (the commit before the chunk-parallel
iterations, the partition-based neighbour lists and the compiled passes), extracted with ``git
archive`` and run the same way, so the speed-up over it is measured in the same run on the same
machine; both take the best of REPEATS runs.
Results: benchmarks/results/icfrr.json (shown in the ICFRR chapter).

    python benchmarks/bench_icfrr.py
    python benchmarks/bench_icfrr.py --sizes 5000 --no-large
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from common import machine, peak_rss_mb, run_child

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "icfrr.json"
Q, K, ITERS = 2000, 256, 5
DENSE_QUERIES = 200
BASELINE = "d3393cc"  # cdrlib before this benchmark's speed-ups (see the module docstring)
REPEATS = 3
KEEP = 100


def seconds(run: dict) -> float:
    return run["seconds"]


def features(n: int, seed: int, dtype, d: int = 128, classes: int = 200):
    import torch

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g, dtype=dtype)
    x = centres[torch.randint(0, classes, (n,), generator=g)] + 1.5 * torch.randn(n, d, generator=g, dtype=dtype)
    return torch.nn.functional.normalize(x, dim=1)


def child(g_size: int, what: str) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    if what.startswith("baseline"):  # the same run with the library as it was at BASELINE
        sys.path.insert(0, os.environ["CDR_BENCH_BASELINE"])
    from cdrlib.rerank import dense_weight_table, icfrr, icfrr_dense

    dtype = torch.float32 if what == "sparse-features" else torch.float64
    q, g = features(Q, 1, dtype), features(g_size, 2, dtype)
    # A process's first call loads the compiled kernels from numba's cache (compiles them on the
    # very first run): timed on a tiny problem, reported apart from the run itself.
    t0 = time.perf_counter()
    small = features(64, 3, dtype)
    icfrr(torch.cdist(small[:8], small), torch.cdist(small, small), kg=8, kq=8, n_iter=1)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if what == "sparse-features":
        ranking = icfrr(query=q, gallery=g, kg=K, kq=K, n_iter=ITERS, keep=100)
    else:
        qg, gg = torch.cdist(q, g), torch.cdist(g, g)
        t0 = time.perf_counter()  # both start from the same distance matrices
        if what in ("sparse", "baseline"):
            ranking = icfrr(qg, gg, kg=K, kq=K, n_iter=ITERS)
        elif what in ("sparse-top", "baseline-top"):
            ranking = icfrr(qg, gg, kg=K, kq=K, n_iter=ITERS, keep=KEEP)
        else:
            table = dense_weight_table(gg, K)
            t_build = time.perf_counter() - t0
            ranking = icfrr_dense(qg[:DENSE_QUERIES], gg, kg=K, kq=K, n_iter=ITERS, weight_table=table)
            per_query = (time.perf_counter() - t0 - t_build) / DENSE_QUERIES
            torch.save(ranking.to(torch.int32), f"/tmp/icfrr_{what}_{g_size}.pt")
            return {"seconds": round(t_build + Q * per_query, 1), "build_s": round(t_build, 2),
                    "per_query_s": round(per_query, 4),
                    "peak_rss_mb": peak_rss_mb()}
        torch.save(ranking.to(torch.int32), f"/tmp/icfrr_{what}_{g_size}.pt")
    return {"seconds": round(time.perf_counter() - t0, 2), "load_s": round(load_s, 2),
            "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--no-large", action="store_true")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1])))
        return
    import torch

    baseline_dir = tempfile.mkdtemp(prefix="cdrlib-baseline-")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE, "cdrlib"],
                             capture_output=True, check=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(baseline_dir, filter="data")
    os.environ["CDR_BENCH_BASELINE"] = baseline_dir
    rows = []
    for n in args.sizes:
        # the ratio's two sides, the library now and at BASELINE: best of REPEATS runs each (a
        # single run on a shared two-core machine varied by a quarter)
        sparse = min((run_child(__file__, n, "sparse") for _ in range(REPEATS)), key=seconds)
        dense = run_child(__file__, n, "dense")
        baseline = min((run_child(__file__, n, "baseline") for _ in range(REPEATS)), key=seconds)
        top = min((run_child(__file__, n, "sparse-top") for _ in range(REPEATS)), key=seconds)
        baseline_top = min((run_child(__file__, n, "baseline-top") for _ in range(REPEATS)), key=seconds)
        top_ranking = torch.load(f"/tmp/icfrr_sparse-top_{n}.pt", weights_only=True)
        b = torch.load(f"/tmp/icfrr_dense_{n}.pt", weights_only=True)
        a = torch.load(f"/tmp/icfrr_sparse_{n}.pt", weights_only=True)
        same_as_baseline = bool(torch.equal(a, torch.load(f"/tmp/icfrr_baseline_{n}.pt", weights_only=True)))
        top_same = bool(torch.equal(top_ranking, a[:, :KEEP]))
        a = a[: len(b)]
        rows.append({"G": n, "Q": Q, "KG = KQ": K, "iterations": ITERS,
                     "dense (s, table + Q × per-query time)": dense["seconds"],
                     "dense table (s)": dense["build_s"], "dense per query (s)": dense["per_query_s"],
                     "sparse (s)": sparse["seconds"], "speed-up": round(dense["seconds"] / sparse["seconds"], 1),
                     "sparse: first call's kernel load (s, not counted)": sparse["load_s"],
                     f"sparse at {BASELINE} (s)": baseline["seconds"],
                     f"speed-up over {BASELINE}": round(baseline["seconds"] / sparse["seconds"], 2),
                     f"rankings identical to {BASELINE}'s": same_as_baseline,
                     f"sparse, first {KEEP} places (s)": top["seconds"],
                     f"sparse at {BASELINE}, first {KEEP} places (s)": baseline_top["seconds"],
                     f"speed-up over {BASELINE}, first {KEEP} places": round(baseline_top["seconds"] / top["seconds"], 2),
                     f"first {KEEP} places identical to the full ranking's": top_same,
                     "dense peak RSS (MB)": dense["peak_rss_mb"], "sparse peak RSS (MB)": sparse["peak_rss_mb"],
                     f"identical rankings (of the first {len(b)} queries)": round(float((a == b).all(1).float().mean()), 4)})
        print(json.dumps(rows[-1]), flush=True)
    if not args.no_large:
        big = run_child(__file__, 100_000, "sparse-features")
        rows.append({"G": 100_000, "Q": Q, "KG = KQ": K, "iterations": ITERS,
                     "dense (s, table + Q × per-query time)": None, "dense table (s)": None, "dense per query (s)": None,
                     "sparse (s)": big["seconds"], "speed-up": None, "dense peak RSS (MB)": None,
                     "sparse peak RSS (MB)": big["peak_rss_mb"]})
        print(json.dumps(rows[-1]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
