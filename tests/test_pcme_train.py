"""PCME training and evaluation on tiny synthetic image–text data."""
from dataclasses import replace

import pytest
import torch

from cdrlib.pcme_train import (ImageTextData, PCMEConfig, evaluate, general_captions, mean_caption_fits,
                               raw_pixel_scores, score_tables, sigma_from_pairs, specific_captions, train,
                               train_or_load)
from cdrlib.run_store import RunStore


def _data(n_emoji=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    emoji = torch.arange(n_emoji).repeat(2)                            # two "styles" per emoji
    pooled = torch.randn(n_emoji, 8, generator=g)[emoji] + 0.1 * torch.randn(2 * n_emoji, 8, generator=g)
    tokens = torch.randn(2 * n_emoji, 4, 6, generator=g).half()
    captions = {e: [f"item{e}", "face" if e % 2 else "animal"] for e in range(n_emoji)}
    tags = {e: torch.tensor([e % 2, 1 - e % 2, e % 3 == 0], dtype=torch.uint8) for e in range(n_emoji)}
    return ImageTextData(pooled, tokens, emoji, captions, {e: e % 3 for e in range(n_emoji)}, tags)


def test_matches_follow_caption_membership():
    d = _data()
    m = d.matches(torch.tensor([0, 1]), ["face", "item0", "animal"])
    assert m.tolist() == [[False, True, True], [True, False, False]]


def test_both_models_train_and_evaluate():
    d = _data()
    for prob in (True, False):
        cfg = replace(PCMEConfig(), dim=4, epochs=3, batch_size=8, embed_dim=8, gru_hidden=4, probabilistic=prob)
        model, hist = train(cfg, d)
        assert len(hist) == 3 and all(v == v for v in hist[-1].values())
        for by in (("match", "mu") if prob else ("mu",)):
            s = score_tables(model, d, by=by)
            assert s.shape == (24, 24) and torch.isfinite(s).all()
            rows = evaluate(s, d)
            assert [r["direction"] for r in rows] == ["image→text", "text→image"]
            assert all(0 <= r[k] <= 1 for r in rows for k in r if k != "direction")
    with pytest.raises(ValueError, match="batch_size"):
        train(replace(PCMEConfig(), batch_size=100), d)


def test_evaluate_on_a_hand_made_table():
    d = _data(n_emoji=2)           # images: e0, e1, e0, e1; texts: item0, animal, item1, face
    s = torch.tensor([[0.9, 0.1, 0.5, 0.2],     # e0: its own caption first
                      [0.9, 0.1, 0.5, 0.2],     # e1: its captions at ranks 2 and 3
                      [0.1, 0.2, 0.3, 0.4],     # e0: its captions at ranks 2 and 3
                      [0.1, 0.2, 0.3, 0.4]])    # e1: "face" first
    rows = evaluate(s, d, ks=(1, 2))
    i2t = rows[0]
    assert i2t["R@1"] == pytest.approx(0.5) and i2t["R@2"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="scores"):
        evaluate(s[:2], d)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(torch.full((4, 4), float("nan")), d)


def test_raw_pixel_scores_against_loop():
    g = torch.Generator().manual_seed(5)
    q, tr = torch.rand(3, 3, 4, 4, generator=g), torch.rand(4, 3, 4, 4, generator=g)
    caps = {0: ["a", "b"], 1: ["b"], 2: ["c"]}
    emoji = torch.tensor([0, 1, 2, 1])
    texts = ["b", "a", "z"]
    got = raw_pixel_scores(q, tr, emoji, caps, texts)
    from cdrlib.evaluation import raw_pixel_features

    fq = torch.nn.functional.normalize(raw_pixel_features(q), dim=1)
    ft = torch.nn.functional.normalize(raw_pixel_features(tr), dim=1)
    for i in range(3):
        for j, t in enumerate(texts):
            holders = [k for k in range(4) if t in caps[int(emoji[k])]]
            want = max(float(fq[i] @ ft[k]) for k in holders) if holders else -1.0
            assert got[i, j].item() == pytest.approx(want, abs=1e-6)


@pytest.mark.slow
def test_cub_command_on_a_fake_tree(tmp_path):
    """The paper profile's path: CUB's layout, captions per image, attributes as tags."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    root = tmp_path / "cub"
    lines, attrs, k = [], [], 0
    for c in ("001.Albatross", "002.Zebra_Finch"):
        for i in range(6):
            rel = f"{c}/img_{i}.jpg"
            (root / "CUB_200_2011" / "images" / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (20 * i, 100, 30)).save(root / "CUB_200_2011" / "images" / rel)
            (root / "text_c10" / c).mkdir(parents=True, exist_ok=True)
            (root / "text_c10" / c / f"img_{i}.txt").write_text(
                "".join(f"a bird with {'white' if i % 2 else 'red'} wings number {j}\n" for j in range(10)))
            k += 1
            lines.append(f"{k} {rel}")
            attrs += [f"{k} {a + 1} {int((a + i) % 3 == 0)} 3 1.0" for a in range(5)]
    (root / "CUB_200_2011" / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "CUB_200_2011" / "attributes").mkdir()
    (root / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt").write_text("\n".join(attrs) + "\n")
    (root / "testclasses.txt").write_text("002.Zebra_Finch\n")
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_pcme.py"
    env = {**os.environ, "CDR_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(script), "--dataset", "cub", "--root", str(root), "--tiny",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["model"] for r in res["metrics"]} == {"deterministic", "PCME"}
    assert all(0 <= r["R@1"] <= 1 and 0 <= r["PMRP"] <= 1 for r in res["metrics"])


def test_specific_captions_against_a_loop():
    d = _data(n_emoji=6)
    d = d.with_captions({e: [f"item{e}", "face" if e % 2 else "animal", "thing"] for e in range(6)})
    fits = {}
    for caps in d.captions.values():           # the slow count: how many emoji each caption fits
        for c in set(caps):
            fits[c] = fits.get(c, 0) + 1
    for bound in (1, 3, 5, 6, 7):
        specific, general = specific_captions(d, bound), general_captions(d, bound)
        for e, caps in d.captions.items():
            most_specific = min(caps, key=lambda c: fits[c])
            most_general = max(caps, key=lambda c: fits[c])
            assert specific.captions[e] == ([c for c in caps if fits[c] <= bound] or [most_specific])
            assert general.captions[e] == ([c for c in caps if fits[c] >= bound] or [most_general])
    assert general_captions(d, 4).captions[0] == ["thing"] and general_captions(d, 3).captions[1] == ["face", "thing"]
    assert specific_captions(d, 2).captions[1] == ["item1"]
    assert fits == {**{f"item{e}": 1 for e in range(6)}, "face": 3, "animal": 3, "thing": 6}
    assert mean_caption_fits(specific_captions(d, 1)) == 1.0
    assert mean_caption_fits(d) == pytest.approx((6 * 1 + 6 * 3 + 6 * 6) / 18)
    assert specific_captions(d, None) is d
    with pytest.raises(ValueError, match="max_fits"):
        specific_captions(d, 0)
    with pytest.raises(ValueError, match="min_fits"):
        general_captions(d, True)
    with pytest.raises(ValueError, match="every emoji"):
        d.with_captions({0: ["x"]})


def test_pair_positives_and_bad_choice():
    d = _data()
    cfg = replace(PCMEConfig(), dim=4, epochs=1, batch_size=8, embed_dim=8, gru_hidden=4, positives="pair")
    assert len(train(cfg, d)[1]) == 1
    with pytest.raises(ValueError, match="positives"):
        train(replace(cfg, positives="pairs"), d)


def test_a_stored_pcme_run_scores_like_the_trained_one(tmp_path):
    d = _data()
    cfg = replace(PCMEConfig(), dim=4, epochs=2, batch_size=8, embed_dim=8, gru_hidden=4, a_init=5)
    store = RunStore(tmp_path / "runs", mode="use")
    m1, h1 = train_or_load(cfg, d, store, "pcme | seed 0")
    m2, h2 = train_or_load(cfg, d, store, "pcme | seed 0")
    assert (store.trained, store.loaded) == (1, 1) and h1 == h2
    assert torch.equal(score_tables(m1, d), score_tables(m2, d))
    train_or_load(replace(cfg, epochs=3), d, store, "pcme | seed 0")          # other settings: trains again
    assert store.trained == 2
    other = _data(seed=1).with_captions(d.captions)                           # other images, same captions
    train_or_load(cfg, other, store, "pcme | seed 0")
    assert store.trained == 3
    with pytest.raises(ValueError, match="key"):
        train_or_load(cfg, d, store)


def test_the_image_side_fingerprint_follows_the_source_and_the_images():
    d = _data()
    assert d.fingerprint == _data().fingerprint != _data(seed=1).fingerprint   # no source: the features
    sourced = ImageTextData(d.pooled, d.tokens, d.image_emoji, d.captions, d.labels, d.tags, source="abc")
    moved = ImageTextData(d.pooled + 1e-6, d.tokens, d.image_emoji, d.captions, d.labels, d.tags, source="abc")
    assert sourced.fingerprint == moved.fingerprint != d.fingerprint           # a source: not the values
    assert sourced.with_captions({e: ["x"] for e in d.captions}).fingerprint == sourced.fingerprint
    assert sourced.subset(range(6)).fingerprint != sourced.fingerprint         # fewer images
    assert sourced.subset(range(6)).source == "abc"


def test_a_run_interrupted_and_resumed_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    from cdrlib.training import Trainer

    d = _data()
    cfg = replace(PCMEConfig(), dim=4, epochs=4, batch_size=8, embed_dim=8, gru_hidden=4)
    model_a, hist_a = train(cfg, d, checkpoint=tmp_path / "a.pt")
    save = Trainer.save

    def save_then_die(self, epoch):
        save(self, epoch)
        if epoch == 1:
            raise KeyboardInterrupt  # killed right after the checkpoint of the second epoch

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, d, checkpoint=tmp_path / "b.pt")
    monkeypatch.setattr(Trainer, "save", save)
    model_b, hist_b = train(cfg, d, checkpoint=tmp_path / "b.pt")
    def timeless(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert timeless(hist_a) == timeless(hist_b) and all(row["seconds"] > 0 for row in hist_b)
    for pa, pb in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_pcme_learns_the_captions_of_separable_images():
    """Each emoji's images sit near their own random point: after training, an image finds its own
    captions (R@10 near 1) and plausible ones (PMRP) far better than the untrained model does."""
    d = _data(n_emoji=12)
    cfg = replace(PCMEConfig(), dim=8, batch_size=8, embed_dim=16, gru_hidden=8, lr=1e-2)
    before = evaluate(score_tables(train(replace(cfg, epochs=0), d)[0], d), d)
    after = evaluate(score_tables(train(replace(cfg, epochs=60), d)[0], d), d)
    for b, a in zip(before, after):
        assert a["R@10"] >= 0.9 and a["R@10"] > b["R@10"] + 0.2, (b, a)
        assert a["PMRP"] > b["PMRP"] + 0.1, (b, a)


def test_sigma_from_pairs_against_a_loop():
    d = _data(n_emoji=6)
    d = d.with_captions({e: [f"item{e}", "face" if e % 2 else "animal", "thing"] for e in range(6)})
    mu = d.pooled.double()
    texts = ["face", "item3", "thing", "never seen", "item0"]
    got = sigma_from_pairs(mu, d, texts).exp()
    emoji = d.image_emoji.tolist()

    def spread(caption):                        # the slow σ: population std over the caption's images, dim by dim
        rows = [mu[i] for i in range(len(emoji)) if caption in d.captions[emoji[i]]]
        mean = sum(rows) / len(rows)
        return (sum((r - mean) ** 2 for r in rows) / len(rows)).sqrt()

    singles = torch.stack([spread(f"item{e}") for e in range(6)])
    want = [spread("face"), spread("item3"), spread("thing"), singles.median(0).values, spread("item0")]
    for t, g, w in zip(texts, got, want):
        torch.testing.assert_close(g, w.clamp_min(1e-6), msg=t)
    # a caption that fits more emoji is wider here by construction: "thing" fits all six
    assert got[2].mean() > got[1].mean()
    # two images with one μ: σ floored, log σ finite
    same = d.with_captions({e: [f"item{e}"] for e in range(6)})
    flat = torch.zeros_like(mu)
    assert torch.isfinite(sigma_from_pairs(flat, same, ["item1"])).all()
    with pytest.raises(ValueError, match="one row per image"):
        sigma_from_pairs(mu[:3], d, texts)
    shared = d.with_captions({e: ["face" if e % 2 else "animal"] for e in range(6)})
    with pytest.raises(ValueError, match="single emoji"):
        sigma_from_pairs(mu, shared, ["never seen"])


def test_subset_keeps_the_images_and_captions_of_its_emoji():
    d = _data(n_emoji=6)
    part = d.subset([4, 1])
    assert sorted(part.captions) == [1, 4] and part.image_emoji.tolist() == [1, 4, 1, 4]
    rows = [i for i, e in enumerate(d.image_emoji.tolist()) if e in (1, 4)]
    assert torch.equal(part.pooled, d.pooled[rows]) and torch.equal(part.tokens, d.tokens[rows])
    assert part.texts == d.captions[1] + d.captions[4] and part.tags[4] is d.tags[4]
    with pytest.raises(ValueError, match="not in this split"):
        d.subset([99])
