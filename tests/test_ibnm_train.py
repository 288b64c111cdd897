"""IBNM training on tiny data: every term runs, resumes exactly, and bad inputs are explained."""
from dataclasses import replace

import pytest
import torch

from cdrlib.ibnm_train import IBNM, IBNMConfig
from cdrlib.models.vit import VisionTransformer
from cdrlib.ucdir_train import cache_view_features


def _setup():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, dim=32, depth=2, heads=2).eval()
    ia, ib = torch.rand(40, 3, 32, 32, generator=g), torch.rand(36, 3, 32, 32, generator=g)
    cfg = IBNMConfig.frozen(epochs=3, warmup_epoch=1, se_epoch=1, fusion_epoch=1, batch_size=8, k=4, image_size=32,
                            proj_hidden=16, proj_dim=8, kmeans_nredo=1, clean_threshold=0.5)
    return vit, ia, ib, cfg


def _run(path, stop_after=None, fusion_mode="attention", frozen=True):
    vit, ia, ib, cfg = _setup()
    feats = (cache_view_features(vit, ia, 4, 32), cache_view_features(vit, ib, 4, 32)) if frozen else (None, None)
    method = IBNM(replace(cfg, fusion=fusion_mode), ia, ib, vit, *feats)
    trainer = method.trainer(path)
    if stop_after is not None:
        trainer.epochs = stop_after
    return method, trainer.fit()


def test_every_term_trains_and_resumes_exactly(tmp_path):
    full, hist = _run(tmp_path / "a.pt")
    last = hist[-1]
    assert {"iw_A", "cw_A", "se", "feat", "label", "mixup", "clean_fraction"} <= set(last)
    assert all(v == v and abs(v) < 1e4 for v in last.values())
    # the fusion losses reached the mixing weights and r
    assert not torch.equal(full.mixing.alpha, torch.ones_like(full.mixing.alpha))
    assert (full.fusion_weights.r < -2).all()
    _run(tmp_path / "b.pt", stop_after=2)
    resumed, hist_b = _run(tmp_path / "b.pt")
    assert hist_b == hist
    for p, r in zip([*full.encoder.parameters(), *full.mixing.parameters()],
                    [*resumed.encoder.parameters(), *resumed.mixing.parameters()]):
        assert torch.equal(p, r)


def test_importance_is_each_images_own_attention():
    from cdrlib.fusion import cls_patch_attention

    vit, ia, ib, cfg = _setup()
    method = IBNM(cfg, ia, ib, vit, cache_view_features(vit, ia, 4, 32), cache_view_features(vit, ib, 4, 32))
    from cdrlib.data.transforms import normalize

    with torch.no_grad():
        want = cls_patch_attention(vit.attention_maps(normalize(ib[5:6])))
    assert torch.allclose(method.importance["B"][5:6], want, atol=1e-6)


def test_random_fusion_and_whole_vit_run():
    _, hist = _run(None, fusion_mode="random")
    assert abs(hist[-1]["l_A"] - hist[-1]["lam"]) < 1e-5   # uniform s: l_A is the mean λ
    _, hist = _run(None, frozen=False)
    assert "feat" in hist[-1] and hist[-1]["loss"] == hist[-1]["loss"]


def test_bad_inputs_are_explained():
    vit, ia, ib, cfg = _setup()
    from cdrlib.models import get_backbone

    with pytest.raises(TypeError, match="VisionTransformer"):
        IBNM(cfg, ia, ib, get_backbone("random-resnet"))
    with pytest.raises(ValueError, match="fusion"):
        IBNM(replace(cfg, fusion="patches"), ia, ib, vit)
    with pytest.raises(ValueError, match="same images"):
        IBNM(cfg, ia, ib, vit, cache_view_features(vit, ia[:10], 4, 32), cache_view_features(vit, ib, 4, 32))
    with pytest.raises(ValueError, match="both domains"):
        IBNM(cfg, ia, ib, vit, cache_view_features(vit, ia, 4, 32), None)


def test_ink_importance_by_hand():
    from cdrlib.ibnm_train import ink_importance

    vit, _, _, _ = _setup()                    # 32 px, patches of 8: a 4 × 4 grid
    x = torch.ones(2, 3, 32, 32)               # two white images
    x[0, :, 0:8, 0:4] = 0.0                    # image 0: half of patch 0 drawn
    x[0, :, 8:16, 24:32] = 0.0                 # and all of patch 7 (row 1, column 3)
    s = ink_importance(x, vit)
    want0 = torch.zeros(16)
    want0[0], want0[7] = 0.5 / 1.5, 1.0 / 1.5
    assert torch.allclose(s[0], want0) and torch.allclose(s[1], torch.full((16,), 1 / 16))   # blank: uniform
    with pytest.raises(ValueError, match="the ViT has 16"):
        ink_importance(torch.ones(1, 3, 64, 64), vit)


@pytest.mark.parametrize("mode", ["attention_raw", "ink"])
def test_other_importances_train(mode):
    from cdrlib.fusion import cls_patch_attention
    from cdrlib.data.transforms import normalize
    from cdrlib.ibnm_train import ink_importance

    method, hist = _run(None, fusion_mode=mode)
    assert "feat" in hist[-1] and all(v == v for v in hist[-1].values())
    vit, ia, _, _ = _setup()
    with torch.no_grad():
        want = (cls_patch_attention(vit.attention_maps(normalize(ia[:3])), softmax=False) if mode == "attention_raw"
                else ink_importance(ia[:3], vit))
    assert torch.allclose(method.importance["A"][:3], want, atol=1e-6)


def test_the_paper_configuration_has_the_official_noise_split_and_mixing():
    c, default = IBNMConfig.paper("office_home"), IBNMConfig()
    assert (c.gmm_max_iter, c.gmm_tol, c.gmm_reg_covar, c.shared_mixing) == (10, 1e-2, 5e-4, True)
    # the CPU chapters keep their own (what their stored runs were trained with)
    assert (default.gmm_max_iter, default.gmm_tol, default.gmm_reg_covar, default.shared_mixing) == (100, 1e-3, 1e-6, False)
    assert (c.optimizer, c.lr, c.weight_decay, c.batch_size, c.backbone) == ("adamw", 5e-6, 0.05, 32, "dino-vitb16")


def test_joint_relabel_replaces_the_joint_labels_and_their_centroids():
    from cdrlib.premise import OracleJointLabels
    from cdrlib.ucdir import cluster_centroids

    vit, ia, ib, cfg = _setup()
    feats = (cache_view_features(vit, ia, 4, 32), cache_view_features(vit, ib, 4, 32))
    classes = torch.arange(76) % 3  # A's 40 images, then B's 36
    oracle = OracleJointLabels(classes, 1.0)
    method = IBNM(cfg, ia, ib, vit, *feats, joint_relabel=oracle)
    hist = method.trainer().fit()
    assert hist[-1]["joint_agreement"] == 1.0 and oracle.agreement == 1.0
    # the labels the fusion and mixup terms read are the classes, all clean, the centroids their means
    labels = torch.cat([method.joint.get("labels_A"), method.joint.get("labels_B")]).cpu()
    assert torch.equal(labels, classes)
    assert bool(method.joint.get("clean_A").all()) and bool(method.joint.get("clean_B").all())
    # centroids: the means of the relabelled clusters of the embeddings at the time of reclustering
    fresh = IBNM(cfg, ia, ib, vit, *feats, joint_relabel=OracleJointLabels(classes, 1.0))
    fresh.recluster(cfg.fusion_epoch)
    emb = torch.cat([fresh.embed_all(d) for d in ("A", "B")])
    torch.testing.assert_close(fresh.joint.get("centroids").cpu(), cluster_centroids(emb, classes, cfg.k))
    # a hook that returns ids out of range is refused
    bad = IBNM(cfg, ia, ib, vit, *feats, joint_relabel=lambda a, c: (torch.full_like(a, cfg.k), c))
    with pytest.raises(ValueError, match="joint_relabel must return"):
        bad.trainer().fit()
    with pytest.raises(ValueError, match="never makes"):
        IBNM(replace(cfg, fusion=None, noise=False), ia, ib, vit, *feats, joint_relabel=oracle)
