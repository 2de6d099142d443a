"""The study's five figures and the trend figure, from simulated results.

matplotlib is imported inside the functions (never at module import) and only through
its object-oriented API (:class:`matplotlib.figure.Figure`, no ``pyplot``), so the
figures render on any backend, including headless ``Agg``, and nothing is left open.

=====  ===========================================  =====================================
Fig.   Function                                     Content
=====  ===========================================  =====================================
1      :func:`plot_validity_trajectories`           validity per iteration per dataset,
                                                    mean over trials +- 1.96 SE bands
2      :func:`plot_validity_by_task`                final validity per task, mean over
                                                    the image datasets, +- 1.96 SE
3      :func:`plot_accuracy_distributions`          first-epoch accuracy of valid
                                                    candidates, violins per dataset
4      :func:`plot_transfer_gaps`                   validity and accuracy components side
                                                    by side, combined gap as a marker,
                                                    all +- 1.96 SE; regime bands
5      :func:`plot_validity_heatmap`                final validity of every cell +- 1.96 SE
=====  ===========================================  =====================================

Uncertainty convention: every figure shows 95% intervals, estimate +- 1.96 Monte Carlo SE
over trials (bootstrap SE for the gaps), and every caption says so.

:func:`save_figure` writes PNG and PDF (atomically); :func:`study_figures` draws and saves
all five; :func:`prepare_output_folder` checks and creates a folder for tables and figures.

Example
-------
>>> from llmnas_transfer import simulate
>>> r = simulate(0, datasets="cifar-10,audioset", tasks="classification,generation",
...              num_trials=4, num_iterations=3, num_candidates=10)
>>> fig = plot_validity_heatmap(r)
>>> fig.axes[0].get_title()
'Final validity rate (iteration 3)'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from llmnas_transfer.errors import UnknownSettingError, UserInputError
from llmnas_transfer.io.atomic import atomic_paths, check_writable, probe_folder
from llmnas_transfer.sim import gaps as gapdefs
from llmnas_transfer.sim import registry
from llmnas_transfer.summarize import tables as metrics
from llmnas_transfer.validate import check_float

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

#: file stems of the five study figures, in order
FIGURE_NAMES: tuple[str, ...] = (
    "fig1_validity_trajectories",
    "fig2_validity_by_task",
    "fig3_accuracy_distributions",
    "fig4_transfer_gaps",
    "fig5_heatmap",
    "fig6_trend_gains",
)
#: iteration at which the paper reports its values
PAPER_ITERATION = 10
_Z95 = 1.959963984540054
_LINESTYLE = {"image": "-", "audio": "--", "text": "-.", "unknown": ":"}
_REGIME_COLOURS = {"easy": "#d9f0d3", "moderate": "#fee8c8", "hard": "#fbd0d0"}


# ------------------------------------------------------------------ helpers
def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _caption(fig: Figure, text: str) -> None:
    """A wrapped caption under the axes (kept inside the figure by constrained layout)."""
    import textwrap

    width = int(fig.get_figwidth() * 15)
    fig.supxlabel(textwrap.fill(text, width), fontsize=7.5, ha="left", x=0.01,
                  multialignment="left")


#: the uncertainty convention of every study figure (stated in each caption): 95% intervals,
#: estimate +- 1.96 Monte Carlo SE over trials. Posterior quantities (94% HDI) are another
#: object and are labelled as such where they appear (:mod:`llmnas_transfer.summarize.posterior`).
UNCERTAINTY = "95% interval"


def _uncertainty(ci: float = 0.95, *, bootstrap: bool = False) -> str:
    """The caption sentence that states the figure's uncertainty convention."""
    how = "bootstrap SE over trials" if bootstrap else "Monte Carlo SE over trials"
    return (f"Uncertainty: {round(100 * ci)}% intervals (estimate $\\pm$ "
            f"{_z(ci):.2f} {how}).")


def _legend(ax, **kwargs) -> None:
    """A legend when there is something to put in it (avoids matplotlib's warning)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _modality(name: str) -> str:
    try:
        return registry.get_dataset(str(name)).modality
    except UnknownSettingError:
        return "unknown"


def _colours(names: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if len(names) <= 10 else colormaps["tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _pick_task(ds: xr.Dataset, task: str | None) -> str:
    tasks = [str(t) for t in ds["task"].values]
    if task is None:
        return "classification" if "classification" in tasks else tasks[0]
    if task.lower() not in tasks:
        raise UserInputError(f"task {task!r} is not in the results (tasks: {', '.join(tasks)})")
    return task.lower()


def _pick_datasets(ds: xr.Dataset, datasets: Sequence[str] | None) -> list[str]:
    have = [str(d) for d in ds["dataset"].values]
    if datasets is None:
        return have
    want = [d.lower() for d in ([datasets] if isinstance(datasets, str) else datasets)]
    missing = [d for d in want if d not in have]
    if missing:
        raise UserInputError(
            f"dataset(s) {', '.join(missing)} not in the results (have: {', '.join(have)})"
        )
    return want


def _check_results(ds: xr.Dataset) -> None:
    if not isinstance(ds, xr.Dataset):
        raise UserInputError(f"expected the xarray.Dataset from simulate, got {type(ds).__name__}")
    need = {"validity_rate", "n_valid", "accuracy_sum", "n_generated"}
    missing = sorted(need - set(ds.data_vars))
    if missing:
        raise UserInputError(f"results lack the variable(s) {', '.join(missing)}")


def paper_values() -> dict[str, dict]:
    """The paper's reported values read from the shipped ``targets.csv``.

    Returns ``{"validity": {(dataset, task): value}, "task_validity": {task: value}}``
    (fractions, at iteration 10).

    Example
    -------
    >>> paper_values()["validity"][("cifar-10", "classification")]
    0.765
    """
    ref = resources.files("llmnas_transfer.data").joinpath("targets.csv")
    with resources.as_file(ref) as p:
        t = pd.read_csv(p)
    t = t[(t["kind"] == "equal") & (t["iteration"] == "final") & (t["weight"] > 0)]
    out: dict[str, dict] = {"validity": {}, "task_validity": {}}
    for _, r in t.iterrows():
        if r["quantity"] == "validity":
            out["validity"][(r["dataset"], r["task"])] = float(r["value"])
        elif r["quantity"] == "task_validity":
            out["task_validity"][r["task"]] = float(r["value"])
    return out


def _final_iteration(ds: xr.Dataset, iteration: int | None) -> int:
    return metrics._resolve_iteration(ds, iteration)


def _protocol(ds: xr.Dataset) -> str:
    return (f"{ds.sizes['trial']} trials x {int(ds['n_generated'])} candidates per iteration")


# ------------------------------------------------------------------ figure 1
def plot_validity_trajectories(
    ds: xr.Dataset,
    *,
    task: str | None = None,
    datasets: Sequence[str] | None = None,
    ci: float = 0.95,
    validity: pd.DataFrame | None = None,
    paper: bool = True,
) -> Figure:
    """Figure 1: validity rate per refinement iteration, one line per dataset.

    Lines are the mean over trials; shaded bands the ``ci`` normal interval
    (mean +- z SE, SE = Monte Carlo standard error over trials). Crosses mark the
    paper's reported values at iteration 10 when ``paper`` is true.

    Parameters
    ----------
    ds : results of :func:`llmnas_transfer.sim.candidates`.
    task : task to show (classification when present, else the first).
    datasets : subset of datasets (all in ``ds`` by default).
    ci : coverage of the bands.
    validity : a precomputed :func:`llmnas_transfer.summarize.tables.validity_table` (optional).
    paper : mark the paper's values.

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10,svhn", tasks="classification", num_trials=3,
    ...              num_iterations=4, num_candidates=8)
    >>> plot_validity_trajectories(r).axes[0].get_ylabel()
    'Validity rate (%)'
    """
    _check_results(ds)
    task = _pick_task(ds, task)
    names = _pick_datasets(ds, datasets)
    vt = metrics.validity_table(ds, ci=ci) if validity is None else validity
    vt = vt[vt["task"] == task]
    colours = _colours(names)
    fig = _figure(8.0, 5.0)
    ax = fig.add_subplot()
    pv = paper_values()["validity"] if paper else {}
    its = ds["iteration"].values
    marked = False
    for d in names:
        sub = vt[vt["dataset"] == d].sort_values("iteration")
        x = sub["iteration"].to_numpy()
        m = 100 * sub["validity_mean"].to_numpy()
        lo = 100 * sub["ci_low"].to_numpy()
        hi = 100 * sub["ci_high"].to_numpy()
        ls = _LINESTYLE[_modality(d)]
        ax.plot(x, m, ls, color=colours[d], lw=1.8, marker="o", ms=3, label=d)
        if np.isfinite(lo).any():
            ax.fill_between(x, lo, hi, color=colours[d], alpha=0.15, lw=0)
        if (d, task) in pv and PAPER_ITERATION in its:
            ax.plot([PAPER_ITERATION], [100 * pv[(d, task)]], "x", color=colours[d], ms=10,
                    mew=2.2)
            marked = True
    if marked:  # one black legend entry for the paper's values
        ax.plot([], [], "x", color="k", ms=8, mew=2, label="paper (section 3.1)")
    ax.set_xlabel("Refinement iteration")
    ax.set_ylabel("Validity rate (%)")
    ax.set_xticks(its if len(its) <= 20 else its[:: max(1, len(its) // 10)])
    ax.set_title(f"Validity trajectories per dataset ({task})")
    ax.grid(alpha=0.3)
    _legend(ax, ncol=2, fontsize=8, loc="lower right", title="dataset", title_fontsize=8)
    _caption(
        fig,
        f"Lines: mean over trials. Solid: image, dashed: audio, dash-dot: text. "
        f"{_uncertainty(ci)} {_protocol(ds)}.",
    )
    return fig


def _z(ci: float) -> float:
    from scipy.stats import norm

    ci = check_float("ci", ci, 0.0, 1.0, low_open=True, high_open=True)
    return float(norm.ppf(0.5 + ci / 2))


# ------------------------------------------------------------------ figure 2
def task_validity(
    ds: xr.Dataset, *, iteration: int | None = None, average_over: Sequence[str] | None = None
) -> pd.DataFrame:
    """Final validity per task averaged over datasets, with its Monte Carlo SE.

    The default average is the unweighted mean over the image datasets present in
    ``ds`` (for the built-in grid: the six image datasets, the definition used by the
    calibration targets ``task_*`` in ``data/targets.csv``); all datasets if none is an
    image dataset. Each dataset enters through its mean over trials; the SE combines the
    per-dataset SEs, ``sqrt(sum se_d^2) / n``.

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10,svhn", tasks="classification,generation",
    ...              num_trials=3, num_iterations=2, num_candidates=8)
    >>> list(task_validity(r)["n_datasets"])
    [2, 2]
    """
    it = _final_iteration(ds, iteration)
    names = [str(d) for d in ds["dataset"].values]
    if average_over is None:
        average_over = [d for d in names if _modality(d) == "image"] or names
    average_over = _pick_datasets(ds, list(average_over))
    rate = ds["validity_rate"].sel(iteration=it, dataset=average_over)
    n = rate.sizes["trial"]
    mean_d = rate.mean("trial")
    se_d = rate.std("trial", ddof=1) / np.sqrt(n) if n > 1 else xr.full_like(mean_d, np.nan)
    k = len(average_over)
    out = pd.DataFrame({
        "task": [str(t) for t in ds["task"].values],
        "validity_mean": mean_d.mean("dataset").values,
        "validity_se": np.sqrt((se_d**2).sum("dataset", skipna=False)).values / k,
        "n_datasets": k,
        "averaged_over": ",".join(average_over),
        "iteration": it,
    })
    return out


def plot_validity_by_task(
    ds: xr.Dataset,
    *,
    iteration: int | None = None,
    average_over: Sequence[str] | None = None,
    paper: bool = True,
) -> Figure:
    """Figure 2: final validity per task (bars: mean over the image datasets).

    Bars are :func:`task_validity` with +- 1.96 SE error bars; dots show every dataset's
    own mean over trials (image datasets grey, others coloured by dataset). Black ticks
    mark the paper's values when the results end at iteration 10.

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10,audioset", tasks="classification,detection",
    ...              num_trials=3, num_iterations=2, num_candidates=8)
    >>> plot_validity_by_task(r).axes[0].get_xlabel()
    'Task'
    """
    _check_results(ds)
    tv = task_validity(ds, iteration=iteration, average_over=average_over)
    it = int(tv["iteration"].iloc[0])
    avg = tv["averaged_over"].iloc[0].split(",")
    tasks = list(tv["task"])
    x = np.arange(len(tasks))
    fig = _figure(7.5, 5.2)
    ax = fig.add_subplot()
    ax.bar(x, 100 * tv["validity_mean"], width=0.6, color="#6baed6", edgecolor="#08519c",
           yerr=100 * _Z95 * tv["validity_se"].fillna(0), capsize=5,
           label=f"mean over {len(avg)} averaged datasets $\\pm$ 1.96 SE")
    names = [str(d) for d in ds["dataset"].values]
    per = ds["validity_rate"].sel(iteration=it).mean("trial")
    others = [d for d in names if d not in avg]
    colours = _colours(others)
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.18, 0.18, size=len(names))
    grey_done = False
    for j, d in enumerate(names):
        vals = 100 * per.sel(dataset=d).values
        if d in avg:
            ax.plot(x + jitter[j], vals, "o", color="0.35", ms=3.5, alpha=0.8,
                    label="one averaged dataset" if not grey_done else None)
            grey_done = True
        else:
            ax.plot(x + jitter[j], vals, "D", color=colours[d], ms=5, label=f"{d} (not averaged)")
    pv = paper_values()["task_validity"] if paper and it == PAPER_ITERATION else {}
    shown = False
    for i, t in enumerate(tasks):
        if t in pv:
            ax.plot([i - 0.32, i + 0.32], [100 * pv[t]] * 2, "k-", lw=2.2,
                    label="paper (section 3.2)" if not shown else None)
            shown = True
    ax.set_xticks(x, tasks)
    ax.set_xlabel("Task")
    ax.set_ylabel(f"Validity rate at iteration {it} (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Validity by task")
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, fontsize=7.5, loc="upper right")
    _caption(
        fig,
        "Bars: unweighted mean over " + ", ".join(avg) + " of each dataset's mean over "
        f"trials (the definition of the calibration targets). {_uncertainty()} "
        f"{_protocol(ds)}.",
    )
    return fig


# ------------------------------------------------------------------ figure 3
def _accuracy_samples(ds: xr.Dataset, d: str, task: str, it: int) -> np.ndarray | None:
    if "accuracy" not in ds:
        return None
    x = ds["accuracy"].sel(dataset=d, task=task, iteration=it).values.ravel()
    return x[np.isfinite(x)]


def _hist_stats(ds: xr.Dataset, d: str, task: str, it: int) -> dict | None:
    if "accuracy_hist" not in ds:
        return None
    h = ds["accuracy_hist"].sel(dataset=d, task=task, iteration=it).sum("trial").values
    centres = ds["accuracy_bin"].values
    n = h.sum()
    if n == 0:
        return None
    width = 1.0 / len(centres)
    nz = np.flatnonzero(h)
    cw = np.cumsum(h) / n
    coords = np.linspace(centres[nz[0]] - width / 2, centres[nz[-1]] + width / 2, 200)
    idx = np.clip(((coords) / width).astype(int), 0, len(centres) - 1)
    # the histogram bins chance-normalised accuracy x; the accuracy is c + (1 - c) x
    c = float(ds["chance"].sel(dataset=d, task=task)) if "chance" in ds else 0.0
    acc = c + (1.0 - c) * coords
    return {
        "coords": acc, "vals": h[idx] / (n * width * (1.0 - c)),
        "mean": c + (1.0 - c) * float((h * centres).sum() / n),
        "median": c + (1.0 - c) * float(centres[np.searchsorted(cw, 0.5)]),
        "min": float(acc[0]), "max": float(acc[-1]),
    }


def _pooled_accuracy(s: xr.Dataset, d: str) -> tuple[float, float, float]:
    """Valid candidates, pooled mean accuracy and its SE over trials (delta method) of
    dataset ``d`` in ``s`` (one task and iteration)."""
    nv = s["n_valid"].sel(dataset=d).values.astype(float)
    asum = s["accuracy_sum"].sel(dataset=d).values.astype(float)
    n = nv.sum()
    pooled = asum.sum() / n if n > 0 else np.nan
    R = nv.size
    if R > 1 and n > 0:
        resid = asum - pooled * nv
        se = np.sqrt(R / (R - 1) * np.sum(resid**2)) / n
    else:
        se = np.nan
    return n, pooled, se


def _violin(ax, ds: xr.Dataset, d: str, task: str, it: int, i: int, colour) -> None:
    """The violin of dataset ``d`` at position ``i`` (points when fewer than two values)."""
    samples = _accuracy_samples(ds, d, task, it)
    body = None
    if samples is not None and samples.size >= 2 and np.ptp(samples) > 0:
        body = ax.violinplot([100 * samples], positions=[i], widths=0.8, showmeans=False,
                             showmedians=True, showextrema=False)
    elif samples is None:
        st = _hist_stats(ds, d, task, it)
        if st is not None:
            st = {k: (100 * v if k != "vals" else v / 100) for k, v in st.items()}
            body = ax.violin([st], positions=[i], widths=0.8, showmeans=False,
                             showmedians=True, showextrema=False)
    if samples is not None and 0 < samples.size < 2:
        ax.plot([i] * samples.size, 100 * samples, "o", color=colour)
    if body is not None:
        for b in body["bodies"]:
            b.set_facecolor(colour)
            b.set_edgecolor("0.2")
            b.set_alpha(0.55)
        if "cmedians" in body:
            body["cmedians"].set_color("0.2")


def plot_accuracy_distributions(
    ds: xr.Dataset,
    *,
    task: str | None = None,
    iteration: int | None = None,
    datasets: Sequence[str] | None = None,
    reference: str | None = gapdefs.DEFAULT_REFERENCE[0],
) -> Figure:
    """Figure 3: first-epoch accuracy of valid candidates, one violin per dataset.

    Uses the per-candidate accuracies when the results hold them, else the accuracy
    histogram (the violin is then a step density at the histogram's resolution). Black
    error bars: pooled mean +- 1.96 SE, the SE taken over trials; the dashed line is the
    ``reference`` dataset's pooled mean (when it is shown).

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10,svhn", tasks="classification", num_trials=3,
    ...              num_iterations=2, num_candidates=10, per_candidate=True)
    >>> plot_accuracy_distributions(r).axes[0].get_ylabel()
    'First-epoch accuracy of valid candidates (%)'
    """
    _check_results(ds)
    task = _pick_task(ds, task)
    it = _final_iteration(ds, iteration)
    names = _pick_datasets(ds, datasets)
    colours = _colours(names)
    fig = _figure(9.0, 5.2)
    ax = fig.add_subplot()
    s = ds.sel(iteration=it, task=task)
    source = "per-candidate values" if "accuracy" in ds else "accuracy histograms"
    ref_mean = None
    chance_drawn = False
    counts: list[int] = []
    for i, d in enumerate(names):
        n, pooled, se = _pooled_accuracy(s, d)
        _violin(ax, ds, d, task, it, i, colours[d])
        if np.isfinite(pooled):
            ax.errorbar([i], [100 * pooled], yerr=[100 * _Z95 * np.nan_to_num(se)], fmt="o",
                        color="k", ms=4, capsize=4, label="mean $\\pm$ 1.96 SE" if i == 0 else None)
            if reference is not None and d == reference.lower():
                ref_mean = pooled
        counts.append(int(n))
        chance = float(s["chance"].sel(dataset=d)) if "chance" in s else 0.0
        if chance > 0:  # the accuracy of guessing: the floor of the violin
            ax.hlines(100 * chance, i - 0.42, i + 0.42, colors="0.15", linestyles=":", lw=1.2,
                      label="chance (1 / classes)" if not chance_drawn else None)
            chance_drawn = True
    if ref_mean is not None:
        ax.axhline(100 * ref_mean, color="0.4", ls="--", lw=1,
                   label=f"{reference.lower()} mean")
    ax.set_xticks(np.arange(len(names)), [f"{d}\nn={c}" for d, c in zip(names, counts,
                                                                        strict=True)],
                  fontsize=8)
    ax.set_xlabel("Dataset (n: valid candidates)")
    ax.set_ylabel("First-epoch accuracy of valid candidates (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"First-epoch accuracy after iteration {it} ({task})")
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, fontsize=8, loc="upper right")
    _caption(
        fig,
        f"Violins: distribution over valid candidates pooled over trials (from {source}); "
        f"horizontal line: median; dotted: chance level, below which no accuracy falls; "
        f"black: pooled mean. {_uncertainty()} {_protocol(ds)}.",
    )
    return fig


# ------------------------------------------------------------------ figure 4
_COMPONENTS = (  # name, bar offset (in bar widths), fill colour, error-bar colour
    ("validity", -1, "#3182bd", "#08519c"),
    ("accuracy", 0, "#fd8d3c", "#a63603"),
)
_BAR_WIDTH = 0.26


def _gap_range(panels: list[pd.DataFrame], thresholds) -> tuple[float, float]:
    """y limits (%) that hold every bar, error bar, marker and both thresholds."""
    vals = [0.0, 100 * thresholds[1] + 5]
    for sub in panels:
        for col in ("validity_component", "accuracy_component", "combined_gap"):
            v = 100 * sub[col].to_numpy(dtype=float)
            e = 100 * _Z95 * np.nan_to_num(sub[f"{col}_se"].to_numpy(dtype=float))
            vals += list((v + e)[np.isfinite(v)]) + list((v - e)[np.isfinite(v)])
    lo, hi = min(vals), max(vals)
    pad = 0.06 * (hi - lo)
    return lo - pad, hi + pad


def _gap_panel(ax, sub: pd.DataFrame, labels: list[str], thresholds,
               ylim: tuple[float, float]) -> None:
    """Grouped bars (validity, accuracy component) and the combined gap, per column."""
    x = np.arange(len(sub))
    w = _BAR_WIDTH
    lo_t, hi_t = 100 * thresholds[0], 100 * thresholds[1]
    bottom, top = ylim
    ax.axhspan(bottom, lo_t, color=_REGIME_COLOURS["easy"], alpha=0.6, zorder=0, lw=0)
    ax.axhspan(lo_t, hi_t, color=_REGIME_COLOURS["moderate"], alpha=0.6, zorder=0, lw=0)
    ax.axhspan(hi_t, top, color=_REGIME_COLOURS["hard"], alpha=0.6, zorder=0, lw=0)
    for y in (lo_t, hi_t):
        ax.axhline(y, color="0.3", ls="--", lw=1, zorder=1)
    ax.axhline(0, color="k", lw=0.8, zorder=1)
    for name, off, colour, ecolour in _COMPONENTS:
        comp = 100 * sub[f"{name}_component"].to_numpy(dtype=float)
        se = 100 * sub[f"{name}_component_se"].to_numpy(dtype=float)
        ax.bar(x + off * w, comp, width=w, color=colour, edgecolor="0.25", lw=0.6, zorder=2,
               yerr=_Z95 * se, error_kw={"ecolor": ecolour, "lw": 1, "capsize": 2.5,
                                         "zorder": 3},
               label=f"{name} component $\\pm$ 1.96 SE")
    cg = 100 * sub["combined_gap"].to_numpy(dtype=float)
    ax.errorbar(x + w, cg, yerr=_Z95 * 100 * sub["combined_gap_se"].to_numpy(dtype=float),
                fmt="D", color="k", ms=6, capsize=4, lw=1.4, zorder=4,
                label="combined gap $\\pm$ 1.96 SE")
    ticks = [f"{lab}\n{c:.1f}%, {reg}" if np.isfinite(c) else f"{lab}\n-"
             for lab, c, reg in zip(labels, cg, sub["regime"], strict=True)]
    ax.set_xticks(x, ticks, fontsize=8)
    ax.set_xlim(-0.6, len(x) - 0.4)
    ax.set_ylim(bottom, top)
    ax.grid(axis="y", alpha=0.25, zorder=0)


def plot_transfer_gaps(
    ds: xr.Dataset | None = None,
    *,
    gaps: pd.DataFrame | None = None,
    reference: Sequence[str] = gapdefs.DEFAULT_REFERENCE,
    thresholds: Sequence[float] = gapdefs.DEFAULT_THRESHOLDS,
    iteration: int | None = None,
) -> Figure:
    """Figure 4: transfer gaps and their validity and accuracy components.

    Left: every dataset under the reference task; right: every task for the reference
    dataset (the reference cell itself is left out); both panels share the y axis. For
    each column, side by side: the validity component (blue bar), the accuracy component
    (orange bar) -- the two Shapley components of
    :func:`llmnas_transfer.sim.gaps.gap_components`, which add up to the combined gap --
    and the combined gap itself (black diamond). Every bar and the diamond carry their
    own 95% interval (+- 1.96 bootstrap SE over trials). Shading and dashed lines mark the
    regimes; they are named in the legend outside the axes, and each tick label gives
    the column's combined gap and regime (no text is drawn over the data).

    Parameters
    ----------
    ds : results (used when ``gaps`` is not given).
    gaps : a precomputed :func:`llmnas_transfer.summarize.tables.gaps_table`.
    reference, thresholds, iteration : as in :func:`llmnas_transfer.summarize.tables.gaps_table`.

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10,imagenet", tasks="classification,generation",
    ...              num_trials=3, num_iterations=2, num_candidates=8)
    >>> len(plot_transfer_gaps(r).axes)
    2
    """
    thresholds = gapdefs.check_thresholds(thresholds)
    if gaps is None:
        if ds is None:
            raise UserInputError("plot_transfer_gaps needs results (ds) or a gaps table")
        _check_results(ds)
        gaps = metrics.gaps_table(ds, reference=reference, iteration=iteration,
                                  thresholds=thresholds)
    need = {"dataset", "task", "validity_component", "accuracy_component", "combined_gap",
            "validity_component_se", "accuracy_component_se", "combined_gap_se", "regime"}
    missing = sorted(need - set(gaps.columns))
    if missing:
        raise UserInputError(f"gaps table lacks the column(s) {', '.join(missing)}")
    rd, rt = reference[0].lower(), reference[1].lower()
    across_d = gaps[(gaps["task"] == rt) & (gaps["dataset"] != rd)]
    across_t = gaps[(gaps["dataset"] == rd) & (gaps["task"] != rt)]
    panels = [(p, lab) for p, lab in ((across_d, "dataset"), (across_t, "task")) if len(p)]
    if not panels:  # only the reference cell was simulated: say so in the figure
        fig = _figure(6.0, 3.0)
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, f"Only the reference setting {rd} {rt} was simulated:\n"
                "there is no transfer gap to show.", ha="center", va="center")
        ax.set_axis_off()
        ax.set_title(f"Transfer gaps relative to {rd} {rt}")
        return fig
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ncol = sum(len(p) for p, _ in panels)
    fig = _figure(min(18.0, 4.6 + 1.15 * ncol), 5.8)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True,
                        width_ratios=[max(len(p), 2) for p, _ in panels])[0]
    ylim = _gap_range([p for p, _ in panels], thresholds)
    for ax, (sub, lab) in zip(axes, panels, strict=True):
        _gap_panel(ax, sub, list(sub[lab]), thresholds, ylim)
        if lab == "dataset":
            ax.set_xlabel(f"Dataset (task: {rt}); under each name: combined gap, regime",
                          fontsize=9)
            ax.set_title(f"Across datasets ({rt})")
        else:
            ax.set_xlabel(f"Task (dataset: {rd})", fontsize=9)
            ax.set_title(f"Across tasks ({rd})")
    axes[0].set_ylabel("Transfer gap (%)")
    lo_t, hi_t = 100 * thresholds[0], 100 * thresholds[1]
    handles, labels = axes[0].get_legend_handles_labels()
    handles += [Patch(facecolor=_REGIME_COLOURS[r], alpha=0.6, edgecolor="0.6")
                for r in ("easy", "moderate", "hard")]
    labels += [f"easy: gap < {lo_t:g}%", f"moderate: {lo_t:g}% to {hi_t:g}%",
               f"hard: gap > {hi_t:g}%"]
    handles.append(Line2D([], [], color="0.3", ls="--", lw=1))
    labels.append(f"regime thresholds ({lo_t:g}%, {hi_t:g}%)")
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"Transfer gaps relative to {rd} {rt}")
    _caption(
        fig,
        "Per column: validity component (blue), accuracy component (orange), combined gap "
        "(black diamond) = 1 - (V/V_ref)(A/A_ref) = validity + accuracy component (Shapley "
        "split); V: final validity, A: mean first-epoch accuracy of valid candidates. "
        f"{_uncertainty(bootstrap=True)}",
    )
    return fig


# ------------------------------------------------------------------ figure 5
def plot_validity_heatmap(ds: xr.Dataset, *, iteration: int | None = None) -> Figure:
    """Figure 5: heatmap of final validity (mean over trials) for every cell.

    Each cell is annotated with its value and the half-width of its 95% interval
    (1.96 Monte Carlo SE over trials); the lowest cell is outlined.

    Example
    -------
    >>> import llmnas_transfer as lt
    >>> fig = plot_validity_heatmap(lt.simulate(0, datasets="cifar-10,svhn", num_trials=2,
    ...                                         num_iterations=2, num_candidates=5))
    >>> fig.axes[1].get_ylabel()
    'Final validity rate (%)'
    """
    _check_results(ds)
    it = _final_iteration(ds, iteration)
    rate = ds["validity_rate"].sel(iteration=it).transpose("dataset", "task", "trial")
    n = rate.sizes["trial"]
    mean = 100 * rate.mean("trial").values
    se = 100 * rate.std("trial", ddof=1).values / np.sqrt(n) if n > 1 else np.full_like(mean,
                                                                                          np.nan)
    dnames = [str(d) for d in ds["dataset"].values]
    tnames = [str(t) for t in ds["task"].values]
    fig = _figure(1.6 * len(tnames) + 3.2, 0.62 * len(dnames) + 2.2)
    ax = fig.add_subplot()
    im = ax.imshow(mean, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("Final validity rate (%)")
    for i in range(len(dnames)):
        for k in range(len(tnames)):
            half = _Z95 * se[i, k]
            txt = f"{mean[i, k]:.1f}" + ("" if np.isnan(half) else f"\n$\\pm${half:.1f}")
            colour = "k" if mean[i, k] > 60 else "w"
            ax.text(k, i, txt, ha="center", va="center", fontsize=8, color=colour)
    if np.isfinite(mean).any():
        i, k = np.unravel_index(np.nanargmin(mean), mean.shape)
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((k - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5,
                               label=f"lowest: {dnames[i]} x {tnames[k]}"))
        _legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, frameon=False)
    ax.set_xticks(np.arange(len(tnames)), tnames)
    ax.set_yticks(np.arange(len(dnames)), dnames)
    ax.set_xlabel("Task")
    ax.set_ylabel("Dataset")
    ax.set_title(f"Final validity rate (iteration {it})")
    _caption(fig, "Cells: mean over trials (%) $\\pm$ half-width of its 95% interval. "
             f"{_uncertainty()} {_protocol(ds)}.")
    return fig


def plot_trend_gains(
    ds: xr.Dataset | None = None,
    *,
    gains: pd.DataFrame | None = None,
    reference: Sequence[str] = gapdefs.DEFAULT_REFERENCE,
    interval: str = "95% interval (estimate $\\pm$ 1.96 bootstrap SE over trials)",
) -> Figure:
    """Figure 6: refinement gain per setting against the reference's.

    The gain of a setting is its validity at the last iteration minus at iteration 1 (in
    percentage points); one panel per task, one point per dataset with its interval, and
    the reference setting's gain and interval as a dashed line and band in every panel.
    A setting whose interval lies below the band gains less than the reference: its
    trend does not carry over (its trend gap, ``1 - gain / gain_ref``, is above 0).

    Parameters
    ----------
    ds : results (used when ``gains`` is not given; gains from
        :func:`llmnas_transfer.summarize.tables.gaps_table`).
    gains : a table with columns ``dataset``, ``task``, ``gain``, ``gain_lo``, ``gain_hi``
        (fractions), e.g. posterior gains with their HDI.
    interval : the caption's statement of what the intervals are.

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10,audioset", tasks="classification,generation",
    ...              num_trials=3, num_iterations=3, num_candidates=8)
    >>> plot_trend_gains(r).axes[0].get_ylabel()
    'Gain in validity, last minus first iteration (points)'
    """
    rd, rt = reference[0].lower(), reference[1].lower()
    if gains is None:
        if ds is None:
            raise UserInputError("plot_trend_gains needs results (ds) or a gains table")
        _check_results(ds)
        g = metrics.gaps_table(ds, reference=reference)
        gains = g.assign(gain_lo=g["gain"] - _Z95 * g["gain_se"].fillna(0.0),
                         gain_hi=g["gain"] + _Z95 * g["gain_se"].fillna(0.0))
        protocol = f" {_protocol(ds)}."
    else:
        protocol = ""
    need = {"dataset", "task", "gain", "gain_lo", "gain_hi"}
    missing = sorted(need - set(gains.columns))
    if missing:
        raise UserInputError(f"gains table lacks the column(s) {', '.join(missing)}")
    ref = gains[(gains["dataset"] == rd) & (gains["task"] == rt)]
    tasks = list(dict.fromkeys(gains["task"]))
    dnames = list(dict.fromkeys(gains["dataset"]))
    fig = _figure(min(18.0, 2.0 + 0.55 * len(dnames) * len(tasks) + 0.8 * len(tasks)), 4.6)
    axes = fig.subplots(1, len(tasks), squeeze=False, sharey=True)[0]
    colours = _colours(dnames)
    for ax, t in zip(axes, tasks, strict=True):
        sub = gains[gains["task"] == t].set_index("dataset").reindex(dnames)
        x = np.arange(len(dnames))
        if len(ref):
            r = ref.iloc[0]
            ax.axhspan(100 * r["gain_lo"], 100 * r["gain_hi"], color="0.85", zorder=0,
                       label=f"reference {rd} {rt}")
            ax.axhline(100 * r["gain"], color="0.3", ls="--", lw=1, zorder=1)
        for i, d in enumerate(dnames):
            row = sub.loc[d]
            if not np.isfinite(row["gain"]):
                continue
            lo, hi = 100 * (row["gain"] - row["gain_lo"]), 100 * (row["gain_hi"] - row["gain"])
            ax.errorbar([x[i]], [100 * row["gain"]], yerr=[[lo], [hi]], fmt="o",
                        color=colours[d], capsize=3, zorder=3)
        ax.axhline(0, color="0.5", lw=0.8, zorder=1)
        ax.set_xticks(x, dnames, rotation=45, ha="right", fontsize=8)
        ax.set_title(t)
        ax.grid(axis="y", alpha=0.25, zorder=0)
    axes[0].set_ylabel("Gain in validity, last minus first iteration (points)")
    _legend(axes[-1], loc="upper right", fontsize=8)
    fig.suptitle("Refinement gain per setting against the reference")
    _caption(fig, "Points: gain of each setting; dashed line and grey band: the reference's "
             f"gain and interval. Uncertainty: {interval}.{protocol}")
    return fig


# ------------------------------------------------------------------ saving
def plot_backtest(scores: pd.DataFrame, observed: pd.DataFrame, *, run: str | None = None,
                  baseline: str = "replay", max_panels: int = 6) -> Figure:
    """Fan chart of a rolling-origin backtest: one panel per origin (at most
    ``max_panels``, evenly spread) of one run (default: the first scored).

    Each panel shows the run's observed validity rates, the model's median forecast with
    its central 50% and 90% predictive intervals over the horizon, and the ``baseline``'s
    90% interval, from the score table of
    :func:`~llmnas_transfer.study.backtest.backtest` (its ``q*`` columns) and its
    observed rates.

    Example
    -------
    >>> sc = pd.DataFrame({"method": ["model", "replay"], "origin": 2, "run": "r",
    ...                    "iteration": 3, "q0.05": 0.1, "q0.25": 0.3, "q0.5": 0.5,
    ...                    "q0.75": 0.7, "q0.95": 0.9})
    >>> ob = pd.DataFrame({"run": "r", "iteration": [1, 2, 3],
    ...                    "observed_rate": [0.2, 0.4, 0.6]})
    >>> plot_backtest(sc, ob).axes[0].get_title()
    'origin 2: fitted on iterations 1-2'
    """
    need = {"method", "origin", "run", "iteration", "q0.05", "q0.25", "q0.5", "q0.75",
            "q0.95"}
    missing = need - set(scores.columns)
    if missing:
        raise UserInputError(f"backtest scores lack the columns {sorted(missing)}")
    runs = list(dict.fromkeys(scores["run"]))
    if not runs:
        raise UserInputError("the backtest has no scored forecast to draw")
    run = runs[0] if run is None else str(run)
    if run not in runs:
        raise UserInputError(f"run {run!r} was not scored; scored runs: {', '.join(runs)}")
    sc = scores[scores["run"] == run]
    origins = sorted(set(sc["origin"]))
    if len(origins) > max_panels:
        pick = np.unique(np.linspace(0, len(origins) - 1, max_panels).round().astype(int))
        origins = [origins[i] for i in pick]
    ob = observed[observed["run"] == run].sort_values("iteration")
    ncol = min(3, len(origins))
    nrow = -(-len(origins) // ncol)
    fig = _figure(4.0 * ncol, 2.9 * nrow + 0.9)
    axes = fig.subplots(nrow, ncol, squeeze=False, sharey=True)
    for ax, k in zip(axes.flat, origins, strict=False):
        ax.plot(ob["iteration"], ob["observed_rate"], "o-", color="black", ms=3, lw=0.8,
                label="observed rate")
        m = sc[(sc["origin"] == k) & (sc["method"] == "model")].sort_values("iteration")
        x = m["iteration"].to_numpy()
        ax.fill_between(x, m["q0.05"], m["q0.95"], color="#9ecae1", alpha=0.6, lw=0,
                        label="model 90% interval")
        ax.fill_between(x, m["q0.25"], m["q0.75"], color="#3182bd", alpha=0.6, lw=0,
                        label="model 50% interval")
        ax.plot(x, m["q0.5"], color="#08519c", lw=1.4, label="model median")
        b = sc[(sc["origin"] == k) & (sc["method"] == baseline)].sort_values("iteration")
        if len(b):
            for col in ("q0.05", "q0.95"):
                ax.plot(b["iteration"], b[col], ls="--", color="#d95f02", lw=1.0,
                        label=f"{baseline} 90% interval" if col == "q0.05" else None)
        ax.axvline(k + 0.5, color="grey", ls=":", lw=0.8)
        ax.set_title(f"origin {k}: fitted on iterations 1-{k}", fontsize=9)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("iteration")
        ax.set_ylabel("validity rate (valid / generated)")
    for ax in list(axes.flat)[len(origins):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=min(5, len(labels)),
               fontsize=8, frameon=False)
    _caption(fig, f"Run {run}. Forecasts of the observed validity rate at the run's "
                  "candidate count. Uncertainty: central 50% and 90% posterior predictive "
                  "intervals (binomial noise, and bursts where modelled, included); dashed: "
                  f"the {baseline} baseline's central 90% interval. The dotted line marks "
                  "the last iteration each fit saw.")
    return fig


def save_figure(fig: Figure, stem: str | os.PathLike, *, dpi: int = 150,
                bbox_inches: str | None = None) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` (each written atomically).

    ``dpi`` is the resolution of the PNG (and of anything rasterised in the PDF);
    ``bbox_inches="tight"`` crops the figure to what is drawn.

    Example
    -------
    >>> import tempfile, pathlib
    >>> from matplotlib.figure import Figure
    >>> fig = Figure(); ax = fig.add_subplot(); _ = ax.plot([0, 1])
    >>> [p.suffix for p in save_figure(fig, pathlib.Path(tempfile.mkdtemp()) / "f")]
    ['.png', '.pdf']
    """
    stem = Path(stem)
    paths = [check_writable(stem.with_name(stem.name + ext)) for ext in (".png", ".pdf")]
    with atomic_paths(paths) as tmps:
        for tmp, p in zip(tmps, paths, strict=True):
            fig.savefig(tmp, format=p.suffix[1:], dpi=dpi, bbox_inches=bbox_inches)
    return paths


def prepare_output_folder(out_dir: str | os.PathLike) -> Path:
    """Check an output folder for tables and figures, create it and check it is writable.

    A path that exists but is not a folder, a folder that cannot be created and one that
    cannot be written in raise :class:`~llmnas_transfer.errors.UserInputError`. No
    matplotlib backend is chosen: figures here are :class:`matplotlib.figure.Figure`
    objects, which render without one.

    Example
    -------
    >>> import tempfile, pathlib
    >>> prepare_output_folder(pathlib.Path(tempfile.mkdtemp()) / "a" / "b").is_dir()
    True
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"{out}: cannot create the folder ({exc.strerror or exc})") from None
    probe_folder(out)
    return out


def study_figures(
    ds: xr.Dataset,
    out_dir: str | os.PathLike,
    *,
    validity: pd.DataFrame | None = None,
    gaps: pd.DataFrame | None = None,
    reference: Sequence[str] = gapdefs.DEFAULT_REFERENCE,
    thresholds: Sequence[float] = gapdefs.DEFAULT_THRESHOLDS,
) -> list[Path]:
    """Draw the five study figures and the trend figure, PNG and PDF, under ``out_dir``.

    Example
    -------
    >>> import tempfile
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, datasets="cifar-10,svhn", tasks="classification,generation",
    ...              num_trials=3, num_iterations=2, num_candidates=8)
    >>> len(study_figures(r, tempfile.mkdtemp()))
    12
    """
    out = Path(out_dir)
    builders = (
        lambda: plot_validity_trajectories(ds, validity=validity),
        lambda: plot_validity_by_task(ds),
        lambda: plot_accuracy_distributions(ds),
        lambda: plot_transfer_gaps(ds, gaps=gaps, reference=reference, thresholds=thresholds),
        lambda: plot_validity_heatmap(ds),
        lambda: plot_trend_gains(ds, reference=reference),
    )
    paths: list[Path] = []
    for name, build in zip(FIGURE_NAMES, builders, strict=True):
        paths += save_figure(build(), out / name)
    return paths
