"""The data layer: embedded dataset, manifest, paper layouts on fake trees, downloads over real HTTP."""
import hashlib
import http.server
import io
import shutil
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdrlib.data import DataError, TwoViewAugment, get_dataset, load_emoji_domains
from cdrlib.data.download import DownloadError, download, extract
from cdrlib.data.emoji import DEFAULT_ROOT
from cdrlib.data.paper import PAPER_DATASETS, load_paper_split

# ------------------------------------------------------------------ embedded dataset

def test_embedded_dataset_shape_and_split():
    ds = load_emoji_domains()
    assert ds.domains == ("twemoji", "noto", "openmoji", "sketch")
    assert ds.images.shape == (4, 1365, 64, 64, 3) and ds.images.dtype == np.uint8
    assert len(ds.classes) == 54
    train, held = set(ds.indices("train")), set(ds.indices("heldout"))
    assert not train & held and len(train | held) == 1365
    for c in range(len(ds.classes)):  # every class has both parts, at least 12 members in all
        members = np.flatnonzero(ds.labels == c)
        assert len(members) >= 12
        assert (ds.split[members] == "heldout").any() and (ds.split[members] == "train").any()
    assert ds.tags.shape == (1365, len(ds.tag_vocabulary)) and ds.tags.sum(1).min() >= 0
    assert ds.captions(0)[0] == ds.records[0]["label"]
    # white background: corners are white in the colour domains
    assert ds.images[:, :, 0, 0].mean() > 240


def test_same_emoji_same_id_across_domains():
    a = get_dataset("emoji", "twemoji", "heldout")
    b = get_dataset("emoji", "sketch", "heldout")
    assert (a.ids == b.ids).all() and (a.labels == b.labels).all()
    x, y, i = a[0]
    assert x.shape == (3, 64, 64) and x.min() >= -1 and x.max() <= 1 and i == 0


def test_tampered_file_fails_manifest(tmp_path):
    root = tmp_path / "emoji"
    shutil.copytree(DEFAULT_ROOT, root)
    meta = root / "metadata.json"
    meta.write_text(meta.read_text().replace('"face-smiling"', '"face-smilinG"', 1))
    with pytest.raises(DataError, match="does not match its checksum"):
        load_emoji_domains(root)


def test_wrong_root_lists_expected_layout(tmp_path):
    with pytest.raises(DataError, match=r"(?s)missing: images.npz.*Expected layout"):
        load_emoji_domains(tmp_path)


def test_unknown_domain_and_split():
    with pytest.raises(DataError, match="unknown emoji domain"):
        get_dataset("emoji", "clipart")
    with pytest.raises(DataError, match="split must be"):
        get_dataset("emoji", "noto", "test")


# ------------------------------------------------------------------ transforms

def test_two_view_augment_batch_and_single():
    ds = get_dataset("emoji", "noto", "train")
    x = ds.tensor()[:8]
    aug = TwoViewAugment(64)
    torch.manual_seed(0)
    v1, v2 = aug.two_views(x)
    assert v1.shape == v2.shape == (8, 3, 64, 64)
    assert not torch.allclose(v1, v2)
    assert v1.min() >= -1 - 1e-5 and v1.max() <= 1 + 1e-5
    assert aug(x[0]).shape == (3, 64, 64)
    assert TwoViewAugment(224)(x).shape == (8, 3, 224, 224)
    with pytest.raises(ValueError, match="expected images"):
        aug(torch.zeros(2, 1, 64, 64))


# ------------------------------------------------------------------ paper datasets on fake trees

def _img(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


def make_tree(name: str, root: Path):
    spec = PAPER_DATASETS[name]
    classes = ["cat", "dog", "zebra"]
    for domain, folder in spec.folders.items():
        for c in classes:
            for k in range(10):
                _img(root / folder / c / f"{domain}_{c}_{k}.{'png' if domain == 'sketch' else 'jpg'}")
        if spec.split == "lists":
            for s, ks in (("train", range(7)), ("test", range(7, 10))):
                (root / f"{domain}_{s}.txt").write_text(
                    "".join(f"{folder}/{c}/{domain}_{c}_{k}.jpg {i}\n" for i, c in enumerate(classes) for k in ks))
    if spec.split == "zeroshot":
        (root / "zeroshot_test_classes.txt").write_text("zebra\n")
    if spec.split == "zeroshot_cub":
        (root / "testclasses.txt").write_text("zebra\n")
    return classes


@pytest.mark.parametrize("name", list(PAPER_DATASETS))
def test_paper_loader_on_fake_tree(name, tmp_path):
    classes = make_tree(name, tmp_path)
    domain = next(iter(PAPER_DATASETS[name].folders))
    files, labels, cls = load_paper_split(name, domain, "all", tmp_path)
    assert cls == classes and len(files) == 30
    train, _, _ = load_paper_split(name, domain, "train", tmp_path)
    held, _, held_cls = load_paper_split(name, domain, "heldout", tmp_path)
    if PAPER_DATASETS[name].split.startswith("zeroshot"):
        assert held_cls == ["zebra"] and len(train) == 20 and len(held) == 10
    elif PAPER_DATASETS[name].split == "lists":
        assert len(train) == 21 and len(held) == 9
    else:
        assert len(train) == 30 and len(held) == 9
    ds = get_dataset(name, domain, "all", root=tmp_path, image_size=32)
    x, y, _ = ds[0]
    assert x.shape == (3, 32, 32) and ds.classes == tuple(classes)


@pytest.mark.parametrize("name", [n for n, spec in PAPER_DATASETS.items() if spec.split.startswith("zeroshot")])
def test_an_unseen_class_list_that_matches_no_folder_is_refused(name, tmp_path):
    make_tree(name, tmp_path)
    lst = "testclasses.txt" if PAPER_DATASETS[name].split == "zeroshot_cub" else "zeroshot_test_classes.txt"
    (tmp_path / lst).write_text("zebra\nZebra \n")          # a name that matches no class folder
    domain = next(iter(PAPER_DATASETS[name].folders))
    with pytest.raises(DataError, match="would leak into training"):
        load_paper_split(name, domain, "train", tmp_path)


@pytest.mark.parametrize("name", list(PAPER_DATASETS))
def test_paper_loader_wrong_root(name, tmp_path):
    domain = next(iter(PAPER_DATASETS[name].folders))
    with pytest.raises(DataError, match=r"(?s)Expected layout:.*How to get it"):
        load_paper_split(name, domain, "train", tmp_path / "nothing-here")


def test_zeroshot_split_file_missing_is_explained(tmp_path):
    make_tree("sketchy", tmp_path)
    (tmp_path / "zeroshot_test_classes.txt").unlink()
    with pytest.raises(DataError, match="zeroshot_test_classes.txt not found"):
        load_paper_split("sketchy", "sketch", "heldout", tmp_path)


def make_sake_tree(name: str, root: Path, folder: str, unseen=("zebra",)):
    """SAKE's release at small size: images under the folders its lists name, and the lists."""
    spec = PAPER_DATASETS[name]
    classes = ["cat", "dog", "zebra"]
    image_dir = {"sketchy": {"sketch": "sketch/tx_000000000000", "photo": "EXTEND image sketchy"},
                 "tu_berlin": {"sketch": "png_ready", "photo": "ImageResized_ready"}}[name]
    (root / folder).mkdir(parents=True, exist_ok=True)
    for domain, prefix in spec.sake.prefixes.items():
        parts = {"train": [], "test": [], "zero": []}
        for label, c in enumerate(classes):
            for k in range(6):
                rel = f"{image_dir[domain]}/{c}/{c}_{k}.{'png' if domain == 'sketch' else 'jpg'}"
                _img(root / rel)
                part = "zero" if c in unseen else ("test" if domain == "sketch" and k == 5 else "train")
                parts[part].append(f"{rel} {label}\n")
        for part, lines in parts.items():
            if lines:
                (root / folder / f"{prefix}_filelist_{part}.txt").write_text("".join(lines))
    return classes


@pytest.mark.parametrize("name,folder", [("sketchy", "zeroshot1"), ("tu_berlin", "zeroshot")])
def test_sake_split_files_load(name, folder, tmp_path):
    make_sake_tree(name, tmp_path, folder)
    files, labels, classes = load_paper_split(name, "sketch", "train", tmp_path)
    assert classes == ["cat", "dog"] and len(files) == 10          # 5 per seen class; the 6th is "test"
    assert all(f.parent.name == classes[y] for f, y in zip(files, labels))
    files, labels, classes = load_paper_split(name, "photo", "heldout", tmp_path)
    assert classes == ["zebra"] and len(files) == 6 and set(labels) == {0}
    files, _, classes = load_paper_split(name, "sketch", "all", tmp_path)
    assert classes == ["cat", "dog", "zebra"] and len(files) == 18
    assert " " in str(load_paper_split(name, "photo", "train", tmp_path)[0][0]) or name == "tu_berlin"
    ds = get_dataset(name, "photo", "heldout", root=tmp_path, image_size=32)
    assert ds[0][0].shape == (3, 32, 32) and ds.classes == ("zebra",)


def test_sake_split_folder_is_chosen_and_checked(tmp_path):
    make_sake_tree("sketchy", tmp_path, "zeroshot1", unseen=("zebra",))
    make_sake_tree("sketchy", tmp_path, "zeroshot2", unseen=("dog",))
    assert load_paper_split("sketchy", "sketch", "heldout", tmp_path)[2] == ["zebra"]   # the first: zeroshot1
    assert load_paper_split("sketchy", "sketch", "heldout", tmp_path, sake_split="zeroshot2")[2] == ["dog"]
    with pytest.raises(DataError, match="split folders are"):
        load_paper_split("sketchy", "sketch", "heldout", tmp_path, sake_split="zeroshot3")
    with pytest.raises(DataError, match="sake_split applies to sketchy and tu_berlin"):
        load_paper_split("office_home", "Art", "train", tmp_path, sake_split="zeroshot1")


def test_a_sake_list_naming_missing_files_is_an_error_not_a_smaller_split(tmp_path):
    make_sake_tree("sketchy", tmp_path, "zeroshot1")
    (tmp_path / "sketch/tx_000000000000/cat/cat_0.png").unlink()
    with pytest.raises(DataError, match=r"lists 1 of its 10 files that are not under"):
        load_paper_split("sketchy", "sketch", "train", tmp_path)


def test_a_malformed_or_empty_sake_list_is_explained(tmp_path):
    make_sake_tree("tu_berlin", tmp_path, "zeroshot")
    lst = tmp_path / "zeroshot" / "png_ready_filelist_zero.txt"
    lst.write_text("png_ready/zebra/zebra_0.png\n")              # no label
    with pytest.raises(DataError, match="line 1: expected '<relative path> <label>'"):
        load_paper_split("tu_berlin", "sketch", "heldout", tmp_path)
    lst.write_text("\n")
    with pytest.raises(DataError, match="lists no files"):
        load_paper_split("tu_berlin", "sketch", "heldout", tmp_path)
    lst.unlink()
    with pytest.raises(DataError, match="png_ready_filelist_zero.txt not found"):
        load_paper_split("tu_berlin", "sketch", "heldout", tmp_path)


def test_sake_lists_that_share_a_class_between_seen_and_unseen_are_refused(tmp_path):
    make_sake_tree("sketchy", tmp_path, "zeroshot1")
    zero = tmp_path / "zeroshot1" / "all_photo_filelist_zero.txt"
    zero.write_text(zero.read_text() + "EXTEND image sketchy/cat/cat_0.jpg 0\n")
    with pytest.raises(DataError, match="both as seen and as unseen"):
        load_paper_split("sketchy", "photo", "all", tmp_path)


def test_domainnet_lists_and_subset_that_name_nothing_are_errors(tmp_path):
    make_tree("domainnet", tmp_path)
    lst = tmp_path / "clipart_train.txt"
    lst.write_text(lst.read_text() + "clipart/cat/not_there.jpg 0\n")
    with pytest.raises(DataError, match="files that are not in clipart/<class>/"):
        load_paper_split("domainnet", "clipart", "train", tmp_path)
    make_tree("domainnet", tmp_path)                                  # the lists again
    (tmp_path / "class_subset.txt").write_text("cat\nCat\n")
    with pytest.raises(DataError, match="names 1 class"):
        load_paper_split("domainnet", "clipart", "train", tmp_path)


# ------------------------------------------------------------------ downloads against a real local HTTP server

def _archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("tiny/cat/a.txt", "hello")
    return buf.getvalue()


@pytest.fixture()
def server():
    payload = _archive()
    state = {"mode": "ok"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path != "/tiny.zip":
                self.send_error(404)
                return
            body = payload if state["mode"] != "corrupt" else payload[:-4] + b"XXXX"
            asked = self.headers.get("Range")
            state.setdefault("ranges", []).append(asked)
            if state["mode"] == "ranges" and asked:               # a resumable server, second request
                first = int(asked.split("=")[1].rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - first))
                self.end_headers()
                self.wfile.write(body[first:])
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            if state["mode"] == "ranges":
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if state["mode"] == "ranges":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(2)  # the first transfer breaks half-way
                return
            if state["mode"] == "cut":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(2)  # the transfer breaks half-way
                return
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", payload, state
    httpd.shutdown()


def test_download_verifies_and_extracts(server, tmp_path):
    url, payload, _ = server
    digest = hashlib.sha256(payload).hexdigest()
    path = download(f"{url}/tiny.zip", tmp_path / "cache" / "tiny.zip", sha256=digest, size=len(payload))
    assert path.read_bytes() == payload
    t0 = time.time()
    assert download(f"{url}/missing.zip", path, sha256=digest) == path  # cached: no request made
    assert time.time() - t0 < 1
    extract(path, tmp_path / "out")
    assert (tmp_path / "out" / "tiny" / "cat" / "a.txt").read_text() == "hello"


def test_corrupted_download_leaves_nothing(server, tmp_path):
    url, payload, state = server
    state["mode"] = "corrupt"
    dest = tmp_path / "cache" / "tiny.zip"
    with pytest.raises(DownloadError, match=r"(?s)failed its checksum.*save it as"):
        download(f"{url}/tiny.zip", dest, sha256=hashlib.sha256(payload).hexdigest())
    assert list(dest.parent.iterdir()) == []


def test_interrupted_download_leaves_nothing(server, tmp_path):
    url, payload, state = server
    state["mode"] = "cut"
    dest = tmp_path / "cache" / "tiny.zip"
    with pytest.raises(DownloadError, match=r"(?s)(stopped after|could not download).*save it as"):
        download(f"{url}/tiny.zip", dest, sha256=hashlib.sha256(payload).hexdigest())
    assert list(dest.parent.iterdir()) == []


def test_a_broken_transfer_resumes_where_the_server_accepts_ranges(server, tmp_path):
    url, payload, state = server
    state["mode"] = "ranges"
    dest = tmp_path / "cache" / "tiny.zip"
    digest = hashlib.sha256(payload).hexdigest()
    with pytest.raises(DownloadError, match="kept in tiny.zip.part: run again to resume"):
        download(f"{url}/tiny.zip", dest, sha256=digest)
    kept = (tmp_path / "cache" / "tiny.zip.part").stat().st_size
    assert 0 < kept < len(payload)
    assert download(f"{url}/tiny.zip", dest, sha256=digest).read_bytes() == payload
    assert state["ranges"][-1] == f"bytes={kept}-"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tiny.zip"]


def test_without_a_published_digest_the_first_download_is_pinned(server, tmp_path, capsys):
    url, payload, _ = server
    dest = tmp_path / "cache" / "tiny.zip"
    download(f"{url}/tiny.zip", dest)
    assert "no published sha256 to verify against; pinned" in capsys.readouterr().out
    pinned = (tmp_path / "cache" / "tiny.zip.sha256").read_text().split()[0]
    assert pinned == hashlib.sha256(payload).hexdigest()
    dest.write_bytes(b"garbage")                      # a later use finds another file there
    with pytest.raises(DownloadError, match="sha256 differs"):
        download(f"{url}/tiny.zip", dest)


def test_an_existing_file_is_verified_before_use(server, tmp_path):
    url, payload, _ = server
    dest = tmp_path / "tiny.zip"
    dest.write_bytes(b"7 bytes")
    with pytest.raises(DownloadError, match="sha256 differs"):
        download(f"{url}/tiny.zip", dest, sha256=hashlib.sha256(payload).hexdigest())
    with pytest.raises(DownloadError, match="has 7 bytes, not the"):
        download(f"{url}/tiny.zip", dest, size=len(payload))


def test_a_zip_bomb_is_refused_and_leaves_nothing(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", bytes(20 << 20))      # 20 MB of zeros in a few kB
    with pytest.raises(DownloadError, match="zip bomb"):
        extract(bomb, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(DownloadError, match="zip bomb"):
        extract(bomb, tmp_path / "out", max_ratio=1e9, max_bytes=1 << 20)


def test_a_member_outside_the_target_is_refused_and_leaves_nothing(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("fine.txt", "ok")
        z.writestr("../escaped.txt", "no")
    with pytest.raises(DownloadError, match="outside the target folder"):
        extract(evil, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


def test_http_error_gives_manual_steps(server, tmp_path):
    url, _, _ = server
    with pytest.raises(DownloadError, match=r"(?s)404.*download\n.*missing.zip"):
        download(f"{url}/missing.zip", tmp_path / "m.zip")


def test_paper_profile_with_missing_data_stops_with_the_layout(tmp_path, monkeypatch):
    import cdrlib

    monkeypatch.setenv("CDR_PROFILE", "paper")
    monkeypatch.setenv("CDR_DATA", str(tmp_path))
    P = cdrlib.setup(seed=0)
    assert P.is_paper and P.pick(1, 2) == 2
    with pytest.raises(DataError) as err:
        P.require_data("office_home", ["Art", "Clipart"])
    lines = err.value._render_traceback_()  # what a notebook shows instead of a traceback
    assert lines[0].startswith("DataError: office_home") and any("Expected layout" in ln for ln in lines)
    monkeypatch.setenv("CDR_PROFILE", "default")
    cdrlib.setup(seed=0).require_data("office_home", ["Art"])  # the default profile needs nothing


def test_unknown_profile_is_explained(monkeypatch):
    import cdrlib

    monkeypatch.setenv("CDR_PROFILE", "gpu")
    with pytest.raises(ValueError, match="not a profile"):
        cdrlib.setup()
