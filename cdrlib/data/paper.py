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
class SakeSplits:
    """The zero-shot split files SAKE published and ICFRR reads: in ``<root>/<folder>/``,
    ``<prefix>_filelist_{train,test,zero}.txt``, one ``relative/path/<class>/<image> <label>`` per
    line (paths relative to the root; ``train`` the seen classes, ``zero`` the unseen ones)."""

    folders: tuple[str, ...]  # the split folders SAKE ships; the first is the default
    prefixes: dict  # domain → list prefix


@dataclass(frozen=True)
class PaperDataset:
    name: str
    domains: tuple[str, ...]
    layout: str  # shown when the root is wrong
    folders: dict  # domain → folder (relative to root) holding <class>/<image>
    files: tuple = ()  # (url, filename, sha256 | None, size | None) with a stable URL
    manual: str = ""  # steps when there is no stable URL
    split: str = "folders"  # how train/heldout are defined (see load_paper_split)
    sake: SakeSplits | None = None  # SAKE's split files, read when their folder is there


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
        layout="SAKE's release, as ICFRR reads it: <root>/zeroshot1/ (100 seen / 25 unseen "
        "classes) or <root>/zeroshot2/ (104 / 21) holding "
        "sketch_tx_000000000000_ready_filelist_{train,test,zero}.txt and "
        "all_photo_filelist_{train,zero}.txt, with the files they list under <root>; or "
        "<root>/photo/<class>/<image>.jpg, <root>/sketch/<class>/<image>.png and "
        "<root>/zeroshot_test_classes.txt (the unseen classes, one per line)",
        folders={"photo": "photo", "sketch": "sketch"},
        split="zeroshot",
        sake=SakeSplits(
            ("zeroshot1", "zeroshot2"),
            {"sketch": "sketch_tx_000000000000_ready", "photo": "all_photo"},
        ),
        manual="Sketchy (extended), as SAKE (github.com/qliu24/SAKE) distributes it and ICFRR's "
        "README links: unpack the archive so that <root>/zeroshot1/ and the folders its lists "
        "name sit side by side. Any other copy (sketches and photos from "
        "https://sketchy.eye.gatech.edu/ plus the extended photos of Liu et al.) can be "
        "flattened to <root>/photo/<class>/ and <root>/sketch/<class>/ with the unseen classes in "
        "<root>/zeroshot_test_classes.txt.",
    ),
    "tu_berlin": PaperDataset(
        "tu_berlin",
        ("photo", "sketch"),
        layout="SAKE's release, as ICFRR reads it: <root>/zeroshot/ holding "
        "png_ready_filelist_{train,test,zero}.txt (sketches) and "
        "ImageResized_ready_filelist_{train,zero}.txt (images), with the files they list under "
        "<root>; or <root>/photo/<class>/<image>, <root>/sketch/<class>/<image>.png and "
        "<root>/zeroshot_test_classes.txt (the unseen classes, one per line)",
        folders={"photo": "photo", "sketch": "sketch"},
        sake=SakeSplits(("zeroshot",), {"sketch": "png_ready", "photo": "ImageResized_ready"}),
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
        "plus the extended photos of Zhang et al., as SAKE distributes them with its split files "
        "(unpack so that <root>/zeroshot/ and the folders its lists name sit side by side); or "
        "flatten them to <root>/sketch/<class>/ and <root>/photo/<class>/ with the unseen classes "
        "in <root>/zeroshot_test_classes.txt.",
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


def _read_file_list(lst: Path, root: Path) -> list[tuple[Path, str]]:
    """``(file, class)`` of every line ``relative/path/<class>/<image> <label>`` of a SAKE list;
    the class is the file's folder. A malformed line or a listed file that is not there is an
    error, never a smaller split."""
    items = []
    for n, line in enumerate(lst.read_text().splitlines(), 1):
        if not line.strip():
            continue
        *path, label = line.split()
        if not path or not label.lstrip("-").isdigit():
            raise DataError(f"{lst}, line {n}: expected '<relative path> <label>', got {line!r}")
        rel = " ".join(path)  # SAKE's paths may contain spaces
        items.append((root / rel, Path(rel).parent.name))
    if not items:
        raise DataError(f"{lst} lists no files: the download is incomplete; fetch it again")
    missing = [p for p, _ in items if not p.is_file()]
    if missing:
        shown = ", ".join(str(p.relative_to(root)) for p in missing[:3])
        raise DataError(
            f"{lst} lists {len(missing)} of its {len(items)} files that are not under {root} "
            f"(e.g. {shown}). Unpack the whole archive so that the split folder and the image "
            f"folders it names sit side by side, or point root= at the folder that holds both."
        )
    return items


def _load_sake(
    spec: PaperDataset, domain: str, split: str, root: Path, folder: str | None
) -> list[tuple[Path, str]]:
    """The ``(file, class)`` items of one domain and split from SAKE's split files."""
    if folder is None:
        folder = next(f for f in spec.sake.folders if (root / f).is_dir())
    elif folder not in spec.sake.folders:
        raise DataError(
            f"{spec.name}'s split folders are {list(spec.sake.folders)}, not {folder!r}"
        )
    if not (root / folder).is_dir():
        raise _missing(spec, root, f"the split folder {folder}/")
    prefix = spec.sake.prefixes[domain]
    parts = {"train": ("train",), "heldout": ("zero",), "all": ("train", "test", "zero")}[split]
    found = {}
    for part in parts:
        lst = root / folder / f"{prefix}_filelist_{part}.txt"
        if part == "test" and not lst.is_file():
            continue  # only the sketches have a list of seen-class test items
        if not lst.is_file():
            raise _missing(spec, root, f"{folder}/{lst.name}")
        found[part] = _read_file_list(lst, root)
    if split == "all":
        seen = {c for part in ("train", "test") for _, c in found.get(part, [])}
        leaked = sorted(seen & {c for _, c in found["zero"]})
        if leaked:  # the unseen classes must be unseen, or the zero-shot numbers mean nothing
            raise DataError(
                f"{root / folder}: {len(leaked)} class(es) are listed both as seen and as unseen "
                f"({leaked[:5]}); the split files do not belong together"
            )
    return [item for part in parts for item in found.get(part, [])]


def load_paper_split(
    name: str,
    domain: str,
    split: str = "train",
    root: str | Path | None = None,
    sake_split: str | None = None,
):
    """Files and labels of one domain and split of a paper dataset.

    Splits: ``"all"`` everything; for DomainNet ``train``/``heldout`` are its official lists; for
    Sketchy, TU-Berlin and CUB ``heldout`` is the zero-shot unseen classes and ``train`` the seen
    ones; for Office-Home and PACS (no official split; the papers evaluate on the training images)
    ``train`` is everything and ``heldout`` a fixed 30% of each class (every 10th, 3rd and 7th
    file).

    Sketchy and TU-Berlin are read from SAKE's split files when their folder is under the root
    (``zeroshot1``/``zeroshot2`` for Sketchy, ``zeroshot`` for TU-Berlin; ``sake_split`` picks
    one, by default the first there), otherwise from class folders and
    ``zeroshot_test_classes.txt``. A split list that names files that are not there, or classes
    that have no folder, is an error: a dataset never loads as a smaller split than it claims.

    Returns:
        ``(files, labels, classes)``.
    """
    spec = _spec(name)
    if domain not in spec.domains or domain not in spec.folders:
        raise DataError(f"{name} has image domains {list(spec.folders)}, not {domain!r}")
    if split not in ("train", "heldout", "all"):
        raise DataError(f"split must be 'train', 'heldout' or 'all', not {split!r}")
    root = dataset_root(name, root)
    if spec.sake is not None and (
        sake_split is not None or any((root / f).is_dir() for f in spec.sake.folders)
    ):
        return _labelled(_load_sake(spec, domain, split, root, sake_split))
    if sake_split is not None:
        raise DataError(f"sake_split applies to sketchy and tu_berlin, not {name}")
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
        if not keep:
            raise DataError(f"{lst} lists no files: fetch it again")
        rel = [p.relative_to(root).as_posix() for p, _ in items]
        missing = sorted(keep.difference(rel))
        if missing:  # a smaller split than the list says would change every number
            raise DataError(
                f"{lst} lists {len(missing)} of its {len(keep)} files that are not in "
                f"{spec.folders[domain]}/<class>/ (e.g. {missing[:3]}): unpack the domain's "
                "whole archive next to its lists"
            )
        items = [item for item, r in zip(items, rel, strict=True) if r in keep]
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
        unknown = sorted(keep_cls - {c for _, c in items})
        if unknown:
            raise DataError(
                f"{subset} names {len(unknown)} class(es) with no folder in {spec.folders[domain]}/"
                f": {unknown[:5]}. The names must match the class folders exactly."
            )
        items = [(p, c) for p, c in items if c in keep_cls]
    return _labelled(items)


def _labelled(items: list[tuple[Path, str]]) -> tuple[list[Path], list[int], list[str]]:
    """``(files, labels, classes)`` from ``(file, class)`` items, classes numbered in sorted
    order."""
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
