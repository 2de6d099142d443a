"""Tables of a simulated study: validity trajectories, accuracy and novelty, transfer gaps.

The gap and regime definitions live in :mod:`llmnas_transfer.sim.gaps`. :func:`write_csv`
writes any table as CSV through the one atomic writer (:mod:`llmnas_transfer.io.atomic`).

Example
-------
>>> from llmnas_transfer import simulate
>>> r = simulate(0, datasets="cifar-10,stl-10", tasks="classification", num_trials=3,
...              num_iterations=2, num_candidates=4)
>>> list(gaps_table(r)["dataset"])
['cifar-10', 'stl-10']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.io.atomic import atomic_write
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.gaps import (
    DEFAULT_REFERENCE,
    DEFAULT_THRESHOLDS,
    check_thresholds,
    classify_regime,
    gap_components,
    trend_gap,
)
from llmnas_transfer.validate import check_float


def _resolve_iteration(ds: xr.Dataset, iteration: int | None) -> int:
    its = ds["iteration"].values
    if iteration is None:
        return int(its[-1])
    if int(iteration) not in set(its.tolist()):
        raise UserInputError(f"iteration {iteration} not simulated (1..{int(its[-1])})")
    return int(iteration)


def _check_reference(ds: xr.Dataset, reference: Sequence[str]) -> tuple[str, str]:
    if len(reference) != 2:
        raise UserInputError("reference must be (dataset, task)")
    d, t = reference[0].lower(), reference[1].lower()
    if d not in ds["dataset"].values or t not in ds["task"].values:
        raise UserInputError(
            f"reference setting {d}:{t} is not in the results; simulate it too "
            f"(datasets: {', '.join(ds['dataset'].values)}; tasks: {', '.join(ds['task'].values)})"
        )
    return d, t


def validity_table(ds: xr.Dataset, ci: float = 0.95) -> pd.DataFrame:
    """Validity rate per (dataset, task, iteration): mean over trials, MC SE and interval.

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10", tasks="classification", num_trials=5,
    ...              num_iterations=2, num_candidates=10)
    >>> list(validity_table(r).columns)[:6]
    ['dataset', 'task', 'iteration', 'validity_mean', 'validity_se', 'n_trials']
    """
    from scipy.stats import norm

    ci = check_float("ci", ci, 0.0, 1.0, low_open=True, high_open=True)
    rate = ds["validity_rate"]
    n = rate.sizes["trial"]
    mean = rate.mean("trial")
    se = rate.std("trial", ddof=1) / np.sqrt(n) if n > 1 else xr.full_like(mean, np.nan)
    z = norm.ppf(0.5 + ci / 2)
    df = xr.Dataset({"validity_mean": mean, "validity_se": se}).to_dataframe().reset_index()
    df["n_trials"] = n
    df["ci_low"] = (df["validity_mean"] - z * df["validity_se"]).clip(0, 1)
    df["ci_high"] = (df["validity_mean"] + z * df["validity_se"]).clip(0, 1)
    return df[["dataset", "task", "iteration", "validity_mean", "validity_se", "n_trials",
               "ci_low", "ci_high"]]


def pooled_accuracy(ds: xr.Dataset, iteration: int | None = None) -> xr.Dataset:
    """Pooled mean and sd of accuracy and novelty over valid candidates at one iteration."""
    it = _resolve_iteration(ds, iteration)
    s = ds.sel(iteration=it)
    n = s["n_valid"].sum("trial")
    nn = xr.where(n > 0, n, np.nan)
    out = {}
    for q in ("accuracy", "novelty"):
        m = s[f"{q}_sum"].sum("trial") / nn
        var = s[f"{q}_sumsq"].sum("trial") / nn - m**2
        out[f"{q}_mean"] = m
        out[f"{q}_sd"] = np.sqrt(var.clip(min=0))
    out["n_valid"] = n
    return xr.Dataset(out)


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: Sequence[float]):
    if weights.sum() <= 0:
        return [np.nan] * len(qs)
    cw = np.cumsum(weights) / weights.sum()
    return [float(values[min(np.searchsorted(cw, q), len(values) - 1)]) for q in qs]


def accuracy_table(
    ds: xr.Dataset, iteration: int | None = None, quantiles: Sequence[float] = (0.05, 0.5, 0.95)
) -> pd.DataFrame:
    """First-epoch accuracy of valid candidates per setting at one iteration (last default).

    Quantiles come from the per-candidate values when present, else from the histogram
    (bin centres, so to within half a bin width).
    """
    it = _resolve_iteration(ds, iteration)
    pooled = pooled_accuracy(ds, it)
    rows = []
    for d in ds["dataset"].values:
        for t in ds["task"].values:
            p = pooled.sel(dataset=d, task=t)
            if "accuracy" in ds:
                x = ds["accuracy"].sel(dataset=d, task=t, iteration=it).values.ravel()
                x = x[np.isfinite(x)]
                qv = np.quantile(x, quantiles).tolist() if x.size else [np.nan] * len(quantiles)
            elif "accuracy_hist" in ds:
                # the histogram bins chance-normalised accuracy; map centres to accuracies
                h = ds["accuracy_hist"].sel(dataset=d, task=t, iteration=it).sum("trial").values
                c = float(ds["chance"].sel(dataset=d, task=t)) if "chance" in ds else 0.0
                qv = _weighted_quantiles(c + (1.0 - c) * ds["accuracy_bin"].values, h,
                                         quantiles)
            else:
                qv = [np.nan] * len(quantiles)
            row = {"dataset": d, "task": t, "accuracy_mean": float(p["accuracy_mean"]),
                   "accuracy_sd": float(p["accuracy_sd"])}
            for q, v in zip(quantiles, qv, strict=True):
                row[f"accuracy_q{round(q * 100):02d}"] = v
            row["novelty_mean"] = float(p["novelty_mean"])
            row["novelty_sd"] = float(p["novelty_sd"])
            row["n_valid"] = int(p["n_valid"])
            rows.append(row)
    return pd.DataFrame(rows)


def _setting_summary(ds: xr.Dataset, it: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = ds.sel(iteration=it)
    nv = s["n_valid"].values.astype(float)  # (D, K, R)
    acc = s["accuracy_sum"].values.astype(float)
    ngen = float(ds["n_generated"].values)
    return nv, acc, np.full_like(nv, ngen)


def chance_levels(ds: xr.Dataset) -> np.ndarray:
    """Chance level of each (dataset, task) of simulated results, ``(D, K)``.

    Results carry it as the ``chance`` variable; results without it (written before
    accuracy was chance-aware) get it from the registry when the names are registered,
    else 0.

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="nlp-sst2", tasks="classification", num_trials=1,
    ...              num_iterations=1, num_candidates=2)
    >>> chance_levels(r).tolist()
    [[0.5]]
    """
    if "chance" in ds:
        return np.asarray(ds["chance"].transpose("dataset", "task").values, float)
    out = np.zeros((ds.sizes["dataset"], ds.sizes["task"]))
    for i, d in enumerate(ds["dataset"].values):
        for k, t in enumerate(ds["task"].values):
            try:
                out[i, k] = registry.chance_level(registry.get_dataset(str(d)),
                                                  registry.get_task(str(t)))
            except UserInputError:
                out[i, k] = 0.0
    return out


#: gap columns of :func:`gaps_table` (each with a ``_se`` column)
GAP_COLUMNS: tuple[str, ...] = ("validity_gap", "accuracy_gap", "combined_gap",
                                "validity_component", "accuracy_component",
                                "raw_accuracy_gap", "trend_gap")


def gaps_table(
    ds: xr.Dataset,
    *,
    reference: Sequence[str] = DEFAULT_REFERENCE,
    iteration: int | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    n_boot: int = 400,
    seed: int = 0,
) -> pd.DataFrame:
    """Transfer gaps of every setting relative to ``reference``, with bootstrap SEs.

    The accuracy gap compares chance-normalised accuracies (``raw_accuracy_gap`` compares
    the accuracies as measured; :mod:`llmnas_transfer.sim.gaps`). ``trend_gap`` compares
    the refinement gain, validity at ``iteration`` minus validity at iteration 1, with the
    reference's (:func:`~llmnas_transfer.sim.gaps.trend_gap`). The SEs resample trials
    independently within each setting (and the reference).

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10,svhn", tasks="classification", num_trials=4,
    ...              num_iterations=2, num_candidates=10)
    >>> gaps_table(r)["regime"].iloc[0]
    'easy'
    """
    thresholds = check_thresholds(thresholds)
    it = _resolve_iteration(ds, iteration)
    rd, rt = _check_reference(ds, reference)
    nv, acc, ngen = _setting_summary(ds, it)
    nv1 = ds["n_valid"].sel(iteration=int(ds["iteration"].values[0])).values.astype(float)
    dnames, tnames = list(ds["dataset"].values), list(ds["task"].values)
    chance = chance_levels(ds)
    R = nv.shape[-1]
    rng = np.random.default_rng(seed)
    i_ref, k_ref = dnames.index(rd), tnames.index(rt)

    def gaps(nv_, acc_, ng_, nv1_, ref):
        V = nv_.sum(-1) / ng_.sum(-1)
        gain = V - nv1_.sum(-1) / ng_.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            A = acc_.sum(-1) / nv_.sum(-1)
            g = gap_components(V, A, ref(V), ref(A), chance_s=chance,
                               chance_ref=chance[i_ref, k_ref])
            g["trend_gap"] = trend_gap(gain, ref(gain))
        return V, A, gain, g

    V, A, gain, g = gaps(nv, acc, ngen, nv1, lambda x: x[i_ref, k_ref])
    # bootstrap: independent resampling of trials per setting
    idx = rng.integers(0, R, size=(n_boot,) + nv.shape)  # (B, D, K, R)
    take = lambda x: np.take_along_axis(x[None], idx, -1)  # noqa: E731
    _, _, gainb, gb = gaps(take(nv), take(acc), take(ngen), take(nv1),
                           lambda x: x[:, i_ref, k_ref][:, None, None])
    rows = []
    for i, d in enumerate(dnames):
        for k, t in enumerate(tnames):
            row = {"dataset": d, "task": t, "validity": V[i, k], "accuracy": A[i, k],
                   "chance": chance[i, k], "gain": gain[i, k],
                   "gain_se": _nan_sd(gainb[:, i, k])}
            for name in GAP_COLUMNS:
                row[name] = float(g[name][i, k])
                se = _nan_sd(gb[name][:, i, k]) if (i, k) != (i_ref, k_ref) else 0.0
                row[f"{name}_se"] = float(se)
            row["regime"] = classify_regime(row["combined_gap"], thresholds)
            rows.append(row)
    return pd.DataFrame(rows)


def _nan_sd(x: np.ndarray) -> float:
    """Sample sd of the finite entries; NaN when fewer than two are finite."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.std(x, ddof=1)) if x.size > 1 else float("nan")


def novelty_table(ds: xr.Dataset, iteration: int | None = None) -> pd.DataFrame:
    """Structural novelty of valid candidates: pooled mean and sd per setting."""
    p = pooled_accuracy(ds, iteration)
    return p[["novelty_mean", "novelty_sd", "n_valid"]].to_dataframe().reset_index()


def write_csv(df: pd.DataFrame, path: str | os.PathLike, *,
              float_format: str | None = None) -> Path:
    """Write ``df`` as CSV without its index, atomically (``float_format`` as in pandas).

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = write_csv(pd.DataFrame({"a": [1 / 3]}), pathlib.Path(tempfile.mkdtemp()) / "t.csv",
    ...               float_format="%.3g")
    >>> p.read_text()
    'a\\n0.333\\n'
    """
    path = Path(path)
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format=float_format))
    return path
