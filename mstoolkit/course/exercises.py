"""Small helpers the notebooks share: profile-dependent sizes and exercise feedback.

Notebook exercises follow one pattern: a cell tagged ``exercise`` holds a stub
that raises ``NotImplementedError``; the next cell, tagged ``solution``, holds
the answer; an untagged cell after it calls a ``check_*`` function from the
package, which prints feedback. Student versions drop the ``solution`` cells.

Introduced in notebook 01 (data loading).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["PROFILES", "pick", "check_function", "check_value", "ExerciseError"]

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
