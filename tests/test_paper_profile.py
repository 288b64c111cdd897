"""The paper profile without a GPU or the network: the small copies of the paper datasets, the
random-weight paper backbones, the smoke size, the %%only cell magic and the Colab-size runs'
plumbing. (scripts/smoke_paper.py runs every chapter this way; the test command runs it.)"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import cdrlib
from cdrlib.data.paper import PAPER_DATASETS, load_paper_split
from cdrlib.data.smoke import write_paper_layouts
from cdrlib.models import get_backbone
from cdrlib.paper_run import pair_baselines, run_script
from cdrlib.run_store import RunStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """4 classes of 3 images per domain, the last class unseen, at 32 px."""
    root = tmp_path_factory.mktemp("paper_data")
    return write_paper_layouts(root, n_classes=4, per_class=3, unseen=1, image_size=32)


# (train, heldout, all) per dataset and domain, worked out from the layouts' rules: Office-Home and
# PACS hold out files 2, 6 and 9 of every ten; DomainNet's test list holds every third file; the
# zero-shot sets hold the last class out, and SAKE's sketch lists split the seen ones in two
SIZES = {
    "office_home": (12, 3, 12),
    "pacs": (12, 3, 12),
    "domainnet": (8, 4, 12),
    "cub": (9, 3, 12),
}
SAKE_SIZES = {"photo": (9, 3, 12), "sketch": (5, 3, 12)}


@pytest.mark.parametrize("name", list(PAPER_DATASETS))
def test_every_paper_layout_loads_with_its_own_reader(name, layouts):
    for domain in PAPER_DATASETS[name].folders:
        got = tuple(
            len(load_paper_split(name, domain, s, layouts / name)[0])
            for s in ("train", "heldout", "all")
        )
        want = SAKE_SIZES[domain] if PAPER_DATASETS[name].sake else SIZES[name]
        assert got == want, (name, domain)
    domain = next(iter(PAPER_DATASETS[name].folders))
    files, _, classes = load_paper_split(name, domain, "all", layouts / name)
    assert len(classes) == 4 and Image.open(files[0]).size == (32, 32)


def test_cub_captions_and_index_files_are_written(layouts):
    cub = layouts / "cub"
    images = (cub / "CUB_200_2011" / "images.txt").read_text().splitlines()
    assert len(images) == 12 and images[0].split()[0] == "1"
    first = images[0].split()[1]  # <class folder>/<image>.jpg
    caption = cub / "text_c10" / (first.rsplit(".", 1)[0] + ".txt")
    assert caption.read_text().strip()  # the emoji's names and keywords, one per line
    unseen = (cub / "testclasses.txt").read_text().split()
    assert len(unseen) == 1 and (cub / "CUB_200_2011" / "images" / unseen[0]).is_dir()


def test_bad_arguments_of_the_layout_writer_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown datasets"):
        write_paper_layouts(tmp_path, datasets=("coco",))
    with pytest.raises(ValueError, match="unseen"):
        write_paper_layouts(tmp_path, n_classes=3, unseen=3)


@pytest.mark.slow
def test_random_weights_build_the_paper_backbones_offline(monkeypatch):
    monkeypatch.setenv("CDR_RANDOM_WEIGHTS", "1")
    monkeypatch.setenv("CDR_CACHE", "/nonexistent")  # nothing may be downloaded
    x = torch.rand(2, 3, 224, 224)
    vit = get_backbone("dino-vitb16")
    resnet = get_backbone("moco-v2-resnet50")
    with torch.no_grad():
        assert vit(x).shape == (2, 768)
        assert resnet(x).shape == (2, 2048)
    assert vit.patch_embed.img_size == 224 and not vit.training


def test_the_smoke_size_belongs_to_the_paper_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("CDR_SMOKE", "1")
    monkeypatch.delenv("CDR_PROFILE", raising=False)
    with pytest.raises(ValueError, match="CDR_PROFILE=paper"):
        cdrlib.setup()
    monkeypatch.setenv("CDR_PROFILE", "paper")
    monkeypatch.setenv("CDR_RUNS", str(tmp_path))
    P = cdrlib.setup()
    assert P.smoke and P.is_paper and P.runs_dir == tmp_path
    assert P.pick(1, 2, smoke=3) == 3 and P.pick(1, 2) == 2
    monkeypatch.setenv("CDR_SMOKE", "0")
    P = cdrlib.setup()
    assert not P.smoke and P.pick(1, 2, smoke=3) == 2


def test_the_default_profile_keeps_its_runs_in_the_book(monkeypatch):
    monkeypatch.delenv("CDR_PROFILE", raising=False)
    monkeypatch.delenv("CDR_SMOKE", raising=False)
    P = cdrlib.setup()
    assert P.runs_dir == ROOT / "book" / "runs" and P.pick(1, 2, smoke=3) == 1
    assert RunStore.for_chapter("04_x").folder == ROOT / "book" / "runs" / "04_x"
    assert RunStore.for_chapter("04_x", root=P.runs_dir).folder == ROOT / "book" / "runs" / "04_x"


def test_the_only_magic_runs_a_cell_in_its_profile_and_skips_it_in_the_other(monkeypatch, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.delenv("CDR_PROFILE", raising=False)
    monkeypatch.delenv("CDR_SMOKE", raising=False)
    shell = InteractiveShell.instance()
    try:
        cdrlib.setup()  # registers %%only in the running shell
        shell.run_cell("%%only default\nran_here = 1")
        shell.run_cell("%%only paper\nran_there = 1")
        assert shell.user_ns.get("ran_here") == 1 and "ran_there" not in shell.user_ns
        assert "paper profile only" in capsys.readouterr().out
        failed = shell.run_cell("%%only default\nraise KeyError('inside')")
        assert isinstance(failed.error_in_exec, KeyError)  # an error is not a silent skip
        wrong = shell.run_cell("%%only gpu\nx = 1")
        assert isinstance(wrong.error_in_exec, ValueError)
    finally:
        InteractiveShell.clear_instance()


def _train_ucdir_script():
    path = ROOT / "scripts" / "train_ucdir.py"
    spec = importlib.util.spec_from_file_location("train_ucdir", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_short_run_keeps_the_schedules_proportions():
    script = _train_ucdir_script()
    args = script.parse_args(
        [
            "--dataset",
            "office_home",
            "--domains",
            "Art",
            "Real_World",
            "--epochs",
            "20",
            "--scale-schedule",
            "--losses",
            "iw",
            "--batch-size",
            "16",
        ]
    )
    cfg, _ = script.choose_config(args, torch.device("cpu"))
    # the paper's 200 epochs: warm-up 20, SE from 100 — a tenth of each
    assert (cfg.epochs, cfg.warmup_epoch, cfg.se_epoch, cfg.batch_size) == (20, 2, 10, 16)
    assert not cfg.use_cw and not cfg.use_se
    args = script.parse_args(
        [
            "--method",
            "ibnm",
            "--dataset",
            "office_home",
            "--epochs",
            "4",
            "--scale-schedule",
            "--domains",
            "Art",
            "Real_World",
        ]
    )
    cfg, _ = script.choose_config(args, torch.device("cpu"))
    assert cfg.fusion_epoch == 2 and cfg.epochs == 4  # IBNM's fusion starts half-way, as in 50
    with pytest.raises(SystemExit):
        script.parse_args(["--scale-schedule"])  # nothing to scale to


def test_a_failing_script_is_reported_with_its_last_lines(tmp_path):
    with pytest.raises(RuntimeError, match="--epochs must be at least 1"):
        run_script("train_ucdir.py", "--epochs", "0", out=tmp_path)


def test_the_paper_baselines_read_the_files_in_batches(layouts, monkeypatch):
    monkeypatch.setenv("CDR_DATA", str(layouts))
    table = pair_baselines(
        "office_home", ("Art", "Real_World"), {"mean colour": lambda x: x.mean((2, 3))}
    )
    assert list(table["method"].unique()) == ["chance", "raw pixels (32 px)", "mean colour"]
    assert set(table["query"]) == {"Art", "Real_World", "mean"}
    assert table["mAP@all"].between(0, 1).all()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
