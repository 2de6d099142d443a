"""Argument validators shared by every layer and the command line (the one set).

Each returns the cleaned value or raises :class:`~llmnas_transfer.errors.UserInputError`
with a one-line message that names the argument.

Example
-------
>>> check_int("trials", 15, 1, 1000)
15
>>> check_float("ci", 0.94, 0.0, 1.0, low_open=True, high_open=True)
0.94
>>> check_choice("method", "nuts", ("nuts", "svi"))
'nuts'
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from numbers import Integral, Real

from llmnas_transfer.errors import UserInputError


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    """``in [a, b)``, ``>= a`` or ``<= b``: the words for a range ("" when unbounded)."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_num(high)}"
    return ""


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """An integer (not a bool) in ``[low, high]``; either bound may be ``None``.

    Example
    -------
    >>> check_int("draws", 1000, 1)
    1000
    """
    if not _is_int(value) or (low is not None and value < low) or (
            high is not None and value > high):
        if low == 0 and high is None:
            want = "a non-negative integer"
        else:
            want = "an integer" + ("" if low is None and high is None else " ")
            want += _bounds(low, high, False, False)
        raise UserInputError(f"{name} must be {want}, got {value!r}")
    return int(value)


def check_size(name: str, value, upper: int) -> int:
    """A count in ``[1, upper]``; a count above ``upper`` is called absurdly large.

    Example
    -------
    >>> check_size("num_trials", 15, 10**9)
    15
    """
    if not _is_int(value):
        raise UserInputError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise UserInputError(f"{name} must be at least 1, got {value}")
    if value > upper:
        raise UserInputError(f"{name}={value} is absurdly large (limit {upper})")
    return int(value)


def check_float(name: str, value, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number between ``low`` and ``high`` (open or closed ends).

    Example
    -------
    >>> check_float("target_accept", 0.8, 0.5, 1.0, high_open=True)
    0.8
    """
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        want = _bounds(low, high, low_open, high_open) or "a finite number"
        raise UserInputError(f"{name} must be {want}, got {value!r}")
    return float(value)


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """One of ``choices``.

    Example
    -------
    >>> check_choice("format", "csv", ("table", "csv", "json"))
    'csv'
    """
    if value not in choices:
        raise UserInputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_levels(name: str, levels: str | Sequence[float | str]) -> tuple[tuple[str, float], ...]:
    """Probability levels in (0, 1), from ``"0.05,0.5"`` or a sequence, as (label, value)
    pairs; a label is the level as given (a number is written with ``format(x, "g")``).

    Example
    -------
    >>> check_levels("quantiles", "0.05,0.50")
    (('0.05', 0.05), ('0.50', 0.5))
    """
    items = levels.split(",") if isinstance(levels, str) else list(levels)
    if not items:
        raise UserInputError(f"{name} must name at least one level in (0, 1)")
    out: list[tuple[str, float]] = []
    for item in items:
        if isinstance(item, str):
            label = item.strip()
            try:
                value = float(label)
            except ValueError:
                raise UserInputError(
                    f"{name} must be numbers in (0, 1) separated by commas, got {item!r}"
                ) from None
        else:
            value = item
            label = format(item, "g") if isinstance(item, Real) else str(item)
        value = check_float(name, value, 0.0, 1.0, low_open=True, high_open=True)
        if any(v == value for _, v in out):
            raise UserInputError(f"{name} lists the level {label} twice")
        out.append((label, value))
    return tuple(out)


def closest_name(name: str, known: Sequence[str]) -> str | None:
    """The name in ``known`` closest to ``name`` (difflib ratio >= 0.75), or ``None``.

    Example
    -------
    >>> closest_name("cifar10", ["cifar-10", "svhn"]), closest_name("esc-50", ["svhn"])
    ('cifar-10', None)
    """
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return close[0] if close else None


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``known`` to ``name``, or ``""``.

    Example
    -------
    >>> did_you_mean("cifar10", ["cifar-10", "svhn"])
    "; did you mean 'cifar-10'?"
    """
    close = closest_name(name, known)
    return f"; did you mean {close!r}?" if close else ""
