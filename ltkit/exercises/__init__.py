"""Exercises with checked answers: instant feedback in the notebooks, solutions to reveal, answers kept right by CI.

Each notebook's exercises live in one module here (``nb01``, ``nb02``, ...), registered
with :func:`exercise`.  In a notebook::

    from ltkit import exercises
    exercises.show("02.1")            # the question
    exercises.check("02.1", answer)   # ✓ or ✗ with what is wrong and a hint, never just "wrong"
    exercises.solution("02.1")        # the worked solution, when you want it

``tests/test_exercises.py`` runs every exercise's own solution through its check, so
the answers stay right as the kit changes, and checks that a wrong answer gets an
explanation.
"""

from __future__ import annotations

import html
import importlib
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["Feedback", "Exercise", "exercise", "check", "show", "solution", "all_exercises", "right", "wrong",
           "close_to", "same_numbers", "is_number", "numbers_in"]

NOTEBOOK_MODULES = ("nb01", "nb02", "nb03", "nb04", "nb05", "nb06", "nb07", "nb08")


@dataclass(frozen=True)
class Feedback:
    """The verdict on an answer: ``ok`` and a sentence that explains it."""

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.message}"

    def _repr_html_(self) -> str:
        colour, mark = ("#1b7f3b", "✓ Right.") if self.ok else ("#b3261e", "✗ Not yet.")
        return (f'<div style="border-left:4px solid {colour};padding:4px 10px;margin:4px 0">'
                f'<b style="color:{colour}">{mark}</b> {html.escape(self.message)}</div>')


def right(message: str) -> Feedback:
    return Feedback(True, message)


def wrong(message: str) -> Feedback:
    return Feedback(False, message)


@dataclass(frozen=True)
class Exercise:
    """One exercise: its question, its check, a worked solution and a function that computes a right answer."""

    id: str
    question: str
    check: Callable[[Any], Feedback]
    solution: str
    answer: Callable[[], Any]
    kind: str = "predict, then run"  # or "compute", "change the code"


_REGISTRY: dict[str, Exercise] = {}


def exercise(id: str, question: str, solution: str, answer: Callable[[], Any],
             kind: str = "predict, then run") -> Callable[[Callable[[Any], Feedback]], Callable[[Any], Feedback]]:
    """Decorator: register a check function as exercise ``id`` (``"02.1"``: notebook 2, exercise 1)."""

    def register(check_fn: Callable[[Any], Feedback]) -> Callable[[Any], Feedback]:
        _REGISTRY[id] = Exercise(id, question, check_fn, solution, answer, kind)
        return check_fn

    return register


def _load() -> None:
    for name in NOTEBOOK_MODULES:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise


def all_exercises() -> list[Exercise]:
    """Every registered exercise, in id order."""
    _load()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _get(id: str) -> Exercise:
    _load()
    if id not in _REGISTRY:
        raise KeyError(f"no exercise {id!r}; there are: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[id]


def check(id: str, answer: Any) -> Feedback:
    """Check ``answer`` for exercise ``id``; an answer of the wrong kind is explained, not an error."""
    if answer is None or answer is Ellipsis:
        return wrong("replace the ... with your answer, then run the cell again.")
    try:
        return _get(id).check(answer)
    except (TypeError, ValueError, IndexError, KeyError) as err:
        return wrong(f"the answer could not be read ({err}); see the question for what to give.")


class _Markdown:
    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        return self.text


def show(id: str) -> _Markdown:
    """The question of exercise ``id`` (as Markdown in a notebook)."""
    ex = _get(id)
    return _Markdown(f"**Exercise {ex.id}** ({ex.kind}). {ex.question}")


def solution(id: str) -> _Markdown:
    """The worked solution of exercise ``id``."""
    ex = _get(id)
    return _Markdown(f"**Solution {ex.id}.** {ex.solution}")


# =========================================================================== reading answers
def is_number(value: Any) -> bool:
    """A real number (``True`` / ``False`` are not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def numbers_in(answer: Any) -> list[float] | None:
    """``answer`` as a list of finite floats, or ``None`` when it is not a sequence of numbers."""
    if isinstance(answer, (str, bytes, dict)) or not hasattr(answer, "__iter__"):
        return None
    try:
        values = [float(v) for v in answer]
    except (TypeError, ValueError):
        return None
    return values if all(math.isfinite(v) for v in values) else None


# =========================================================================== small comparisons
def close_to(answer: Any, truth: float, *, rel: float = 0.02, abs_tol: float = 1e-9, what: str = "the value",
             hint: str = "") -> Feedback:
    """A number within ``rel`` of ``truth``; otherwise says whether it is too high or too low, and the hint."""
    value = float(answer)
    if math.isclose(value, truth, rel_tol=rel, abs_tol=abs_tol):
        return right(f"{what} is {truth:.4g}.")
    direction = "too high" if value > truth else "too low"
    return wrong(f"{what} {value:.4g} is {direction}. {hint}".strip())


def same_numbers(answer: Sequence[float], truth: Sequence[float], *, rel: float = 1e-6, what: str = "the values",
                 hint: str = "") -> Feedback:
    """A sequence equal to ``truth`` (up to ``rel``); otherwise names the first entry that differs."""
    values, expected = np.asarray(list(answer), dtype=float), np.asarray(list(truth), dtype=float)
    if values.shape != expected.shape:
        return wrong(f"{what} should have {expected.size} entries, you gave {values.size}. {hint}".strip())
    off = np.nonzero(~np.isclose(values, expected, rtol=rel, atol=1e-12))[0]
    if off.size == 0:
        return right(f"{what}: {np.array2string(expected, precision=4)}.")
    i = int(off[0])
    return wrong(f"entry {i} of {what} is {values[i]:.4g} but should be {expected[i]:.4g}. {hint}".strip())
