"""Execute every chapter in place (the book's first command calls this).

Chapters run in the order of _toc.yml, each in its own kernel with ``book/`` as working
directory. A chapter that fails is saved to ``_build/failed/`` and the committed notebook is left
untouched. Widget state is stripped so that GitHub renders the files.

    python scripts/run_chapters.py                 # all chapters
    python scripts/run_chapters.py 02_metrics      # some
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
# committed outputs must not hold progress bars, and the default profile never touches the network
os.environ.setdefault("CDR_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def chapters() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").is_file()]


def strip_widget_state(nb) -> None:
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)


def run(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    client = NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError:
        failed = ROOT / "_build" / "failed" / path.name
        failed.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, failed)
        print(f"[chapters] {path.name} FAILED; the executed copy is in {failed}; the committed notebook is unchanged")
        raise
    strip_widget_state(nb)
    nbformat.write(nb, path)
    return time.time() - t0


def main(names: list[str]) -> None:
    todo = [p for p in chapters() if not names or p.stem in names]
    for path in todo:
        print(f"[chapters] running {path.relative_to(ROOT)} …", flush=True)
        print(f"[chapters] {path.name}: {run(path):.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
