"""The shared training loop: a run interrupted and resumed ends exactly where an uninterrupted one does."""
import pytest
import torch

from cdrlib.memory import MemoryBank
from cdrlib.training import Trainer


def make(checkpoint, stop_after=None, schedule=False):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # halves the rate every 3 batches: a resumed run must continue the schedule, not restart it
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5) if schedule else None
    bank = MemoryBank(32, 2)
    data = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))

    def batches(epoch, gen):
        perm = torch.randperm(32, generator=gen)
        return [perm[i:i + 8] for i in range(0, 32, 8)]

    def step(ids, epoch):
        out = model(data[ids])
        loss = (out - bank.keys[ids]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        bank.update(ids, out)
        return {"loss": loss.item(), "lr": opt.param_groups[0]["lr"]}

    def on_epoch_end(epoch):
        if stop_after is not None and epoch == stop_after:
            raise KeyboardInterrupt  # the run is killed after the checkpoint of the previous epoch
        return {"noise": torch.rand(1).item()}  # uses the global RNG: resumed runs must restore it

    t = Trainer({"model": model}, opt, step, batches, epochs=5, checkpoint=checkpoint,
                on_epoch_end=on_epoch_end, extra_state={"bank": bank}, scheduler=scheduler)
    return t, model, bank


def test_resume_equals_uninterrupted(tmp_path):
    full, model_a, bank_a = make(tmp_path / "a.pt")
    hist_a = full.fit()
    broken, _, _ = make(tmp_path / "b.pt", stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        broken.fit()
    resumed, model_b, bank_b = make(tmp_path / "b.pt")
    hist_b = resumed.fit()
    assert hist_a == hist_b
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    assert torch.equal(bank_a.keys, bank_b.keys)
    assert not (tmp_path / "b.pt.tmp").exists()


def test_a_resumed_run_continues_its_learning_rate_schedule(tmp_path):
    full, model_a, _ = make(tmp_path / "a.pt", schedule=True)
    hist_a = full.fit()
    # 4 batches per epoch, halved every 3 batches: the mean rate of each epoch falls
    assert [round(r["lr"], 6) for r in hist_a[:2]] == [round((3 * 0.1 + 0.05) / 4, 6), round((2 * 0.05 + 2 * 0.025) / 4, 6)]
    assert full.epoch_means == {k: v for k, v in hist_a[-1].items() if k in ("loss", "lr")}
    broken, _, _ = make(tmp_path / "b.pt", stop_after=2, schedule=True)
    with pytest.raises(KeyboardInterrupt):
        broken.fit()
    resumed, model_b, _ = make(tmp_path / "b.pt", schedule=True)
    assert resumed.fit() == hist_a
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_a_checkpoint_and_a_run_must_agree_on_having_a_schedule(tmp_path):
    plain, _, _ = make(tmp_path / "a.pt", stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        plain.fit()
    scheduled, _, _ = make(tmp_path / "a.pt", schedule=True)
    with pytest.raises(RuntimeError, match="does not belong to this run"):
        scheduled.fit()
    # and the other way round: a scheduled run's checkpoint is not continued without its schedule
    scheduled, _, _ = make(tmp_path / "b.pt", stop_after=2, schedule=True)
    with pytest.raises(KeyboardInterrupt):
        scheduled.fit()
    plain, _, _ = make(tmp_path / "b.pt")
    with pytest.raises(RuntimeError, match="does not belong to this run"):
        plain.fit()


def test_finished_run_does_not_train_again(tmp_path):
    t, model, _ = make(tmp_path / "c.pt")
    t.fit()
    again, model2, _ = make(tmp_path / "c.pt")
    assert len(again.fit()) == 5
    for pa, pb in zip(model.parameters(), model2.parameters()):
        assert torch.equal(pa, pb)


def test_foreign_checkpoint_is_explained(tmp_path):
    ckpt = tmp_path / "run.pt"
    torch.save({"epoch": 0, "modules": {"model": {"other.weight": torch.zeros(1)}}}, ckpt)
    model = torch.nn.Linear(2, 1)
    trainer = Trainer({"model": model}, torch.optim.SGD(model.parameters(), lr=0.1), lambda b, e: {}, lambda e, g: [],
                      1, ckpt)
    with pytest.raises(RuntimeError, match="does not belong to this run"):
        trainer.fit()


class Payload:
    """Unpickling this runs code (writes a file): what a crafted checkpoint could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_payload_in_a_checkpoint_does_not_run(tmp_path):
    from cdrlib.checkpoint_io import CheckpointError, load_state
    from cdrlib.models.factory import BackboneError, load_backbone

    marker = tmp_path / "payload-ran"
    ckpt = tmp_path / "evil.pt"
    torch.save({"epoch": 0, "arch": "resnet", "state_dict": {}, "x": Payload(marker)}, ckpt)
    model = torch.nn.Linear(2, 1)
    trainer = Trainer({"model": model}, torch.optim.SGD(model.parameters(), lr=0.1), lambda b, e: {},
                      lambda e, g: [], 1, ckpt)
    for load in (lambda: load_state(ckpt), trainer.fit, lambda: load_backbone(ckpt)):
        with pytest.raises((CheckpointError, BackboneError), match="could run code"):
            load()
    assert not marker.exists()


def test_a_damaged_checkpoint_is_refused(tmp_path):
    from cdrlib.checkpoint_io import CheckpointError

    t, _, bank = make(tmp_path / "d.pt")
    t.fit()
    raw = bytearray((tmp_path / "d.pt").read_bytes())
    at = raw.find(bank.keys[3].numpy().tobytes())      # a row of the memory bank, stored as raw float32
    assert at > 0
    raw[at + 1] ^= 0x40
    (tmp_path / "d.pt").write_bytes(bytes(raw))
    again, _, _ = make(tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match="damaged|cannot be read"):
        again.fit()


def test_resuming_with_other_settings_is_refused(tmp_path):
    from cdrlib.checkpoint_io import CheckpointError

    t, _, _ = make(tmp_path / "e.pt", stop_after=2)
    t.config = {"lr": 0.1, "dod": None}
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    again, _, _ = make(tmp_path / "e.pt")
    again.config = {"lr": 0.03, "dod": "centroid"}
    with pytest.raises(CheckpointError, match=r"dod = None there, 'centroid' now, lr = 0.1 there, 0.03 now"):
        again.fit()
    same, _, _ = make(tmp_path / "e.pt")
    same.config = {"lr": 0.1, "dod": None}
    assert len(same.fit()) == 5


def test_an_unwritable_checkpoint_folder_fails_before_training(tmp_path):
    from cdrlib.checkpoint_io import CheckpointError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    calls = []
    model = torch.nn.Linear(2, 1)
    trainer = Trainer({"model": model}, torch.optim.SGD(model.parameters(), lr=0.1),
                      lambda b, e: calls.append(b) or {}, lambda e, g: [0, 1], 1, blocker / "run.pt")
    with pytest.raises(CheckpointError, match="cannot write the run checkpoint"):
        trainer.fit()
    assert calls == []


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    t, model, _ = make(tmp_path / "d.pt")
    step = t.step
    t.step = lambda ids, epoch: {"loss": float("nan")} if epoch == 2 else step(ids, epoch)
    with pytest.raises(FloatingPointError, match=r"diverged at epoch 3, batch 1: loss = nan.*holds epoch 2"):
        t.fit()
    resumed, _, _ = make(tmp_path / "d.pt")
    assert len(resumed.fit()) == 5   # resumes after the two finished epochs and completes
    assert len(resumed.history) == 5 and all(r["loss"] == r["loss"] for r in resumed.history)


def test_a_compressed_checkpoint_loads_and_a_bad_one_is_refused(tmp_path):
    import io
    import lzma

    from cdrlib.checkpoint_io import XZ_MAGIC, CheckpointError, load_state, save_state, state_digest
    state = {"w": torch.randn(64, 32).half(), "codes": torch.randint(-20, 20, (4000,), dtype=torch.int8),
             "config": '{"lr": 0.1}', "history": [{"epoch": 0, "loss": 1.5}]}
    plain, packed = tmp_path / "plain.pt", tmp_path / "packed.pt"
    save_state(state, plain)
    save_state(state, packed, compress=True)
    assert packed.read_bytes()[:6] == XZ_MAGIC and plain.read_bytes()[:6] != XZ_MAGIC
    assert packed.stat().st_size < plain.stat().st_size
    assert not list(tmp_path.glob("*.tmp"))                                 # renamed into place
    for path in (plain, packed):
        assert state_digest(load_state(path)) == state_digest(state)
    # a pickle that would run code is refused inside an xz file too
    marker, buffer, evil = tmp_path / "payload-ran", io.BytesIO(), tmp_path / "evil.pt"
    torch.save({"x": Payload(marker)}, buffer)
    evil.write_bytes(lzma.compress(buffer.getvalue()))
    with pytest.raises(CheckpointError, match="could run code"):
        load_state(evil)
    assert not marker.exists()
    # damaged, truncated, and a bomb (expands past 64× its size) are refused with a clear message
    data = packed.read_bytes()
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(data[:40] + bytes(b ^ 0xFF for b in data[40:80]) + data[80:])
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(lzma.compress(b"\0" * 50_000_000))
    assert bomb.stat().st_size * 64 + 2**20 < 50_000_000
    with pytest.raises(CheckpointError, match="damaged xz"):
        load_state(damaged)
    for path in (truncated, bomb):
        with pytest.raises(CheckpointError, match="truncated, or expands"):
            load_state(path)


def test_a_recorded_sha256_is_checked_on_the_bytes_that_are_loaded(tmp_path, monkeypatch):
    """load_state(sha256=…) reads the file once: the digest is taken of the very bytes torch.load
    then reads (a file swapped between a separate check and the load would go unchecked), and a
    file without the recorded digest is refused before anything is unpickled."""
    import hashlib
    import io

    import cdrlib.checkpoint_io as checkpoint_io
    from cdrlib.checkpoint_io import ChecksumError, load_state, save_state, state_digest

    state = {"w": torch.randn(8, 4)}
    for compress in (False, True):
        path = tmp_path / f"state-{compress}.pt"
        save_state(state, path, compress=compress)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        seen = []
        real_load = torch.load

        def spy(source, *args, **kwargs):
            seen.append(source)
            return real_load(source, *args, **kwargs)

        monkeypatch.setattr(checkpoint_io.torch, "load", spy)
        assert state_digest(load_state(path, sha256=digest)) == state_digest(state)
        assert isinstance(seen[-1], io.BytesIO)             # the checked bytes, not the path again
        with pytest.raises(ChecksumError, match="does not have the sha256 recorded"):
            load_state(path, sha256="0" * 64)
        assert len(seen) == 1                               # refused before torch.load
        monkeypatch.setattr(checkpoint_io.torch, "load", real_load)
    # a payload that would run code, under a wrong digest: refused by the digest, never unpickled
    marker, evil = tmp_path / "payload-ran", tmp_path / "evil.pt"
    torch.save({"x": Payload(marker)}, evil)
    with pytest.raises(ChecksumError):
        load_state(evil, sha256=hashlib.sha256(b"something else").hexdigest())
    assert not marker.exists()
