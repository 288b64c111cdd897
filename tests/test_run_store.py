"""The run store: a stored run loads into the same weights and table as the run that trained it."""
import copy
import hashlib
import json
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest
import torch

from cdrlib.checkpoint_io import XZ_MAGIC, CheckpointError, load_state
from cdrlib.evaluation import pair_protocols
from cdrlib.models import get_backbone
from cdrlib.premise import ClassMixedClusters, OracleMatching
from cdrlib.run_store import RunStore, digest, pack_state, unpack_state
from cdrlib.ucdir_train import (UCDIRConfig, ViewFeatures, cache_view_features, run_settings,
                                train_and_evaluate)


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    backbone = get_backbone("random-resnet")
    torch.manual_seed(0)
    feats = (cache_view_features(backbone, torch.rand(40, 3, 64, 64, generator=g), n_views=3),
             cache_view_features(backbone, torch.rand(36, 3, 64, 64, generator=g), n_views=3))
    labels = {"A": torch.arange(40) % 4, "B": torch.arange(36) % 4}
    plain = {"A": feats[0][:, 0], "B": feats[1][:, 0]}
    evaluation = pair_protocols("A", "B", (plain, labels), (plain, labels))
    cfg = replace(UCDIRConfig(), epochs=3, batch_size=8, k=4, warmup_epoch=1, se_epoch=1, dd_epoch=1, dod="centroid",
                  kmeans_nredo=1, proj_hidden=32, proj_dim=8)
    return cfg, feats, backbone, evaluation


def run(tiny, store, key="UCDIR | A–B | seed 0", **changes):
    cfg, feats, backbone, evaluation = tiny
    return train_and_evaluate(replace(cfg, **changes), feats, backbone, evaluation, ks=(5,), store=store, key=key,
                              matching=OracleMatching(cfg.k, 0.5, seed=0))


def test_a_stored_run_loads_into_the_same_weights_history_and_table(tiny, tmp_path):
    store = RunStore(tmp_path / "runs")
    trained, hist, table = run(tiny, store)
    assert store.trained == 1 and store.loaded == 0
    # what is evaluated is what is stored: the file's packed state, unpacked
    stored_file = tmp_path / "runs" / RunStore.file_name("UCDIR | A–B | seed 0")
    assert stored_file.read_bytes()[:6] == XZ_MAGIC                       # written xz-compressed
    stored = load_state(stored_file)
    assert set(stored["kept"]["modules"]["encoder"]["head.0.weight"]) == {"int8 codes"}
    for k, v in unpack_state(stored["kept"])["modules"]["encoder"].items():
        assert torch.equal(trained.encoder.state_dict()[k], v), k
    assert "matching_agreement" in hist[-1]
    again = RunStore(tmp_path / "runs")
    loaded, hist2, table2 = run(tiny, again)
    assert again.loaded == 1 and again.trained == 0
    assert pd.DataFrame(hist2).equals(pd.DataFrame(hist)) and table2.equals(table)   # NaN-aware
    for p, q in zip(trained.encoder.parameters(), loaded.encoder.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(trained.clusters.get("A")[1], loaded.clusters.get("A")[1])
    manifest = json.loads((tmp_path / "runs" / "RUNS.json").read_text())
    assert list(manifest["runs"]) == ["UCDIR | A–B | seed 0"]


def test_holds_says_whether_fit_would_load(tiny, tmp_path):
    cfg, feats, _, _ = tiny
    hooks = {"relabel": None, "matching": OracleMatching(cfg.k, 0.5, seed=0)}  # as run() gives
    settings = run_settings("UCDIR", asdict(replace(cfg, seed=0)), feats, hooks)
    key = "UCDIR | A–B | seed 0"
    store = RunStore(tmp_path / "runs")
    assert not store.holds(key, settings)
    run(tiny, store)
    assert store.holds(key, settings)
    assert not store.holds(key, {**settings, "method": "IBNM"})      # other settings
    assert not store.holds("UCDIR | A–B | seed 1", settings)         # another run
    for mode in ("retrain", "off"):                                  # modes that always train
        assert not RunStore(tmp_path / "runs", mode=mode).holds(key, settings)


def test_other_data_or_another_dial_setting_under_the_same_key_train_again(tiny, tmp_path):
    """The key names a run for people; the settings say what defines it: a stored run of other
    images of the same shape, or of another oracle share, is never loaded in its place."""
    cfg, feats, backbone, evaluation = tiny
    store = RunStore(tmp_path / "runs")
    run(tiny, store)
    other = (feats[0].clone(), feats[1])
    other[0][0, 0, 0] += 1.0
    train_and_evaluate(cfg, other, backbone, evaluation, ks=(5,), store=store, key="UCDIR | A–B | seed 0",
                       matching=OracleMatching(cfg.k, 0.5, seed=0))
    assert store.trained == 2 and store.loaded == 0
    labels = {"A": torch.arange(40) % 4, "B": torch.arange(36) % 4}
    for p in (0.5, 1.0):
        train_and_evaluate(cfg, feats, backbone, evaluation, ks=(5,), store=store, key="dial | seed 0",
                           relabel=ClassMixedClusters(labels, p, seed=0))
    assert store.trained == 4 and store.loaded == 0
    train_and_evaluate(cfg, feats, backbone, evaluation, ks=(5,), store=store, key="dial | seed 0",
                       relabel=ClassMixedClusters(labels, 1.0, seed=0))
    assert store.trained == 4 and store.loaded == 1                  # the same dial setting loads
    settings = json.loads(json.loads((tmp_path / "runs" / "RUNS.json").read_text())["runs"]["dial | seed 0"]["settings"])
    assert settings["hooks"] == {"relabel": {"oracle": "ClassMixedClusters", "p": 1.0, "seed": 0,
                                             "labels": digest({"A": labels["A"], "B": labels["B"]})},
                                 "matching": None}
    with pytest.raises(ValueError, match="has no settings"):          # a hook of one's own
        train_and_evaluate(cfg, feats, backbone, evaluation, ks=(5,), store=store, key="own | seed 0",
                           relabel=lambda domain, assignments: assignments)
    # without a store, nothing needs to name the hook
    _, hist, _ = train_and_evaluate(cfg, feats, backbone, evaluation, ks=(5,),
                                    relabel=lambda domain, assignments: assignments)
    assert len(hist) == cfg.epochs


def test_a_run_another_chapter_stored_loads_from_its_store(tiny, tmp_path):
    """The settings define a run: a chapter that evaluates a run of an earlier chapter, under a key
    of its own, loads it from that chapter's store and stores no copy."""
    first = RunStore(tmp_path / "runs" / "04_first", shared=True)
    trained, hist, table = run(tiny, first)
    alone = RunStore(tmp_path / "runs" / "05_alone")                     # not shared: its own runs
    assert not alone.holds("UCDIR | A–B | seed 0", json.loads(first.manifest()["runs"]["UCDIR | A–B | seed 0"]["settings"]))
    later = RunStore(tmp_path / "runs" / "09_later", shared=True)
    loaded, hist2, table2 = run(tiny, later, key="CW+SE, as in chapter 04 | A–B | seed 0")
    assert (later.loaded, later.borrowed, later.trained) == (1, 1, 0) and not (tmp_path / "runs" / "09_later").exists()
    assert table2.equals(table) and pd.DataFrame(hist2).equals(pd.DataFrame(hist))
    assert "(1 of them from other chapters' stores)" in later.summary()
    retrain = RunStore(tmp_path / "runs" / "09_later", mode="retrain", shared=True)   # retrains only its own runs
    run(tiny, retrain, key="CW+SE, as in chapter 04 | A–B | seed 0")
    assert (retrain.loaded, retrain.trained) == (1, 0)
    run(tiny, later, key="CW+SE, as in chapter 04 | A–B | seed 1", seed=1)  # other settings: its own
    assert later.trained == 1 and (tmp_path / "runs" / "09_later" / "RUNS.json").is_file()
    off = RunStore(tmp_path / "runs" / "09_later", mode="off", shared=True)
    run(tiny, off, key="CW+SE, as in chapter 04 | A–B | seed 0")
    assert (off.loaded, off.trained) == (0, 1)
    path = tmp_path / "runs" / "04_first" / RunStore.file_name("UCDIR | A–B | seed 0")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="04_first.RUNS.json"):   # checked against its own manifest
        run(tiny, RunStore(tmp_path / "runs" / "09_later", shared=True), key="CW+SE, as in chapter 04 | A–B | seed 0")


def test_digest_is_of_values_dtype_and_shape():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert digest(x) == digest(x.t().contiguous().t()) == digest(x.clone())     # layout is not a value
    assert len(digest(x)) == 16 and digest(x) != digest(x.double()) and digest(x) != digest(x.reshape(4, 3))
    y = x.clone()
    y.view(torch.int32)[1, 2] ^= 1                                               # one bit
    assert digest(y) != digest(x)
    assert digest(x.numpy()) == digest(x) == digest(x.numpy().copy())            # an array: its values
    big = np.zeros(5000)                                                          # whose repr elides values
    other = big.copy()
    other[2500] = 1.0
    assert digest(big) != digest(other)
    net = torch.nn.Linear(4, 2)
    assert digest(net) == digest(net.state_dict()) != digest(torch.nn.Linear(4, 2))
    assert digest({"a": 1, "b": x}) != digest({"b": x, "a": 1})                  # order counts, as in a state_dict
    assert digest(1) != digest(1.0) != digest("1.0") and digest(torch.zeros(0)) != digest(torch.zeros(0, 1))
    assert digest(torch.tensor(1.0)) == digest(torch.tensor(1.0)) != digest(torch.tensor([1.0]))
    # the reference: sha256 of the byte string state_digest builds, written out by hand
    ref = hashlib.sha256(b"L1" + b"Ttorch.float32(3, 4)" + x.numpy().tobytes()).hexdigest()[:16]
    assert digest(x) == ref


def test_view_features_fingerprint_is_of_what_defines_the_views(tiny):
    _, _, backbone, _ = tiny
    g = torch.Generator().manual_seed(2)
    images = torch.rand(6, 3, 64, 64, generator=g)
    v = ViewFeatures(backbone, images, n_views=3)
    same = ViewFeatures(backbone, images.clone(), n_views=3)
    assert v.fingerprint == same.fingerprint and not {"views", "plain"} & set(vars(v))  # nothing computed
    other_images = images.clone()
    other_images[0, 0, 0, 0] = 0.5 if images[0, 0, 0, 0] != 0.5 else 0.25
    other_backbone = copy.deepcopy(backbone)
    with torch.no_grad():
        w = next(other_backbone.parameters())
        w[(0,) * w.dim()] += 1.0
    for changed in (ViewFeatures(backbone, other_images, n_views=3), ViewFeatures(backbone, images, n_views=4),
                    ViewFeatures(backbone, images, n_views=3, seed=1),
                    ViewFeatures(backbone, images, n_views=3, image_size=32),
                    ViewFeatures(other_backbone, images, n_views=3)):
        assert changed.fingerprint != v.fingerprint


def test_view_features_are_computed_only_when_the_run_trains(tiny, tmp_path):
    cfg, _, backbone, evaluation = tiny
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(40, 3, 64, 64, generator=g), torch.rand(36, 3, 64, 64, generator=g))
    lazy = lambda: tuple(ViewFeatures(backbone, x, n_views=3) for x in images)  # noqa: E731
    first = lazy()
    assert first[0].shape == (40, 3, 256) and "views" not in vars(first[0])   # shape without views
    # view 0 of the views is the plain features, bit for bit (the train-as-gallery protocol's)
    assert torch.equal(first[0].plain, cache_view_features(backbone, images[0], n_views=3)[:, 0])
    store = RunStore(tmp_path / "runs")
    kw = dict(ks=(5,), store=store, key="UCDIR | A–B | seed 0")
    trained, hist, table = train_and_evaluate(cfg, first, backbone, evaluation, **kw)
    assert store.trained == 1 and all("views" in vars(v) for v in first)
    assert torch.equal(first[1].views, cache_view_features(backbone, images[1], n_views=3))
    again, store2 = lazy(), RunStore(tmp_path / "runs")
    loaded, hist2, table2 = train_and_evaluate(cfg, again, backbone, evaluation, **{**kw, "store": store2})
    assert store2.loaded == 1 and all("views" not in vars(v) for v in again)
    assert table2.equals(table) and pd.DataFrame(hist2).equals(pd.DataFrame(hist))
    stand_ins = again[0].stand_ins()
    assert torch.equal(stand_ins[:, 0], again[0].plain) and bool(stand_ins[:, 1:].isnan().all())
    with pytest.raises(ValueError, match="at least 3"):
        ViewFeatures(backbone, images[0], n_views=2)


def test_other_settings_train_again(tiny, tmp_path):
    store = RunStore(tmp_path / "runs")
    run(tiny, store)
    run(tiny, store, lr=0.01)
    assert store.trained == 2 and store.loaded == 0


def test_a_replaced_file_is_refused(tiny, tmp_path):
    store = RunStore(tmp_path / "runs")
    run(tiny, store)
    path = tmp_path / "runs" / RunStore.file_name("UCDIR | A–B | seed 0")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        run(tiny, RunStore(tmp_path / "runs"))


def test_modes_off_and_retrain(tiny, tmp_path):
    off = RunStore(tmp_path / "off", mode="off")
    run(tiny, off)
    assert not (tmp_path / "off").exists()
    store = RunStore(tmp_path / "runs")
    run(tiny, store)
    retrain = RunStore(tmp_path / "runs", mode="retrain")
    run(tiny, retrain)
    assert retrain.trained == 1 and retrain.loaded == 0
    with pytest.raises(ValueError, match="must be one of"):
        RunStore(tmp_path, mode="sometimes")


def test_the_shipped_run_stores_verify_and_stay_small():
    """Every stored run of the book matches its manifest, is stored once (no two runs with the
    same settings), and stored runs and backbones together take ≤ 30 MB.

    With float16 weights they took 69.1 MB (chapter 07's PCME runs 1.5 MB each, mostly the word
    embeddings of the text encoder; a UCDIR head 0.46 MB). With 8-bit weights (``pack_state``)
    42.4 MB; with each run stored once (chapters 05 and 09 load nine runs from 04's and 06's
    stores) 40.2 MB; with UCDIR's and IBNM's heads at steps of 0.15 × RMS and every file
    xz-compressed 29.2 MB: backbones 8.5 MB, stored runs 20.7 MB (``cdrlib/run_store.py`` says
    what each step moved in the tables).
    """
    from cdrlib.data.download import file_sha256
    from cdrlib.profile import REPO_ROOT

    total = sum(p.stat().st_size for p in (REPO_ROOT / "checkpoints").glob("*.pt"))
    settings = {}  # settings → the run stored with them: each run once in the book
    for manifest_file in (REPO_ROOT / "book" / "runs").glob("*/RUNS.json"):
        manifest = json.loads(manifest_file.read_text())
        files = {p.name for p in manifest_file.parent.glob("*.pt")}
        assert files == {e["file"] for e in manifest["runs"].values()}, f"{manifest_file}: stray or missing runs"
        for key, entry in manifest["runs"].items():
            path = manifest_file.parent / entry["file"]
            assert file_sha256(path) == entry["sha256"], f"{key}: sha256 differs"
            total += path.stat().st_size
            where = f"{manifest_file.parent.name}: {key}"
            assert entry["settings"] not in settings, f"{where} is {settings.get(entry['settings'])}: delete the copy"
            settings[entry["settings"]] = where
    assert total <= 30e6, f"checkpoints and stored runs take {total / 1e6:.1f} MB (> 30 MB)"


def reference_codes(w: torch.Tensor, relative_step=None) -> torch.Tensor:
    """pack_state's rounding of a matrix, one value at a time: float16, then per row (R = shape[0])
    scale = max |value| / 127, or relative_step · sqrt(mean of value²) where that is larger;
    value = round(value / scale) · scale (Python's round: ties to even)."""
    out = []
    for row in w.half().float().reshape(w.shape[0], -1).tolist():
        scale = float(torch.tensor(max(abs(v) for v in row)) / 127)
        if relative_step is not None:
            rms = float(torch.tensor(sum(v * v for v in row) / len(row), dtype=torch.float64).sqrt())
            scale = max(scale, float(torch.tensor(relative_step * rms, dtype=torch.float32)))
        out.append([round(float(torch.tensor(v) / scale)) * scale if scale else 0.0 for v in row])
    return torch.tensor(out).reshape(w.shape)


def test_pack_state_rounds_as_the_plain_reference_and_keeps_the_rest(monkeypatch):
    import cdrlib.run_store as run_store
    monkeypatch.setattr(run_store, "QUANTIZED_MIN_VALUES", 64)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 70, generator=g) * 0.03
    weight[0] = 0                                                           # an all-zero row
    weight[1, :9] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 126.5])  # scale 1: halves
    weight[1, 9:] = 0
    weight3 = torch.randn(3, 2, 40, generator=g)                            # (R, ...) → rows of 80
    centroids = torch.randn(5, 16, generator=g)                             # any matrix, not only weights
    labels = torch.tensor([0, 5, 300, 2])
    state = {"m": {"a.weight": weight, "b.weight_ih_l0": weight3, "a.bias": torch.randn(70, generator=g),
                   "small.weight": torch.randn(4, 8, generator=g)},
             "clusters": {"A": (centroids, labels)},
             "mask": torch.tensor([True, False]), "epoch": 3}
    packed = pack_state(state)
    for coded in (packed["m"]["a.weight"], packed["m"]["b.weight_ih_l0"], packed["clusters"]["A"][0]):
        assert set(coded) == {"int8 codes"} and coded["int8 codes"][0].dtype == torch.int8
    back = unpack_state(packed)
    assert torch.equal(back["m"]["a.weight"], reference_codes(weight))
    assert back["m"]["a.weight"][1, :9].tolist() == [127.0, 0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 4.0, 126.0]
    assert not back["m"]["a.weight"][0].any()
    assert torch.equal(back["m"]["b.weight_ih_l0"], reference_codes(weight3))
    assert torch.equal(back["clusters"]["A"][0], reference_codes(centroids))
    # biases and small weights: float16 values; labels: int64 again, stored in int16
    for got, x in ((back["m"]["a.bias"], state["m"]["a.bias"]), (back["m"]["small.weight"], state["m"]["small.weight"])):
        assert got.dtype == torch.float32 and torch.equal(got, x.half().float())
    assert isinstance(back["clusters"]["A"], tuple) and back["clusters"]["A"][1].dtype == torch.int64
    assert packed["clusters"]["A"][1]["int64 as"].dtype == torch.int16 and torch.equal(back["clusters"]["A"][1], labels)
    assert torch.equal(back["mask"], state["mask"]) and back["epoch"] == 3
    diverged = weight.clone()
    diverged[2, 3] = float("nan")                                           # kept, not coded
    packed_nan = pack_state({"a.weight": diverged})["a.weight"]
    assert isinstance(packed_nan, torch.Tensor) and packed_nan.dtype == torch.float16
    torch.testing.assert_close(unpack_state(packed_nan), diverged.half().float(), rtol=0, atol=0, equal_nan=True)
    old_float16 = {"w": weight.half()}                                      # an older store's file
    assert torch.equal(unpack_state(old_float16)["w"], weight.half().float())


def test_a_relative_step_rounds_coarser_as_the_reference_and_never_finer_than_8_bits(monkeypatch):
    import cdrlib.run_store as run_store
    monkeypatch.setattr(run_store, "QUANTIZED_MIN_VALUES", 64)
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 500, generator=g) * 0.05
    weight[2, 7] = 40.0               # an outlier: max / 127 is coarser than 0.15 · RMS in this row
    assert weight[2].abs().max() / 127 > 0.15 * weight[2].square().mean().sqrt()
    weight[4] = 0                     # an all-zero row: step 0, codes 0
    for step in (None, 0.15, 0.5):
        back = unpack_state(pack_state({"w": weight}, step))["w"]
        # the RMS summed in another order may differ in its last bit: the step, not the codes
        torch.testing.assert_close(back, reference_codes(weight, step), rtol=1e-6, atol=0)
    rows = weight.half().float()
    coarse = unpack_state(pack_state({"w": weight}, 0.15))["w"]
    rms = rows.square().mean(1).sqrt()
    # each value within half a step of its float16 value: 0.075 · RMS, or max / 254 in row 2
    bound = torch.maximum(0.075 * rms, rows.abs().amax(1) / 254) * (1 + 1e-6)
    assert ((coarse - rows).abs() <= bound[:, None]).all()
    assert abs(coarse[2, 7] - 40) < 1e-5 and not coarse[4].any()
    codes = pack_state({"w": weight}, 0.15)["w"]["int8 codes"][0]
    assert codes.abs().max() <= 127 and len(codes.unique()) < len(pack_state({"w": weight})["w"]["int8 codes"][0].unique())
