"""The numbers in the committed notebooks must come back when CI re-runs the chapters.

scripts/test.sh runs every chapter under nbval first, with CDR_RESULTS_DIR pointing at a fresh
folder; each chapter's save_results() writes its tables there. This test then reads the tables
committed in the notebooks' outputs (metadata 'cdrlib_results') and compares them, within the
tolerance each table states. Run outside scripts/test.sh (no CDR_CHECK_RESULTS), it is skipped.
"""
import json
import os
from pathlib import Path

import pytest

from cdrlib.results import committed_tables, compare_records, measured_tolerance

ROOT = Path(__file__).resolve().parents[1]


def every_committed_table():
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        for payload in committed_tables(path).values():
            yield path.name, payload


TABLES = list(every_committed_table())
# tables whose numbers come out of training (SGD on a CPU): they must carry a measured tolerance
TRAINED = {"04_cluster_contrastive", "05_dod_alignment", "06_ibnm", "07_pcme", "08_icfrr"}


def test_every_chapter_with_a_run_commits_a_results_table():
    chapters = {p.name for p in (ROOT / "book").glob("*.ipynb")}
    with_tables = {name for name, _ in TABLES}
    assert chapters == with_tables, f"chapters without a saved results table: {sorted(chapters - with_tables)}"


@pytest.mark.parametrize("notebook,payload", TABLES, ids=[f"{n}:{p['table']}" for n, p in TABLES])
def test_rerun_reproduces_committed_numbers(notebook, payload):
    if not os.environ.get("CDR_CHECK_RESULTS"):
        pytest.skip("run through scripts/test.sh, which re-runs the chapters first")
    rerun_file = Path(os.environ["CDR_RESULTS_DIR"]) / f"{payload['chapter']}__{payload['table']}.json"
    assert rerun_file.is_file(), f"{notebook} did not save {rerun_file.name} in this run"
    rerun = json.loads(rerun_file.read_text())
    atol = payload["atol"]
    if atol == "measured":   # trained tables: the tolerance measured by scripts/measure_variation.py
        atol, entry = measured_tolerance(payload["chapter"], payload["table"])
        assert entry is not None, (f"{notebook}: table {payload['table']!r} has no measured tolerance; run "
                                   f"python scripts/measure_variation.py {payload['chapter']}")
    problems = compare_records(payload["records"], rerun["records"], atol)
    assert not problems, f"{notebook}: the committed table is not reproduced:\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("notebook,payload", [(n, p) for n, p in TABLES if p["chapter"] in TRAINED],
                         ids=[f"{n}:{p['table']}" for n, p in TABLES if p["chapter"] in TRAINED])
def test_trained_tables_state_a_measured_tolerance(notebook, payload):
    assert payload["atol"] == "measured", f"{notebook}: trained table {payload['table']!r} has a guessed tolerance"
    _, entry = measured_tolerance(payload["chapter"], payload["table"])
    assert entry is not None and entry["measurements"], f"{notebook}: {payload['table']!r} was never measured"
