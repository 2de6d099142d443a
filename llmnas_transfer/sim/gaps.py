"""Transfer-gap and regime definitions, shared by every layer.

Gap definitions (``v = V_s / V_ref``; ``V`` the final validity rate, ``A`` the pooled mean
first-epoch accuracy of valid candidates, ``c`` a setting's chance level and
``N = (A - c) / (1 - c)`` its chance-normalised accuracy; ``a = N_s / N_ref``)::

    validity_gap       = 1 - v
    accuracy_gap       = 1 - a                (chance-normalised)
    combined_gap       = 1 - v a              (relative drop in accuracy yield per candidate)
    validity_component = validity_gap (1 + a) / 2
    accuracy_component = accuracy_gap (1 + v) / 2
    raw_accuracy_gap   = 1 - A_s / A_ref      (the named alternative: accuracy as measured)

The two components are the Shapley split of the combined gap, so they add up to it
exactly: ``(1-v)(1+a)/2 + (1-a)(1+v)/2 = 1 - v a``. Normalising by chance keeps a 2-class
task from looking better than CIFAR-10 by guessing; with both chance levels 0 the
accuracy gap is the raw one. The trend gap of a setting compares its refinement gain with
the reference's: ``trend_gap = 1 - gain_s / gain_ref`` (:func:`trend_gap`).

Example
-------
>>> g = gap_components(0.5, 0.8, 0.765, 0.30)
>>> round(g["validity_component"] + g["accuracy_component"] - g["combined_gap"], 12)
0.0
>>> g = gap_components(0.7, 0.55, 0.7, 0.37, chance_s=0.5, chance_ref=0.1)
>>> bool(g["accuracy_gap"] > 0 > g["raw_accuracy_gap"])
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmnas_transfer.errors import UserInputError

DEFAULT_THRESHOLDS: tuple[float, float] = (0.10, 0.20)
DEFAULT_REFERENCE: tuple[str, str] = ("cifar-10", "classification")
REGIMES: tuple[str, str, str] = ("easy", "moderate", "hard")
#: the trend gap is "small" (the trend carries over) when its magnitude is below this
TREND_TOLERANCE: float = 0.1


def chance_normalised(accuracy: Any, chance: Any = 0.0) -> Any:
    """``(A - c) / (1 - c)``: 0 at guessing, 1 at perfect accuracy.

    Example
    -------
    >>> chance_normalised(0.75, 0.5)
    0.5
    """
    return (accuracy - chance) / (1.0 - chance)


def gap_components(v_s: Any, a_s: Any, v_ref: Any, a_ref: Any, *, chance_s: Any = 0.0,
                   chance_ref: Any = 0.0) -> dict[str, Any]:
    """Transfer-gap components; works elementwise on floats, NumPy or JAX arrays.

    ``a_s`` and ``a_ref`` are accuracies; ``chance_s`` and ``chance_ref`` their chance
    levels (0 for metrics without one), by which the accuracy gap is normalised.

    Example
    -------
    >>> round(gap_components(0.4, 0.3, 0.8, 0.3)["combined_gap"], 6)
    0.5
    """
    v = v_s / v_ref
    a = chance_normalised(a_s, chance_s) / chance_normalised(a_ref, chance_ref)
    return {
        "validity_gap": 1.0 - v,
        "accuracy_gap": 1.0 - a,
        "combined_gap": 1.0 - v * a,
        "validity_component": (1.0 - v) * (1.0 + a) / 2.0,
        "accuracy_component": (1.0 - a) * (1.0 + v) / 2.0,
        "raw_accuracy_gap": 1.0 - a_s / a_ref,
    }


def trend_gap(gain_s: Any, gain_ref: Any) -> Any:
    """``1 - gain_s / gain_ref``: 0 when a setting gains what the reference gains.

    A gain is the expected validity at the last observed iteration minus that at
    iteration 1; a trend gap of 0.6 means the setting gains 40% of the reference's gain.

    Example
    -------
    >>> round(trend_gap(0.1, 0.25), 6)
    0.6
    """
    return 1.0 - gain_s / gain_ref


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, float]:
    """Validate regime thresholds ``(easy_below, hard_above)``.

    Example
    -------
    >>> check_thresholds([0.1, 0.2])
    (0.1, 0.2)
    """
    if len(thresholds) != 2:
        raise UserInputError("regime thresholds must be two numbers: easy-below, hard-above")
    lo, hi = float(thresholds[0]), float(thresholds[1])
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise UserInputError(f"regime thresholds must satisfy easy <= hard, got {lo}, {hi}")
    return lo, hi


def classify_regime(gap: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Any:
    """``easy`` below the first threshold, ``hard`` above the second, else ``moderate``.

    Example
    -------
    >>> classify_regime(0.05), classify_regime(0.15), classify_regime(0.3)
    ('easy', 'moderate', 'hard')
    """
    lo, hi = check_thresholds(thresholds)
    g = np.asarray(gap, dtype=float)
    out = np.where(g < lo, "easy", np.where(g > hi, "hard", "moderate"))
    return out.item() if out.ndim == 0 else out
