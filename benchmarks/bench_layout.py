"""Why `SmallResNet` keeps itself channels-last: one SimCLR step and the backbone alone, in both layouts.

    python benchmarks/bench_layout.py            # writes benchmarks/results/layout.json

The question it answers: a channels-last ResNet trains faster in pretraining, yet chapter 03's
throughput cell (backbone alone, batch 128) shows no gain. The difference is the input's layout.
The embedded images are stored H×W×C, so a batch straight from the dataset is already
channels-last and PyTorch runs NHWC convolutions whatever the weights' layout; the augmentation
(`affine_grid` + `grid_sample`) returns ordinary NCHW views, where a model kept in NCHW runs the
slower NCHW convolutions. Both layouts run in one process, interleaved (same weights, same data),
after a warm-up; the numbers are seconds per step, lower is better.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "layout.json"


def _nchw_forward_features(self, x):
    """The pre-channels-last forward: the input goes in with whatever layout it has."""
    return self.layers(self.stem(x))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256, help="images per view (a SimCLR step sees 2×batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the minimum is reported")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from cdrlib.contrastive import nt_xent_loss
    from cdrlib.data import load_emoji_domains
    from cdrlib.data.transforms import TwoViewAugment, to_float
    from cdrlib.models.factory import build_backbone
    from cdrlib.pretrain import ProjectionHead

    torch.set_num_threads(args.threads)
    x = to_float(load_emoji_domains().images[0, :args.batch])  # channels-last strides (stored H×W×C)
    augment = TwoViewAugment(64, p_sketch=0.5, p_outline=0.3)
    v1, v2 = augment.two_views(x)                               # NCHW-contiguous views

    def make(channels_last: bool):
        torch.manual_seed(0)
        model = build_backbone("resnet")
        if not channels_last:
            model.to(memory_format=torch.contiguous_format)
            model.forward_features = types.MethodType(_nchw_forward_features, model)
        head = ProjectionHead(model.num_features)
        opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3)
        return model, head, opt

    def simclr_step(model, head, opt):
        a, b = augment.two_views(x)
        loss = nt_xent_loss(head(model(a)), head(model(b)), 0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def backbone_on_views(model, head, opt):
        model(v1).sum().backward()
        model(v2).sum().backward()

    def backbone_on_dataset_batch(model, head, opt):
        model(x).sum().backward()
        model(x).sum().backward()

    models = {"channels-last (shipped)": make(True), "NCHW": make(False)}
    tasks = {"SimCLR step (augment + 2 views + head + AdamW)": simclr_step,
             "backbone forward+backward, 2 augmented views (NCHW input)": backbone_on_views,
             "backbone forward+backward, 2 dataset batches (channels-last input)": backbone_on_dataset_batch}
    results = {}
    for task, fn in tasks.items():
        best = {name: float("inf") for name in models}
        for _ in range(args.rounds):
            for name, m in models.items():
                m[0].train()
                fn(*m)  # warm-up
                t0 = time.perf_counter()
                for _ in range(args.repeats):
                    fn(*m)
                best[name] = min(best[name], (time.perf_counter() - t0) / args.repeats)
        results[task] = {name: round(s, 3) for name, s in best.items()}
        print(f"{task}: " + ", ".join(f"{n} {s:.2f} s" for n, s in best.items()), flush=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"machine": machine(), "batch": args.batch, "seconds_per_step": results},
                              indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
