"""Pretraining's schedule and checkpoint, on a tiny stand-in for the embedded data."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import cdrlib.pretrain as pretrain_module
from cdrlib.checkpoint_io import load_state
from cdrlib.models.factory import load_backbone
from cdrlib.pretrain import PretrainConfig, pretrain


def _tiny_domains(n=24, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(4, n, 64, 64, 3), dtype=np.uint8)
    return SimpleNamespace(images=images, indices=lambda split: np.arange(n))


@pytest.mark.slow
def test_fixed_epoch_schedule_runs_exactly_and_decays_the_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_module, "load_emoji_domains", _tiny_domains)
    monkeypatch.setattr(pretrain_module, "_mean_map", lambda model, device: {"heldout_mAP@all": 0.0})
    seen_lr = []
    step = torch.optim.AdamW.step

    def recording_step(self, *a, **k):
        seen_lr.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    cfg = PretrainConfig(arch="resnet", epochs=3, minutes=60, batch_size=32, eval_every=1, threads=1)
    path = pretrain(cfg, tmp_path / "tiny.pt")

    curve = [json.loads(line) for line in path.with_suffix(".curve.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in curve] == [0, 1, 2, 3]       # before training, then every epoch
    steps_per_epoch = 4 * 24 // 32
    assert len(seen_lr) == 3 * steps_per_epoch
    # cosine from the first step (the length is known): lr(step) = lr0 · ½(1 + cos(π step / total))
    total = 3 * steps_per_epoch
    want = [cfg.lr * 0.5 * (1 + np.cos(np.pi * s / total)) for s in range(total)]
    np.testing.assert_allclose(seen_lr, want, rtol=1e-6)
    model = load_backbone(path)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, model.num_features)


def test_unknown_negatives_is_explained_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_module, "load_emoji_domains", lambda: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(ValueError, match="negatives must be 'all' or 'in-domain'"):
        pretrain(PretrainConfig(negatives="cross-domain"), tmp_path / "x.pt")


@pytest.mark.slow
def test_an_interrupted_pretraining_resumes_exactly(tmp_path, monkeypatch):
    from cdrlib.training import Trainer

    monkeypatch.setattr(pretrain_module, "load_emoji_domains", _tiny_domains)
    monkeypatch.setattr(pretrain_module, "_mean_map", lambda model, device: {"heldout_mAP@all": 0.0})
    cfg = lambda: PretrainConfig(arch="resnet", epochs=3, batch_size=32, eval_every=1, threads=1)
    whole = load_state(pretrain(cfg(), tmp_path / "a.pt", checkpoint=tmp_path / "a.run"))
    save = Trainer.save

    def save_then_die(self, epoch):
        save(self, epoch)
        if epoch == 0:
            raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg(), tmp_path / "b.pt", checkpoint=tmp_path / "b.run")
    monkeypatch.setattr(Trainer, "save", save)
    resumed = load_state(pretrain(cfg(), tmp_path / "b.pt", checkpoint=tmp_path / "b.run"))
    assert resumed["epochs"] == whole["epochs"] == 3
    for k, v in whole["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k
    curve = [json.loads(line)["epoch"] for line in (tmp_path / "b.curve.jsonl").read_text().splitlines()]
    assert curve == [0, 1, 2, 3]   # the resumed run appends to the curve it had written
