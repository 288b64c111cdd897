"""Results tables: measured tolerances, per-row differences, the tolerance rule, save_results' checks."""
import json

import pandas as pd
import pytest

from cdrlib.results import (FALLBACK_TOLERANCE, VARIATION_FILE, compare_records, largest_difference,
                            measured_tolerance, row_differences, row_label, save_results,
                            tolerance_from)

A = [{"method": "x", "m": 0.10, "n": 0.50}, {"method": "y", "m": 0.20, "n": 0.30}, {"method": "x", "m": 0.0, "n": 1.0}]
B = [{"method": "x", "m": 0.11, "n": 0.50}, {"method": "y", "m": 0.20, "n": 0.27}, {"method": "x", "m": 0.0, "n": 0.98}]


def test_differences_by_row_and_overall():
    rows = row_differences(A, B)
    assert rows == pytest.approx({"x": 0.02, "y": 0.03})     # two "x" rows: the larger of the two
    assert largest_difference(A, B) == pytest.approx(0.03)
    with pytest.raises(ValueError, match="not the same table"):
        row_differences(A, B[:2])


def test_tolerance_rule():
    assert tolerance_from([]) == FALLBACK_TOLERANCE == 1e-3
    assert tolerance_from([0.0002]) == 1e-3                  # twice is below the floor
    assert tolerance_from([0.004084]) == pytest.approx(0.0082)   # 0.008168 rounded up to two digits
    assert tolerance_from([0.0104, 0.0085]) == pytest.approx(0.021)
    assert tolerance_from([0.05]) == pytest.approx(0.1)


def test_measured_tolerance_per_table_and_per_row(tmp_path):
    path = tmp_path / VARIATION_FILE
    path.parent.mkdir(parents=True)
    entry = {"tolerance": 0.06, "measurements": [{"variant": "v1", "max_abs_diff": 0.03, "rows": {"x": 0.001, "y": 0.03}},
                                                 {"variant": "v2", "max_abs_diff": 0.02, "rows": {"x": 0.004, "y": 0.02}}]}
    path.write_text(json.dumps({"ch__t": entry}))
    assert measured_tolerance("ch", "t", root=tmp_path)[0] == 0.06
    assert measured_tolerance("ch", "t", rows=["x"], root=tmp_path)[0] == pytest.approx(0.008)
    assert measured_tolerance("ch", "t", rows=["x", "y"], root=tmp_path)[0] == pytest.approx(0.06)
    assert measured_tolerance("ch", "other", root=tmp_path) == (FALLBACK_TOLERANCE, None)
    entry["measurements"][1].pop("rows")                     # one measurement without rows: the table's
    path.write_text(json.dumps({"ch__t": entry}))
    assert measured_tolerance("ch", "t", rows=["x"], root=tmp_path)[0] == 0.06
    entry["measurements"][1]["rows"] = {"y": 0.02}           # one measurement without row x: the table's
    path.write_text(json.dumps({"ch__t": entry}))
    assert measured_tolerance("ch", "t", rows=["x"], root=tmp_path)[0] == 0.06
    assert measured_tolerance("ch", "t", rows=["y"], root=tmp_path)[0] == pytest.approx(0.06)


def test_row_labels_do_not_depend_on_the_order_of_fields():
    """A notebook stores a record's fields sorted: a premise row must keep its regime as its name."""
    premise = {"regime": "oracle", "premise": "purity", "method": "CW", "ablation": "IW", "gain": 0.1}
    assert row_label(premise) == row_label(dict(sorted(premise.items()))) == "oracle"
    method_row = {"method": "CW", "protocol": "heldout", "mAP@all": 0.2}
    assert row_label(dict(sorted(method_row.items()))) == "CW"
    assert row_label({"query": "sketch", "gallery": "twemoji"}) == "sketch"
    rows_a = [dict(sorted({**premise, "regime": r, "gain": g}.items())) for r, g in (("a", 0.1), ("b", 0.2))]
    rows_b = [{**premise, "regime": r, "gain": g} for r, g in (("a", 0.15), ("b", 0.2))]
    assert row_differences(rows_a, rows_b) == pytest.approx({"a": 0.05, "b": 0.0})


def test_save_results_rejects_a_bad_tolerance_and_states_a_measured_one(tmp_path, capsys):
    df = pd.DataFrame(A)
    with pytest.raises(ValueError, match="non-negative number or 'measured'"):
        save_results(df, "ch", "t", atol="guess", results_dir=tmp_path, display_table=False)
    with pytest.raises(ValueError, match="non-negative"):
        save_results(df, "ch", "t", atol=-1.0, results_dir=tmp_path, display_table=False)
    out = save_results(df, "ch_never_measured", "t", atol="measured", results_dir=tmp_path)
    assert json.loads(out.read_text())["atol"] == "measured"
    assert "not measured yet" in capsys.readouterr().out


def test_compare_records_reports_numbers_beyond_tolerance_and_any_text_change():
    assert compare_records(A, A, 0.0) == []
    problems = compare_records(A, B, 0.025)
    assert len(problems) == 1 and "n" in problems[0]         # y's n moved 0.03 > 0.025; x's moved ≤ 0.02
    assert compare_records(A, [{**A[0], "method": "z"}, *A[1:]], 1.0) == ["row 0, method: committed 'x', re-run 'z'"]
