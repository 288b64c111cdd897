"""Train UCDIR (or IBNM, built on it) on two domains and evaluate cross-domain retrieval; one process or many (torchrun).

    python scripts/train_ucdir.py --domains twemoji sketch                    # embedded data, whole backbone
    python scripts/train_ucdir.py --domains twemoji sketch --cached-views 8   # the chapters' CPU setting
    python scripts/train_ucdir.py --tiny --domains noto sketch --out /tmp/u     # seconds: the CI check
    torchrun --nproc-per-node 2 scripts/train_ucdir.py --tiny --backend gloo     # DDP (CPU: gloo; GPU: nccl)

The paper profile (GPU; the papers' hyper-parameters, UCDIRConfig.paper):

    python scripts/train_ucdir.py --dataset office_home --domains Art Real_World
    python scripts/train_ucdir.py --dataset domainnet --domains real infograph --backbone dino-vitb16
    torchrun --nproc-per-node 4 scripts/train_ucdir.py --dataset domainnet --domains real infograph --backend nccl

IBNM (one process; a ViT backbone; ``--fusion random`` is the ablation):

    python scripts/train_ucdir.py --method ibnm --domains twemoji sketch --cached-views 8
    python scripts/train_ucdir.py --method ibnm --dataset office_home --domains Art Real_World

The data must be in place (``python -c "import cdrlib.data as d; d.prepare('office_home')"`` says
how), and the backbone's weights are downloaded and verified on first use. The run is checkpointed
every epoch to <out>/checkpoint<rank>.pt and resumes from it when restarted. Results (the history
and the final retrieval metrics under both protocols) go to <out>/results.json.
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

from cdrlib.data import get_dataset  # noqa: E402
from cdrlib.evaluation import cross_domain_table, dataset_features  # noqa: E402
from cdrlib.models import get_backbone  # noqa: E402
from cdrlib.profile import pick_device, seed_everything  # noqa: E402
from cdrlib.ibnm_train import IBNM, IBNMConfig  # noqa: E402
from cdrlib.ucdir_train import UCDIR, UCDIRConfig, cache_view_features  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="emoji", help="emoji (embedded), office_home or domainnet")
    ap.add_argument("--domains", nargs=2, default=["twemoji", "sketch"])
    ap.add_argument("--backbone", help="default: emoji-resnet (emoji), moco-v2-resnet50 (paper datasets)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--dod", choices=["code", "seed"])
    ap.add_argument("--method", choices=["ucdir", "ibnm"], default="ucdir")
    ap.add_argument("--fusion", choices=["attention", "random", "none"], default="attention", help="IBNM only")
    ap.add_argument("--cached-views", type=int, default=0,
                    help="train the head only, on N cached views of the frozen backbone (CPU setting)")
    ap.add_argument("--tiny", action="store_true", help="a few images, 2 epochs, random backbone: a smoke run")
    ap.add_argument("--backend", default="gloo", help="torch.distributed backend under torchrun")
    ap.add_argument("--out", type=Path, default=Path("runs/ucdir"))
    args = ap.parse_args()

    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group(args.backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = pick_device()
    if dist.is_initialized() and device.type == "cuda":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        if per_node > torch.cuda.device_count():
            if args.backend != "gloo":
                raise SystemExit(f"{per_node} processes per node but {torch.cuda.device_count()} GPU(s): start "
                                 f"at most one process per GPU (torchrun --nproc-per-node), or use --backend gloo "
                                 f"on the CPU")
            device = torch.device("cpu")   # gloo with more processes than GPUs: every process on the CPU
            if rank == 0:
                print(f"[train] {per_node} processes, {torch.cuda.device_count()} GPU(s): gloo runs them on the CPU")
        else:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)

    paper = args.dataset != "emoji"
    ibnm = args.method == "ibnm"
    if ibnm:
        cfg = IBNMConfig.paper(args.dataset) if paper else IBNMConfig.frozen() if args.cached_views else IBNMConfig()
        cfg = replace(cfg, fusion=None if args.fusion == "none" else args.fusion)
    else:
        cfg = UCDIRConfig.paper(args.dataset) if paper else UCDIRConfig()
    if args.backbone:
        cfg = replace(cfg, backbone=args.backbone)
    if args.tiny:
        cfg = replace(cfg, backbone="random-vit" if ibnm else "random-resnet", epochs=2, batch_size=16, k=4,
                      warmup_epoch=1, se_epoch=1, dd_epoch=1, dod=None if ibnm else "code", kmeans_nredo=1)
        if ibnm:
            cfg = replace(cfg, fusion_epoch=1, fusion_batch=8)
    if args.epochs:
        cfg = replace(cfg, epochs=args.epochs)
    if args.dod:
        cfg = replace(cfg, dod=args.dod)
    seed_everything(cfg.seed)

    backbone = get_backbone(cfg.backbone)
    train = [get_dataset(args.dataset, d, "train") for d in args.domains]
    evaluate = {"paper": train, "heldout": [get_dataset(args.dataset, d, "heldout") for d in args.domains]}
    if args.tiny:  # the first few images of each domain
        train = [replace_images(ds, 64) for ds in train]
        evaluate = {p: [replace_images(ds, 48) for ds in sets] for p, sets in evaluate.items()}
    images = train if paper else [ds.tensor() for ds in train]   # paper datasets: image files, read per batch
    features = [None, None]
    if args.cached_views and not paper:
        features = [cache_view_features(backbone, x, args.cached_views, device=device) for x in images]
    if ibnm:
        method = IBNM(cfg, images[0], images[1], backbone, *features, device=device)
    else:
        inputs = features if features[0] is not None else images
        method = UCDIR(cfg, inputs[0], inputs[1], backbone, device=device)
    args.out.mkdir(parents=True, exist_ok=True)
    history = method.trainer(args.out / f"checkpoint{rank}.pt").fit()

    model = method.retrieval_model()
    tables = []
    for protocol, sets in evaluate.items():
        feats = {ds.domain: dataset_features(model, ds, device=device) for ds in sets}
        labels = {ds.domain: ds.labels for ds in sets}
        tables.append(cross_domain_table(feats, labels, ks=(1, 10) if args.tiny else (1, 10, 50), protocol=protocol))
    if rank == 0:
        import pandas as pd

        table = pd.concat(tables, ignore_index=True)
        (args.out / "results.json").write_text(json.dumps({
            "config": method.config_dict(), "history": history,
            "metrics": table.to_dict(orient="records"),
            "bank_checksum": [float(method.banks[d].keys.sum()) for d in ("A", "B")],
        }, indent=1))
        print(table.filter(["protocol", "query", "gallery", "mAP@all", "P@10", "P@50"]).to_string(index=False))
    if dist.is_initialized():
        # every process must hold the same memory banks: compare their checksums
        mine = torch.tensor([float(method.banks[d].keys.sum()) for d in ("A", "B")], dtype=torch.float64,
                            device=device if args.backend == "nccl" else "cpu")  # nccl gathers GPU tensors only
        everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(everyone, mine)
        if rank == 0 and not all(torch.allclose(e.cpu(), mine) for e in everyone):
            raise SystemExit("memory banks differ between processes")
        dist.destroy_process_group()


def replace_images(ds, n: int):
    """The first ``n`` items of an in-memory DomainDataset (the smoke run)."""
    from cdrlib.data import DomainDataset

    return DomainDataset(ds.name, ds.domain, ds.split, ds.labels[:n], ds.classes, images=ds.images[:n],
                         image_size=ds.image_size, ids=ds.ids[:n])


if __name__ == "__main__":
    main()
