"""Run every chapter in the paper profile at smoke size: the paper profile's code, end to end, on
small copies of the six paper datasets in their real layouts, with randomly initialised paper
backbones. No GPU and no network needed; on a GPU machine the same command runs unchanged.

    python scripts/smoke_paper.py                  # every chapter
    python scripts/smoke_paper.py 04_cluster_contrastive 08_icfrr
    python scripts/smoke_paper.py --all-errors     # go on after a failing cell, list them all

Nothing in the repository changes: the data, results, trained runs and executed notebooks go to
``_build/smoke/`` (a failed chapter's executed copy too). Prints the time of each chapter and
exits non-zero when any chapter fails. The numbers the chapters print mean nothing (random
weights, a few dozen images); what passes is that every cell runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from run_chapters import chapters  # noqa: E402  (the book's chapters, in the order of _toc.yml)

from cdrlib.data.smoke import write_paper_layouts  # noqa: E402

OUT = ROOT / "_build" / "smoke"
CELL_TIMEOUT = 900


def error_cells(nb) -> list[str]:
    """The error of every cell that raised (a run with ``--all-errors`` goes on after one)."""
    return [
        f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


def main(names: list[str], all_errors: bool = False) -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    t0 = time.time()
    write_paper_layouts(OUT / "data")
    print(f"[smoke] paper layouts written to {OUT / 'data'} in {time.time() - t0:.0f} s", flush=True)
    os.environ.update(
        CDR_PROFILE="paper",
        CDR_SMOKE="1",
        CDR_RANDOM_WEIGHTS="1",
        CDR_DATA=str(OUT / "data"),
        CDR_RESULTS_DIR=str(OUT / "results"),
        CDR_RUNS=str(OUT / "runs"),
        CDR_CACHE=str(OUT / "cache"),
        CDR_PROGRESS="0",
        HF_HUB_OFFLINE="1",
    )
    os.environ.pop("CDR_CHECK_RESULTS", None)  # the committed tables are the default profile's
    times, failed = {}, []
    for path in [p for p in chapters() if not names or p.stem in names]:
        nb = nbformat.read(path, as_version=4)
        print(f"[smoke] {path.name} …", flush=True)
        start = time.time()
        client = NotebookClient(
            nb,
            timeout=CELL_TIMEOUT,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
            allow_errors=all_errors,
        )
        try:
            client.execute()
        except CellExecutionError as e:
            failed.append(path.name)
            error = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # without the terminal colours
            print(f"[smoke] {path.name} FAILED:\n{error[-3000:]}", flush=True)
        if all_errors and error_cells(nb):
            failed.append(path.name)
            print("[smoke] " + "\n[smoke] ".join(error_cells(nb)), flush=True)
        times[path.stem] = round(time.time() - start, 1)
        nbformat.write(nb, OUT / path.name)
        print(f"[smoke] {path.name}: {times[path.stem]:.0f} s", flush=True)
    (OUT / "times.json").write_text(json.dumps({"seconds": times, "failed": failed}, indent=1))
    print("[smoke] seconds per chapter:", json.dumps(times))
    if failed:
        print(f"[smoke] FAILED: {failed}; executed copies in {OUT}", file=sys.stderr)
        return 1
    print(f"[smoke] every chapter ran in the paper profile ({time.time() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main([a for a in args if a != "--all-errors"], "--all-errors" in args))
