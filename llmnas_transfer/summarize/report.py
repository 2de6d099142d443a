"""One self-contained HTML report of a fit file or of a study folder.

:func:`fit_report_html` reads a fit written by ``llmnas-transfer fit`` and renders its
data summary, diagnostics, posterior transfer gaps (every component the gap table
returns, with HDIs and regime probabilities), the validity trajectories and forecasts,
and the posterior predictive checks. :func:`study_report_html` renders a folder written
by ``llmnas-transfer reproduce``: its configuration, its tables and its figures.
:func:`write_report` picks the right one from the input path and writes the file
atomically.

The page needs nothing from the network: figures are embedded as
``data:image/png;base64`` URIs, the style sheet is inline and there is no script. Every
piece of text is HTML-escaped. Fractions are shown as percentages in the page's tables
(the column header says "%"); the files the report reads are left untouched.

Example
-------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> (folder / "tables").mkdir()
>>> _ = (folder / "tables" / "gaps.csv").write_text("dataset,task,validity_gap\\nsvhn,x,0.25\\n")
>>> page = study_report_html(folder)
>>> "<td>25.0</td>" in page and "validity gap (%)" in page
True
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmnas_transfer import __version__
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.io.atomic import atomic_write_text, check_writable
from llmnas_transfer.progress import Stages
from llmnas_transfer.sim.gaps import DEFAULT_THRESHOLDS

#: the report's interval convention for posterior quantities (as in ``gaps``/``trajectory``)
DEFAULT_CI = 0.94
#: the file marking a study folder (``llmnas_transfer.study.reproduce.MANIFEST``; the study
#: layer sits above this one, so the name is repeated here)
STUDY_MANIFEST = "study.json"
#: study tables in the order they are shown (others found in ``tables/`` follow)
STUDY_TABLES: tuple[str, ...] = ("targets", "validity", "accuracy", "gaps")

# columns that hold fractions (shown as percent in the page's tables) ...
_FRACTION = re.compile(
    r"(^mean$|^sd$|^se$|^p_|^hdi|_gap|_component|_mean$|_sd$|_se$|_q\d\d$|rate$|"
    r"value$|^ci_low$|^ci_high$|^accuracy|^validity|^novelty|^observed$|^replicated)")
# ... except these (counts, z-scores, p-values of checks, iterations)
_NOT_FRACTION = re.compile(r"(^n_|_z$|trials$|^iteration$|^p_value$|^chains?$|^draws$)")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#1a1a1a;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #444;padding-bottom:.2em}
h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #bbb}
h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:right}
th{background:#f0f0f0}
td.text,th.text{text-align:left}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.85em;color:#444;margin-top:.3em}
.warn{color:#8a1c00}
.ok{color:#1d6b1d}
.note{font-size:.85em;color:#555}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;font-size:.9em}
dl.kv dt{font-weight:600}
dl.kv dd{margin:0}
nav ul{columns:2;font-size:.9em}
"""


# ------------------------------------------------------------------ HTML helpers
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _section(title: str, body: Sequence[str]) -> str:
    return f'<section id="{_anchor(title)}">\n<h2>{_esc(title)}</h2>\n' + "\n".join(body) + \
        "\n</section>"


def _para(text: str, cls: str | None = None) -> str:
    return f'<p class="{cls}">{_esc(text)}</p>' if cls else f"<p>{_esc(text)}</p>"


def _kv(items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items)
    return f'<dl class="kv">{rows}</dl>'


def _page(title: str, sections: Sequence[tuple[str, str]], subtitle: str) -> str:
    """The whole document: title, contents, the sections (``(title, html)``)."""
    toc = "".join(f'<li><a href="#{_anchor(t)}">{_esc(t)}</a></li>' for t, _ in sections)
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_esc(title)}</h1>\n"
        f"<p class=\"note\">{_esc(subtitle)} Made by llmnas-transfer {_esc(__version__)} "
        f"on {_esc(made)}.</p>\n"
        f"<nav><ul>{toc}</ul></nav>\n" + "\n".join(body for _, body in sections) +
        "\n</body>\n</html>\n"
    )


def is_fraction_column(name: str) -> bool:
    """Whether a table column holds fractions, shown as percent in the report's tables.

    Example
    -------
    >>> [is_fraction_column(c) for c in ("validity_mean", "hdi_low", "n_valid", "protocol_z")]
    [True, True, False, False]
    """
    return bool(_FRACTION.search(name)) and not _NOT_FRACTION.search(name)


def _percent_text(value: Any) -> Any:
    """A fraction written as text (``"[0.1, 0.2]"``, ``">= 0"``) with its numbers in percent."""
    return re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", lambda m: f"{100 * float(m.group(0)):.4g}",
                  str(value))


def _cell(value: Any, *, percent: bool, digits: int) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)) and not percent:
        return str(int(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        return f"{100 * v:.{max(digits - 2, 1)}f}" if percent else f"{v:.{digits}f}"
    if percent and isinstance(value, str) and re.search(r"\d", value):
        return _percent_text(value)
    return str(value)


def html_table(df: pd.DataFrame, *, digits: int = 3, percent: bool = True,
               max_rows: int = 400) -> str:
    """A DataFrame as an HTML table: escaped text, fractions in percent ("%" in the header).

    ``percent`` turns columns named like fractions (:func:`is_fraction_column`) into
    percent with ``digits - 2`` decimals; other numbers get ``digits`` decimals. Longer
    tables are cut at ``max_rows`` rows, with a note.

    Example
    -------
    >>> t = html_table(pd.DataFrame({"task": ["a<b"], "validity_mean": [0.5]}))
    >>> "a&lt;b" in t, "validity mean (%)" in t, "<td>50.0</td>" in t
    (True, True, True)
    """
    text_col = {c: not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])
                for c in df.columns}
    pct = {str(c): percent and is_fraction_column(str(c))
           and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns}
    head = "".join(
        f'<th{" class=\"text\"" if text_col[c] else ""}>'
        f'{_esc(str(c).replace("_", " ") + (" (%)" if pct[str(c)] else ""))}</th>'
        for c in df.columns)
    rows = []
    for rec in df.head(max_rows).itertuples(index=False, name=None):
        cells = "".join(
            f'<td{" class=\"text\"" if text_col[c] else ""}>'
            f'{_esc(_cell(v, percent=pct[str(c)], digits=digits))}</td>'
            for c, v in zip(df.columns, rec, strict=True))
        rows.append(f"<tr>{cells}</tr>")
    more = ""
    if len(df) > max_rows:
        more = _para(f"(first {max_rows} of {len(df)} rows shown)", "note")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + \
        "\n</tbody>\n</table>" + more


def _img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


def _figure_html(png: bytes, alt: str, caption: str) -> str:
    return f"<figure>{_img_tag(png, alt)}<figcaption>{_esc(caption)}</figcaption></figure>"


def _png(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


# ------------------------------------------------------------------ fit figures
def _grid(n: int, width: float = 3.2, height: float = 2.6):
    from matplotlib.figure import Figure

    ncol = max(1, min(4, n))
    nrow = max(1, math.ceil(n / ncol))
    fig = Figure(figsize=(width * ncol, height * nrow + 0.3), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def trajectory_figure(traj: pd.DataFrame, *, ci: float = DEFAULT_CI,
                      num_iterations: int | None = None):
    """Observed and forecast validity rates, one panel a setting, with the HDI band.

    ``traj`` is :func:`llmnas_transfer.summarize.posterior.trajectory`'s table; a dotted
    line marks the last observed iteration (``num_iterations``).

    Example
    -------
    >>> t = pd.DataFrame({"dataset": ["d"] * 3, "task": ["t"] * 3, "iteration": [1, 2, 3],
    ...                   "observed_rate": [0.2, 0.3, float("nan")], "mean": [0.2, 0.3, 0.4],
    ...                   "hdi_low": [0.1, 0.2, 0.2], "hdi_high": [0.3, 0.4, 0.6],
    ...                   "forecast": [False, False, True], "basis": ["observed runs"] * 3})
    >>> fig = trajectory_figure(t, num_iterations=2)
    >>> fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
    ('refinement iteration', 'validity rate (%)')
    """
    settings = list(dict.fromkeys(zip(traj["dataset"], traj["task"], strict=True)))
    fig, axes = _grid(len(settings))
    for ax, (d, t) in zip(axes, settings, strict=False):
        s = traj[(traj["dataset"] == d) & (traj["task"] == t)]
        basis = str(s["basis"].iloc[0]) if "basis" in s else ""
        colour = "C0" if basis == "observed runs" else "C1"
        ax.fill_between(s["iteration"], 100 * s["hdi_low"], 100 * s["hdi_high"], alpha=0.3,
                        color=colour, label=f"{ci:.0%} HDI")
        ax.plot(s["iteration"], 100 * s["mean"], lw=1.5, color=colour, label="posterior mean")
        obs = s["observed_rate"].astype(float)
        if np.isfinite(obs).any():
            ax.plot(s["iteration"], 100 * obs, "o", ms=3.5, color="k", label="observed")
        if num_iterations is not None and s["iteration"].max() > num_iterations:
            ax.axvline(num_iterations + 0.5, color="grey", ls=":", lw=1,
                       label="forecast starts")
        ax.set_title(f"{d} / {t}" + ("" if basis == "observed runs" else f" ({basis})"),
                     fontsize=9)
        ax.set_xlabel("refinement iteration")
        ax.set_ylabel("validity rate (%)")
        ax.set_ylim(0, 100)
    if settings:
        axes[0].legend(fontsize=7, loc="best")
    return fig


def gaps_figure(gaps: pd.DataFrame, *, ci: float = DEFAULT_CI,
                thresholds: Sequence[float] = DEFAULT_THRESHOLDS):
    """Posterior gaps with their HDIs, one panel per component, regime thresholds dashed.

    ``gaps`` is :func:`llmnas_transfer.summarize.posterior.posterior_gaps`'s table; every
    component it holds gets a panel.

    Example
    -------
    >>> g = pd.DataFrame({"dataset": ["a", "b"], "task": ["t", "t"],
    ...                   "component": ["validity", "validity"], "mean": [0.0, 0.2],
    ...                   "hdi_low": [0.0, 0.1], "hdi_high": [0.0, 0.3],
    ...                   "observed": [True, False]})
    >>> gaps_figure(g).axes[0].get_title()
    'validity gap'
    """
    comps = list(dict.fromkeys(gaps["component"]))
    settings = list(dict.fromkeys(zip(gaps["dataset"], gaps["task"], strict=True)))
    fig, axes = _grid(len(comps), width=3.6, height=0.9 + 0.28 * len(settings))
    labels = [f"{d} / {t}" for d, t in settings]
    ypos = {s: i for i, s in enumerate(settings)}
    for ax, comp in zip(axes, comps, strict=False):
        s = gaps[gaps["component"] == comp]
        y = np.asarray([ypos[(d, t)] for d, t in zip(s["dataset"], s["task"], strict=True)])
        m = 100 * s["mean"].to_numpy(float)
        lo, hi = 100 * s["hdi_low"].to_numpy(float), 100 * s["hdi_high"].to_numpy(float)
        seen = s["observed"].to_numpy(bool) if "observed" in s else np.ones(len(s), bool)
        for mask, marker, lab in ((seen, "o", "settings with data"),
                                  (~seen, "s", "predicted (hierarchy)")):
            if mask.any():
                ax.errorbar(m[mask], y[mask], xerr=[m[mask] - lo[mask], hi[mask] - m[mask]],
                            fmt=marker, ms=4, capsize=2, lw=1, label=lab,
                            mfc="white" if marker == "s" else None)
        for th in thresholds:
            ax.axvline(100 * th, color="grey", ls="--", lw=0.8)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_yticks(range(len(settings)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{comp} gap", fontsize=9)
        ax.set_xlabel("gap relative to the reference (%)")
    if comps:
        axes[0].legend(fontsize=7, loc="best")
    return fig


# ------------------------------------------------------------------ fit report
def _observations(spec) -> str:
    what = ["validity (valid candidates per iteration)"]
    if spec.has_accuracy:
        what.append("first-epoch accuracy of valid candidates")
    if spec.has_novelty:
        what.append("novelty scores")
    return "; ".join(what)


def _data_section(dt, spec, info, notices: list[str]) -> str:
    cd = dt["constant_data"].dataset
    rd = cd["run_dataset"].values.astype(str)
    rt = cd["run_task"].values.astype(str)
    ng = np.asarray(cd["n_generated"].values).astype(np.int64)
    nv = np.asarray(dt["observed_data"].dataset["n_valid"].values).astype(np.int64)
    runs = pd.DataFrame({"dataset": rd, "task": rt, "generated": ng.sum(axis=-1),
                         "valid": nv.sum(axis=-1)})
    per = (runs.groupby(["dataset", "task"], sort=False)
           .agg(runs=("dataset", "size"), candidates=("generated", "sum"),
                valid=("valid", "sum")).reset_index())
    per["valid_rate"] = per["valid"] / per["candidates"].where(per["candidates"] > 0)
    ref = f"{spec.datasets[spec.reference[0]]} / {spec.tasks[spec.reference[1]]}"
    items = [
        ("datasets", ", ".join(spec.datasets)),
        ("tasks", ", ".join(spec.tasks)),
        ("settings with data", f"{len(spec.observed)} of {len(spec.datasets) * len(spec.tasks)}"),
        ("runs (trials)", f"{len(runs)}"),
        ("observed iterations", f"1-{spec.num_iterations}"),
        ("forecast iterations", f"{spec.num_forecast}"
         + (f" (up to iteration {spec.horizon})" if spec.num_forecast else "")),
        ("candidates generated", f"{int(ng.sum())} ({int(nv.sum())} valid)"),
        ("observations", _observations(spec)),
        ("reference setting of the gaps", ref),
        ("gap iteration", f"{spec.gap_t}"),
        ("inference", f"{info.method}" + (
            f", {info.chains} chains x ({info.warmup} warmup + {info.draws} draws), "
            f"chains run {info.chain_method}" if info.method == "nuts" else
            f", {info.draws} posterior draws")),
        ("time", f"{info.seconds_sampling:.1f} s sampling, {info.seconds_total:.1f} s in all"),
    ]
    body = [_kv(items), "<h3>Runs per setting</h3>", html_table(per)]
    notes = list(notices) + [str(n) for n in spec.notes if str(n) not in notices]
    if notes:
        body.append("<h3>Notices recorded with the fit</h3>")
        body.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    return _section("Data summary", body)


def _diagnostics_section(diag) -> str:
    s = diag.stats
    items = [(k.replace("_", " "), (f"{v:.0f}" if "ess" in k else f"{v:.3f}")
              if isinstance(v, float) else v) for k, v in s.items()]
    body = [_kv(items)]
    if diag.ok:
        body.append(_para("All convergence checks passed.", "ok"))
    for w in diag.warnings:
        body.append(_para(f"warning: {w}", "warn"))
    cols = [c for c in ("mean", "sd", "hdi94_lb", "hdi94_ub", "ess_bulk", "ess_tail", "r_hat")
            if c in diag.summary.columns]
    table = diag.summary[cols].reset_index().rename(columns={"index": "parameter"})
    for c in ("ess_bulk", "ess_tail"):  # effective sample sizes: whole draws
        if c in table:
            table[c] = table[c].round().astype("Int64")
    body.append("<h3>Parameter summary (94% HDI, model scale)</h3>")
    body.append(html_table(table, percent=False))
    return _section("Diagnostics", body)


def _gaps_section(gaps: pd.DataFrame, ci: float, thresholds: Sequence[float]) -> str:
    lo, hi = thresholds
    body = [_para(
        f"Transfer gaps relative to the reference setting, as posterior mean, sd and "
        f"{ci:.0%} HDI (percent; 0 = no gap). Regime probabilities: easy below {lo:.0%}, "
        f"hard above {hi:.0%}, moderate in between. 'observed: no' marks settings without "
        "data, predicted through the hierarchy.")]
    comps = list(dict.fromkeys(gaps["component"]))
    body.append(_figure_html(_png(gaps_figure(gaps, ci=ci, thresholds=thresholds)),
                             "posterior transfer gaps",
                             f"Posterior transfer gaps (%) with {ci:.0%} HDI, one panel per "
                             f"component ({', '.join(comps)}); dashed lines: regime "
                             f"thresholds {lo:.0%} and {hi:.0%}."))
    for comp in comps:
        sub = gaps[gaps["component"] == comp].drop(columns=["component"])
        sub = sub.rename(columns={"hdi_low": f"hdi{round(100 * ci)}_low",
                                  "hdi_high": f"hdi{round(100 * ci)}_high"})
        body.append(f"<h3>{_esc(comp)} gap</h3>")
        body.append(html_table(sub.reset_index(drop=True)))
    return _section("Transfer gaps", body)


def _trajectory_section(traj: pd.DataFrame, ci: float, num_iterations: int) -> str:
    fig = trajectory_figure(traj, ci=ci, num_iterations=num_iterations)
    body = [_figure_html(
        _png(fig), "validity trajectories and forecasts",
        f"Pooled validity rate (%) per refinement iteration: posterior predictive mean and "
        f"{ci:.0%} HDI for settings with data (their observed runs continued), expected "
        f"rate of a new trial with its {ci:.0%} HDI for settings without data (hierarchy). "
        f"Dots: observed rates; the dotted line ends the observed iterations "
        f"(1-{num_iterations}); later iterations are forecasts.")]
    fc = traj[traj["forecast"]] if "forecast" in traj else traj.iloc[0:0]
    if len(fc):
        body.append(f"<h3>Forecasts ({ci:.0%} HDI)</h3>")
        show = fc.drop(columns=[c for c in ("observed_rate", "forecast") if c in fc])
        show = show.rename(columns={"mean": "validity_mean",
                                    "hdi_low": f"hdi{round(100 * ci)}_low",
                                    "hdi_high": f"hdi{round(100 * ci)}_high"})
        body.append(html_table(show.reset_index(drop=True)))
    return _section("Trajectories and forecasts", body)


def _checks_section(ppc: pd.DataFrame, loo: dict[str, Any] | None, loo_error: str | None) -> str:
    body = [_para(
        "Posterior predictive checks per observed setting: p_value is the posterior "
        "probability that the replicated statistic is at least the observed one; values "
        "below 1% or above 99% flag misfit.")]
    if len(ppc):
        n_bad = int(((ppc["p_value"] < 0.01) | (ppc["p_value"] > 0.99)).sum())
        body.append(_para(f"{n_bad} of {len(ppc)} statistics have p < 0.01 or p > 0.99.",
                          "warn" if n_bad else "ok"))
        body.append(html_table(ppc))
    else:
        body.append(_para("No posterior predictive statistics (no observed setting)."))
    body.append("<h3>PSIS-LOO</h3>")
    if loo is None:
        body.append(_para(f"LOO could not be computed: {loo_error}", "warn"))
    else:
        body.append(_kv([(k.replace("_", " "), f"{v:.2f}" if isinstance(v, float) else
                          ", ".join(map(str, v)) if isinstance(v, list) else v)
                         for k, v in loo.items()]))
    return _section("Checks", body)


def _stages(progress: bool, total: int, stack: ExitStack, label: str) -> Stages:
    return Stages(progress, total, stack, label=label)


def fit_report_html(path: str | os.PathLike, *, ci: float = DEFAULT_CI,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                    progress: bool = False) -> str:
    """The HTML report of a fit file written by ``llmnas-transfer fit``.

    Sections: data summary, diagnostics, transfer gaps (every component of
    :func:`~llmnas_transfer.summarize.posterior.posterior_gaps`, with HDIs and regime
    probabilities), trajectories and forecasts, checks (posterior predictive statistics
    and PSIS-LOO). ``progress`` shows one line per stage on a terminal.

    Example
    -------
    >>> page = fit_report_html("fit.nc")  # doctest: +SKIP
    >>> "<h2>Transfer gaps</h2>" in page  # doctest: +SKIP
    True
    """
    from llmnas_transfer.fit.fitfile import fit_info, load_fit, notices_of, spec_of
    from llmnas_transfer.summarize.posterior import (
        diagnostics,
        loo_summary,
        posterior_gaps,
        ppc_statistics,
        trajectory,
    )

    path = Path(path)
    with ExitStack() as stack:
        stages = _stages(progress, 5, stack, "report")
        stages.stage("reading the fit")
        dt = load_fit(path)
        spec, info = spec_of(dt), fit_info(dt)
        sections = [("Data summary", _data_section(dt, spec, info, notices_of(dt)))]
        stages.advance()
        stages.stage("diagnostics")
        sections.append(("Diagnostics", _diagnostics_section(diagnostics(dt))))
        stages.advance()
        stages.stage("gaps")
        gaps = posterior_gaps(dt, ci=ci, thresholds=thresholds)
        sections.append(("Transfer gaps", _gaps_section(gaps, ci, thresholds)))
        stages.advance()
        stages.stage("trajectories")
        sections.append(("Trajectories and forecasts",
                         _trajectory_section(trajectory(dt, ci=ci), ci, spec.num_iterations)))
        stages.advance()
        stages.stage("checks")
        try:
            loo, loo_error = loo_summary(dt), None
        except (ValueError, KeyError, TypeError) as exc:  # e.g. no log likelihood stored
            loo, loo_error = None, str(exc)
        sections.append(("Checks", _checks_section(ppc_statistics(dt), loo, loo_error)))
        stages.advance()
    return _page(f"llmnas-transfer report: {path.name}", sections,
                 f"Fit file {path}.")


# ------------------------------------------------------------------ study report
def _read_csv(p: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(p)
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{p}: not a readable CSV table ({exc})") from None


def _study_config(folder: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    p = folder / STUDY_MANIFEST
    if not p.is_file():
        return [], []
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{p}: not a readable study manifest ({exc})") from None
    if not isinstance(m, dict):
        raise UserInputError(f"{p}: not a study manifest (expected a JSON object)")
    items: list[tuple[str, Any]] = []
    for key in ("seed", "datasets", "tasks", "num_trials", "num_iterations", "num_candidates",
                "check_trials", "reference", "thresholds"):
        if key in m:
            v = m[key]
            items.append((key.replace("_", " "),
                          ", ".join(map(str, v)) if isinstance(v, list) else v))
    if isinstance(m.get("targets"), dict):
        t = m["targets"]
        items.append(("targets met", f"{t.get('fitted_met')} of {t.get('fitted_targets')} "
                      f"fitted targets ({t.get('met_basis')}); {t.get('claims_met')} of "
                      f"{t.get('claims')} claims"))
    if isinstance(m.get("timings_s"), dict) and "total" in m["timings_s"]:
        items.append(("time", f"{m['timings_s']['total']:.1f} s"))
    if isinstance(m.get("versions"), dict):
        items.append(("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items())))
    notes = [str(n) for n in m.get("notes", [])] if isinstance(m.get("notes"), list) else []
    return items, notes


def _study_table_paths(folder: Path) -> list[Path]:
    tables = folder / "tables"
    found = sorted(tables.glob("*.csv")) if tables.is_dir() else []
    order = {name: i for i, name in enumerate(STUDY_TABLES)}
    return sorted(found, key=lambda p: (order.get(p.stem, len(order)), p.stem))


def study_report_html(folder: str | os.PathLike, *, progress: bool = False) -> str:
    """The HTML report of a folder written by ``llmnas-transfer reproduce --out DIR``.

    Sections: the study's configuration (``study.json``), the targets table, the other
    tables of ``DIR/tables`` and the figures of ``DIR/figures`` (PNG, embedded).
    Fractions are shown as percent, with "%" in the column header.

    Example
    -------
    >>> page = study_report_html("study")  # doctest: +SKIP
    >>> "<h2>Targets</h2>" in page  # doctest: +SKIP
    True
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: not a folder")
    tables = _study_table_paths(folder)
    figures = sorted((folder / "figures").glob("*.png")) if (folder / "figures").is_dir() else []
    config, notes = _study_config(folder)
    if not (tables or figures or config):
        raise UserInputError(f"{folder}: not a study folder written by 'llmnas-transfer "
                             "reproduce' (no study.json, tables/*.csv or figures/*.png)")
    sections: list[tuple[str, str]] = []
    with ExitStack() as stack:
        stages = _stages(progress, 3, stack, "report")
        stages.stage("configuration")
        body = [_kv(config)] if config else [_para("No study.json in this folder.", "note")]
        if notes:
            body.append("<h3>Notes</h3><ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes)
                        + "</ul>")
        sections.append(("Study", _section("Study", body)))
        stages.advance()
        stages.stage("tables")
        target = [p for p in tables if p.stem == "targets"]
        if target:
            df = _read_csv(target[0])
            body = [_para("The paper's targets against the model: paper value, the value "
                          "simulated at the study's protocol (with its SE), the model's "
                          "exact expected value and the large-trial check; 'met' is judged "
                          "as met_basis says. Percent.")]
            sections.append(("Targets", _section("Targets", body + [html_table(df)])))
        else:
            sections.append(("Targets", _section("Targets", [_para(
                "No targets table: the paper's targets need the full built-in grid of 8 "
                "datasets x 4 tasks.", "note")])))
        body = []
        for p in tables:
            if p.stem == "targets":
                continue
            body.append(f"<h3>{_esc(p.stem)} ({_esc(p.relative_to(folder))})</h3>")
            body.append(html_table(_read_csv(p)))
        if not body:
            body = [_para("No tables in this folder.", "note")]
        sections.append(("Tables", _section("Tables", body)))
        stages.advance()
        stages.stage("figures")
        body = [_figure_html(p.read_bytes(), p.stem, f"{p.stem.replace('_', ' ')} "
                             f"({p.relative_to(folder)}); the uncertainty convention is "
                             "stated in the figure's own caption.") for p in figures]
        if not body:
            body = [_para("No figures in this folder.", "note")]
        sections.append(("Figures", _section("Figures", body)))
        stages.advance()
    return _page(f"llmnas-transfer report: {folder.resolve().name}", sections,
                 f"Study folder {folder}.")


# ------------------------------------------------------------------ entry point
def report_kind(src: str | os.PathLike) -> str:
    """``"fit"`` for a ``.nc`` file, ``"study"`` for a folder; anything else is a user error.

    Example
    -------
    >>> import tempfile
    >>> report_kind(tempfile.mkdtemp())
    'study'
    >>> report_kind("notes.txt")
    Traceback (most recent call last):
    ...
    llmnas_transfer.errors.UserInputError: notes.txt: not found (give a fit .nc or a study folder)
    """
    p = Path(src).expanduser()
    if p.is_dir():
        return "study"
    if not p.exists():
        raise UserInputError(f"{src}: not found (give a fit .nc or a study folder)")
    if p.suffix.lower() == ".nc":
        return "fit"
    raise UserInputError(f"{src}: not a fit file (.nc) or a study folder")


def check_report_path(out: str | os.PathLike) -> Path:
    """Check the report's output path before any work: it must end in ``.html`` and be
    writable.

    Example
    -------
    >>> check_report_path("r.pdf")
    Traceback (most recent call last):
    ...
    llmnas_transfer.errors.UserInputError: r.pdf: the report must end in .html, e.g. r.html
    """
    p = Path(out).expanduser()
    if p.suffix.lower() != ".html":
        raise UserInputError(f"{out}: the report must end in .html, e.g. "
                             f"{p.with_suffix('.html').name}")
    return check_writable(p)


def write_report(src: str | os.PathLike, out: str | os.PathLike, *, ci: float = DEFAULT_CI,
                 progress: bool = False) -> Path:
    """Write the report of ``src`` (a fit ``.nc`` file or a study folder) to ``out`` (.html).

    The input kind and the output path are checked first; the file is written
    atomically, so a failure leaves no partial report.

    Example
    -------
    >>> write_report("fit.nc", "report.html")  # doctest: +SKIP
    PosixPath('report.html')
    """
    kind = report_kind(src)
    path = check_report_path(out)
    build: Callable[[], str]
    if kind == "fit":
        def build() -> str:
            return fit_report_html(src, ci=ci, progress=progress)
    else:
        def build() -> str:
            return study_report_html(src, progress=progress)
    atomic_write_text(path, build())
    return path


__all__ = ["DEFAULT_CI", "STUDY_MANIFEST", "STUDY_TABLES", "check_report_path",
           "fit_report_html", "gaps_figure", "html_table", "is_fraction_column", "report_kind",
           "study_report_html", "trajectory_figure", "write_report"]
