"""The chapters' exercises: check a reader's answer, and say plainly when there is none yet.

Each exercise in the book is three cells: an open cell the reader fills in (a function that raises
``NotImplementedError`` or an answer set to ``None``), a check cell that calls :func:`attempt`, and
one solution, collapsed in the rendered book, that passes the same check — so the book's tests
prove every solution right without the reader's cell being filled in for them.
"""

from __future__ import annotations

from typing import Any, Callable


def attempt(check: Callable[[Any], None], answer: Any, name: str = "exercise") -> bool:
    """Run ``check(answer)`` and print the verdict.

    Args:
        check: raises ``AssertionError`` (with a message that helps) when ``answer`` is wrong.
        answer: the reader's answer: a value, or a function the check calls. ``None``, or a function
            that raises ``NotImplementedError``, means "not attempted yet".
        name: how the printed verdict names the exercise.
    Returns:
        True when the answer passes the check.
    """
    if answer is None:
        print(f"{name}: not attempted yet")
        return False
    try:
        check(answer)
    except NotImplementedError:
        print(f"{name}: not attempted yet")
        return False
    except AssertionError as err:
        print(f"{name}: not quite — {err}" if str(err) else f"{name}: not quite")
        return False
    print(f"{name}: correct")
    return True
