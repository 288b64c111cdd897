"""Pretrain a small backbone on the embedded dataset, self-supervised (see cdrlib/pretrain.py).

The exact commands of the shipped checkpoints are in checkpoints/CHECKPOINTS.json; the shipped
ResNet's, for example (about 100 minutes on one core)::

    python scripts/pretrain_backbone.py --arch resnet --epochs 150 --minutes 200 --p-sketch 0.5 \
        --p-outline 0.3 --negatives in-domain --temperature 0.2 --eval-every 10 --threads 1 \
        --out checkpoints/emoji_resnet.pt --register emoji-resnet

and a ViT distilled from it (``--objective distill --teacher checkpoints/emoji_resnet.pt``).

The checkpoint is written with its curve (``.curve.jsonl``, mAP against minutes) beside it, and
the registry entry (sha256, command, minutes, final numbers) is updated with ``--register NAME``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdrlib.data.download import file_sha256 as sha256  # noqa: E402
from cdrlib.models.factory import REGISTRY  # noqa: E402
from cdrlib.pretrain import PretrainConfig, pretrain  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet", choices=["resnet", "vit"])
    ap.add_argument("--objective", default="simclr", choices=["simclr", "distill"])
    ap.add_argument("--teacher")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--epochs", type=int, help="fixed schedule length (then --minutes is only a cap)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--p-sketch", type=float, default=0.3)
    ap.add_argument("--p-outline", type=float, default=0.0, help="probability of line art drawn over the colour")
    ap.add_argument("--negatives", default="all", choices=["all", "in-domain"],
                    help="NT-Xent negatives: the whole batch, or only the anchor's own domain")
    ap.add_argument("--simclr-weight", type=float, default=1.0, help="distill: weight of NT-Xent")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path,
                    help="a run checkpoint written after every epoch: run again to resume an interrupted run")
    ap.add_argument("--register", help="name in checkpoints/CHECKPOINTS.json (emoji-resnet, emoji-vit)")
    args = ap.parse_args()
    cfg = PretrainConfig(arch=args.arch, objective=args.objective, teacher=args.teacher, minutes=args.minutes, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, temperature=args.temperature,
                         p_sketch=args.p_sketch, p_outline=args.p_outline, negatives=args.negatives,
                         simclr_weight=args.simclr_weight, eval_every=args.eval_every, threads=args.threads, seed=args.seed)
    path = pretrain(cfg, args.out, checkpoint=args.checkpoint)
    if args.register:
        reg = json.loads(REGISTRY.read_text()) if REGISTRY.is_file() else {}
        curve = [json.loads(line) for line in path.with_suffix(".curve.jsonl").read_text().splitlines()]
        reg[args.register] = {
            "path": str(path.resolve().relative_to(ROOT)),
            "sha256": sha256(path),
            "command": "python scripts/pretrain_backbone.py " + shlex.join(sys.argv[1:]),
            "minutes": curve[-1]["minutes"],
            "final": curve[-1],
        }
        REGISTRY.write_text(json.dumps(reg, indent=2) + "\n")


if __name__ == "__main__":
    main()
