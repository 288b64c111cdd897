"""Your own images: one class vocabulary across domains, a real held-out part, images read as drawn."""
import numpy as np
import pytest
from PIL import Image

from cdrlib.data import DataError, DomainDataset, load_folder_domains, load_list_domains
from cdrlib.data.folders import read_image
from cdrlib.evaluation import icfrr_cross_domain_table
from cdrlib.experiment import PairBenchmark
from cdrlib.models import BackboneError, get_backbone, input_size
from cdrlib.ucdir_train import UCDIRConfig


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def tree(root, classes_of, n=5, size=16):
    """root/<domain>/<class>/<i>.png with a flat colour of its own per (class, i)."""
    for d, classes in classes_of.items():
        for c in classes:
            for i in range(n):
                colour = np.array([20 * i, ord(c[0]), 7], np.uint8)
                save(root / d / c / f"{i}.png", np.tile(colour, (size, size, 1)))
    return root


def test_one_class_vocabulary_across_domains_and_missing_classes_reported(tmp_path):
    tree(tmp_path, {"photo": ["apple", "bird", "cat"], "sketch": ["bird", "cat"]})
    (tmp_path / "sketch" / "apple").mkdir()                  # an empty class folder: missing, not renumbered
    with pytest.warns(UserWarning, match=r"sketch: \['apple'\]"):
        data = load_folder_domains(tmp_path, image_size=8)
    assert data.classes == ("apple", "bird", "cat") and data.missing == {"sketch": ["apple"]}
    bird = data.classes.index("bird")
    for d in ("photo", "sketch"):
        for part in (data.train, data.heldout):
            assert part[d].classes == data.classes
    sketch_labels = np.concatenate([data.train["sketch"].labels, data.heldout["sketch"].labels])
    assert sorted(set(sketch_labels.tolist())) == [bird, data.classes.index("cat")]
    assert "missing ['apple']" in data.summary()


def test_heldout_is_disjoint_seeded_and_per_class(tmp_path):
    tree(tmp_path, {"a": ["x", "y"], "b": ["x", "y"]}, n=10)
    first = load_folder_domains(tmp_path, image_size=8, heldout_fraction=0.3, seed=1)
    again = load_folder_domains(tmp_path, image_size=8, heldout_fraction=0.3, seed=1)
    other = load_folder_domains(tmp_path, image_size=8, heldout_fraction=0.3, seed=2)
    for d in ("a", "b"):
        assert np.bincount(first.heldout[d].labels).tolist() == [3, 3]     # 30 % of each class
        assert np.bincount(first.train[d].labels).tolist() == [7, 7]
        held = {im.tobytes() for im in first.heldout[d].images}
        assert not held & {im.tobytes() for im in first.train[d].images}   # held out means not trained on
        assert np.array_equal(first.heldout[d].images, again.heldout[d].images)
    assert not all(np.array_equal(first.heldout[d].images, other.heldout[d].images) for d in ("a", "b"))


def test_transparency_on_white_16_bit_scaled_palette_and_webp(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)                            # one opaque red pixel, the rest transparent
    save(tmp_path / "rgba.png", rgba, "RGBA")
    img = read_image(tmp_path / "rgba.png", 4)
    assert img[0, 0].tolist() == [255, 0, 0] and img[3, 3].tolist() == [255, 255, 255]
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(tmp_path / "grey16.png")
    assert abs(int(read_image(tmp_path / "grey16.png", 4)[0, 0, 0]) - 128) <= 1   # half of 16 bits: half of 8
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).convert("P").save(tmp_path / "pal.gif")
    assert read_image(tmp_path / "pal.gif", 4).shape == (4, 4, 3)
    Image.fromarray(np.full((4, 4, 3), 90, np.uint8)).save(tmp_path / "x.webp", lossless=True)
    assert read_image(tmp_path / "x.webp", 4)[1, 1].tolist() == [90, 90, 90]


def test_bad_trees_and_files_are_named(tmp_path):
    with pytest.raises(DataError, match="no folder"):
        load_folder_domains(tmp_path / "nothing")
    tree(tmp_path, {"only": ["x"]})
    with pytest.raises(DataError, match="at least two"):
        load_folder_domains(tmp_path)
    tree(tmp_path, {"second": ["x"]})
    (tmp_path / "second" / "x" / "notes.txt").write_text("not an image")
    (tmp_path / "second" / "x" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_folder_domains(tmp_path, image_size=8)
    (tmp_path / "second" / "x" / "broken.png").unlink()
    data = load_folder_domains(tmp_path, image_size=8)
    assert [p.name for p in data.skipped] == ["notes.txt"]


def test_a_folder_tree_through_the_readme_path(tmp_path):
    """The README's path for one's own images: load, baselines, UCDIR's head, ICFRR on top."""
    tree(tmp_path, {"photo": ["apple", "bird", "cat"], "sketch": ["apple", "bird", "cat"]}, n=12, size=64)
    data = load_folder_domains(tmp_path, image_size=64)
    pair = ("photo", "sketch")
    bench = PairBenchmark(get_backbone("emoji-resnet"), data.train, data.heldout, [pair], n_views=3)
    bench.baselines()
    cfg = UCDIRConfig.frozen(k=len(data.classes), epochs=2, warmup_epoch=1, se_epoch=1, batch_size=8, kmeans_nredo=1)
    bench.run("UCDIR CW+SE", bench.ucdir(cfg))
    table = bench.table()
    assert set(table["method"]) == {"chance", "raw pixels", "backbone features", "UCDIR CW+SE"}
    _, labels = bench.evaluation(*pair)["heldout"]
    reranked = icfrr_cross_domain_table(bench.embeddings("UCDIR CW+SE", *pair), labels)
    assert list(reranked["query"]) == ["photo", "sketch", "mean"]
    assert reranked["mAP@all + ICFRR"].between(0, 1).all()


def test_every_bad_file_is_listed_at_once_or_left_out(tmp_path):
    tree(tmp_path, {"a": ["x", "y"], "b": ["x", "y"]}, n=4, size=8)
    (tmp_path / "a" / "x" / "9.png").write_bytes(b"not a png")
    (tmp_path / "b" / "y" / "9.webp").write_bytes(b"")
    with pytest.raises(DataError, match=r"2 image file\(s\) cannot be read(.|\n)*9.png(.|\n)*9.webp(.|\n)*bad_files='skip'"):
        load_folder_domains(tmp_path, image_size=8)
    with pytest.warns(UserWarning, match="2 unreadable"):
        data = load_folder_domains(tmp_path, image_size=8, bad_files="skip")
    assert sorted(p.name for p, _ in data.unreadable) == ["9.png", "9.webp"]
    assert sum(len(part[d]) for part in (data.train, data.heldout) for d in ("a", "b")) == 16   # the good ones
    clean = tmp_path / "clean"
    tree(clean, {"a": ["x", "y"], "b": ["x", "y"]}, n=4, size=8)
    (clean / "a" / "x" / "9.png").write_bytes(b"not a png")
    # the split is decided on the file list: leaving a bad file out moves no other file between parts
    skipped = load_folder_domains(clean, image_size=8, bad_files="skip", seed=3)
    (clean / "a" / "x" / "9.png").unlink()
    without = load_folder_domains(clean, image_size=8, seed=3)
    assert np.array_equal(skipped.heldout["b"].images, without.heldout["b"].images)
    with pytest.raises(ValueError, match="bad_files"):
        load_folder_domains(clean, bad_files="ignore")


def test_a_list_of_files_with_and_without_a_split_column(tmp_path):
    tree(tmp_path, {"photo": ["apple", "bird"], "sketch": ["bird"]}, n=4, size=8)
    rows = [{"path": str(p.relative_to(tmp_path)), "domain": p.parts[-3], "class": p.parts[-2]}
            for p in sorted(tmp_path.rglob("*.png"))]
    with pytest.warns(UserWarning, match=r"sketch: \['apple'\]"):
        data = load_list_domains(rows, image_size=8, root=tmp_path, heldout_fraction=0.5)
    assert data.classes == ("apple", "bird") and data.missing == {"sketch": ["apple"]}
    assert np.bincount(data.heldout["photo"].labels).tolist() == [2, 2]
    assert set(data.train["sketch"].labels.tolist()) == {data.classes.index("bird")}
    # the same list as a CSV file, with the user's own split: used as given; paths relative to the CSV
    for i, r in enumerate(rows):
        r["split"] = "heldout" if i % 4 == 0 else "train"
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("path,domain,class,split\n" + "".join(f"{r['path']},{r['domain']},{r['class']},{r['split']}\n"
                                                              for r in rows))
    with pytest.warns(UserWarning):
        given = load_list_domains(csv_file, image_size=8)
    assert sum(len(given.heldout[d]) for d in given.domains) == sum(r["split"] == "heldout" for r in rows)
    # errors that say what to do
    with pytest.raises(DataError, match="lacks the column"):
        load_list_domains([{"file": "x", "domain": "a", "class": "c"}])
    with pytest.raises(DataError, match="no file"):
        load_list_domains([{**rows[0], "path": "nowhere.png"}, rows[1]], root=tmp_path)
    with pytest.raises(DataError, match="split 'test'"):
        load_list_domains([{**r, "split": "test"} for r in rows], root=tmp_path)
    with pytest.raises(DataError, match="have no split"):
        load_list_domains([{**r, "split": ""} if i else r for i, r in enumerate(rows)], root=tmp_path)
    with pytest.raises(DataError, match="at least two"):
        load_list_domains([r for r in rows if r["domain"] == "photo"], root=tmp_path)


def test_input_size_names_what_each_backbone_expects():
    assert input_size("emoji-resnet") == input_size("emoji-vit") == 64
    assert input_size("dino-vitb16") == 224
    with pytest.raises(BackboneError, match="known"):
        input_size("resnet-9000")


def test_image_file_datasets_read_transparency_on_white(tmp_path):
    """The paper datasets read their files per batch through the same reader as one's own folders."""
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (0, 0, 255, 255)
    save(tmp_path / "a.png", rgba, "RGBA")
    ds = DomainDataset("mine", "d", "train", [0], ["c"], files=[tmp_path / "a.png"], image_size=4)
    x = ds.raw(0)
    assert x[:, 0, 0].tolist() == [0.0, 0.0, 1.0] and x[:, 3, 3].tolist() == [1.0, 1.0, 1.0]
    (tmp_path / "a.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="a.png"):
        ds.raw(0)


def test_each_class_is_split_on_its_own_and_items_name_their_files(tmp_path):
    tree(tmp_path, {"a": ["x", "y"], "b": ["x", "y"]}, n=10, size=8)
    before = load_folder_domains(tmp_path, image_size=8, seed=5)
    for i in range(10, 14):                                   # more files in one class of one domain
        save(tmp_path / "a" / "x" / f"{i}.png", np.full((8, 8, 3), 3 * i, np.uint8))
    after = load_folder_domains(tmp_path, image_size=8, seed=5)
    for d, c in (("a", "y"), ("b", "x"), ("b", "y")):         # every other class keeps its split
        pick = lambda data: sorted(p.name for p in data.sources["heldout"][d] if p.parent.name == c)
        assert pick(before) == pick(after)
    for d in ("a", "b"):
        assert not set(after.sources["heldout"][d]) & set(after.sources["train"][d])
        assert len(after.sources["train"][d]) == len(after.train[d])
        assert all(p.parent.parent.name == d for p in after.sources["train"][d])
