"""Train UCDIR on two domains and evaluate cross-domain retrieval; one process or many (torchrun).

    python scripts/train_ucdir.py --domains twemoji sketch                 # default profile, embedded data
    python scripts/train_ucdir.py --tiny --domains noto sketch --out /tmp/u  # seconds: the CI check
    torchrun --nproc-per-node 2 scripts/train_ucdir.py --tiny --backend gloo  # DDP (CPU: gloo; GPU: nccl)

The run is checkpointed every epoch to <out>/checkpoint.pt and resumes from it when restarted.
Results (the history and the final retrieval metrics, held-out protocol) go to <out>/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdrlib.data import load_emoji_domains, to_float  # noqa: E402
from cdrlib.evaluation import cross_domain_table, extract_features  # noqa: E402
from cdrlib.models import get_backbone  # noqa: E402
from cdrlib.profile import seed_everything  # noqa: E402
from cdrlib.ucdir_train import UCDIR, UCDIRConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", nargs=2, default=["twemoji", "sketch"])
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--dod", choices=["code", "seed"])
    ap.add_argument("--tiny", action="store_true", help="a few images, 2 epochs, random backbone: a smoke run")
    ap.add_argument("--backend", default="gloo", help="torch.distributed backend under torchrun")
    ap.add_argument("--out", type=Path, default=Path("runs/ucdir"))
    args = ap.parse_args()

    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group(args.backend)
    rank = dist.get_rank() if dist.is_initialized() else 0

    cfg = UCDIRConfig()
    if args.tiny:
        cfg = replace(cfg, backbone="random-resnet", epochs=2, batch_size=16, k=4, warmup_epoch=1, se_epoch=1,
                      dd_epoch=1, dod="code", kmeans_nredo=1)
    if args.epochs:
        cfg = replace(cfg, epochs=args.epochs)
    if args.dod:
        cfg = replace(cfg, dod=args.dod)
    seed_everything(cfg.seed)
    ds = load_emoji_domains()
    train = ds.indices("train")[: 64 if args.tiny else None]
    held = ds.indices("heldout")[: 48 if args.tiny else None]
    a, b = (ds.domain_index(d) for d in args.domains)
    method = UCDIR(cfg, to_float(ds.images[a, train]), to_float(ds.images[b, train]), get_backbone(cfg.backbone))
    args.out.mkdir(parents=True, exist_ok=True)
    history = method.trainer(args.out / f"checkpoint{rank}.pt").fit()

    feats = {d: extract_features(method.encoder, to_float(ds.images[i, held])) for d, i in zip(args.domains, (a, b))}
    labels = {d: ds.labels[held] for d in args.domains}
    table = cross_domain_table(feats, labels, ks=(1, 10), protocol="heldout")
    if rank == 0:
        (args.out / "results.json").write_text(json.dumps({
            "config": method.config_dict(), "history": history,
            "metrics": table.to_dict(orient="records"),
            "bank_checksum": [float(method.banks[d].keys.sum()) for d in ("A", "B")],
        }, indent=1))
        print(table.to_string(index=False))
    if dist.is_initialized():
        # every process must hold the same memory banks: compare their checksums
        mine = torch.tensor([float(method.banks[d].keys.sum()) for d in ("A", "B")], dtype=torch.float64)
        everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(everyone, mine)
        if rank == 0 and not all(torch.allclose(e, mine) for e in everyone):
            raise SystemExit("memory banks differ between processes")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
