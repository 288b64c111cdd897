"""The UCDIR training command: a tiny run on one process and on two (torchrun, gloo, CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cdrlib.ucdir_train import ClusterState

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_ucdir.py"


def run(cmd, tmp_path):
    env = {**os.environ, "CDR_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return json.loads((tmp_path / "results.json").read_text())


def check(res):
    last = res["history"][-1]
    assert {"iw_A", "iw_B", "cw_A", "cw_B", "se", "dd", "loss"} <= set(last)
    assert all(v == v and abs(v) < 1e4 for v in last.values())  # finite
    mean = [r for r in res["metrics"] if r["query"] == "mean"][0]
    assert 0.0 < mean["mAP@all"] <= 1.0


@pytest.mark.slow
def test_tiny_single_process_and_resume(tmp_path):
    res = run([sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path)], tmp_path)
    check(res)
    # a second call finds the finished checkpoint and does not train again
    again = run([sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path)], tmp_path)
    assert again["history"] == res["history"]


@pytest.mark.slow
def test_tiny_two_processes_gloo(tmp_path):
    res = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29531",
            str(SCRIPT),
            "--tiny",
            "--backend",
            "gloo",
            "--out",
            str(tmp_path),
        ],
        tmp_path,
    )
    check(res)


def _cached_run(tmp_path, epochs, dod, stop_after=None, precision="float32"):
    from dataclasses import replace

    import torch

    from cdrlib.models import get_backbone
    from cdrlib.ucdir_train import UCDIR, UCDIRConfig, cache_view_features

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    backbone = get_backbone("random-resnet")
    feats_a = cache_view_features(backbone, torch.rand(40, 3, 64, 64, generator=g), n_views=4)
    feats_b = cache_view_features(backbone, torch.rand(36, 3, 64, 64, generator=g), n_views=4)
    assert feats_a.shape == (40, 4, backbone.num_features)
    cfg = replace(
        UCDIRConfig(),
        epochs=epochs,
        batch_size=8,
        k=4,
        warmup_epoch=1,
        se_epoch=1,
        dd_epoch=1,
        dod=dod,
        kmeans_nredo=1,
        proj_hidden=32,
        proj_dim=8,
    )
    method = UCDIR(cfg, feats_a, feats_b, backbone, precision=precision)
    trainer = method.trainer(tmp_path / "run.pt")
    if stop_after is not None:  # an interruption: the process ends after this many epochs
        trainer.epochs = stop_after
    return method, trainer.fit()


@pytest.mark.slow
@pytest.mark.parametrize("dod", ["centroid", "centroid_exact", "batch"])
def test_cached_features_train_every_loss_and_resume_exactly(tmp_path, dod):
    import torch

    full, hist = _cached_run(tmp_path / "a", 3, dod)
    last = hist[-1]
    assert {"iw_A", "cw_A", "se", "dd"} <= set(last) and all(v == v for v in last.values())
    # the centroid form's loss reaches the network (its centroids follow the queries)
    _cached_run(tmp_path / "b", 3, dod, stop_after=2)
    resumed, hist_b = _cached_run(tmp_path / "b", 3, dod)
    assert hist_b == hist
    for p, r in zip(full.encoder.parameters(), resumed.encoder.parameters()):
        assert torch.equal(p, r)
    from cdrlib.evaluation import extract_features

    emb = extract_features(full.retrieval_model(), torch.rand(5, 3, 64, 64))
    assert emb.shape == (5, 8) and torch.allclose(emb.norm(dim=1), torch.ones(5))


@pytest.mark.slow
def test_a_bfloat16_step_follows_the_float32_one_and_resumes_exactly(tmp_path):
    """Mixed precision (the paper profile on a GPU) tested on the CPU with bfloat16: the losses of
    the first epoch stay close to float32's, the weights stay float32, and a resumed run equals an
    uninterrupted one."""
    full, hist16 = _cached_run(tmp_path / "bf16", 3, "batch", precision="bfloat16")
    _, hist32 = _cached_run(tmp_path / "f32", 3, "batch")
    assert all(p.dtype == torch.float32 for p in full.encoder.parameters())
    assert abs(hist16[0]["loss"] - hist32[0]["loss"]) < 0.02 * abs(hist32[0]["loss"])
    assert all(v == v for v in hist16[-1].values())  # finite
    _cached_run(tmp_path / "bf16b", 3, "batch", stop_after=2, precision="bfloat16")
    resumed, hist_b = _cached_run(tmp_path / "bf16b", 3, "batch", precision="bfloat16")
    assert hist_b == hist16
    for p, r in zip(full.encoder.parameters(), resumed.encoder.parameters()):
        assert torch.equal(p, r)


def test_exact_centroids_need_cached_features():
    from dataclasses import replace

    from cdrlib.models import get_backbone
    from cdrlib.ucdir_train import UCDIR, UCDIRConfig

    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg = replace(UCDIRConfig(), dod="centroid_exact", batch_size=4, k=2)
    with pytest.raises(ValueError, match="cached view features"):
        UCDIR(cfg, images, images, get_backbone("random-resnet"))



def test_a_run_store_rounds_a_head_on_cached_features_coarser_than_a_whole_network():
    """relative_step (cdrlib.run_store.pack_state): 0.15 × RMS was measured on the book's heads on
    cached features; a whole network fine-tuned on images keeps 8-bit steps."""
    from dataclasses import replace

    from cdrlib.models import get_backbone
    from cdrlib.ucdir_train import UCDIR, UCDIRConfig

    cfg = replace(UCDIRConfig(), batch_size=4, k=2)
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats = torch.randn(12, 3, 16, generator=torch.Generator().manual_seed(1))
    assert UCDIR(cfg, images, images, get_backbone("random-resnet")).relative_step is None
    assert UCDIR(cfg, feats, feats, get_backbone("random-resnet")).relative_step == 0.15


def test_exact_centroid_dod_is_the_loss_on_every_image_and_reaches_the_head():
    """One step of dod='centroid_exact': its DoD term is the centroid form on the current encoder's
    cluster means of every training image, and it changes the head's gradient."""
    from dataclasses import replace

    from cdrlib import ucdir
    from cdrlib.models import get_backbone
    from cdrlib.ucdir_train import UCDIR, UCDIRConfig, cache_view_features

    g = torch.Generator().manual_seed(0)
    backbone = get_backbone("random-resnet")
    feats = [
        cache_view_features(backbone, torch.rand(n, 3, 32, 32, generator=g), n_views=3)
        for n in (20, 16)
    ]
    cfg = replace(UCDIRConfig(), dod="centroid_exact", batch_size=4, k=3, warmup_epoch=0,
                  se_epoch=0, dd_epoch=0, w_dd=1.0, use_cw=False, use_se=False, kmeans_nredo=1,
                  proj_hidden=16, proj_dim=4)
    # a fixed matching: Sinkhorn's argmax on three random centroids can flip with the last bit
    method = UCDIR(cfg, feats[0], feats[1], backbone, matching=lambda c_a, c_b: torch.arange(3))
    method.recluster(0)
    ids = {"A": torch.arange(4), "B": torch.arange(4)}

    def head_grads(dod):
        method.cfg = replace(cfg, dod=dod)
        torch.manual_seed(1)  # the same views for both
        method.encoder.zero_grad()
        loss, parts, _ = method.loss(ids, epoch=0)
        loss.backward()
        return parts, [p.grad.clone() for p in method.encoder.head.parameters()]

    parts, with_dod = head_grads("centroid_exact")
    _, without = head_grads(None)
    with torch.no_grad():
        cur = {
            d: ucdir.cluster_centroids(
                method.model(method.views[d].plain(torch.arange(len(method.views[d])), "cpu")),
                method.clusters.get(d)[1],
                3,
            )
            for d in ("A", "B")
        }
        want = ucdir.dod_loss_centroid(
            cur["A"], cur["B"], matching=torch.arange(3), reduction="mean"
        )
    assert parts["dd"] == pytest.approx(want.item(), rel=1e-5)
    assert any(not torch.allclose(a, b) for a, b in zip(with_dod, without))
    # embedding a domain in chunks, each recomputed in the backward pass, gives the same embeddings
    # and the same gradient as one pass (compared on a smooth function of the embeddings: DoD itself
    # is ill-conditioned on these nearly equal random-backbone centroids)
    import cdrlib.ucdir_train as ucdir_train

    weights = torch.randn(20, 4, generator=torch.Generator().manual_seed(2))

    def embedding_grads(chunk):
        saved = ucdir_train.EXACT_CENTROID_CHUNK
        ucdir_train.EXACT_CENTROID_CHUNK = chunk
        try:
            method.encoder.zero_grad()
            z = method.embed_with_grad("A")
            (z * weights).sum().backward()
        finally:
            ucdir_train.EXACT_CENTROID_CHUNK = saved
        return z.detach(), [p.grad.clone() for p in method.encoder.head.parameters()]

    z_one, g_one = embedding_grads(4096)
    z_chunked, g_chunked = embedding_grads(7)
    torch.testing.assert_close(z_chunked, z_one)
    for a, b in zip(g_chunked, g_one):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # sums in another order


def test_precisions_are_checked():
    from cdrlib.models import get_backbone
    from cdrlib.ucdir_train import UCDIR, UCDIRConfig, auto_precision

    feats = torch.rand(8, 3, 4)
    with pytest.raises(ValueError, match="one of"):
        UCDIR(UCDIRConfig(k=2), feats, feats, get_backbone("random-resnet"), precision="half")
    with pytest.raises(ValueError, match="needs a GPU"):
        UCDIR(UCDIRConfig(k=2), feats, feats, get_backbone("random-resnet"), precision="float16")
    assert auto_precision("cpu") == "float32"


def test_bad_inputs_are_explained():
    import torch
    from dataclasses import replace

    from cdrlib.models import get_backbone
    from cdrlib.ucdir_train import UCDIR, UCDIRConfig

    with pytest.raises(ValueError, match="both domains"):
        UCDIR(
            UCDIRConfig(),
            torch.randn(10, 4, 8),
            torch.rand(10, 3, 64, 64),
            get_backbone("random-resnet"),
        )
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        UCDIR(UCDIRConfig(), torch.rand(10, 64), torch.rand(10, 64), get_backbone("random-resnet"))
    method = UCDIR(
        replace(UCDIRConfig(), batch_size=64),
        torch.randn(10, 4, 8),
        torch.randn(10, 4, 8),
        get_backbone("random-resnet"),
    )
    with pytest.raises(ValueError, match="larger than a domain"):
        next(method.batches(0, torch.Generator()))


@pytest.mark.slow
def test_tiny_ibnm_command_whole_vit(tmp_path):
    res = run(
        [
            sys.executable,
            str(SCRIPT),
            "--method",
            "ibnm",
            "--tiny",
            "--domains",
            "noto",
            "sketch",
            "--out",
            str(tmp_path),
        ],
        tmp_path,
    )
    last = res["history"][-1]
    assert {"iw_A", "cw_A", "se", "feat", "label", "clean_fraction"} <= set(last)
    assert res["config"]["fusion"] == "attention" and res["config"]["backbone"] == "random-vit"
    mean = [r for r in res["metrics"] if r["query"] == "mean"][0]
    assert 0.0 < mean["mAP@all"] <= 1.0


def _own_tree(root, classes=("apple", "bird", "cat"), n=12):
    """root/<domain>/<class>/<i>.png: flat colours, one per (class, i), 64 px."""
    from PIL import Image

    for d in ("photo", "sketch"):
        for c in classes:
            (root / d / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                colour = np.array([15 * i, ord(c[0]), 40 if d == "photo" else 200], np.uint8)
                Image.fromarray(np.tile(colour, (64, 64, 1))).save(root / d / c / f"{i}.png")
    return root


def _own_command(source: str, path, out) -> list[str]:
    """The own-images command in its smoke form: ``source`` is ``--root`` or ``--list``."""
    return [sys.executable, str(SCRIPT), source, str(path), "--domains", "photo", "sketch", "--tiny",
            "--setting", "cpu", "--cached-views", "3", "--out", str(out)]


@pytest.mark.slow
def test_own_images_command_trains_evaluates_and_reranks(tmp_path):
    """The one command for one's own images: CPU setting chosen and announced, both protocols, ICFRR."""
    tree = _own_tree(tmp_path / "tree")
    (tree / "sketch" / "cat" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    cmd = _own_command("--root", tree, out)
    env = {**os.environ, "CDR_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    bad = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert (
        bad.returncode != 0
        and "broken.png" in bad.stderr + bad.stdout
        and "bad_files='skip'" in bad.stderr + bad.stdout
    )
    res = run(cmd + ["--bad-files", "skip"], out)
    assert "CPU setting" in res["setting"]
    protocols = {r["protocol"] for r in res["metrics"]}
    assert protocols == {"heldout", "train-as-gallery"}
    assert [r["query"] for r in res["icfrr_heldout"]] == ["photo", "sketch", "mean"]
    assert all(0.0 <= r["mAP@all + ICFRR"] <= 1.0 for r in res["icfrr_heldout"])


@pytest.mark.slow
def test_own_images_from_a_list_and_settings_that_disable_the_method(tmp_path):
    tree = _own_tree(tmp_path / "tree", n=6)
    rows = [
        f"{p.relative_to(tree)},{p.parts[-3]},{p.parts[-2]}" for p in sorted(tree.rglob("*.png"))
    ]
    (tree / "list.csv").write_text("path,domain,class\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    res = run(_own_command("--list", tree / "list.csv", out), out)
    assert {r["protocol"] for r in res["metrics"]} == {"heldout", "train-as-gallery"}
    env = {**os.environ, "CDR_PROGRESS": "0"}
    for extra, message in (
        (["--epochs", "2"], "plain instance discrimination"),
        (["--dataset", "office_hom"], "unknown dataset"),
    ):
        args = (
            ["--root", str(tree), "--domains", "photo", "sketch"] if extra[0] == "--epochs" else []
        )
        p = subprocess.run(
            [sys.executable, str(SCRIPT), *args, *extra, "--out", str(tmp_path / "x")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode != 0 and message in p.stderr + p.stdout, p.stderr[-2000:]


def test_cluster_state_is_ready_only_when_every_required_name_is_set_and_saves_on_cpu():
    s = ClusterState(required=("A", "B"))
    assert not s.ready
    s.set("A", torch.ones(3, 2), torch.tensor([0, 1, 1]))
    assert not s.ready
    s.set("B", torch.zeros(3, 2), torch.tensor([1, 0, 0]))
    assert s.ready
    c, labels = s.get("A")
    assert torch.equal(labels, torch.tensor([0, 1, 1])) and c.shape == (3, 2)
    joint = ClusterState(required=("centroids",))
    joint.set("centroids", torch.ones(2, 2))
    joint.set("clean_A", torch.tensor([True, False]))
    restored = ClusterState(required=("centroids",))
    restored.load_state_dict(joint.state_dict())
    assert restored.ready and torch.equal(restored.get("clean_A"), torch.tensor([True, False]))
    again = ClusterState(required=("A", "B"))
    again.load_state_dict(s.state_dict())
    assert torch.equal(again.get("B")[1], torch.tensor([1, 0, 0]))


class _CountingFiles:
    """A stand-in for a DomainDataset of image files: raw(i) is an (3, 8, 8) uint8 image; every
    decode is counted."""

    def __init__(self, n):
        self.n, self.decoded = n, []

    def __len__(self):
        return self.n

    def raw(self, i):
        self.decoded.append(i)
        return torch.full((3, 8, 8), i, dtype=torch.uint8)


def test_prefetched_batches_are_the_batches_asked_for_and_each_file_decodes_once():
    from cdrlib.ucdir_train import PREFETCH_BATCHES, TrainingViews

    files = _CountingFiles(10)
    views = TrainingViews(files, image_size=8, workers=2)
    ids = torch.tensor([3, 1, 4])
    views.prefetch(ids)
    views.prefetch(ids)                                  # asked twice: decoded once
    got = views.plain(ids, "cpu")
    assert sorted(files.decoded) == [1, 3, 4] and views.ahead == {}
    plain = TrainingViews(_CountingFiles(10), image_size=8, workers=2).plain(ids, "cpu")
    assert torch.equal(got, plain)                       # the same tensor with and without prefetch
    first = got[:, 0, 0, 0]                              # image i is filled with i: the order of ids kept
    assert first[1] < first[0] < first[2]
    # batches never asked for are dropped: at most PREFETCH_BATCHES wait
    for k in range(PREFETCH_BATCHES + 3):
        views.prefetch(torch.tensor([k, k + 1]))
    assert len(views.ahead) == PREFETCH_BATCHES
    # in-memory images: nothing to decode ahead
    mem = TrainingViews(torch.rand(5, 3, 8, 8), image_size=8)
    mem.prefetch(torch.tensor([0, 1]))
    assert mem.ahead == {}
