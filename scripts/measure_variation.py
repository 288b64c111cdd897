"""Measure how much each trained results table moves between runs that differ only in the machine.

Training on a CPU is not bit-reproducible across processors: the BLAS and oneDNN kernels a CPU
gets (AVX-512 or AVX2), and the number of threads, change the order of floating-point sums, and a
few hundred SGD steps amplify a last-bit difference into visible changes of mAP. This script re-runs
chapters under variants that reproduce those differences on one machine, compares every saved
table with the table committed in the chapter, and records the largest difference per table in
``book/results/variation.json``. Chapters then save their trained tables with
``save_results(..., atol="measured")``, whose tolerance is read from that file.

    python scripts/measure_variation.py 04_cluster_contrastive 05_dod_alignment
    python scripts/measure_variation.py --variants avx2 threads1 06_ibnm

Variants (environment of the kernel that runs the chapter):

* ``default`` — this machine as it is;
* ``avx2`` — the kernels of an older instruction set (``ATEN_CPU_CAPABILITY``,
  ``MKL_ENABLE_INSTRUCTIONS``, ``ONEDNN_MAX_CPU_ISA``), as on a CPU without AVX-512;
* ``threads1`` — one thread (``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``);
* ``avx2-threads1`` — both at once (with ``--cpu N`` two such runs share a 2-core machine without
  slowing each other down).

Runs a chapter keeps in its run store (``book/runs/``) are trained afresh (``CDR_RUN_STORE=off``):
what is measured is training's variation, what a reader who retrains meets. The committed tables
themselves come from some machine; comparing with them counts that machine's difference too. A
table's tolerance is twice the largest difference seen over all measurements (rounded up to two
significant digits, at least 1e-3): twice, because a few code paths are a sample of the machines a
reader has, not all of them.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdrlib.results import (VARIATION_FILE, committed_tables, largest_difference,  # noqa: E402
                            measured_tolerance, row_differences, tolerance_from)
from run_chapters import strip_widget_state  # noqa: E402  (scripts/ is on the path when run as a script)

VARIANTS = {
    "default": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "threads1": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
}
VARIANTS["avx2-threads1"] = {**VARIANTS["avx2"], **VARIANTS["threads1"]}


def run_variant(chapter: str, variant: str, results_dir: Path):
    """Execute a copy of the chapter with the variant's environment; tables go to ``results_dir``.

    Returns ``(seconds, executed notebook)``.
    """
    # CDR_RUN_STORE=off: every run trains (what is measured) and the chapter's stored runs stay as they are
    env = {**VARIANTS[variant], "CDR_RESULTS_DIR": str(results_dir), "CDR_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
           "CDR_RUN_STORE": "off"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)   # the kernel inherits this process's environment
    try:
        nb = nbformat.read(ROOT / "book" / f"{chapter}.ipynb", as_version=4)
        t0 = time.time()
        NotebookClient(nb, timeout=1800, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "book")}}).execute()
        return time.time() - t0, nb
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("chapters", nargs="+", help="chapter file stems, e.g. 04_cluster_contrastive")
    ap.add_argument("--variants", nargs="+", default=["avx2-threads1"], choices=list(VARIANTS))
    ap.add_argument("--out", default=str(ROOT / "_build" / "variation"), help="where the re-runs' tables go")
    ap.add_argument("--cpu", type=int, default=None, help="pin this run (and its kernels) to one CPU")
    ap.add_argument("--commit", action="store_true",
                    help="write the default variant's executed chapter back to book/ (as run_chapters.py does), "
                         "after comparing it with the committed one")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    path = ROOT / VARIATION_FILE
    machine = f"{os.cpu_count()} CPUs, {_cpu_model()}"
    for chapter in args.chapters:
        committed = committed_tables(ROOT / "book" / f"{chapter}.ipynb")
        # the tolerances in force while the chapter runs: what its lines under the tables will state
        stated = {t: measured_tolerance(chapter, t)[0] for t in committed}
        for variant in args.variants:
            out = Path(args.out) / variant / chapter
            out.mkdir(parents=True, exist_ok=True)
            # a chapter that reads other chapters' tables (the closing page) reads the committed ones
            for f in (ROOT / "book" / "results").glob("*__*.json"):
                if not f.name.startswith(f"{chapter}__"):
                    shutil.copyfile(f, out / f.name)
            print(f"[variation] {chapter} under {variant} …", flush=True)
            seconds, executed = run_variant(chapter, variant, out)
            with open(path.with_suffix(".lock"), "w") as lock:   # two pinned runs may share the file
                fcntl.flock(lock, fcntl.LOCK_EX)
                record = json.loads(path.read_text()) if path.is_file() else {}
                for table, payload in committed.items():
                    produced = out / f"{chapter}__{table}.json"
                    if not produced.is_file():   # a table the chapter no longer saves
                        print(f"[variation]   {table}: not produced by this run; skipped")
                        continue
                    rerun = json.loads(produced.read_text())
                    diff = largest_difference(payload["records"], rerun["records"])
                    key = f"{chapter}__{table}"
                    entry = record.setdefault(key, {"measurements": []})
                    entry["measurements"] = [m for m in entry["measurements"]
                                             if not (m["variant"] == variant and m["machine"] == machine)]
                    entry["measurements"].append({"variant": variant, "machine": machine, "max_abs_diff": diff,
                                                  "chapter_seconds": round(seconds, 1),
                                                  "rows": row_differences(payload["records"], rerun["records"])})
                    entry["tolerance"] = tolerance_from([m["max_abs_diff"] for m in entry["measurements"]])
                    print(f"[variation]   {table}: largest difference {diff:.6f} → tolerance {entry['tolerance']:g}")
                path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
            if args.commit and variant == "default":
                commit(chapter, executed, stated, out)


def commit(chapter: str, nb, stated: dict, tables: Path) -> None:
    """Write the executed chapter and its tables (from ``tables``) back to ``book/``, unless a
    tolerance it states has changed since it ran."""
    changed = [t for t, tol in stated.items() if measured_tolerance(chapter, t)[0] != tol]
    if changed:
        print(f"[variation] {chapter}: tolerance of {changed} changed by this measurement; the executed "
              f"chapter states the old one and is not committed: run python scripts/run_chapters.py {chapter}")
        return
    strip_widget_state(nb)
    nbformat.write(nb, ROOT / "book" / f"{chapter}.ipynb")
    for f in tables.glob(f"{chapter}__*.json"):
        shutil.copyfile(f, ROOT / "book" / "results" / f.name)
    print(f"[variation] {chapter}: committed the default run")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
