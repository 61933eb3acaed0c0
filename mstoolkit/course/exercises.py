"""Small helpers the notebooks share: profile-dependent sizes and exercise feedback.

Notebook exercises follow one pattern: a cell tagged ``exercise`` holds a stub
that raises ``NotImplementedError``; the next cell, tagged ``solution``, holds
the answer; an untagged cell after it calls a ``check_*`` function from the
package, which prints feedback. Student versions drop the ``solution`` cells.

So that a student's Run-All still reaches the end, the check runs inside
:func:`fallback`: while the stub still raises ``NotImplementedError``, the
notebook goes on with the package's (or a library's) answer and says so::

    with exercises.fallback(globals(), my_dice=metrics.dice):
        exercises.check_function("my_dice", my_dice, metrics.dice, cases)

A wrong answer (:class:`ExerciseError`) is not hidden: it stops the run, as it should.

Predict-then-run exercises ask for a number before the code that measures it
runs; :func:`compare_prediction` sets the guess next to the measurement.

Introduced in notebook 01 (data loading).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from typing import Any, Callable

import numpy as np

__all__ = ["PROFILES", "pick", "check_function", "check_value", "ExerciseError", "fallback", "compare_prediction"]

#: The run profiles every notebook understands.
PROFILES = ("quick", "workshop", "full")


class ExerciseError(AssertionError):
    """An exercise answer is not right yet; the message says what to look at."""


def pick(profile: str, *, quick: Any, workshop: Any, full: Any) -> Any:
    """Return the value for ``profile``.

    ``quick`` is the CI smoke run (seconds), ``workshop`` fits a 2-core CPU
    (Binder), ``full`` is for a GPU.

    >>> pick("quick", quick=2, workshop=6, full=20)
    2
    """
    values = {"quick": quick, "workshop": workshop, "full": full}
    if profile not in values:
        raise ValueError(f"'PROFILE' must be one of {', '.join(PROFILES)}, got {profile!r}.")
    return values[profile]


def check_value(name: str, answer: Any, expected: Any, *, rtol: float = 1e-4, atol: float = 1e-6, hint: str = "") -> None:
    """Compare an answer with the expected value and print feedback; raise if wrong."""
    if answer is None or expected is None:  # "no answer" is an answer too (e.g. a series with no role)
        ok = answer is expected
    else:
        try:
            ok = bool(np.allclose(np.asarray(answer, dtype=float), np.asarray(expected, dtype=float), rtol=rtol, atol=atol))
        except (TypeError, ValueError):
            ok = answer == expected
    if not ok:
        raise ExerciseError(f"{name}: got {answer!r}, expected {expected!r}. {hint}".strip())
    print(f"✓ {name}: correct ({answer!r}).")


def check_function(name: str, candidate: Callable, reference: Callable, cases: list[tuple], *, rtol: float = 1e-4, atol: float = 1e-6, hint: str = "") -> None:
    """Call ``candidate`` and ``reference`` on each argument tuple and compare results."""
    for i, args in enumerate(cases, 1):
        got, want = candidate(*args), reference(*args)
        try:
            check_value(f"{name} (test {i})", got, want, rtol=rtol, atol=atol, hint=hint)
        except ExerciseError:
            raise
    print(f"✓ {name}: all {len(cases)} tests pass.")


@contextlib.contextmanager
def fallback(namespace: MutableMapping[str, Any], **solutions: Any) -> Iterator[None]:
    """Run an exercise's check; if the exercise is not written yet, carry on with ``solutions``.

    ``namespace`` is the notebook's ``globals()``; each keyword names one of the student's
    functions (or values) and gives the answer to use instead. When the block raises
    ``NotImplementedError`` (the stub), those names are rebound to the solutions, a visible
    note says so, and the error is swallowed, so the cells after it run on a correct answer.
    Any other error (a wrong answer, :class:`ExerciseError`) propagates.

    >>> def my_double(x):
    ...     raise NotImplementedError("your code here")
    >>> space = {"my_double": my_double}
    >>> with fallback(space, my_double=lambda x: 2 * x):
    ...     check_function("my_double", space["my_double"], lambda x: 2 * x, [(1,)])
    ⚠ my_double is not written yet (NotImplementedError): the notebook goes on with the package's answer. Come back to it!
    >>> space["my_double"](4)
    8
    """
    if not solutions:
        raise TypeError("fallback() needs at least one name=solution to fall back on.")
    try:
        yield
    except NotImplementedError:
        namespace.update(solutions)
        names = ", ".join(solutions)
        print(f"⚠ {names} {'is' if len(solutions) == 1 else 'are'} not written yet (NotImplementedError): "
              "the notebook goes on with the package's answer. Come back to it!")


def compare_prediction(name: str, prediction: Any, measured: float, *, tolerance: float, unit: str = "") -> bool | None:
    """Set a student's prediction next to the measured value; return whether it was within ``tolerance``.

    ``prediction`` is ``None`` while the student has not written one (a student run goes on;
    the note says what to do). Nothing is graded: the point is to commit to a number before
    seeing it, then explain the gap.

    >>> compare_prediction("Dice after training", 0.5, 0.62, tolerance=0.1)
    Dice after training: you predicted 0.5, measured 0.62 (off by 0.12, more than 0.1). Why?
    False
    >>> compare_prediction("Dice after training", None, 0.62, tolerance=0.1)
    Dice after training: measured 0.62. Write your prediction in the cell above before you run it next time.
    """
    shown = f"{measured:.3g}{unit}"
    if prediction is None:
        print(f"{name}: measured {shown}. Write your prediction in the cell above before you run it next time.")
        return None
    try:
        guess = float(prediction)
    except (TypeError, ValueError):
        raise ExerciseError(f"{name}: the prediction must be a number, got {prediction!r}.") from None
    gap = abs(guess - float(measured))
    verdict = f"within {tolerance:g}{unit}" if gap <= tolerance else f"more than {tolerance:g}{unit}"
    print(f"{name}: you predicted {guess:g}{unit}, measured {shown} (off by {gap:.3g}{unit}, {verdict})."
          + ("" if gap <= tolerance else " Why?"))
    return gap <= tolerance
