"""Build the embedded *emoji-domains* dataset from pinned npm packages.

The book's default profile runs on this dataset: the same emoji drawn in four visual styles
(domains), grouped into Unicode subgroups (classes). The script

1. fetches the pinned npm tarballs with ``npm pack`` (or takes them from ``--npm-dir``) and
   refuses any tarball whose sha256 differs from the one recorded below;
2. keeps the base emoji (no skin tones, no flags, no components) drawn in all four styles;
3. keeps the subgroups with at least ``--min-per-class`` members in every domain;
4. rasterises every image to 64×64 RGB on white (SVGs at 128 px, then a Lanczos downsample);
5. writes ``images.npz`` (uint8, compressed), ``metadata.json``, the licence texts, the
   attributions and ``MANIFEST.sha256`` into ``data/emoji_domains``.

Usage::

    python scripts/build_emoji_dataset.py            # fetch with npm, build into data/emoji_domains
    python scripts/build_emoji_dataset.py --npm-dir /tmp/npm   # reuse downloaded tarballs

Needs npm, ``cairosvg`` and the system libcairo (``pip install cairosvg``). It is not part of
the tests or of the book build: the result is committed.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cdrlib.data.download import file_sha256 as sha256  # noqa: E402

# Pinned packages and the sha256 of their npm tarballs (measured when the dataset was first built).
PACKAGES = {
    "emoji-datasource-twitter": ("16.0.0", "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877"),
    "emoji-datasource-google": ("16.0.0", "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"),
    "openmoji": ("17.0.0", "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68"),
    "emojibase-data": ("17.0.0", "d01d0e2ca4e22cb402679532155342c71e2e871f25c32223c013b8b166ebdf5a"),
    "emojilib": ("4.0.3", "7f9a6b43cff31d18985b7d65d11faba5bd971cbcc60020cf6d09322fbaaaf303"),
}

DOMAINS = ("twemoji", "noto", "openmoji", "sketch")
EXCLUDED_GROUPS = {"flags", "component", "extras-openmoji", "extras-unicode"}
SKIN_TONES = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"}
SIZE = 64
HELDOUT_FRACTION = 0.3
SPLIT_SEED = 0


def norm_hex(code: str) -> str:
    """Canonical code point key: upper case, '-' separated, without the U+FE0F variation selector."""
    parts = [p for p in code.upper().replace(" ", "-").split("-") if p and p != "FE0F"]
    return "-".join(parts)


def norm_subgroup(name: str) -> str:
    """'sky & weather' and 'sky-weather' are the same subgroup in different packages."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("&", "")).strip("-")


def fetch_tarballs(npm_dir: Path) -> dict[str, Path]:
    npm_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (version, digest) in PACKAGES.items():
        path = npm_dir / f"{name}-{version}.tgz"
        if not path.exists():
            subprocess.run(["npm", "pack", f"{name}@{version}", "--silent"], cwd=npm_dir, check=True,
                           stdout=subprocess.DEVNULL)
        got = sha256(path)
        if got != digest:
            raise SystemExit(f"{path}: sha256 {got} differs from the pinned {digest}; "
                             f"delete the file and run again, or check the npm registry.")
        paths[name] = path
    return paths


class Tarball:
    """Random access to the members of an npm tarball (all under 'package/')."""

    def __init__(self, path: Path):
        self.tar = tarfile.open(path, "r:gz")
        self.members = {m.name[len("package/"):]: m for m in self.tar.getmembers() if m.isfile()}

    def read(self, name: str) -> bytes:
        return self.tar.extractfile(self.members[name]).read()

    def json(self, name: str):
        return json.loads(self.read(name))


def png_on_white(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGBA")
    if img.size != (SIZE, SIZE):
        img = img.resize((SIZE, SIZE), Image.LANCZOS)
    return composite(img)


def svg_on_white(data: bytes) -> np.ndarray:
    import cairosvg  # imported here: only the build needs the system libcairo

    png = cairosvg.svg2png(bytestring=data, output_width=2 * SIZE, output_height=2 * SIZE)
    img = Image.open(io.BytesIO(png)).convert("RGBA").resize((SIZE, SIZE), Image.LANCZOS)
    return composite(img)


def composite(rgba: Image.Image) -> np.ndarray:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)


def build(npm_dir: Path, out_dir: Path, min_per_class: int) -> dict:
    t0 = time.time()
    tars = {name: Tarball(p) for name, p in fetch_tarballs(npm_dir).items()}
    twitter, google, openmoji = tars["emoji-datasource-twitter"], tars["emoji-datasource-google"], tars["openmoji"]

    # The emoji drawn by each source, keyed by normalised code points.
    datasource = {norm_hex(e["unified"]): e for e in twitter.json("emoji.json")}
    tw_files = {k: f"img/twitter/64/{e['image']}" for k, e in datasource.items()
                if e.get("has_img_twitter") and f"img/twitter/64/{e['image']}" in twitter.members}
    go_files = {k: f"img/google/64/{e['image']}" for k, e in datasource.items()
                if e.get("has_img_google") and f"img/google/64/{e['image']}" in google.members}
    om_meta = {}
    for e in openmoji.json("data/openmoji.json"):
        key = norm_hex(e["hexcode"])
        # A base emoji names itself as its skintone_base; only the variants carry a skintone.
        if e["group"] in EXCLUDED_GROUPS or e["skintone"] or SKIN_TONES & set(key.split("-")):
            continue
        if f"color/svg/{e['hexcode']}.svg" in openmoji.members and f"black/svg/{e['hexcode']}.svg" in openmoji.members:
            om_meta[key] = e
    common = sorted(set(om_meta) & set(tw_files) & set(go_files))

    # Classes: openmoji's subgroup (the Unicode subgroup), kept if large enough in every domain.
    # Every kept emoji is in all four domains, so one count serves all of them.
    counts = Counter(norm_subgroup(om_meta[k]["subgroups"]) for k in common)
    classes = sorted(c for c, n in counts.items() if n >= min_per_class)
    keep = [k for k in common if norm_subgroup(om_meta[k]["subgroups"]) in classes]
    keep.sort(key=lambda k: (classes.index(norm_subgroup(om_meta[k]["subgroups"])), om_meta[k]["order"]))

    # Captions: CLDR label (emojibase), emojibase tags, emojilib keywords.
    base = {norm_hex(e["hexcode"]): e for e in tars["emojibase-data"].json("en/data.json")}
    lib = {norm_hex("-".join(f"{ord(c):X}" for c in ch)): kws
           for ch, kws in tars["emojilib"].json("dist/emoji-en-US.json").items()}

    images = np.zeros((len(DOMAINS), len(keep), SIZE, SIZE, 3), dtype=np.uint8)
    records = []
    for i, key in enumerate(keep):
        om = om_meta[key]
        images[0, i] = png_on_white(twitter.read(tw_files[key]))
        images[1, i] = png_on_white(google.read(go_files[key]))
        images[2, i] = svg_on_white(openmoji.read(f"color/svg/{om['hexcode']}.svg"))
        images[3, i] = svg_on_white(openmoji.read(f"black/svg/{om['hexcode']}.svg"))
        eb = base.get(key, {})
        label = eb.get("label") or om["annotation"]
        tags = sorted(set(eb.get("tags") or [t.strip() for t in om["tags"].split(",") if t.strip()]))
        keywords = sorted({k.replace("_", " ") for k in lib.get(key, [])} - {label})
        records.append({
            "hexcode": key, "emoji": om["emoji"], "class": norm_subgroup(om["subgroups"]),
            "group": om["group"], "label": label, "tags": tags, "keywords": keywords,
            "short_names": datasource[key]["short_names"],
        })
        if i % 200 == 0:
            print(f"rasterised {i}/{len(keep)}", flush=True)

    # Fixed, seeded split per class: HELDOUT_FRACTION of each class's emoji are held out.
    rng = np.random.default_rng(SPLIT_SEED)
    by_class = defaultdict(list)
    for i, r in enumerate(records):
        by_class[r["class"]].append(i)
    heldout = set()
    for c in classes:
        members = np.array(by_class[c])
        n_out = int(round(HELDOUT_FRACTION * len(members)))
        heldout.update(rng.permutation(members)[:n_out].tolist())
    for i, r in enumerate(records):
        r["split"] = "heldout" if i in heldout else "train"

    # Tag vocabulary for the multi-hot vectors (PMRP): tags shared by at least two emoji.
    tag_counts = Counter(t for r in records for t in r["tags"])
    vocab = sorted(t for t, n in tag_counts.items() if n >= 2)
    index = {t: j for j, t in enumerate(vocab)}
    tag_matrix = np.zeros((len(records), len(vocab)), dtype=np.uint8)
    for i, r in enumerate(records):
        for t in r["tags"]:
            if t in index:
                tag_matrix[i, index[t]] = 1

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    np.savez_compressed(out_dir / "images.npz", images=images, tags=tag_matrix)
    meta = {
        "name": "emoji-domains", "version": 1, "image_size": SIZE, "domains": list(DOMAINS),
        "classes": classes, "tag_vocabulary": vocab, "min_per_class": min_per_class,
        "heldout_fraction": HELDOUT_FRACTION, "split_seed": SPLIT_SEED,
        "sources": {n: {"version": v, "tarball_sha256": d} for n, (v, d) in PACKAGES.items()},
        "emoji": records,
    }
    (out_dir / "metadata.json").write_text(json.dumps(meta, ensure_ascii=False, indent=0))
    write_licences(out_dir, tars)
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    (out_dir / "MANIFEST.sha256").write_text(
        "".join(f"{sha256(p)}  {p.relative_to(out_dir).as_posix()}\n" for p in files))
    stats = {"emoji_per_domain": len(keep), "classes": len(classes), "tags": len(vocab),
             "heldout": len(heldout), "seconds": round(time.time() - t0, 1),
             "bytes": sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())}
    print(json.dumps(stats))
    return stats


def write_licences(out_dir: Path, tars: dict[str, Tarball]) -> None:
    lic = out_dir / "licenses"
    lic.mkdir()
    for name, tar in tars.items():
        for cand in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
            if cand in tar.members:
                (lic / f"{name}-{PACKAGES[name][0]}.txt").write_bytes(tar.read(cand))
                break
    (out_dir / "ATTRIBUTION.md").write_text(ATTRIBUTION)


ATTRIBUTION = """# Attribution and licences of the emoji-domains dataset

The arrays in `images.npz` are rasterised copies (64×64 RGB on white) of emoji artwork:

| domain | artwork | licence |
|---|---|---|
| twemoji | Twemoji by Twitter, Inc. and other contributors, via emoji-datasource-twitter 16.0.0 (iamcal/emoji-data) | CC BY 4.0 (graphics), MIT (package) |
| noto | Noto Emoji by Google Inc., via emoji-datasource-google 16.0.0 | Apache License 2.0 |
| openmoji | OpenMoji (colour) by the OpenMoji project, HfG Schwäbisch Gmünd, openmoji 17.0.0 | CC BY-SA 4.0 |
| sketch | OpenMoji (black line art) by the OpenMoji project, openmoji 17.0.0 | CC BY-SA 4.0 |

Because the openmoji and sketch domains are adapted from CC BY-SA 4.0 material, those arrays
remain under CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/).
Twemoji graphics: CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/).
The images were converted (rasterised, resized, composited on white); no other change was made.

Metadata: labels and tags from emojibase-data 17.0.0 (MIT), keywords from emojilib 4.0.3 (MIT),
subgroups and annotations from OpenMoji's `data/openmoji.json` (CC BY-SA 4.0).
The licence texts of the packages are in `licenses/`.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--npm-dir", type=Path, default=ROOT / ".cache" / "npm", help="where the tarballs are kept")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "emoji_domains")
    ap.add_argument("--min-per-class", type=int, default=12)
    args = ap.parse_args()
    build(args.npm_dir, args.out, args.min_per_class)


if __name__ == "__main__":
    main()
