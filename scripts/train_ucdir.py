"""Train UCDIR (or IBNM, built on it) on two domains and evaluate cross-domain retrieval; one process or many (torchrun).

Your own images (a folder per domain, a folder per class; or a CSV list ``path,domain,class[,split]``):

    python scripts/train_ucdir.py --root my_images --domains photo sketch --out runs/mine
    python scripts/train_ucdir.py --list my_images.csv --domains photo sketch --out runs/mine

On a CPU this picks the chapters' setting (the frozen backbone, UCDIR's head on cached views,
``UCDIRConfig.frozen``: a few minutes); on a GPU the paper's (the whole network fine-tuned,
``UCDIRConfig.paper``). It says which it picked; ``--setting cpu|gpu`` chooses.

The embedded data and the paper datasets:

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
every epoch to <out>/checkpoint<rank>.pt and resumes from it when restarted; one line per epoch
reports the losses, the time so far and the time left. Results go to <out>/results.json: the
settings, the history, the retrieval metrics under both protocols (held-out images; the training
images, as the papers evaluate) and the held-out mAP@all before and after ICFRR re-ranking.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdrlib.data import DataError, DomainDataset, get_dataset, load_folder_domains, load_list_domains  # noqa: E402
from cdrlib.data.paper import DOMAINS  # noqa: E402
from cdrlib.evaluation import cross_domain_table, dataset_features, icfrr_cross_domain_table  # noqa: E402
from cdrlib.ibnm_train import IBNM, IBNMConfig  # noqa: E402
from cdrlib.models import get_backbone, input_size  # noqa: E402
from cdrlib.profile import pick_device, seed_everything  # noqa: E402
from cdrlib.ucdir_train import PRECISIONS, UCDIR, UCDIRConfig, auto_precision, cache_view_features  # noqa: E402

DATASETS = tuple(DOMAINS)   # "emoji" and the paper datasets
CPU_BACKBONE, GPU_BACKBONE = {"ucdir": "emoji-resnet", "ibnm": "emoji-vit"}, {"ucdir": "moco-v2-resnet50",
                                                                              "ibnm": "dino-vitb16"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="emoji", help=f"one of {', '.join(DATASETS)}")
    ap.add_argument("--root", type=Path, help="your own images: ROOT/<domain>/<class>/<image>")
    ap.add_argument("--list", type=Path, help="your own images: a CSV file with columns path,domain,class[,split]")
    ap.add_argument("--heldout-fraction", type=float, default=0.3,
                    help="own images: the share of each class held out for evaluation (default 0.3)")
    ap.add_argument("--bad-files", choices=["raise", "skip"], default="raise",
                    help="own images: stop on unreadable files (listing them all) or leave them out")
    ap.add_argument("--setting", choices=["auto", "cpu", "gpu"], default="auto",
                    help="own images: cpu = the frozen backbone and cached views (the chapters'), gpu = the "
                         "paper's; auto picks by the device")
    ap.add_argument("--domains", nargs=2, default=["twemoji", "sketch"])
    ap.add_argument("--backbone", help="default: emoji-resnet / emoji-vit on a CPU, moco-v2-resnet50 / dino-vitb16 "
                                       "with the paper's settings")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--scale-schedule", action="store_true",
                    help="with --epochs: move the warm-up and the start of SE, DoD and fusion with it, keeping the "
                         "schedule's proportions (a shorter run of the whole method, e.g. a Colab-size one)")
    ap.add_argument("--batch-size", type=int, help="images per domain and step (default: the setting's)")
    ap.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                    help="the arithmetic of a step: auto = bfloat16 on a GPU that has it, float16 on an older GPU "
                         "(with a gradient scaler), float32 on a CPU")
    ap.add_argument("--dod", choices=["batch", "centroid"])
    ap.add_argument("--losses", choices=["iw", "cw", "cw+se"], default="cw+se",
                    help="UCDIR's ablation: instance-wise only, + cluster-wise, + self-entropy (the default)")
    ap.add_argument("--method", choices=["ucdir", "ibnm"], default="ucdir")
    ap.add_argument("--fusion", choices=["attention", "random", "none"], default="attention", help="IBNM only")
    ap.add_argument("--cached-views", type=int, default=0,
                    help="train the head only, on N cached views of the frozen backbone (CPU setting)")
    ap.add_argument("--tiny", action="store_true", help="a few images, 2 epochs, random backbone: a smoke run")
    ap.add_argument("--backend", default="gloo", help="torch.distributed backend under torchrun")
    ap.add_argument("--out", type=Path, default=Path("runs/ucdir"))
    args = ap.parse_args(argv)
    if args.root is not None and args.list is not None:
        ap.error("give --root or --list, not both")
    args.own = args.root is not None or args.list is not None
    if not args.own and args.dataset not in DATASETS:
        ap.error(f"unknown dataset {args.dataset!r}: one of {', '.join(DATASETS)}, or --root / --list for your "
                 f"own images")
    if args.epochs is not None and args.epochs < 1:
        ap.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.scale_schedule and args.epochs is None:
        ap.error("--scale-schedule scales the schedule to --epochs: give --epochs too")
    if args.batch_size is not None and args.batch_size < 2:
        ap.error(f"--batch-size must be at least 2, got {args.batch_size}")
    return args


def say(*parts) -> None:
    """One line of the run's log, flushed (progress bars are off outside a terminal)."""
    print("[train]", *parts, flush=True)


def own_data(args, backbone_name: str):
    """Training and evaluation sets of one's own images, at the backbone's input size."""
    kw = dict(image_size=input_size(backbone_name), heldout_fraction=args.heldout_fraction,
              bad_files=args.bad_files)
    data = (load_folder_domains(args.root, domains=list(args.domains), **kw) if args.root is not None
            else load_list_domains(args.list, **kw))
    absent = [d for d in args.domains if d not in data.train]
    if absent:
        raise SystemExit(f"no domain {absent} in the list: it has {data.domains}")
    say(data.summary().replace("\n", "\n[train] "))
    for d in args.domains:
        if len(data.heldout[d]) == 0:
            raise SystemExit(f"domain {d!r} has no held-out image (classes of one image stay in training): add "
                             f"images, or raise --heldout-fraction")
    return data, [data.train[d] for d in args.domains], [data.heldout[d] for d in args.domains]


def choose_config(args, device: torch.device):
    """The run's settings and what to tell the user about them; refuses settings that disable the method."""
    ibnm = args.method == "ibnm"
    paper = not args.own and args.dataset != "emoji"
    note = None
    if args.own:
        gpu = args.setting == "gpu" or (args.setting == "auto" and device.type == "cuda")
        backbone = args.backbone or (GPU_BACKBONE if gpu else CPU_BACKBONE)[args.method]
        if gpu:
            cfg = IBNMConfig.paper("office_home") if ibnm else UCDIRConfig.paper("office_home")
            note = (f"the paper's setting (Office-Home's hyper-parameters; the whole {backbone} fine-tuned, "
                    f"{cfg.epochs} epochs)")
        else:
            args.cached_views = args.cached_views or 8
            cfg = IBNMConfig.frozen() if ibnm else UCDIRConfig.frozen()
            note = (f"the CPU setting (the frozen {backbone}, UCDIR's head on {args.cached_views} cached views of "
                    f"each image, {cfg.epochs} epochs; --setting gpu for the paper's)")
    elif ibnm:
        cfg = IBNMConfig.paper(args.dataset) if paper else IBNMConfig.frozen() if args.cached_views else IBNMConfig()
        backbone = args.backbone or cfg.backbone
    else:
        cfg = UCDIRConfig.paper(args.dataset) if paper else UCDIRConfig()
        backbone = args.backbone or cfg.backbone
    if ibnm:
        cfg = replace(cfg, fusion=None if args.fusion == "none" else args.fusion)
    cfg = replace(cfg, backbone=backbone)
    if args.tiny:
        cfg = replace(cfg, backbone="random-vit" if ibnm else "random-resnet", epochs=2, batch_size=16, k=4,
                      warmup_epoch=1, se_epoch=1, dd_epoch=1, dod=None if ibnm else "batch", kmeans_nredo=1)
        if ibnm:
            cfg = replace(cfg, fusion_epoch=1, fusion_batch=8)
    if args.dod:
        cfg = replace(cfg, dod=args.dod)
    if args.losses != "cw+se":
        cfg = replace(cfg, use_cw=args.losses == "cw", use_se=False)
    if args.epochs and args.scale_schedule:
        scale = lambda epoch: max(1, round(epoch * args.epochs / cfg.epochs))  # noqa: E731
        cfg = replace(cfg, warmup_epoch=scale(cfg.warmup_epoch), se_epoch=scale(cfg.se_epoch),
                      dd_epoch=scale(cfg.dd_epoch))
        if ibnm:
            cfg = replace(cfg, fusion_epoch=scale(cfg.fusion_epoch))
    if args.batch_size:
        cfg = replace(cfg, batch_size=args.batch_size)
        if ibnm:
            cfg = replace(cfg, fusion_batch=min(cfg.fusion_batch, args.batch_size))
    if args.epochs:
        if args.epochs <= cfg.warmup_epoch:
            raise SystemExit(f"--epochs {args.epochs} would train plain instance discrimination only: UCDIR's "
                             f"cluster-wise loss starts after the warm-up, at epoch {cfg.warmup_epoch + 1}, and its "
                             f"cross-domain losses at epoch {cfg.se_epoch + 1}. Give more than {cfg.warmup_epoch} epochs, "
                             f"more than {cfg.se_epoch} for the whole method (this setting's default is {cfg.epochs}).")
        if args.epochs <= max(cfg.se_epoch, cfg.dd_epoch if cfg.dod else 0):
            say(f"warning: with --epochs {args.epochs} the cross-domain losses (from epoch {cfg.se_epoch + 1}) "
                f"never start; this setting's default is {cfg.epochs}")
        cfg = replace(cfg, epochs=args.epochs)
    if paper and args.cached_views:
        raise SystemExit("--cached-views holds every image in memory, which the paper datasets do not fit: train the "
                         "whole network on a GPU (leave it out), or use --root with a smaller folder of your images")
    return cfg, note


def first_items(ds: DomainDataset, n: int) -> DomainDataset:
    """The first ``n`` items of a dataset, in memory or of image files (the smoke run)."""
    files = None if ds.files is None else ds.files[:n]
    images = None if ds.images is None else ds.images[:n]
    return DomainDataset(ds.name, ds.domain, ds.split, ds.labels[:n], ds.classes, images=images, files=files,
                         image_size=ds.image_size, ids=ds.ids[:n])


def epoch_reporter(cfg, rank: int):
    """An ``on_epoch_end`` that prints one line per epoch: the time so far and the time left."""
    start = time.time()
    done = []

    def report(epoch: int):
        done.append(epoch)
        if rank == 0:
            elapsed = time.time() - start
            left = elapsed / len(done) * (cfg.epochs - epoch - 1)
            say(f"epoch {epoch + 1}/{cfg.epochs}: {elapsed:.0f} s so far, about {left:.0f} s left")
        return {}

    return report


def with_heartbeat(batches, epochs: int, rank: int, every: float = 60.0):
    """``batches`` that also print a line at most every ``every`` seconds within an epoch (step, time
    left in the epoch): a long epoch shows progress in a log, where progress bars are off."""
    def wrapped(epoch, gen):
        steps = list(batches(epoch, gen))          # index batches only: cheap, and the same order
        start = last = time.time()
        for i, batch in enumerate(steps):
            yield batch
            now = time.time()
            if rank == 0 and now - last >= every and i + 1 < len(steps):
                last = now
                left = (now - start) / (i + 1) * (len(steps) - i - 1)
                say(f"epoch {epoch + 1}/{epochs}: step {i + 1}/{len(steps)}, about {left:.0f} s left in this epoch")

    return wrapped


def main(argv=None) -> None:
    args = parse_args(argv)
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

    cfg, note = choose_config(args, device)
    if note and rank == 0:
        say(f"own images on {device.type}: {note}")
    seed_everything(cfg.seed)
    paper = not args.own and args.dataset != "emoji"
    # the data first: a wrong name or a missing folder is reported before any weight download
    try:
        if args.own:
            data, train, held = own_data(args, cfg.backbone)
            cfg = replace(cfg, k=len(data.classes)) if not args.tiny else cfg
            evaluate = {"heldout": held, "train-as-gallery": train}
        else:
            train = [get_dataset(args.dataset, d, "train") for d in args.domains]
            evaluate = {"heldout": [get_dataset(args.dataset, d, "heldout") for d in args.domains], "train-as-gallery": train}
    except DataError as e:
        raise SystemExit(f"[train] {e}") from None
    if paper and cfg.k != len(train[0].classes):  # the papers set k to the number of classes
        say(f"k = {len(train[0].classes)}, the number of classes of {args.dataset} (the setting says {cfg.k})")
        cfg = replace(cfg, k=len(train[0].classes))
    if args.tiny:  # the first few images of each domain
        train = [first_items(ds, 64) for ds in train]
        evaluate = {p: [first_items(ds, 48) for ds in sets] for p, sets in evaluate.items()}
    smallest = min(len(ds) for ds in train)
    if args.own and smallest < cfg.batch_size:
        say(f"batch size {cfg.batch_size} → {smallest}: a batch cannot hold more images than the smaller "
            f"domain's {smallest} training images")
        cfg = replace(cfg, batch_size=smallest, fusion_batch=min(cfg.fusion_batch, smallest)) \
            if args.method == "ibnm" else replace(cfg, batch_size=smallest)
    backbone = get_backbone(cfg.backbone)
    images = train if paper else [ds.tensor() for ds in train]   # paper datasets: image files, read per batch
    features = [None, None]
    if args.cached_views:
        t0 = time.time()
        features = [cache_view_features(backbone, x, args.cached_views, image_size=x.shape[-1], device=device)
                    for x in images]
        say(f"{args.cached_views} cached views of {sum(len(x) for x in images)} images: {time.time() - t0:.0f} s")
    precision = auto_precision(device) if args.precision == "auto" else args.precision
    if rank == 0:
        say(f"precision: {precision} on {device.type}")
    if args.method == "ibnm":
        method = IBNM(cfg, images[0], images[1], backbone, *features, device=device, precision=precision)
    else:
        inputs = features if features[0] is not None else images
        method = UCDIR(cfg, inputs[0], inputs[1], backbone, device=device, precision=precision)
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = method.trainer(args.out / f"checkpoint{rank}.pt", on_epoch_end=epoch_reporter(cfg, rank))
    trainer.batches = with_heartbeat(trainer.batches, cfg.epochs, rank)
    history = trainer.fit()

    model = method.retrieval_model()
    tables, held_features = [], None
    for protocol, sets in evaluate.items():
        feats = {ds.domain: dataset_features(model, ds, device=device) for ds in sets}
        labels = {ds.domain: ds.labels for ds in sets}
        held_features = (feats, labels) if protocol == "heldout" else held_features
        ks = [k for k in ((1, 10) if args.tiny else (1, 10, 50)) if k <= min(len(ds) for ds in sets)]  # small galleries
        tables.append(cross_domain_table(feats, labels, ks=ks, protocol=protocol))
    if rank == 0:
        table = pd.concat(tables, ignore_index=True)
        reranked = icfrr_cross_domain_table(*held_features)
        (args.out / "results.json").write_text(json.dumps({
            "config": method.config_dict(), "setting": note, "precision": precision, "history": history,
            "metrics": table.to_dict(orient="records"),
            "icfrr_heldout": reranked.to_dict(orient="records"),
            "bank_checksum": [float(method.banks[d].keys.sum()) for d in ("A", "B")],
        }, indent=1))
        print(table.filter(["protocol", "query", "gallery", "mAP@all", "P@10", "P@50"]).to_string(index=False))
        print("\nheld-out, ICFRR re-ranking on top:")
        print(reranked.filter(["query", "gallery", "mAP@all", "mAP@all + ICFRR", "ICFRR gain"]).to_string(index=False))
        say(f"results: {args.out / 'results.json'}")
    if dist.is_initialized():
        # every process must hold the same memory banks: compare their checksums
        mine = torch.tensor([float(method.banks[d].keys.sum()) for d in ("A", "B")], dtype=torch.float64,
                            device=device if args.backend == "nccl" else "cpu")  # nccl gathers GPU tensors only
        everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(everyone, mine)
        if rank == 0 and not all(torch.allclose(e.cpu(), mine) for e in everyone):
            raise SystemExit("memory banks differ between processes")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
