"""Reproduce the study end to end: simulate, tabulate, compare with the paper, plot.

:func:`run_study` is what ``llmnas-transfer reproduce --out DIR`` runs. It writes::

    DIR/figures/fig1_validity_trajectories.{png,pdf} ... fig5_heatmap.{png,pdf}
    DIR/tables/validity.csv   dataset, task, iteration, validity_mean, validity_se,
                              n_trials, ci_low, ci_high
    DIR/tables/accuracy.csv   dataset, task, accuracy_mean, accuracy_sd, accuracy_q05,
                              accuracy_q50, accuracy_q95, novelty_mean, novelty_sd, n_valid
    DIR/tables/gaps.csv       dataset, task, validity_gap, accuracy_gap, combined_gap,
                              regime, the two components and every SE (fractions)
    DIR/tables/targets.csv    the paper's targets against the model (see below)
    DIR/tables/targets.md     the same as a Markdown table (percent)
    DIR/results.nc            the simulated results (netCDF)
    DIR/study.json            configuration, versions, timings and notes

The paper's targets are *expected* values, while 15 trials of 20 candidates carry
several points of Monte Carlo noise. ``targets.csv`` therefore reports three values per
target: ``simulated_value`` and ``simulated_se`` at the requested protocol, the exact
``expected_value`` of the model (:func:`llmnas_transfer.study.derive.expected_report`) and a
``large_trial_value`` from a second simulation of ``check_trials`` trials (same seed,
summary path). ``met`` is judged on the large-trial value (on the expected value when
``check_trials=0``); ``met_basis`` says which. ``p_reproduce_15`` is the share of
replicate 15-trial studies (groups of 15 trials of the check) that meet each target, and
``heldout`` the verdict of the held-out check shipped with the parameters (written by
``llmnas-transfer calibrate``; nothing is recalibrated here). The targets are those of the
set the parameters were calibrated on (``paper`` or ``lemur``); the headline counts only
``role == "target"`` rows.

Everything is written to a staging folder and moved into place at the end, so an error
leaves no partial study behind.

Example
-------
>>> import tempfile
>>> out = run_study(0, out_dir=tempfile.mkdtemp() + "/study", num_trials=3,
...                 num_iterations=3, num_candidates=5, check_trials=0)  # doctest: +SKIP
>>> sorted(p.name for p in (out.out_dir / "tables").iterdir())  # doctest: +SKIP
['accuracy.csv', 'gaps.csv', 'targets.csv', 'validity.csv']
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import pandas as pd
import xarray as xr

from llmnas_transfer import __version__
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.io.atomic import atomic_write, atomic_write_text, probe_folder, umask
from llmnas_transfer.io.results import save_results
from llmnas_transfer.progress import Stages
from llmnas_transfer.sim import gaps as gapdefs
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.candidates import MAX_TRIALS, simulate
from llmnas_transfer.sim.params import ModelDefaults, load_defaults
from llmnas_transfer.study import derive
from llmnas_transfer.summarize import figures
from llmnas_transfer.summarize import tables as metrics
from llmnas_transfer.validate import check_int

#: study tables written under ``DIR/tables``
TABLE_NAMES: tuple[str, ...] = ("validity", "accuracy", "gaps", "targets")
#: per-candidate values are kept (for exact violins) up to this many candidates in total
MAX_PER_CANDIDATE = 2_000_000
#: default size of the large-trial check of the targets
DEFAULT_CHECK_TRIALS = 2000
#: file marking a folder as written by :func:`run_study` (so it may be overwritten)
MANIFEST = "study.json"


class StudyOutputs(NamedTuple):
    """What :func:`run_study` produced."""

    out_dir: Path
    results: xr.Dataset
    validity: pd.DataFrame
    accuracy: pd.DataFrame
    gaps: pd.DataFrame
    targets: pd.DataFrame | None
    files: list[Path]
    timings: dict[str, float]
    notes: list[str]
    reference: tuple[str, str]


# ------------------------------------------------------------------ targets
#: trials of a study of the paper's size (``p_reproduce_15`` is judged on groups of these)
PAPER_TRIALS = 15

#: columns of ``targets.csv``
TARGET_COLUMNS: tuple[str, ...] = (
    "target", "role", "paper_value", "paper_text", "low", "high", "tolerance",
    "simulated_value",
    "simulated_se", "met", "met_basis", "met_at_protocol", "expected_value", "protocol_z",
    "met_expected", "large_trial_value", "large_trial_se", "met_large_trial",
    "p_reproduce_15", "replicates_15", "heldout", "protocol_trials", "large_trials",
    "fitted", "note", "source",
)


def heldout_verdicts(defaults: ModelDefaults) -> dict[str, str]:
    """The held-out check shipped with ``defaults`` (``provenance["heldout"]``, written by
    ``calibrate``): target -> ``follows`` / ``only when targeted`` / ``fails either way``.
    Empty for a file calibrated without the check.

    Example
    -------
    >>> heldout_verdicts(load_defaults())["regime_stl-10"] in (
    ...     "follows", "only when targeted", "fails either way")
    True
    """
    return {str(r["target"]): str(r["verdict"])
            for r in defaults.provenance.get("heldout", []) or []}


def targets_table(
    results: xr.Dataset,
    *,
    defaults: ModelDefaults | None = None,
    check: xr.Dataset | None = None,
    n_boot: int = 200,
) -> pd.DataFrame:
    """Every target of the parameters' target set: protocol, expected and large-trial values.

    Parameters
    ----------
    results : the study simulation (the full built-in grid).
    defaults : the parameters it was simulated with (shipped ``paper`` set if ``None``);
        their ``provenance["target_set"]`` picks the targets
        (:func:`llmnas_transfer.study.derive.targets_for`).
    check : an optional large-trial simulation of the same grid (summaries suffice).
    n_boot : bootstrap resamples for the SEs.

    Returns
    -------
    DataFrame with the columns :data:`TARGET_COLUMNS`. ``role`` is ``target`` (a paper
    statement, or a LEMUR IQR condition under ``lemur``: these are counted), ``anchor``,
    ``claim`` (reported, not fitted) or ``check`` (shown, not counted). ``low``/``high``
    are the numeric bounds (fractions; a point target's are value +- 1.5 points) and
    ``tolerance`` says whose they are. ``protocol_z`` is ``(simulated - expected) /
    simulated_se``. ``p_reproduce_15`` is the fraction of replicate 15-trial studies
    (consecutive groups of 15 trials of ``check``; ``replicates_15`` of them) that meet
    the target. ``heldout`` is the shipped held-out verdict (``follows``, ``only when
    targeted``) for the statements the held-out check leaves out. ``note`` says why a
    target is not met where the target file explains it.

    Example
    -------
    >>> from llmnas_transfer import simulate
    >>> r = simulate(0, num_trials=3, num_iterations=10, num_candidates=5)
    >>> t = targets_table(r, n_boot=20)
    >>> t.loc[t["target"] == "validity_cifar-10", "met_basis"].item()
    'expected value'
    """
    defaults = defaults or load_defaults()
    targets = derive.targets_for(defaults)
    T = int(results.sizes["iteration"])
    sim = derive.simulated_report(results, targets, n_boot=n_boot)
    exp = derive.expected_report(defaults, targets, num_iterations=T)
    out = sim[["target", "role", "paper_value", "paper_text", "low", "high", "tolerance",
               "simulated_value", "simulated_se"]].copy()
    out["met_at_protocol"] = sim["met"].to_numpy()
    out["expected_value"] = exp["expected_value"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        out["protocol_z"] = (out["simulated_value"] - out["expected_value"]) / out[
            "simulated_se"]
    out["met_expected"] = exp["met"].to_numpy()
    out["p_reproduce_15"] = np.nan
    out["replicates_15"] = 0
    if check is not None:
        if int(check.sizes["iteration"]) != T:
            raise UserInputError("the large-trial check must have the study's iterations")
        big = derive.simulated_report(check, targets, n_boot=n_boot)
        out["large_trial_value"] = big["simulated_value"].to_numpy()
        out["large_trial_se"] = big["simulated_se"].to_numpy()
        out["met_large_trial"] = big["met"].to_numpy()
        out["met"] = out["met_large_trial"]
        out["met_basis"] = f"simulation, {int(check.sizes['trial'])} trials"
        if int(check.sizes["trial"]) >= PAPER_TRIALS:
            prob, reps = derive.reproduce_probability(check, targets, group_size=PAPER_TRIALS)
            out["p_reproduce_15"] = prob
            out["replicates_15"] = reps
    else:
        out["large_trial_value"] = np.nan
        out["large_trial_se"] = np.nan
        out["met_large_trial"] = pd.NA
        out["met"] = out["met_expected"]
        out["met_basis"] = "expected value"
    verdicts = heldout_verdicts(defaults)
    out["heldout"] = [verdicts.get(t, "") for t in out["target"]]
    out["protocol_trials"] = int(results.sizes["trial"])
    out["large_trials"] = int(check.sizes["trial"]) if check is not None else 0
    out["fitted"] = sim["fitted"].to_numpy()
    met = out["met"].astype(bool).to_numpy()
    notes = sim["note"].fillna("").astype(str).to_numpy()
    out["note"] = np.where(~met | (out["role"].to_numpy() == "check"), notes, "")
    out["source"] = sim["source"].to_numpy()
    return out[list(TARGET_COLUMNS)]


def targets_summary(targets: pd.DataFrame) -> dict:
    """Headline counts of a targets table: the counted paper statements
    (``role == "target"``) met on the table's basis and at the protocol, the LEMUR
    conditions of the ``lemur`` set (``lemur_*`` targets), the anchors, the claims and the
    checks (shown, not counted).

    Example
    -------
    >>> t = pd.DataFrame({"target": ["a", "b"], "role": ["target", "check"], "met": [True, True],
    ...                   "met_at_protocol": [False, True], "met_basis": ["x", "x"],
    ...                   "protocol_trials": [15, 15], "p_reproduce_15": [0.5, 1.0]})
    >>> targets_summary(t)["targets_met"], targets_summary(t)["targets"]
    (1, 1)
    """
    role = targets["role"].astype(str)
    lemur = (role == "target") & targets["target"].astype(str).str.startswith("lemur_")
    counted = targets[(role == "target") & ~lemur]
    out = {
        "targets": int(len(counted)),
        "targets_met": int(counted["met"].astype(bool).sum()),
        "targets_met_at_protocol": int(counted["met_at_protocol"].astype(bool).sum()),
        "protocol_trials": int(targets["protocol_trials"].iloc[0]),
        "met_basis": str(targets["met_basis"].iloc[0]),
    }
    out["lemur_conditions"] = int(lemur.sum())
    out["lemur_conditions_met"] = int(targets.loc[lemur, "met"].astype(bool).sum())
    for r in ("anchor", "claim", "check"):
        sub = targets[role == r]
        out[f"{r}s"] = int(len(sub))
        out[f"{r}s_met"] = int(sub["met"].astype(bool).sum())
    p = counted["p_reproduce_15"].to_numpy(float) if "p_reproduce_15" in counted else []
    out["expected_met_at_15"] = (float(np.sum(p)) if len(p) and np.isfinite(p).all()
                                 else None)
    return out


def targets_markdown(targets: pd.DataFrame) -> str:
    """The targets table as Markdown (percent points for fractions), for docs and reports.

    Example
    -------
    >>> t = pd.DataFrame({"target": ["validity_cifar-10"], "paper_value": [0.765],
    ...                   "simulated_value": [0.75], "simulated_se": [0.03],
    ...                   "expected_value": [0.767], "large_trial_value": [0.766],
    ...                   "large_trial_se": [0.002], "met": [True], "fitted": [True]})
    >>> print(targets_markdown(t).splitlines()[2])
    | validity_cifar-10 | 76.5 | 75.0 +- 3.0 | 76.7 | 76.6 +- 0.2 |  | yes |  |
    """

    def pct(v, se=None):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        s = f"{100 * v:.1f}"
        if se is not None and np.isfinite(se):
            s += f" +- {100 * se:.1f}"
        return s

    def paper(v):
        if isinstance(v, (int, float, np.floating)):
            return f"{100 * v:.4g}"
        try:  # a number written as text (CSV round trip)
            return f"{100 * float(v):.4g}"
        except (TypeError, ValueError):  # an interval such as "[0.1, 0.2]" or ">= 0"
            return re.sub(r"-?\d+(\.\d+)?(e-?\d+)?",
                          lambda m: f"{100 * float(m.group(0)):.4g}", str(v))

    lines = ["| target | paper (%) | protocol (%) | expected (%) | large-trial (%) | "
             "P(15 trials) | met | held out |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in targets.iterrows():
        met = "yes" if bool(r["met"]) else "**no**"
        role = r.get("role", "target" if bool(r["fitted"]) else "claim")
        if role == "claim":
            met += " (claim, not fitted)"
        elif role == "check":
            met += " (check, not counted)"
        elif role == "anchor":
            met += " (anchor)"
        p15 = r.get("p_reproduce_15", np.nan)
        p15 = "" if p15 is None or not np.isfinite(p15) else f"{p15:.2f}"
        held = r.get("heldout", "")
        held = "" if not isinstance(held, str) else held
        if held == "only when targeted":
            held = "**only when targeted**"
        lines.append(
            f"| {r['target']} | {paper(r.get('paper_text', r['paper_value']))} | "
            f"{pct(r['simulated_value'], r['simulated_se'])} | {pct(r['expected_value'])} | "
            f"{pct(r['large_trial_value'], r['large_trial_se'])} | {p15} | {met} | {held} |"
        )
    notes = [(r["target"], r["note"]) for _, r in targets.iterrows()
             if not bool(r["met"]) and isinstance(r.get("note", ""), str) and r.get("note")]
    if notes:
        lines.append("")
        lines += [f"- `{t}`: {n}" for t, n in notes]
    return "\n".join(lines) + "\n"


def _full_grid(ds: xr.Dataset) -> bool:
    have_d = {str(d) for d in ds["dataset"].values}
    have_t = {str(t) for t in ds["task"].values}
    return set(registry.BUILTIN_DATASET_NAMES) <= have_d and set(
        registry.BUILTIN_TASK_NAMES) <= have_t


# ------------------------------------------------------------------ output folder
def check_out_dir(out_dir: str | os.PathLike, *, force: bool = False) -> Path:
    """Validate the study folder: not a file, writable, empty or a previous study.

    A non-empty folder is refused unless it holds a ``study.json`` from an earlier run
    or ``force`` is true (then the study's files are replaced; others are left alone).

    Example
    -------
    >>> import tempfile
    >>> check_out_dir(tempfile.mkdtemp()).is_dir()
    True
    """
    p = Path(out_dir).expanduser()
    if p.exists() and not p.is_dir():
        raise UserInputError(f"{p}: exists and is a file; --out needs a folder")
    for anc in (p, *p.parents):
        if anc.exists():
            if not anc.is_dir():
                raise UserInputError(f"{p}: cannot create it, {anc} is a file")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise UserInputError(f"{p}: folder {anc} is not writable")
            probe_folder(anc, what=str(p))
            break
    if p.is_dir() and any(p.iterdir()) and not (p / MANIFEST).is_file() and not force:
        raise UserInputError(
            f"{p}: folder is not empty and holds no earlier study; choose another --out "
            "or pass --force to write into it"
        )
    return p


def _move_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)
        return
    for src in sorted(staging.rglob("*")):
        if src.is_file():
            dst = out / src.relative_to(staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------ the study
def _versions() -> dict[str, str]:
    import matplotlib  # only here: importing the package must not load matplotlib

    return {"llmnas_transfer": __version__, "jax": jax.__version__, "numpy": np.__version__,
            "xarray": xr.__version__, "pandas": pd.__version__,
            "matplotlib": matplotlib.__version__, "python": platform.python_version(),
            "devices": ", ".join(str(d) for d in jax.devices())}


def run_study(
    key: int = 0,
    *,
    out_dir: str | os.PathLike,
    num_trials: int = 15,
    num_iterations: int = 10,
    num_candidates: int = 20,
    datasets: Sequence[str] | str | None = None,
    tasks: Sequence[str] | str | None = None,
    check_trials: int = DEFAULT_CHECK_TRIALS,
    reference: Sequence[str] = gapdefs.DEFAULT_REFERENCE,
    thresholds: Sequence[float] = gapdefs.DEFAULT_THRESHOLDS,
    defaults: ModelDefaults | None = None,
    force: bool = False,
    progress: bool = False,
) -> StudyOutputs:
    """Run the study at a protocol and write its figures, tables and results.

    Parameters
    ----------
    key : integer seed.
    out_dir : study folder (created; see :func:`check_out_dir` for the overwrite rule).
    num_trials, num_iterations, num_candidates : the protocol (the paper's: 15, 10, 20).
    datasets, tasks : grid (built-ins by default). The reference setting is added when
        missing, because the gaps are relative to it; ``targets.csv`` needs the full
        built-in grid and is skipped otherwise (with a note).
    check_trials : trials of the large-trial check of the targets (0 to skip).
    reference, thresholds : gap reference setting and regime thresholds.
    defaults : model parameters (the shipped calibrated defaults if ``None``).
    force : write into a non-empty folder that holds no earlier study.
    progress : show a rich progress display on stderr.

    Returns
    -------
    :class:`StudyOutputs` with the results, the tables, the files written (final paths),
    stage timings in seconds and notes.

    Example
    -------
    >>> import tempfile
    >>> o = run_study(1, out_dir=tempfile.mkdtemp() + "/s", num_trials=2, num_iterations=2,
    ...               num_candidates=4, datasets="cifar-10,svhn", tasks="classification",
    ...               check_trials=0)
    >>> sorted(p.name for p in (o.out_dir / "tables").iterdir())
    ['accuracy.csv', 'gaps.csv', 'validity.csv']
    """
    t_start = time.perf_counter()
    out = check_out_dir(out_dir, force=force)
    check_trials = check_int("check_trials", check_trials, 0, MAX_TRIALS)
    thresholds = gapdefs.check_thresholds(thresholds)
    defaults = defaults or load_defaults()
    notes: list[str] = []
    dnames, tnames, ref = _study_grid(datasets, tasks, reference, notes)
    per_candidate = _keep_per_candidate(len(dnames) * len(tnames), num_trials, num_iterations,
                                        num_candidates)
    timings: dict[str, float] = {}
    sim_kw = {"num_iterations": num_iterations, "num_candidates": num_candidates,
              "defaults": defaults}

    with ExitStack() as stack:
        stages = Stages(progress, 5 if check_trials else 4, stack)
        results, check = _simulate_study(key, dnames, tnames, num_trials, check_trials,
                                         per_candidate, sim_kw, stages, timings, notes)
        stages.stage("tables")
        t = time.perf_counter()
        tables = _study_tables(results, check, defaults, ref, thresholds, notes)
        timings["tables"] = time.perf_counter() - t
        stages.advance()
        files = _write_study(out, results, tables, stages, timings, t_start, reference=ref,
                             thresholds=thresholds,
                             manifest=lambda: _manifest(key, results, check, tables["targets"],
                                                        timings, notes, reference=ref,
                                                        thresholds=thresholds,
                                                        per_candidate=per_candidate))
        stages.advance()
    return StudyOutputs(out, results, tables["validity"], tables["accuracy"], tables["gaps"],
                        tables["targets"], files, timings, notes, ref)


def _study_grid(datasets, tasks, reference: Sequence[str],
                notes: list[str]) -> tuple[list[str], list[str], tuple[str, str]]:
    """Dataset and task names of the study, with the reference setting added if missing."""
    ds_list, task_list = registry.resolve(datasets, tasks)
    dnames = [d.name for d in ds_list]
    tnames = [t.name for t in task_list]
    rd, rt = reference[0].lower(), reference[1].lower()
    registry.get_dataset(rd), registry.get_task(rt)
    if rd not in dnames:
        dnames.insert(0, rd)
        notes.append(f"added the reference dataset {rd} to the grid (gaps are relative to it)")
    if rt not in tnames:
        tnames.insert(0, rt)
        notes.append(f"added the reference task {rt} to the grid (gaps are relative to it)")
    return dnames, tnames, (rd, rt)


def _keep_per_candidate(num_settings: int, num_trials, num_iterations, num_candidates) -> bool:
    """Whether per-candidate values fit in :data:`MAX_PER_CANDIDATE` (invalid sizes: no;
    the simulator reports them)."""
    sizes = (num_trials, num_iterations, num_candidates)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in sizes):
        return False
    return 0 < num_settings * int(num_trials) * int(num_iterations) * int(
        num_candidates) <= MAX_PER_CANDIDATE


def _simulate_study(key, dnames, tnames, num_trials, check_trials, per_candidate, sim_kw,
                    stages: Stages, timings: dict, notes: list[str]):
    """The protocol simulation and, on the full built-in grid, the large-trial check."""
    t = time.perf_counter()
    results = simulate(key, datasets=dnames, tasks=tnames, num_trials=num_trials,
                       per_candidate=per_candidate,
                       progress=stages.stage(f"simulating {num_trials} trials"), **sim_kw)
    timings["simulate"] = time.perf_counter() - t
    stages.advance()
    if not per_candidate:
        notes.append("per-candidate values not kept (grid too large); accuracy quantiles "
                     "and violins come from 20-bin histograms")
    check = None
    if check_trials and _full_grid(results):
        t = time.perf_counter()
        check = simulate(
            key, datasets=list(registry.BUILTIN_DATASET_NAMES),
            tasks=list(registry.BUILTIN_TASK_NAMES), num_trials=check_trials, bins=0,
            path="summary", progress=stages.stage(f"checking with {check_trials} trials"),
            **sim_kw,
        )
        timings["large_trial_check"] = time.perf_counter() - t
        stages.advance()
    elif check_trials:
        stages.advance()
    return results, check


def _study_tables(results: xr.Dataset, check: xr.Dataset | None, defaults: ModelDefaults,
                  ref: tuple[str, str], thresholds, notes: list[str]) -> dict:
    """The study tables (``targets`` is ``None`` without the full built-in grid)."""
    validity = metrics.validity_table(results)
    accuracy = metrics.accuracy_table(results)
    with warnings.catch_warnings():
        # a cell without valid candidates in any trial has an undefined accuracy; its
        # bootstrap SE is NaN by design (numpy would warn about the empty slices)
        warnings.filterwarnings("ignore", "Degrees of freedom <= 0", RuntimeWarning)
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        gaps = metrics.gaps_table(results, reference=ref, thresholds=thresholds)
    targets = None
    if _full_grid(results):
        targets = targets_table(results, defaults=defaults, check=check,
                                n_boot=100 if check is not None else 200)
        num_iterations = int(results.sizes["iteration"])
        if num_iterations != 10:
            notes.append("the paper's targets refer to iteration 10; this study ends at "
                         f"iteration {num_iterations}")
    else:
        notes.append("targets.csv not written: the paper's targets need the full built-in "
                     "grid of 8 datasets x 4 tasks")
    return {"validity": validity, "accuracy": accuracy, "gaps": gaps, "targets": targets}


def _write_study(out: Path, results: xr.Dataset, tables: dict, stages: Stages,
                 timings: dict, t_start: float, *, reference, thresholds,
                 manifest) -> list[Path]:
    """Draw the figures and write everything into a staging folder beside ``out``, then
    move it into place; an error leaves nothing behind. Returns the final paths."""
    stages.stage("figures")
    t = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=_existing_parent(out)))
    os.chmod(staging, 0o777 & ~umask())  # mkdtemp creates 0700
    try:
        (staging / "tables").mkdir()
        figures.study_figures(results, staging / "figures", validity=tables["validity"],
                              gaps=tables["gaps"], reference=reference, thresholds=thresholds)
        timings["figures"] = time.perf_counter() - t
        stages.advance()
        stages.stage("writing")
        t = time.perf_counter()
        for name, df in tables.items():
            if df is not None:
                atomic_write(staging / "tables" / f"{name}.csv",
                             lambda tmp, df=df: df.to_csv(tmp, index=False))
        if tables["targets"] is not None:
            atomic_write_text(staging / "tables" / "targets.md",
                              targets_markdown(tables["targets"]))
        save_results(results, staging / "results.nc")
        timings["write"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        atomic_write_text(staging / MANIFEST, json.dumps(manifest(), indent=2) + "\n")
        files = sorted(out / p.relative_to(staging) for p in staging.rglob("*")
                       if p.is_file())
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files


def _existing_parent(p: Path) -> Path:
    """``p.parent``, created if missing: the staging folder lives next to ``p``."""
    p.parent.mkdir(parents=True, exist_ok=True)
    return p.parent


def _manifest(key, results, check, targets, timings, notes, *, reference, thresholds,
              per_candidate) -> dict:
    summary = targets_summary(targets) if targets is not None else None
    return {
        "command": "llmnas_transfer.study.reproduce.run_study",
        "seed": int(key) if isinstance(key, (int, np.integer)) else str(key),
        "datasets": [str(d) for d in results["dataset"].values],
        "tasks": [str(t) for t in results["task"].values],
        "num_trials": int(results.sizes["trial"]),
        "num_iterations": int(results.sizes["iteration"]),
        "num_candidates": int(results["n_generated"]),
        "check_trials": int(check.sizes["trial"]) if check is not None else 0,
        "per_candidate": bool(per_candidate),
        "reference": list(reference),
        "thresholds": list(thresholds),
        "targets": summary,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": _versions(),
        "notes": notes,
    }


# ------------------------------------------------------------------ summary
def summary_tables(outputs: StudyOutputs) -> list:
    """rich renderables: the gap/regime table of the reference task and a targets line.

    Example
    -------
    >>> import tempfile
    >>> o = run_study(0, out_dir=tempfile.mkdtemp() + "/s", num_trials=2, num_iterations=2,
    ...               num_candidates=4, datasets="cifar-10,svhn", tasks="classification",
    ...               check_trials=0)
    >>> items = summary_tables(o)
    >>> items[0].row_count
    2
    """
    from rich.table import Table

    g = outputs.gaps
    rd, rt = outputs.reference
    sub = g[g["task"] == rt]
    tab = Table(title=f"Transfer gaps relative to {rd} {rt} "
                      f"({outputs.results.sizes['trial']} trials)")
    for col in ("dataset", "valid %", "acc. %", "gap %", "SE", "regime"):
        tab.add_column(col, justify="left" if col in ("dataset", "regime") else "right",
                       no_wrap=True)
    paper = paper_regimes()
    tab.add_column("paper", no_wrap=True)
    for _, r in sub.iterrows():
        tab.add_row(
            r["dataset"], f"{100 * r['validity']:.1f}", f"{100 * r['accuracy']:.1f}",
            "ref." if r["dataset"] == rd else f"{100 * r['combined_gap']:.1f}",
            "" if r["dataset"] == rd else f"{100 * r['combined_gap_se']:.1f}",
            "" if r["dataset"] == rd else str(r["regime"]),
            paper.get(r["dataset"], "") if rt == "classification" else "",
        )
    items: list = [tab]
    t = outputs.targets
    if t is not None:
        items.append(headline(t))
        flagged = t[(t["heldout"] == "only when targeted") & (t["role"] == "target")]
        if len(flagged):
            items.append("Held out of the calibration, these paper statements no longer "
                         "follow (they hold only when targeted): "
                         + ", ".join(flagged["target"]) + ".")
        failed = t[(t["role"] == "target") & ~t["met"].astype(bool)]  # with the reason
        for _, r in failed.iterrows():
            items.append(f"not met: {r['target']}" + (f" ({r['note']})" if r["note"] else ""))
    for n in outputs.notes:
        items.append(f"note: {n}")
    items.append(f"Wrote {len(outputs.files)} files under {outputs.out_dir} in "
                 f"{outputs.timings.get('total', float('nan')):.1f} s.")
    return items


def headline(targets: pd.DataFrame) -> str:
    """One line with the counted targets met at the large-trial check and at the
    protocol, and the anchors, claims and checks beside them.

    Example
    -------
    >>> t = pd.DataFrame({"target": ["a"], "role": ["target"], "met": [True],
    ...                   "met_at_protocol": [True],
    ...                   "met_basis": ["expected value"], "protocol_trials": [15],
    ...                   "p_reproduce_15": [float("nan")]})
    >>> headline(t)
    'Paper targets met: 1/1 (judged on the expected value); at the 15-trial protocol: 1/1.'
    """
    s = targets_summary(targets)
    line = (f"Paper targets met: {s['targets_met']}/{s['targets']} (judged on the "
            f"{s['met_basis']}); at the {s['protocol_trials']}-trial protocol: "
            f"{s['targets_met_at_protocol']}/{s['targets']}")
    if s["expected_met_at_15"] is not None:
        line += (f"; a 15-trial study meets {s['expected_met_at_15']:.1f} of them on "
                 "average (p_reproduce_15)")
    line += "."
    if s["lemur_conditions"]:
        line += (f" LEMUR conditions (accuracy in LEMUR's interquartile range) met: "
                 f"{s['lemur_conditions_met']}/{s['lemur_conditions']}.")
    extra = [f"{s[r + 's_met']}/{s[r + 's']} {r}s" for r in ("anchor", "claim", "check")
             if s[r + "s"]]
    if extra:
        line += " Not counted: " + ", ".join(extra) + " met."
    return line


def paper_regimes() -> dict[str, str]:
    """The regime the paper assigns to each dataset, read from the ``regime_*`` targets.

    Example
    -------
    >>> paper_regimes()["cifar-100"]
    'moderate'
    """
    t = derive.load_targets()
    out = {}
    for _, r in t[t["target"].str.startswith("regime_")].iterrows():
        lo, hi = r["lower"], r["upper"]
        mid = ((0.0 if pd.isna(lo) else lo) + (1.0 if pd.isna(hi) else hi)) / 2
        out[r["dataset"]] = str(gapdefs.classify_regime(mid))
    return out


def print_summary(outputs: StudyOutputs, console=None) -> None:
    """Print :func:`summary_tables` with rich (to stdout by default)."""
    from rich.console import Console

    console = console or Console()
    for item in summary_tables(outputs):
        console.print(item)
