"""Transfer-gap and regime definitions, shared by every layer.

Gap definitions (``v = V_s / V_ref`` and ``a = A_s / A_ref``, with ``V`` the final
validity rate and ``A`` the pooled mean first-epoch accuracy of valid candidates)::

    validity_gap       = 1 - v
    accuracy_gap       = 1 - a
    combined_gap       = 1 - v a        (relative drop in accuracy yield per candidate)
    validity_component = validity_gap (1 + a) / 2
    accuracy_component = accuracy_gap (1 + v) / 2

The two components are the Shapley split of the combined gap, so they add up to it
exactly: ``(1-v)(1+a)/2 + (1-a)(1+v)/2 = 1 - v a``.

Example
-------
>>> g = gap_components(0.5, 0.8, 0.765, 0.30)
>>> round(g["validity_component"] + g["accuracy_component"] - g["combined_gap"], 12)
0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmnas_transfer.errors import UserInputError

DEFAULT_THRESHOLDS: tuple[float, float] = (0.10, 0.20)
DEFAULT_REFERENCE: tuple[str, str] = ("cifar-10", "classification")
REGIMES: tuple[str, str, str] = ("easy", "moderate", "hard")


def gap_components(v_s: Any, a_s: Any, v_ref: Any, a_ref: Any) -> dict[str, Any]:
    """Transfer-gap components; works elementwise on floats, NumPy or JAX arrays.

    Example
    -------
    >>> round(gap_components(0.4, 0.3, 0.8, 0.3)["combined_gap"], 6)
    0.5
    """
    v = v_s / v_ref
    a = a_s / a_ref
    return {
        "validity_gap": 1.0 - v,
        "accuracy_gap": 1.0 - a,
        "combined_gap": 1.0 - v * a,
        "validity_component": (1.0 - v) * (1.0 + a) / 2.0,
        "accuracy_component": (1.0 - a) * (1.0 + v) / 2.0,
    }


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
