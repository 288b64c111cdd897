"""The paper datasets: their folder layouts, split files, and how to obtain them.

Each dataset is described once in :data:`PAPER_DATASETS` (domains, expected layout, download
sources, manual steps). :func:`load_paper_split` reads the standard layout and returns file lists
with labels; :func:`prepare` downloads and unpacks what has a stable public URL and otherwise
prints the manual steps. A wrong root stops with the expected layout spelled out.

Checksums: where the project has not yet measured a file's sha256, the entry says ``None`` and the
download prints the sha256 it computed, so that it can be recorded here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .download import cache_dir, download, extract
from .errors import DataError

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp"}


DOMAINNET_URL = "https://csr.bu.edu/ftp/visda/2019/multi-source"


@dataclass(frozen=True)
class PaperDataset:
    name: str
    domains: tuple[str, ...]
    layout: str  # shown when the root is wrong
    folders: dict  # domain → folder (relative to root) holding <class>/<image>
    files: tuple = ()  # (url, filename, sha256 | None, size | None) with a stable URL
    manual: str = ""  # steps when there is no stable URL
    split: str = "folders"  # how train/heldout are defined (see load_paper_split)


PAPER_DATASETS = {
    "office_home": PaperDataset(
        "office_home",
        ("Art", "Clipart", "Product", "Real_World"),
        layout="<root>/{Art,Clipart,Product,Real_World}/<class>/<image>.jpg   (65 classes)",
        folders={d: d for d in ("Art", "Clipart", "Product", "Real_World")},
        manual="Office-Home has no stable direct URL (it is served from Google Drive). Download "
        "'OfficeHomeDataset_10072016.zip' from https://www.hemanthdv.org/officeHomeDataset.html, "
        "unzip it, "
        "and rename the folder 'Real World' to 'Real_World'.",
    ),
    "pacs": PaperDataset(
        "pacs",
        ("art_painting", "cartoon", "photo", "sketch"),
        layout="<root>/{art_painting,cartoon,photo,sketch}/<class>/<image>   (7 classes)",
        folders={d: d for d in ("art_painting", "cartoon", "photo", "sketch")},
        manual="PACS is distributed from Google Drive "
        "(https://domaingeneralization.github.io/#data); download "
        "the 'kfold' image folders and place the four domain folders under the root.",
    ),
    "domainnet": PaperDataset(
        "domainnet",
        ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
        layout="<root>/<domain>/<class>/<image>.jpg and <root>/<domain>_{train,test}.txt   "
        "(optional: <root>/class_subset.txt, one class per line, the classes to keep)",
        folders={d: d for d in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")},
        files=tuple(
            (
                f"{DOMAINNET_URL}/{'groundtruth/' if d in ('clipart', 'painting') else ''}{d}.zip",
                f"{d}.zip",
                None,
                None,
            )
            for d in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
        )
        + tuple(
            (
                f"{DOMAINNET_URL}/domainnet/txt/{d}_{s}.txt",
                f"{d}_{s}.txt",
                None,
                None,
            )
            for d in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
            for s in ("train", "test")
        ),
        split="lists",
        manual="DomainNet: http://ai.bu.edu/M3SDA/ — the six domain zips and their "
        "*_train.txt/*_test.txt lists. "
        "UCDIR trains on a subset of classes: put that list in <root>/class_subset.txt.",
    ),
    "sketchy": PaperDataset(
        "sketchy",
        ("photo", "sketch"),
        layout="<root>/photo/<class>/<image>.jpg, <root>/sketch/<class>/<image>.png and "
        "<root>/zeroshot_test_classes.txt (the 25 unseen classes, one per line)",
        folders={"photo": "photo", "sketch": "sketch"},
        split="zeroshot",
        manual="Sketchy (extended): sketches and photos from https://sketchy.eye.gatech.edu/ plus "
        "the extended "
        "photos of Liu et al. (Deep Sketch Hashing). Flatten them to <root>/photo/<class>/ and "
        "<root>/sketch/<class>/, and copy the zero-shot split ICFRR uses (SAKE's 'zeroshot1' test "
        "classes) "
        "to <root>/zeroshot_test_classes.txt.",
    ),
    "tu_berlin": PaperDataset(
        "tu_berlin",
        ("photo", "sketch"),
        layout="<root>/photo/<class>/<image>, <root>/sketch/<class>/<image>.png and "
        "<root>/zeroshot_test_classes.txt (the 30 unseen classes, one per line)",
        folders={"photo": "photo", "sketch": "sketch"},
        files=(
            (
                "https://cybertron.cg.tu-berlin.de/eitz/projects/classifysketch/sketches_png.zip",
                "sketches_png.zip",
                None,
                None,
            ),
        ),
        split="zeroshot",
        manual="TU-Berlin sketches: "
        "https://cybertron.cg.tu-berlin.de/eitz/projects/classifysketch/ "
        "(sketches_png.zip), "
        "plus the extended photos of Zhang et al. used by SAKE. Place them as "
        "<root>/sketch/<class>/ and "
        "<root>/photo/<class>/ and copy SAKE's zero-shot test classes to "
        "<root>/zeroshot_test_classes.txt.",
    ),
    "cub": PaperDataset(
        "cub",
        ("image", "text"),
        layout="<root>/CUB_200_2011/images/<class>/<image>.jpg, <root>/CUB_200_2011/"
        "{images.txt,image_class_labels.txt,classes.txt}, <root>/text_c10/<class>/<image>.txt "
        "(captions) "
        "and <root>/testclasses.txt (PCME's 50 unseen classes)",
        folders={"image": "CUB_200_2011/images"},
        files=(
            (
                "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                "CUB_200_2011.tgz",
                None,
                None,
            ),
        ),
        split="zeroshot_cub",
        manual="CUB-200-2011: https://www.vision.caltech.edu/datasets/cub_200_2011/ ; captions "
        "(text_c10) from "
        "Reed et al., 'Learning Deep Representations of Fine-Grained Visual Descriptions' (Google "
        "Drive); "
        "PCME's class split as <root>/testclasses.txt.",
    ),
}

DOMAINS = {
    "emoji": ("twemoji", "noto", "openmoji", "sketch"),
    **{k: v.domains for k, v in PAPER_DATASETS.items()},
}


def data_home() -> Path:
    """Where the paper datasets live: ``$CDR_DATA``, else ``<cache>/data`` (``$CDR_CACHE`` or
    ``~/.cache/cdrlib``)."""
    return Path(os.environ.get("CDR_DATA", cache_dir() / "data")).expanduser()


def dataset_root(name: str, root: str | Path | None = None) -> Path:
    """``root``, or ``data_home()/<name>``."""
    return Path(root).expanduser() if root is not None else data_home() / name


def _spec(name: str) -> PaperDataset:
    if name not in PAPER_DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose 'emoji' or one of {list(PAPER_DATASETS)}"
        )
    return PAPER_DATASETS[name]


def _missing(spec: PaperDataset, root: Path, what: str) -> DataError:
    return DataError(
        f"{spec.name}: {what} not found under {root}.\nExpected layout:\n  {spec.layout}\n"
        "How to get it:\n  "
        f"{spec.manual or 'run cdrlib.data.paper.prepare(' + repr(spec.name) + ')'}\n"
        f"Set CDR_DATA or pass root= to point at another folder."
    )


def _read_lines(path: Path) -> list[str]:
    return [
        ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]


def _scan(folder: Path) -> list[tuple[Path, str]]:
    return [
        (p, cls.name)
        for cls in sorted(q for q in folder.iterdir() if q.is_dir())
        for p in sorted(cls.iterdir())
        if p.suffix.lower() in IMAGE_EXT
    ]


def load_paper_split(name: str, domain: str, split: str = "train", root: str | Path | None = None):
    """Files and labels of one domain and split of a paper dataset.

    Splits: ``"all"`` everything; for DomainNet ``train``/``heldout`` are its official lists; for
    Sketchy, TU-Berlin and CUB ``heldout`` is the zero-shot unseen classes and ``train`` the seen
    ones; for Office-Home and PACS (no official split; the papers evaluate on the training images)
    ``train`` is everything and ``heldout`` a fixed 30% of each class (every 10th, 3rd and 7th
    file).

    Returns:
        ``(files, labels, classes)``.
    """
    spec = _spec(name)
    if domain not in spec.domains or domain not in spec.folders:
        raise DataError(f"{name} has image domains {list(spec.folders)}, not {domain!r}")
    if split not in ("train", "heldout", "all"):
        raise DataError(f"split must be 'train', 'heldout' or 'all', not {split!r}")
    root = dataset_root(name, root)
    folder = root / spec.folders[domain]
    if not folder.is_dir():
        raise _missing(spec, root, f"the folder {spec.folders[domain]}/")
    items = _scan(folder)
    if not items:
        raise _missing(spec, root, f"images in {spec.folders[domain]}/<class>/")

    if spec.split == "lists" and split != "all":
        lst = root / f"{domain}_{'train' if split == 'train' else 'test'}.txt"
        if not lst.is_file():
            raise _missing(spec, root, lst.name)
        keep = {ln.split()[0] for ln in _read_lines(lst)}
        items = [(p, c) for p, c in items if p.relative_to(root).as_posix() in keep]
    elif spec.split.startswith("zeroshot") and split != "all":
        lst = root / (
            "testclasses.txt" if spec.split == "zeroshot_cub" else "zeroshot_test_classes.txt"
        )
        if not lst.is_file():
            raise _missing(spec, root, lst.name)
        unseen = set(_read_lines(lst))
        unknown = sorted(unseen - {c for _, c in items})
        if unknown:  # an unmatched name would silently move that unseen class into training
            raise DataError(
                f"{lst} names {len(unknown)} class(es) with no folder under {root / domain}: "
                f"{unknown[:5]}{' …' if len(unknown) > 5 else ''}. The names must match the class "
                f"folders exactly; otherwise those unseen classes would leak into training."
            )
        items = [(p, c) for p, c in items if (c in unseen) == (split == "heldout")]
    elif spec.split == "folders" and split == "heldout":
        items = [(p, c) for i, (p, c) in enumerate(items) if i % 10 in (2, 6, 9)]

    subset = root / "class_subset.txt"
    if name == "domainnet" and subset.is_file():
        keep_cls = set(_read_lines(subset))
        items = [(p, c) for p, c in items if c in keep_cls]
    classes = sorted({c for _, c in items})
    index = {c: i for i, c in enumerate(classes)}
    return [p for p, _ in items], [index[c] for _, c in items], classes


def prepare(name: str, root: str | Path | None = None) -> Path:
    """Download and unpack what has a stable URL; print the manual steps for the rest."""
    spec = _spec(name)
    root = dataset_root(name, root)
    root.mkdir(parents=True, exist_ok=True)
    for url, filename, sha, size in spec.files:
        is_list = filename.endswith(".txt")  # split lists go to the root, archives to downloads/
        path = download(
            url,
            root / filename if is_list else root / "downloads" / filename,
            sha256=sha,
            size=size,
            what=f"{name}/{filename}",
        )
        if not is_list:
            extract(path, root)
    if spec.manual:
        print(f"{name}: still to do by hand —\n  {spec.manual}\nExpected layout:\n  {spec.layout}")
    return root
