"""Results tables that stay honest: saved when a chapter runs, checked against the committed
notebook.

:func:`save_results` does three things with a chapter's final table:

1. writes it as JSON to ``<results_dir>/<chapter>__<table>.json`` (``CDR_RESULTS_DIR``);
2. displays it, carrying the same records in the output's metadata, so that the committed
   notebook holds machine-readable numbers beside the rendered table;
3. records the tolerance within which a re-run must reproduce them.

``tests/test_results_reproduce.py`` then compares the numbers of the CI run (the JSON files nbval's
run wrote) with the numbers in the committed notebooks: a table the code can no longer reproduce
fails CI.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .paths import REPO_ROOT, default_results_dir

METADATA_KEY = "cdrlib_results"
# per trained table: the measured run-to-run differences and the tolerance derived from them
# (written by scripts/measure_variation.py)
VARIATION_FILE = "book/results/variation.json"
FALLBACK_TOLERANCE = 1e-3  # a trained table not measured yet


MIN_TOLERANCE = (
    1e-3  # no measured tolerance below this: the tables keep six decimals of noise-free numbers
)


def tolerance_from(differences) -> float:
    """Twice the largest measured difference, rounded up to two significant digits, at least 1e-3.

    Twice, because a few kernels and thread counts are a sample of the machines readers have.
    """
    worst = 2 * max(differences, default=0.0)
    if worst <= MIN_TOLERANCE:
        return MIN_TOLERANCE
    step = 10 ** (math.floor(math.log10(worst)) - 1)
    return round(math.ceil(worst / step) * step, 12)


def measured_tolerance(
    chapter: str, table: str, rows=None, root: str | Path | None = None
) -> tuple[float, dict | None]:
    """The tolerance ``scripts/measure_variation.py`` derived for a table, and its measurements.

    Args:
        rows: optional row labels (a row's first text field, e.g. its ``method``): the tolerance of
            those rows only, from the per-row differences of every measurement (a table whose
            rows mix trained and untrained methods varies by row).
    Returns ``(tolerance, entry)``; ``entry`` is None (and the tolerance the fallback, 1e-3) when
    the table has not been measured yet.
    """
    path = Path(root or REPO_ROOT) / VARIATION_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    entry = record.get(f"{chapter}__{table}")
    if entry is None:
        return FALLBACK_TOLERANCE, None
    if rows is None:
        return float(entry["tolerance"]), entry
    per_row = [m.get("rows") for m in entry["measurements"]]
    # a measurement without per-row numbers, or without one of these rows: the table's tolerance
    if any(r is None or any(label not in r for label in rows) for r in per_row):
        return float(entry["tolerance"]), entry
    return tolerance_from(r[label] for r in per_row for label in rows), entry


# the fields that name a row, in order of preference; a table with none of them is named by its
# first text field
LABEL_FIELDS = ("regime", "method")


def row_label(row: dict) -> str:
    """A row's name in a results table: its ``regime`` (premise tables), else its ``method``, else
    its first text field (``query``…).

    Named fields, not the first one, because a notebook's metadata stores a record's fields in
    alphabetical order: a premise record read back from a committed chapter starts with
    ``ablation``, which many of its rows share.
    """
    for field in LABEL_FIELDS:
        if isinstance(row.get(field), str):
            return row[field]
    return next((str(v) for v in row.values() if isinstance(v, str)), "")


def row_differences(committed: list[dict], rerun: list[dict]) -> dict[str, float]:
    """Row label → the largest absolute difference between the numbers of that row in two tables."""
    if len(committed) != len(rerun):
        raise ValueError(
            f"{len(committed)} rows committed, {len(rerun)} produced: not the same table"
        )
    out = {}
    for a, b in zip(committed, rerun, strict=True):
        worst = 0.0
        for k, x in a.items():
            y = b.get(k)
            if (
                isinstance(x, (int, float))
                and isinstance(y, (int, float))
                and not isinstance(x, bool)
            ):
                if math.isfinite(x) and math.isfinite(y):
                    worst = max(worst, abs(x - y))
        label = row_label(a)
        out[label] = max(out.get(label, 0.0), worst)
    return out


def largest_difference(committed: list[dict], rerun: list[dict]) -> float:
    """The largest absolute difference between the numbers of two tables of the same shape."""
    return max(row_differences(committed, rerun).values(), default=0.0)


def committed_tables(notebook: str | Path) -> dict[str, dict]:
    """Table name → the payload :func:`save_results` left in a notebook's outputs (its metadata)."""
    import nbformat  # the book and test extras have it; the library proper does not need it

    nb = nbformat.read(Path(notebook), as_version=4)
    return {
        out["metadata"][METADATA_KEY]["table"]: out["metadata"][METADATA_KEY]
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("metadata", {}).get(METADATA_KEY)
    }


def _records(df) -> list[dict]:
    out = []
    for row in df.to_dict(orient="records"):
        # NaN (a cell with no value) becomes None: notebook metadata must be valid JSON
        out.append(
            {
                k: (
                    None
                    if isinstance(v, float) and not math.isfinite(v)
                    else round(v, 6)
                    if isinstance(v, float)
                    else v
                )
                for k, v in row.items()
            }
        )
    return out


def save_results(
    df,
    chapter: str,
    table: str = "results",
    atol: float | str = 1e-6,
    results_dir: str | Path | None = None,
    display_table: bool = True,
):
    """Save and show a chapter's results table.

    Args:
        df: a pandas DataFrame (one row per method/pair; numeric metric columns).
        chapter: the chapter's file stem (``"06_metrics"``).
        table: a name when a chapter has more than one table.
        atol: absolute tolerance for re-runs. 1e-6 for computations without training (they are
            deterministic). ``"measured"`` for trained tables: the tolerance is the one
            ``scripts/measure_variation.py`` measured (``book/results/variation.json``), read again
            when the re-run is checked, and a line under the table states it and how it was
            measured.
        results_dir: default: the profile's results directory.
    Returns:
        the path of the JSON file.
    """
    results_dir = Path(results_dir) if results_dir is not None else default_results_dir()
    results_dir.mkdir(parents=True, exist_ok=True)
    note = None
    if atol == "measured":
        tolerance, entry = measured_tolerance(chapter, table)
        if entry is None:
            note = (
                f"re-run tolerance: {tolerance:g} (not measured yet: run "
                f"python scripts/measure_variation.py {chapter})"
            )
        else:
            runs = ", ".join(sorted({m["variant"] for m in entry["measurements"]}))
            worst = max(m["max_abs_diff"] for m in entry["measurements"])
            note = (
                f"re-run tolerance: ±{tolerance:g}, twice the largest difference ({worst:.4f}) "
                "measured between "
                f"this table and re-runs under {runs} (scripts/measure_variation.py)"
            )
    elif not isinstance(atol, (int, float)) or isinstance(atol, bool) or not atol >= 0:
        raise ValueError(f"atol must be a non-negative number or 'measured', got {atol!r}")
    payload = {"chapter": chapter, "table": table, "atol": atol, "records": _records(df)}
    path = results_dir / f"{chapter}__{table}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    if display_table:
        try:
            from IPython.display import display

            # a plain (rounded) DataFrame: its text form is stable from run to run, unlike a
            # Styler's
            display(df.round(4), metadata={METADATA_KEY: payload})
        except ImportError:  # plain Python: print it
            print(df.to_string(index=False))
        if note:
            print(note)
    return path


def compare_records(committed: list[dict], rerun: list[dict], atol: float) -> list[str]:
    """The differences between two tables beyond ``atol`` (numbers) or at all (text), as
    messages."""
    problems = []
    if len(committed) != len(rerun):
        return [f"{len(committed)} rows committed, {len(rerun)} produced"]
    for i, (a, b) in enumerate(zip(committed, rerun, strict=True)):
        if set(a) != set(b):
            problems.append(f"row {i}: columns differ: {sorted(set(a) ^ set(b))}")
            continue
        for k in a:
            x, y = a[k], b[k]
            if (
                isinstance(x, (int, float))
                and isinstance(y, (int, float))
                and not isinstance(x, bool)
            ):
                if not (math.isclose(x, y, abs_tol=atol) or (math.isnan(x) and math.isnan(y))):
                    problems.append(
                        f"row {i} ({a.get('method', a.get('query', ''))}), {k}: committed {x}, "
                        f"re-run {y}"
                    )
            elif x != y:
                problems.append(f"row {i}, {k}: committed {x!r}, re-run {y!r}")
    return problems
