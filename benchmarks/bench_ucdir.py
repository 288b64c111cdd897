"""UCDIR's costs on this machine: Sinkhorn against POT's batched solvers at equal marginal error, k-means with faiss
against scikit-learn, and training steps per second (whole backbone and the chapters' cached-head setting).

    python benchmarks/bench_ucdir.py            # writes benchmarks/results/ucdir.json
    python benchmarks/bench_ucdir.py sinkhorn   # Sinkhorn only (keeps the other results)

Each measurement runs in its own process (benchmarks/common.py). Sinkhorn is timed to the same
row-marginal error (1e-6) on both sides, each with its own stopping rule; its times are the best of
3 processes of the median of 5 runs (single runs vary 2-4x on this machine).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, peak_rss_mb, run_child  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "ucdir.json"


SINKHORN_PROBLEMS = {"64 × 54²": (64, 54), "1 × 2000²": (1, 2000)}
SINKHORN_IMPLS = ("cdrlib float64", "cdrlib float32", "POT batch sinkhorn", "POT batch log_sinkhorn",
                  "POT sinkhorn_log (loop)")


def sinkhorn_costs(problem: str):
    """UCDIR's matching cost: squared distances between two sets of random unit vectors (d = 128)."""
    import torch

    batch, k = SINKHORN_PROBLEMS[problem]
    g = torch.Generator().manual_seed(0)
    x, y = (torch.nn.functional.normalize(torch.randn(batch, k, 128, generator=g, dtype=torch.float64), dim=2)
            for _ in range(2))
    return torch.cdist(x, y) ** 2


def child_sinkhorn(impl: str, problem: str, target: float) -> dict:
    """Seconds to reach a row-marginal L1 error ≤ target on every problem, and the error reached.

    Each side stops by its own rule: cdrlib checks every iteration; POT's batched solvers check
    every tenth, with an L2 norm, so their tolerance is tightened until the plan they return meets
    the target (the fairest setting for them). The error is measured on the returned plan in
    float64, outside the clock. A solver whose error stops falling as its tolerance tightens is at
    its precision floor (float32 at n = 2000: the float32 sums behind its own check are off by about
    1e-6): it is timed at the last tolerance that helped and marked as not reaching the target.
    """
    import numpy as np
    import torch

    from cdrlib.sinkhorn import sinkhorn

    cost = sinkhorn_costs(problem)
    batch, k = SINKHORN_PROBLEMS[problem]
    eps = 0.05
    a = torch.full((batch, k), 1.0 / k, dtype=torch.float64)
    if impl.startswith("POT"):
        import ot  # imported before the clock starts
        import ot.batch

    def solve(tol):
        if impl.startswith("cdrlib"):
            dtype = torch.float32 if impl.endswith("float32") else torch.float64
            return sinkhorn(cost, eps=eps, max_iter=10_000, tol=tol, dtype=dtype, warn=False).plan
        if impl == "POT sinkhorn_log (loop)":
            w = np.full(k, 1.0 / k)
            return torch.stack([torch.from_numpy(ot.sinkhorn(w, w, c.numpy(), eps, method="sinkhorn_log",
                                                             numItermax=10_000, stopThr=tol)) for c in cost])
        method = impl.split()[-1]
        res = ot.batch.solve_batch(cost, reg=eps, max_iter=10_000, tol=tol, method=method, grad="detach")
        return res.plan

    def error(plan):
        return (plan.double().sum(2) - a).abs().sum(1).max().item()

    tol = target
    err = error(solve(tol))  # also takes first-call overheads out of the measurement
    while err > target and tol > target * 1e-4:
        tighter = error(solve(tol / 3))
        if tighter > 0.9 * err:  # no real gain: the solver is at its precision floor
            break
        tol, err = tol / 3, tighter
    times = []
    for _ in range(5):  # the median of 5: single runs of a fraction of a second vary by 2-4x here
        t0 = time.perf_counter()
        plan = solve(tol)
        times.append(time.perf_counter() - t0)
    err = error(plan)
    return {"seconds": sorted(times)[2], "marginal_error": err, "stopping_tol": tol,
            "reached": err <= target}


def child_kmeans(backend: str, n: int, d: int, k: int) -> dict:
    import torch

    from cdrlib.clustering import kmeans

    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    kmeans(x, k, niter=20, nredo=5, seed=0, backend=backend)
    return {"seconds": time.perf_counter() - t0, "peak_mb": peak_rss_mb()}


def child_steps(mode: str, steps: int) -> dict:
    from dataclasses import replace

    import torch

    from cdrlib.data import load_emoji_domains, to_float
    from cdrlib.models import get_backbone
    from cdrlib.ucdir_train import UCDIR, UCDIRConfig, cache_view_features

    ds = load_emoji_domains()
    tr = ds.indices("train")
    a, b = (to_float(ds.images[ds.domain_index(d), tr]) for d in ("sketch", "twemoji"))
    backbone = get_backbone("emoji-resnet")
    extra = {}
    if mode == "cached views (head only)":
        t0 = time.perf_counter()
        a, b = (cache_view_features(backbone, x, n_views=8) for x in (a, b))
        extra["cache_seconds"] = time.perf_counter() - t0
    cfg = replace(UCDIRConfig.frozen(), warmup_epoch=0, se_epoch=0, dd_epoch=0, dod="code")
    method = UCDIR(cfg, a, b, backbone)
    method.recluster(0)
    def stream():  # batches of as many epochs as the measurement needs
        epoch = 0
        while True:
            yield from method.batches(epoch, torch.Generator().manual_seed(epoch))
            epoch += 1

    batches = stream()
    method.step(next(batches), 1)  # warm-up step, not timed
    t0 = time.perf_counter()
    for _ in range(steps):
        method.step(next(batches), 1)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    method.recluster(1)
    return {"steps_per_second": steps / seconds, "recluster_seconds": time.perf_counter() - t0,
            "steps_per_epoch": 953 // cfg.batch_size, **extra}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *args = sys.argv[2:]
        if kind == "sinkhorn":
            out = child_sinkhorn(args[0], args[1], float(args[2]))
        elif kind == "kmeans":
            out = child_kmeans(args[0], int(args[1]), int(args[2]), int(args[3]))
        else:
            out = child_steps(args[0], int(args[1]))
        print(json.dumps(out))
        return
    me = __file__
    # `python benchmarks/bench_ucdir.py sinkhorn` re-measures Sinkhorn only and keeps the rest
    only_sinkhorn = sys.argv[1:] == ["sinkhorn"]
    sink, km, steps = [], [], []
    target = 1e-6
    for problem in SINKHORN_PROBLEMS:
        for impl in SINKHORN_IMPLS:
            if impl.endswith("(loop)") and problem == "1 × 2000²":
                continue  # one problem: the loop is the same solver as POT's unbatched call
            # best of 3 processes: on this VM a process runs either ~3x fast or slow, whole
            runs = [run_child(me, "sinkhorn", impl, problem, target) for _ in range(3)]
            best = min(runs, key=lambda r: r["seconds"])
            sink.append({"problems": problem, "target_error": target, "implementation": impl,
                         "seconds": round(best["seconds"], 5), "marginal_error": best["marginal_error"],
                         "stopping_tol": best["stopping_tol"], "reached target": best["reached"]})
            print(sink[-1], flush=True)
        mine = [r for r in sink if r["problems"] == problem]
        pot = min(r["seconds"] for r in mine
                  if r["implementation"].startswith("POT batch") and r["reached target"])
        for r in mine:  # a time that did not reach the target error is not compared
            r["ratio to POT's fastest batched"] = (round(r["seconds"] / pot, 3) if r["reached target"]
                                                   else None)
    if only_sinkhorn and OUT.is_file():
        kept = json.loads(OUT.read_text())
        km, steps = kept["kmeans"], kept["training"]
    for n, d, k in () if only_sinkhorn else ((953, 128, 54), (20000, 128, 65), (100000, 128, 65)):
        for backend in ("faiss", "sklearn"):
            r = run_child(me, "kmeans", backend, n, d, k)
            km.append({"N": n, "d": d, "k": k, "backend": backend, "seconds": round(r["seconds"], 3),
                       "peak_mb": r["peak_mb"]})
            print(km[-1], flush=True)
    for mode, n in () if only_sinkhorn else (("whole backbone", 5), ("cached views (head only)", 50)):
        r = run_child(me, "steps", mode, n)
        steps.append({"mode": mode, **{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}})
        print(steps[-1], flush=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"machine": machine(), "sinkhorn": sink, "kmeans": km, "training": steps}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
