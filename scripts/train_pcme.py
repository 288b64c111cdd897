"""Train PCME and its deterministic baseline on images and captions, evaluate both directions.

    python scripts/train_pcme.py                                  # the embedded emoji captions (CPU, minutes)
    python scripts/train_pcme.py --dataset cub                    # the paper profile: CUB + text_c10, DINO ViT-B/16
    python scripts/train_pcme.py --dataset cub --root /data/cub --tiny --out /tmp/p   # a smoke run

The data must be in place for CUB (``python -c "import cdrlib.data as d; d.prepare('cub')"`` says
how). Results (config, histories, the metrics of every model and scoring) go to <out>/results.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdrlib.models import get_backbone  # noqa: E402
from cdrlib.pcme_train import ImageTextData, PCMEConfig, evaluate, score_tables, train  # noqa: E402
from cdrlib.profile import pick_device, seed_everything  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["emoji", "cub"], default="emoji")
    ap.add_argument("--root", help="CUB's folder (default $CDR_DATA/cub)")
    ap.add_argument("--backbone", help="default: emoji-vit (emoji), dino-vitb16 (cub)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int, help="image–caption pairs per step (default: the setting's)")
    ap.add_argument("--tiny", action="store_true", help="2 epochs, small model, random ViT: a smoke run")
    ap.add_argument("--out", type=Path, default=Path("runs/pcme"))
    args = ap.parse_args()

    device = pick_device()
    cub = args.dataset == "cub"
    cfg = PCMEConfig.paper() if cub else PCMEConfig()
    backbone = args.backbone or ("dino-vitb16" if cub else "emoji-vit")
    if args.tiny:
        cfg = replace(cfg, dim=8, epochs=2, batch_size=4, embed_dim=16, gru_hidden=8)
        backbone = "random-vit"
    if args.epochs:
        cfg = replace(cfg, epochs=args.epochs)
    if args.batch_size:
        cfg = replace(cfg, batch_size=args.batch_size)
    seed_everything(cfg.seed)
    vit = get_backbone(backbone)
    if cub:
        if args.tiny:  # the fake tree's images are tiny: a ViT for 224-px input
            from cdrlib.models.vit import VisionTransformer

            vit = VisionTransformer(img_size=224, patch_size=16, dim=32, depth=2, heads=2)
        data = {s: ImageTextData.from_cub(vit, s, args.root, device=device) for s in ("train", "heldout")}
    else:
        data = {s: ImageTextData.from_emoji(vit, s, device=device) for s in ("train", "heldout")}

    out = {"config": asdict(cfg), "backbone": backbone, "histories": {}, "metrics": []}
    for name, c in (("deterministic", replace(cfg, probabilistic=False)), ("PCME", cfg)):
        model, history = train(c, data["train"], device=device)
        out["histories"][name] = history
        for by in (("mu", "match") if c.probabilistic else ("mu",)):
            rows = evaluate(score_tables(model, data["heldout"], by=by, device=device), data["heldout"],
                            ks=(1, 5) if args.tiny else (1, 5, 10))
            out["metrics"] += [{"model": name, "scores": by, **r} for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(out, indent=1))
    for r in out["metrics"]:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})


if __name__ == "__main__":
    main()
