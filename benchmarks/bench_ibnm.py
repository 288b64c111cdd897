"""IBNM's cost per training step against UCDIR's, on this machine (the emoji-vit backbone, sketch–twemoji).

    python benchmarks/bench_ibnm.py            # writes benchmarks/results/ibnm.json

Two settings: the chapters' (frozen ViT, UCDIR's head on cached views; fusion and mixup still run
the ViT on the mixed images every step) and the papers' (the whole ViT trains). Each mode runs in
its own process (benchmarks/common.py) after a warm-up step; steps run in the fusion phase with the
joint clusters and the noise split in place, so every term is computed.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, peak_rss_mb, run_child  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "ibnm.json"
MODES = {  # name → (fusion, noise)
    "UCDIR": (None, False),
    "+ attention fusion": ("attention", False),
    "+ mixup (noise split)": (None, True),
    "+ random fusion + mixup": ("random", True),
    "+ attention fusion + mixup (IBNM)": ("attention", True),
}


def child_steps(setting: str, mode: str, steps: int) -> dict:
    import torch

    from cdrlib.data import load_emoji_domains, to_float
    from cdrlib.ibnm_train import IBNM, IBNMConfig
    from cdrlib.models import get_backbone
    from cdrlib.ucdir_train import cache_view_features

    ds = load_emoji_domains()
    tr = ds.indices("train")
    a, b = (to_float(ds.images[ds.domain_index(d), tr]) for d in ("sketch", "twemoji"))
    vit = get_backbone("emoji-vit")
    feats = (None, None)
    if setting == "frozen ViT, cached views":
        feats = tuple(cache_view_features(vit, x, n_views=4) for x in (a, b))
    fusion_mode, noise_on = MODES[mode]
    cfg = IBNMConfig.frozen(warmup_epoch=0, se_epoch=0, fusion_epoch=0, fusion=fusion_mode, noise=noise_on)
    method = IBNM(cfg, a, b, vit, *feats)
    t0 = time.perf_counter()
    method.recluster(0)
    recluster = time.perf_counter() - t0

    def stream():
        epoch = 0
        while True:
            yield from method.batches(epoch, torch.Generator().manual_seed(epoch))
            epoch += 1

    batches = stream()
    method.step(next(batches), 1)  # warm-up, not timed
    t0 = time.perf_counter()
    for _ in range(steps):
        method.step(next(batches), 1)
    seconds = time.perf_counter() - t0
    return {"ms_per_step": 1000 * seconds / steps, "recluster_seconds": recluster, "peak_mb": peak_rss_mb()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child_steps(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    rows = []
    for setting, steps in (("frozen ViT, cached views", 40), ("whole ViT", 6)):
        for mode in MODES:
            r = run_child(__file__, setting, mode, steps)
            rows.append({"setting": setting, "mode": mode, **{k: round(v, 2) for k, v in r.items()}})
            print(rows[-1], flush=True)
    for r in rows:
        base = next(x for x in rows if x["setting"] == r["setting"] and x["mode"] == "UCDIR")
        r["x UCDIR step"] = round(r["ms_per_step"] / base["ms_per_step"], 2)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"machine": machine(), "batch_size": 64, "fusion_batch": 16, "steps": rows}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
