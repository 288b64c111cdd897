"""Exercises: the verdicts of `attempt`, and a book whose exercises are open with one hidden solution each."""
import ast
import re
from pathlib import Path

import nbformat
import pytest

from cdrlib.exercises import attempt

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
STUB = re.compile(r"#\s*your (code|answer|answers|check|formula|ranking) here", re.IGNORECASE)


def check_is_two(answer):
    assert answer == 2, "not two"


def not_written(*args):
    raise NotImplementedError


@pytest.mark.parametrize("answer,passes,verdict", [
    (None, False, "not attempted yet"), (not_written, False, "not attempted yet"),
    (3, False, "not quite — not two"), (2, True, "correct")])
def test_attempt_verdicts(capsys, answer, passes, verdict):
    check = (lambda fn: check_is_two(fn())) if callable(answer) else check_is_two
    assert attempt(check, answer, "ex") is passes
    assert capsys.readouterr().out.startswith(f"ex: {verdict}")   # (pytest appends its own explanation)


def test_attempt_lets_other_errors_through():
    def broken(answer):
        raise TypeError("a bug in the check itself")

    with pytest.raises(TypeError):
        attempt(broken, 1)


def is_open(source: str) -> bool:
    """An open exercise cell: only functions whose body is a docstring and ``raise NotImplementedError``,
    and names set to ``None``."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            if not (len(body) == 1 and isinstance(body[0], ast.Raise)):
                return False
        elif isinstance(node, ast.Assign):
            if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                return False
        else:
            return False
    return True


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_exercises_are_open_and_solutions_hidden(path):
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    stubs = [c for c in cells if STUB.search(c.source)]
    for c in stubs:
        assert is_open(c.source), f"{path.name}: an exercise cell ships more than a stub:\n{c.source}"
    solutions = [c for c in cells if c.source.startswith("# one solution")]
    for c in solutions:
        assert "hide-cell" in c.metadata.get("tags", []), f"{path.name}: a solution is not collapsed:\n{c.source}"
        assert re.search(r"assert attempt\(", c.source), f"{path.name}: a solution that is not checked:\n{c.source}"


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_committed_checks_say_not_yet_and_solutions_pass(path):
    """As committed (stubs unfilled), every check reports "not attempted yet" and every solution "correct"."""
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    printed = lambda c: "".join(o.get("text", "") for o in c.get("outputs", []) if o.get("output_type") == "stream")
    for c in cells:
        if re.search(r"^attempt\(", c.source, re.MULTILINE):
            assert "not attempted yet" in printed(c), f"{path.name}: a check that does not say 'not yet':\n{c.source}"
        if c.source.startswith("# one solution"):
            assert ": correct" in printed(c), f"{path.name}: a solution that did not pass:\n{c.source}"
