"""Summaries of a fit: posterior transfer gaps, validity trajectories, diagnostics, checks.

Everything here reads the :class:`xarray.DataTree` written by
:func:`llmnas_transfer.fit.inference.fit_runs`; no JAX is needed.

* :func:`posterior_gaps` - one row per (dataset, task, component) with the posterior
  mean, sd and HDI of the gap relative to the reference, and the probability of each
  regime.
* :func:`trajectory` - observed and forecast pooled validity rates per setting.
* :func:`diagnostics` - r_hat, bulk/tail ESS, divergences (NUTS) or ELBO convergence (SVI).
* :func:`check` - posterior predictive checks, trace, forest and energy plots, LOO
  (:func:`loo_summary`), written to a folder.
* :func:`plot_sbc` - PIT ECDF plot of :func:`llmnas_transfer.fit.checks.sbc`, with a
  simultaneous band (:func:`ecdf_band`).

Example
-------
>>> import numpy as np, xarray as xr
>>> g = xr.DataArray(np.linspace(0.0, 0.3, 400).reshape(1, 400), dims=("chain", "draw"))
>>> regime_probabilities(g, (0.10, 0.20))
(0.335, 0.3325, 0.3325)
"""

from __future__ import annotations

import json
import math
import os
import warnings as warnings_module
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.fit.fitfile import spec_of
from llmnas_transfer.fit.model import DETERMINISTIC_DIMS, ModelSpec
from llmnas_transfer.io.atomic import atomic_write_text
from llmnas_transfer.sim.gaps import (
    DEFAULT_THRESHOLDS,
    TREND_TOLERANCE,
    check_thresholds,
    gap_components,
    trend_gap,
)
from llmnas_transfer.summarize.figures import prepare_output_folder, save_figure
from llmnas_transfer.summarize.tables import write_csv
from llmnas_transfer.validate import check_choice, check_float, check_levels

GAP_COLUMNS: tuple[str, ...] = (
    "dataset", "task", "component", "mean", "sd", "hdi_low", "hdi_high",
    "p_easy", "p_moderate", "p_hard", "observed", "p_trend_small",
)
TRAJECTORY_COLUMNS: tuple[str, ...] = (
    "dataset", "task", "iteration", "observed_rate", "mean", "hdi_low", "hdi_high",
    "forecast", "basis",
)
SAMPLE_DIMS = ("chain", "draw")
#: what :func:`format_table` can render
TABLE_FORMATS: tuple[str, ...] = ("table", "csv", "json")


def _spec(dt: xr.DataTree) -> ModelSpec:
    return spec_of(dt)


def _check_ci(ci: float) -> float:
    """A credible-interval probability in (0, 1)."""
    return check_float("ci", ci, 0.0, 1.0, low_open=True, high_open=True)


def _hdi(x: xr.DataArray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    import arviz as az

    h = az.hdi(x, prob=ci, dim=list(SAMPLE_DIMS))
    return h.sel(ci_bound="lower").values, h.sel(ci_bound="upper").values


def regime_probabilities(gap: xr.DataArray, thresholds=DEFAULT_THRESHOLDS):
    """Posterior probabilities ``(easy, moderate, hard)`` of a gap (over chain and draw).

    Uses the rule of :func:`llmnas_transfer.sim.gaps.classify_regime`: easy below the first
    threshold, hard above the second, moderate in between (inclusive).
    """
    lo, hi = check_thresholds(thresholds)
    v = np.asarray(gap.values, float).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    return (float(np.mean(v < lo)), float(np.mean((v >= lo) & (v <= hi))),
            float(np.mean(v > hi)))


def posterior_gaps(
    dt: xr.DataTree,
    *,
    ci: float = 0.94,
    thresholds=DEFAULT_THRESHOLDS,
    reference: str | tuple[str, str] | None = None,
    iteration: int | None = None,
) -> pd.DataFrame:
    """Posterior transfer gaps relative to the reference, with regime probabilities.

    One row per (dataset, task, component), all fractions. The components:

    * ``validity``: ``1 - V/V_ref``; ``V`` the expected validity rate of a new trial;
    * ``accuracy``: ``1 - N/N_ref`` with ``N = (A - c) / (1 - c)`` the chance-normalised
      expected first-epoch accuracy of valid candidates (``c`` the setting's chance
      level; fits made before chance levels were modelled have ``c = 0``);
    * ``combined``: ``1 - V N / (V_ref N_ref)``;
    * ``raw_accuracy``: ``1 - A/A_ref``, the accuracy as measured (the named alternative
      to the chance-normalised gap);
    * ``novelty``: ``1 - nov/nov_ref`` (only when the runs had novelty scores);
    * ``trend``: ``1 - gain/gain_ref``, the gain being the expected validity at the last
      observed iteration minus that at iteration 1 (independent of ``iteration``). Its
      regime probabilities are NaN; ``p_trend_small`` is ``P(|trend gap| <
      TREND_TOLERANCE)`` (0.1), NaN on the other rows.

    Parameters
    ----------
    dt : a fit from :func:`~llmnas_transfer.fit.inference.fit_runs`.
    ci : probability mass of the highest-density interval.
    thresholds : ``(easy_below, hard_above)`` regime thresholds on the gap.
    reference : ``"dataset:task"``; default the fit's reference.
    iteration : refinement iteration of the gaps (default the last observed one; a
        forecast iteration is allowed).

    Returns
    -------
    DataFrame with :data:`GAP_COLUMNS`.

    ``observed`` is False for settings predicted through the hierarchy. Without accuracy
    data only the validity, trend (and novelty) components are reported.
    """
    ci = _check_ci(ci)
    thresholds = check_thresholds(thresholds)
    spec = _spec(dt)
    post = dt["posterior"].dataset
    t = spec.gap_t if iteration is None else int(iteration)
    if not 1 <= t <= spec.horizon:
        raise UserInputError(
            f"iteration {t} is outside the fit's horizon 1..{spec.horizon} (refit with a "
            "larger --forecast to go further)"
        )
    if reference is None:
        ref = (spec.datasets[spec.reference[0]], spec.tasks[spec.reference[1]])
    else:
        from llmnas_transfer.fit.preparation import parse_reference

        ref = parse_reference(reference)
        if ref[0] not in spec.datasets or ref[1] not in spec.tasks:
            raise UserInputError(
                f"reference {ref[0]}:{ref[1]} is not a setting of this fit (datasets: "
                f"{', '.join(spec.datasets)}; tasks: {', '.join(spec.tasks)}); refit with "
                "--reference or --datasets/--tasks"
            )
    v = post["validity"].sel(horizon=t)
    v_ref = v.sel(dataset=ref[0], task=ref[1])
    comps = {}
    if spec.has_accuracy:
        a = post["accuracy"].sel(horizon=t)
        chance = xr.DataArray(spec.chance_grid().astype(np.float64), dims=("dataset", "task"),
                              coords={"dataset": list(spec.datasets),
                                      "task": list(spec.tasks)})
        g = gap_components(v, a, v_ref, a.sel(dataset=ref[0], task=ref[1]),
                           chance_s=chance,
                           chance_ref=float(chance.sel(dataset=ref[0], task=ref[1])))
        comps = {"validity": g["validity_gap"], "accuracy": g["accuracy_gap"],
                 "combined": g["combined_gap"], "raw_accuracy": g["raw_accuracy_gap"]}
    else:
        comps = {"validity": 1.0 - v / v_ref}
    if "novelty" in post:
        nov = post["novelty"].sel(horizon=t)
        comps["novelty"] = 1.0 - nov / nov.sel(dataset=ref[0], task=ref[1])
    val = post["validity"]
    gain = val.sel(horizon=spec.num_iterations) - val.sel(horizon=1)
    comps["trend"] = trend_gap(gain, gain.sel(dataset=ref[0], task=ref[1]))
    observed = {(spec.datasets[d], spec.tasks[k]) for d, k in spec.observed}
    rows = []
    stats = {}
    for name, gap in comps.items():
        gap = gap.transpose(*SAMPLE_DIMS, "dataset", "task")
        lo, hi = _hdi(gap, ci)
        stats[name] = (gap.mean(SAMPLE_DIMS).values, gap.std(SAMPLE_DIMS).values, lo, hi, gap)
    for i, d in enumerate(spec.datasets):
        for k, tk in enumerate(spec.tasks):
            for name in comps:
                mean, sd, lo, hi, gap = stats[name]
                cell = gap.isel(dataset=i, task=k)
                small = math.nan
                if name == "trend":
                    pe = pm = ph = math.nan
                    x = np.asarray(cell.values, float).reshape(-1)
                    x = x[np.isfinite(x)]
                    small = float(np.mean(np.abs(x) < TREND_TOLERANCE)) if x.size else math.nan
                else:
                    pe, pm, ph = regime_probabilities(cell, thresholds)
                rows.append({
                    "dataset": d, "task": tk, "component": name, "mean": float(mean[i, k]),
                    "sd": float(sd[i, k]), "hdi_low": float(lo[i, k]), "hdi_high": float(hi[i, k]),
                    "p_easy": pe, "p_moderate": pm, "p_hard": ph,
                    "observed": (d, tk) in observed, "p_trend_small": small,
                })
    return pd.DataFrame(rows, columns=list(GAP_COLUMNS))


def observed_rates(dt: xr.DataTree) -> xr.DataArray:
    """Observed pooled validity rate per (dataset, task, iteration); NaN where unobserved."""
    spec = _spec(dt)
    nv = dt["observed_data"].dataset["n_valid"].values
    cd = dt["constant_data"].dataset
    ng = cd["n_generated"].values
    rd, rt = cd["run_dataset"].values.astype(str), cd["run_task"].values.astype(str)
    nd, nk, T = len(spec.datasets), len(spec.tasks), nv.shape[1]
    num = np.zeros((nd, nk, T))
    den = np.zeros((nd, nk, T))
    di = np.asarray([spec.datasets.index(d) for d in rd])
    ki = np.asarray([spec.tasks.index(t) for t in rt])
    np.add.at(num, (di, ki), nv)
    np.add.at(den, (di, ki), ng)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(den > 0, num / den, np.nan)
    return xr.DataArray(rate, dims=("dataset", "task", "iteration"),
                        coords={"dataset": list(spec.datasets), "task": list(spec.tasks),
                                "iteration": np.arange(1, T + 1)})


def trajectory(dt: xr.DataTree, *, ci: float = 0.94,
               quantiles: str | Sequence[float | str] | None = None) -> pd.DataFrame:
    """Validity-rate trajectory per setting: observed iterations plus the forecast ones.

    For settings with data, ``mean``/``hdi_*`` summarise the posterior predictive pooled
    validity rate of the observed runs (their own states, continued past the data with
    the same number of candidates per iteration, binomial noise included), comparable
    with ``observed_rate`` (blank where nothing was observed). For settings without data
    they summarise the expected validity rate of a new trial, predicted through the
    hierarchy (``basis = "hierarchy"``).

    ``quantiles`` (levels in (0, 1), e.g. ``"0.05,0.5,0.95"`` or ``[0.05, 0.5]``) adds one
    column per level, ``q`` followed by the level as given (``q0.05``): the posterior
    predictive quantile of the same rate, for observed and forecast iterations alike.

    Returns a DataFrame with :data:`TRAJECTORY_COLUMNS` (and the quantile columns).

    Example
    -------
    >>> trajectory(dt, quantiles="0.05,0.95").columns[-2:].tolist()  # doctest: +SKIP
    ['q0.05', 'q0.95']
    """
    ci = _check_ci(ci)
    levels = () if quantiles is None else check_levels("quantiles", quantiles)
    spec = _spec(dt)
    obs_rate = observed_rates(dt)
    pred = dt["predictions"].dataset["pooled_rate"]
    expv = dt["posterior"].dataset["validity"]
    observed = set(spec.observed)
    lo_p, hi_p = _hdi(pred.transpose(*SAMPLE_DIMS, ...), ci)
    lo_e, hi_e = _hdi(expv.transpose(*SAMPLE_DIMS, ...), ci)
    mean_p = pred.mean(SAMPLE_DIMS).values
    mean_e = expv.mean(SAMPLE_DIMS).values
    qs = [v for _, v in levels]
    # (Q, D, K, H); the pooled rate is undefined (NaN) for settings without runs, whose
    # rows use the expected rate instead
    q_p = pred.fillna(0.0).quantile(qs, dim=SAMPLE_DIMS).values if levels else None
    q_e = expv.quantile(qs, dim=SAMPLE_DIMS).values if levels else None
    rows = []
    for i, d in enumerate(spec.datasets):
        for k, tk in enumerate(spec.tasks):
            seen = (i, k) in observed
            for h in range(spec.horizon):
                it = h + 1
                o = float(obs_rate.values[i, k, h]) if it <= spec.num_iterations else math.nan
                m, lo, hi = ((mean_p, lo_p, hi_p) if seen else (mean_e, lo_e, hi_e))
                rows.append({
                    "dataset": d, "task": tk, "iteration": it, "observed_rate": o,
                    "mean": float(m[i, k, h]), "hdi_low": float(lo[i, k, h]),
                    "hdi_high": float(hi[i, k, h]), "forecast": it > spec.num_iterations,
                    "basis": "observed runs" if seen else "hierarchy",
                })
                for j, (label, _) in enumerate(levels):
                    rows[-1][f"q{label}"] = float((q_p if seen else q_e)[j, i, k, h])
    return pd.DataFrame(rows, columns=[*TRAJECTORY_COLUMNS,
                                       *(f"q{label}" for label, _ in levels)])


# --------------------------------------------------------------------------- diagnostics
@dataclass
class Diagnostics:
    """Convergence diagnostics of a fit.

    ``ok`` is False when any check failed; ``warnings`` say what and what to do.
    """

    method: str
    summary: pd.DataFrame
    stats: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.warnings

    def text(self) -> str:
        """Human-readable report (printed after every fit)."""
        s = self.stats
        if self.method == "nuts":
            head = (
                f"diagnostics ({s['chains']} chains x {s['draws']} draws): max r_hat "
                f"{s['max_r_hat']:.3f}, min bulk ESS {s['min_ess_bulk']:.0f}, min tail ESS "
                f"{s['min_ess_tail']:.0f}, divergences {s['divergences']}, max tree depth hit "
                f"{s['max_depth_hits']} times"
            )
        else:
            head = (
                f"diagnostics (SVI, {s['steps']} steps): final loss {s['final_loss']:.1f}, "
                f"relative change over the last 10% of steps {s['relative_change']:.2e} "
                f"({s.get('change_in_se', float('nan')):.1f} standard errors)"
            )
        lines = [head]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.ok:
            lines.append("all checks passed")
        return "\n".join(lines)


def _main_vars(post: xr.Dataset) -> list[str]:
    """The sampled parameters plus the dataset effects (no fixed or derived constants)."""
    skip = set(DETERMINISTIC_DIMS) - {"difficulty", "accuracy_level"}
    return [v for v in post.data_vars if v not in skip]


def _nuts_checks(dt: xr.DataTree, summary: pd.DataFrame, chains: int, draws: int,
                 rhat_max: float, ess_min: float) -> tuple[dict[str, Any], list[str]]:
    """NUTS: r_hat, ESS, divergences and tree depth, with a warning for each failure."""
    ss = dt["sample_stats"].dataset
    div = int(ss["diverging"].sum()) if "diverging" in ss else 0
    depth = int(ss["reached_max_tree_depth"].sum()) if "reached_max_tree_depth" in ss else 0
    finite = summary.replace([np.inf, -np.inf], np.nan)
    stats = {
        "chains": chains, "draws": draws, "divergences": div, "max_depth_hits": depth,
        "max_r_hat": float(finite["r_hat"].max()),
        "min_ess_bulk": float(finite["ess_bulk"].min()),
        "min_ess_tail": float(finite["ess_tail"].min()),
    }
    warnings: list[str] = []
    bad_r = finite.index[finite["r_hat"] > rhat_max].tolist()
    if chains > 1 and (bad_r or not np.isfinite(stats["max_r_hat"])):
        warnings.append(
            f"r_hat above {rhat_max} for {len(bad_r)} parameters (worst "
            f"{stats['max_r_hat']:.3f}, e.g. {', '.join(bad_r[:3])}): the chains disagree; "
            "run longer (--warmup, --draws) and check the trace plots (llmnas-transfer "
            "check)"
        )
    if chains == 1:
        warnings.append("one chain only: r_hat cannot detect non-convergence; use "
                        "--chains 4")
    if stats["min_ess_bulk"] < ess_min or stats["min_ess_tail"] < ess_min:
        low = finite.index[(finite["ess_bulk"] < ess_min) | (finite["ess_tail"] < ess_min)]
        warnings.append(
            f"effective sample size below {ess_min:.0f} for {len(low)} parameters (min "
            f"bulk {stats['min_ess_bulk']:.0f}, min tail {stats['min_ess_tail']:.0f}): "
            "interval ends are imprecise; increase --draws"
        )
    if div:
        warnings.append(
            f"{div} divergent transitions: the sampler missed part of the posterior; raise "
            "--target-accept (e.g. 0.95) and look for outlying runs in the data"
        )
    if depth:
        warnings.append(
            f"maximum tree depth reached {depth} times: sampling was inefficient; the "
            "posterior may be poorly identified (check the pairs of correlated parameters)"
        )
    return stats, warnings


def _svi_checks(dt: xr.DataTree, chains: int, draws: int,
                tolerance: float) -> tuple[dict[str, Any], list[str]]:
    """SVI: whether the loss still moves over the last 10% of steps (beyond its noise)."""
    loss = np.asarray(dt["optimization"].dataset["loss"].values, np.float64)
    n = len(loss)
    w = max(n // 10, 1)
    tail, before = loss[-w:], (loss[-2 * w:-w] if n >= 2 * w else loss[:w])
    last, prev = float(np.mean(tail)), float(np.mean(before))
    rel = abs(prev - last) / max(abs(last), 1.0)
    # the loss of a mini-batch step is noisy: a change within 3 standard errors of
    # the difference of the two window means is noise, not a trend
    se = float(np.sqrt(np.var(tail) / len(tail) + np.var(before) / len(before)))
    z = abs(prev - last) / se if se > 0 else (np.inf if prev != last else 0.0)
    stats = {"steps": n, "final_loss": last, "relative_change": rel,
             "change_in_se": float(z), "draws": draws, "chains": chains}
    warnings: list[str] = []
    if not np.isfinite(last):
        warnings.append("the SVI loss is not finite: lower --svi-learning-rate")
    elif rel > tolerance and z > 3.0:
        warnings.append(
            f"the SVI loss still changes by {rel:.1e} (relative; {z:.1f} standard "
            f"errors) over the last 10% of steps: not converged; increase --svi-steps"
        )
    stats["note"] = ("SVI intervals come from a Gaussian approximation; check key "
                     "results with --method nuts when the data allow")
    return stats, warnings


def diagnostics(dt: xr.DataTree, *, rhat_max: float = 1.01, ess_min: float | None = None,
                tolerance: float = 1e-3) -> Diagnostics:
    """r_hat, bulk and tail ESS, divergences (NUTS), or loss convergence (SVI).

    ``ess_min`` defaults to 100 per chain. The summary covers the sampled parameters and
    the dataset and task effects (``az.summary`` with a 94% HDI, unrounded).

    Example
    -------
    >>> import arviz as az, numpy as np, xarray as xr
    >>> rng = np.random.default_rng(0)
    >>> dt = xr.DataTree.from_dict({
    ...     "posterior": xr.Dataset({"kappa": (("chain", "draw"), rng.normal(size=(2, 500)))}),
    ...     "sample_stats": xr.Dataset({"diverging": (("chain", "draw"),
    ...                                               np.zeros((2, 500), bool))})})
    >>> dt.attrs["inference"] = "nuts"
    >>> diagnostics(dt).ok
    True
    """
    import arviz as az

    method = dt.attrs.get("inference", "nuts")
    post = dt["posterior"].dataset
    names = _main_vars(post)
    with warnings_module.catch_warnings():
        # r_hat of a parameter that never moved is 0/0; reported as NaN and flagged below
        warnings_module.filterwarnings("ignore", "invalid value encountered",
                                       RuntimeWarning)
        summary = az.summary(dt, var_names=names, ci_kind="hdi", ci_prob=0.94,
                             round_to="none")
    chains, draws = int(post.sizes["chain"]), int(post.sizes["draw"])
    if method == "nuts":
        ess_min = 100.0 * chains if ess_min is None else float(ess_min)
        stats, warnings = _nuts_checks(dt, summary, chains, draws, rhat_max, ess_min)
    else:
        stats, warnings = _svi_checks(dt, chains, draws, tolerance)
    return Diagnostics(method, summary, stats, warnings)


# --------------------------------------------------------------------------- checks
def _save(fig, out: Path, stem: str) -> list[str]:
    paths = [str(p) for p in save_figure(fig, out / stem, dpi=130, bbox_inches="tight")]
    if getattr(fig.canvas, "manager", None) is not None:  # made by pyplot (ArviZ): release
        import matplotlib.pyplot as plt

        plt.close(fig)
    return paths


def _figure(pc):
    return pc.viz["figure"].item() if hasattr(pc, "viz") else pc


def ppc_statistics(dt: xr.DataTree) -> pd.DataFrame:
    """Posterior predictive checks per observed setting.

    Statistics: the pooled validity rate over all observed iterations, the rate at the
    last observed iteration, and the between-run sd of the per-run rate (overdispersion).
    ``p_value`` is the posterior predictive probability that the replicated statistic
    is at least the observed one; values near 0 or 1 flag misfit.
    """
    spec = _spec(dt)
    obs = dt["observed_data"].dataset["n_valid"].values  # (N, T)
    rep = dt["posterior_predictive"].dataset["n_valid"].values  # (C, D, N, T)
    rep = rep.reshape((-1,) + obs.shape)
    cd = dt["constant_data"].dataset
    ng = cd["n_generated"].values
    rd, rt = cd["run_dataset"].values.astype(str), cd["run_task"].values.astype(str)
    rows = []
    for d, k in spec.observed:
        dn, tn = spec.datasets[d], spec.tasks[k]
        m = (rd == dn) & (rt == tn)
        g = ng[m]
        last = int(np.max(np.nonzero(g.sum(0) > 0)[0]))

        def stats(nv):
            pooled = nv.sum((-2, -1)) / g.sum()
            at_last = nv[..., last].sum(-1) / g[:, last].sum()
            tot = g.sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_run = nv.sum(-1) / np.where(tot > 0, tot, np.nan)
            spread = np.nanstd(per_run, axis=-1, ddof=1) if m.sum() > 1 else np.nan * pooled
            return {"pooled_rate": pooled, "last_iteration_rate": at_last,
                    "between_run_sd": spread}

        so, sr = stats(obs[m]), stats(rep[:, m])
        for name in so:
            o, r = float(so[name]), np.asarray(sr[name], float)
            r = r[np.isfinite(r)]
            rows.append({
                "dataset": dn, "task": tn, "statistic": name, "observed": o,
                "replicated_mean": float(r.mean()) if r.size else math.nan,
                "replicated_sd": float(r.std()) if r.size else math.nan,
                "p_value": float(np.mean(r >= o)) if r.size and np.isfinite(o) else math.nan,
            })
    return pd.DataFrame(rows)


def _ppc_rates_figure(dt: xr.DataTree, ci: float):
    from matplotlib.figure import Figure

    tr = trajectory(dt, ci=ci)
    spec = _spec(dt)
    settings = [(spec.datasets[d], spec.tasks[k]) for d, k in spec.observed]
    n = len(settings)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(3.2 * ncol, 2.6 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False, sharey=True)
    for ax, (d, t) in zip(axes.ravel(), settings, strict=False):
        s = tr[(tr["dataset"] == d) & (tr["task"] == t)]
        ax.fill_between(s["iteration"], s["hdi_low"], s["hdi_high"], alpha=0.3,
                        label=f"{ci:.0%} predictive HDI")
        ax.plot(s["iteration"], s["mean"], lw=1.5, label="predictive mean")
        ax.plot(s["iteration"], s["observed_rate"], "o", ms=3.5, color="k", label="observed")
        if spec.num_forecast:
            ax.axvline(spec.num_iterations + 0.5, color="grey", ls=":", lw=1)
        ax.set_title(f"{d} / {t}", fontsize=9)
        ax.set_xlabel("refinement iteration")
        ax.set_ylabel("validity rate (fraction)")
        ax.set_ylim(0, 1)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Posterior predictive check: pooled validity rate of the observed runs")
    fig.tight_layout()
    return fig


def ecdf_band(n: int, prob: float = 0.95, *, num_points: int = 99,
              num_sims: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simultaneous band for the ECDF of ``n`` uniform values (Säilynoja et al. 2022).

    At ``z_j = j / (num_points + 1)`` the count of values below ``z_j`` is
    Binomial(n, z_j). The band is the pointwise central binomial interval at a level
    ``gamma`` chosen by simulation so that the ECDF of ``n`` uniforms lies inside it at
    every ``z_j`` with probability ``prob``.

    Returns ``(z, lower, upper)``: the grid and the band of the ECDF (fractions).

    Example
    -------
    >>> z, lo, hi = ecdf_band(100)
    >>> bool(np.all(lo <= z) and np.all(z <= hi)), z.shape
    (True, (99,))
    """
    from scipy import stats

    prob = check_float("prob", prob, 0.0, 1.0, low_open=True, high_open=True)
    z = np.arange(1, num_points + 1) / (num_points + 1)
    rng = np.random.default_rng(seed)
    u = np.sort(rng.random((num_sims, n)), axis=1)
    counts = np.stack([np.searchsorted(row, z) for row in u])  # (sims, points)
    # two-sided tail probability of each count under Binomial(n, z)
    tail = np.minimum(stats.binom.cdf(counts, n, z), stats.binom.sf(counts - 1, n, z))
    gamma = float(np.quantile(2.0 * tail.min(axis=1), 1.0 - prob))
    lo = stats.binom.ppf(gamma / 2.0, n, z) / n
    hi = stats.binom.ppf(1.0 - gamma / 2.0, n, z) / n
    return z, lo, hi


def plot_sbc(dt: xr.DataTree, *, group: str = "prior_sbc", prob: float = 0.95,
             pvalues: dict[str, float] | None = None):
    """PIT ECDF difference plot of simulation-based calibration, one panel a parameter.

    ``dt`` is the output of :func:`llmnas_transfer.fit.checks.sbc`. Each panel shows
    ``ECDF(PIT) - PIT`` over the replicates with the simultaneous ``prob`` band of a
    calibrated fit (:func:`ecdf_band`); ``pvalues`` (e.g. ArviZ's uniformity test,
    :func:`llmnas_transfer.fit.checks.uniformity_pvalues`) are written in the panels.
    A curve above the band at small PIT means the truth falls below the posterior too
    often (the posterior is too high); an S shape means too narrow a posterior.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> import arviz as az
    >>> dt = az.from_dict({"prior_sbc": {"a": rng.random((1, 50)), "b": rng.random((1, 50))}})
    >>> fig = plot_sbc(dt)
    >>> [ax.get_title() for ax in fig.axes], fig.axes[0].get_xlabel()
    (['a', 'b'], 'PIT of the true value')
    """
    from matplotlib.figure import Figure

    ds = dt[group].dataset
    names = list(ds.data_vars)
    n_par = len(names)
    ncol = min(4, n_par)
    nrow = math.ceil(n_par / ncol)
    fig = Figure(figsize=(3.1 * ncol, 2.6 * nrow + 0.4), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
    n = int(np.asarray(ds[names[0]].values).size) if names else 0
    z, lo, hi = ecdf_band(n, prob)  # every variable has one PIT a replicate
    for ax, name in zip(axes.ravel(), names, strict=False):
        pit = np.sort(np.asarray(ds[name].values, np.float64).ravel())
        ax.fill_between(z, lo - z, hi - z, color="0.85", step="mid",
                        label=f"{prob:.0%} simultaneous band")
        grid = np.linspace(0.0, 1.0, 401)
        ax.step(grid, np.searchsorted(pit, grid, side="right") / n - grid, where="post",
                lw=1.3, label="ECDF - uniform")
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_title(name, fontsize=9)
        if pvalues is not None and name in pvalues:
            ax.text(0.97, 0.05, f"p = {pvalues[name]:.3g}", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("PIT of the true value")
    for ax in axes[:, 0]:
        ax.set_ylabel("ECDF difference")
    for ax in axes.ravel()[n_par:]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Simulation-based calibration: {n} replicates ({group})", fontsize=10)
    return fig


def _check_figures(dt: xr.DataTree, out: Path, ci: float) -> dict[str, list[str]]:
    """The figures of :func:`check`, saved under ``out``; returns their paths by name."""
    import arviz as az

    files: dict[str, list[str]] = {"ppc_rates": _save(_ppc_rates_figure(dt, ci), out,
                                                      "ppc_rates")}
    with warnings_module.catch_warnings():
        # the counts are discrete; ArviZ suggests rootograms, but the distribution of the
        # counts over (run, iteration) cells is what this panel compares, on purpose
        warnings_module.filterwarnings("ignore", "Variables .* look discrete", UserWarning)
        pc = az.plot_ppc_dist(dt, var_names=["n_valid"], num_samples=50)
    fig = _figure(pc)
    for ax in fig.axes:
        ax.set_xlabel("valid candidates per (run, iteration)")
    files["ppc_counts"] = _save(fig, out, "ppc_counts")
    scalars = [v for v in ("kappa", "state_noise", "init_sd", "validity_intercept",
                           "validity_slope", "accuracy_slope", "accuracy_noise")
               if v in dt["posterior"].dataset]
    files["trace"] = _save(_figure(az.plot_trace_dist(dt, var_names=scalars, compact=True)),
                           out, "trace")
    gap_var = "combined_gap" if _spec(dt).has_accuracy else "validity_gap"
    fig = _figure(az.plot_forest(dt, var_names=[gap_var], combined=True, ci_kind="hdi",
                                 ci_probs=(0.5, ci)))
    fig.suptitle(f"{gap_var.replace('_', ' ')} relative to the reference, 50% and "
                 f"{ci:.0%} HDI")
    fig.axes[-1].set_xlabel(f"{gap_var.replace('_', ' ')} (fraction; 0 = no gap)")
    files["forest_gaps"] = _save(fig, out, "forest_gaps")
    if "sample_stats" in dt and "energy" in dt["sample_stats"].dataset:
        files["energy"] = _save(_figure(az.plot_energy(dt)), out, "energy")
    return files


def loo_summary(dt: xr.DataTree) -> dict[str, Any]:
    """PSIS-LOO of a fit (one unit = one run) with its Pareto-k counts and warnings.

    ``pareto_k_threshold`` is ``min(1 - 1 / log10(draws), 0.7)`` (Vehtari et al. 2024).
    """
    import arviz as az

    with warnings_module.catch_warnings(record=True) as caught:
        warnings_module.simplefilter("always")
        loo = az.loo(dt)
    k = np.asarray(loo.pareto_k.values if hasattr(loo, "pareto_k") else [])
    n_draws = int(dt["posterior"].dataset.sizes["chain"] * dt["posterior"].dataset.sizes["draw"])
    good_k = min(1 - 1 / np.log10(n_draws), 0.7) if n_draws > 1 else 0.7
    return {
        "elpd_loo": float(loo.elpd), "se": float(loo.se), "p_loo": float(loo.p),
        "n_runs": int(k.size), "pareto_k_threshold": round(float(good_k), 3),
        "pareto_k_above_threshold": int(np.sum(k > good_k)),
        "pareto_k_above_0.7": int(np.sum(k > 0.7)),
        "unit": "one run (all iterations of one trial of one setting), state marginalised",
        "warnings": sorted({str(w.message).split(".")[0] for w in caught}),
    }


def check(dt: xr.DataTree, out: str | os.PathLike, *, ci: float = 0.94) -> dict[str, Any]:
    """Write posterior predictive checks, trace, forest and energy plots, and LOO.

    Files (PNG and PDF for figures) in ``out``: ``ppc_rates``, ``ppc_counts``, ``trace``,
    ``forest_gaps``, ``energy`` (NUTS only), ``ppc_statistics.csv``, ``loo.json``,
    ``diagnostics.txt``. Returns a dict with the file paths and the LOO summary.
    """
    ci = _check_ci(ci)
    out = prepare_output_folder(out)
    files: dict[str, list[str] | str] = dict(_check_figures(dt, out, ci))
    ppc = ppc_statistics(dt)
    files["ppc_statistics"] = str(write_csv(ppc, out / "ppc_statistics.csv"))
    loo_info = loo_summary(dt)
    p = out / "loo.json"
    atomic_write_text(p, json.dumps(loo_info, indent=2) + "\n")
    files["loo"] = str(p)
    diag = diagnostics(dt)
    p = out / "diagnostics.txt"
    atomic_write_text(p, diag.text() + "\n\n" + diag.summary.to_string() + "\n")
    files["diagnostics"] = str(p)
    return {"files": files, "loo": loo_info, "ppc": ppc, "diagnostics": diag}


def format_table(df: pd.DataFrame, fmt: str = "table", digits: int = 3) -> str:
    """Render a summary table as ``table`` (aligned text), ``csv`` or ``json``.

    Example
    -------
    >>> import pandas as pd
    >>> print(format_table(pd.DataFrame({"a": [0.12345], "b": ["x"]}), "csv"), end="")
    a,b
    0.12345,x
    """
    check_choice("format", fmt, TABLE_FORMATS)
    if fmt == "csv":
        return df.to_csv(index=False, na_rep="")
    if fmt == "json":
        recs = json.loads(df.to_json(orient="records", double_precision=15))
        return json.dumps(recs, indent=1) + "\n"
    return df.to_string(index=False, float_format=lambda x: f"{x:.{digits}f}",
                        na_rep="") + "\n"
