"""Command-line fits of observed runs: the ``fit``, ``gaps``, ``trajectory``, ``check`` and
``compare`` commands.

Heavy modules (JAX, NumPyro, ArviZ) are imported inside the handlers, so that help and
the checks of a command's arguments answer before any of them loads.

Example
-------
>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> register(sub)
>>> p.parse_args(["gaps", "fit.nc", "--format", "csv"]).format
'csv'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmnas_transfer.cli.options import (
    add_command,
    add_progress_option,
    add_seed_option,
    ci_arg,
    float_arg,
    int_arg,
    names_arg,
    show_progress,
)
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.io.atomic import atomic_write_text, check_writable


def _thresholds(text: str) -> tuple[float, float]:
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"thresholds must be two numbers like 0.10,0.20, got {text!r}") from None
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"thresholds must be two numbers, got {text!r}")
    return parts[0], parts[1]


def _add_table_options(p: argparse.ArgumentParser) -> None:
    """The fit file, ``--ci`` and ``--format`` of the table commands (gaps, trajectory)."""
    p.add_argument("fit", help="fit file written by 'llmnas-transfer fit'")
    p.add_argument("--ci", type=ci_arg, default=0.94, help="HDI probability, in (0, 1)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output format")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fit``, ``gaps``, ``trajectory``, ``check`` and ``compare`` to the CLI.

    Example
    -------
    >>> p = argparse.ArgumentParser(); register(p.add_subparsers())
    >>> p.parse_args(["fit", "runs.csv", "--out", "fit.nc", "--chains", "2"]).chains
    2
    """
    p = add_command(
        subparsers, "fit", _fit, out="FILE", out_help="output fit file (netCDF), e.g. fit.nc",
        help="fit observed runs (NUTS or SVI); writes a netCDF DataTree",
        description="Fit the hierarchical refinement model to observed runs (CSV, Parquet "
                    "or JSON Lines; see docs/data-format.md) and write an ArviZ DataTree.")
    p.add_argument("runs", help="observed runs file (.csv, .parquet, .jsonl)")
    p.add_argument("--method", choices=("nuts", "svi"), default="nuts",
                   help="NUTS (MCMC) or SVI (variational, faster)")
    add_nuts_options(p, svi=True)
    add_seed_option(p)
    p.add_argument("--reference", default="cifar-10:classification",
                   help="DATASET:TASK the gaps are relative to (in the data or the registry)")
    p.add_argument("--forecast", type=int_arg(0, 1000), default=0, metavar="K",
                   help="forecast K iterations past the data")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when a diagnostic check fails")
    p.add_argument("--datasets", type=names_arg, default=[],
                   help="extra datasets to predict, comma-separated (default: none; a dataset "
                        "not in the registry needs --dataset-attrs or --levels)")
    p.add_argument("--tasks", type=names_arg, default=[],
                   help="extra tasks to predict, comma-separated (default: none)")
    p.add_argument("--dataset-attrs", action="append", default=[], metavar="SPEC",
                   help="attributes of a dataset not in the registry: "
                        "NAME:modality=audio,resolution=64,num_classes=50 (repeatable; "
                        "default: none)")
    p.add_argument("--levels", metavar="FILE",
                   help="side file (CSV/JSONL) with columns name,modality,resolution,"
                        "num_classes for new datasets (default: none)")
    p.add_argument("--dense-mass", action=argparse.BooleanOptionalAction, default=True,
                   help="NUTS metric: the Laplace covariance (default) or only its "
                        "variances (--no-dense-mass)")
    p.add_argument("--svi-steps", type=int_arg(1, 10**7), default=2000,
                   help="SVI optimisation steps")
    p.add_argument("--svi-learning-rate",
                   type=float_arg(0.0, 1.0, low_open=True),
                   default=0.01, help="SVI learning rate, in (0, 1]")
    p.add_argument("--prior-draws", type=int_arg(1, 10**5), default=500,
                   help="prior predictive draws stored in the fit")
    p.add_argument("--trend", choices=("setting", "shared"), default="setting",
                   help="refinement trend: 'setting' gives each setting its own rate and "
                        "asymptote (partially pooled) and lets each iteration's valid "
                        "fraction and accuracy move the state; 'shared' is one drift for "
                        "every setting (default: setting)")
    add_bursts_option(p)
    add_progress_option(p, text="hide the stages and the sampler's bar")

    g = add_command(subparsers, "gaps", _gaps, out="FILE", out_required=False,
                    out_help="write to this file instead of stdout (default: stdout)",
                    help="posterior transfer gaps and regime probabilities",
                    description="Posterior transfer gaps of a fit, with HDIs and regime "
                                "probabilities.")
    _add_table_options(g)
    g.add_argument("--thresholds", type=_thresholds, default=(0.10, 0.20),
                   help="easy-below,hard-above (default 0.10,0.20)")
    g.add_argument("--reference", default=None, help="DATASET:TASK (default: the fit's)")
    g.add_argument("--iteration", type=int_arg(1), default=None,
                   help="iteration of the gaps (default: the last observed)")

    t = add_command(subparsers, "trajectory", _trajectory, out="FILE", out_required=False,
                    out_help="write to this file instead of stdout (default: stdout)",
                    help="observed and forecast validity rates",
                    description="Observed and forecast pooled validity rates of a fit, with "
                                "HDIs.")
    _add_table_options(t)
    t.add_argument("--quantiles", default=None, metavar="LEVELS",
                   help="posterior predictive quantiles to add, e.g. 0.05,0.25,0.5,0.75,0.95: "
                        "one column per level, named q and the level as given (default: "
                        "none)")

    c = add_command(subparsers, "check", _check, out="DIR",
                    out_help="output folder (created if missing)",
                    help="posterior predictive checks, plots, LOO",
                    description="Diagnostics, posterior predictive checks, PSIS-LOO and plots "
                                "of a fit, written to a folder.")
    c.add_argument("fit", help="fit file written by 'llmnas-transfer fit'")
    c.add_argument("--ci", type=ci_arg, default=0.94, help="HDI probability, in (0, 1)")

    m = add_command(subparsers, "compare", _compare, out="FILE", out_required=False,
                    out_help="write to this file instead of stdout (default: stdout)",
                    help="compare two fits of the same runs by PSIS-LOO",
                    description="Compare two fits of the same runs (e.g. --trend setting "
                                "against --trend shared) by PSIS-LOO, one unit per run: "
                                "which model the data prefer, the elpd difference and its "
                                "standard error, and Pareto-k warnings.")
    m.add_argument("fit_a", metavar="A.nc", help="first fit file")
    m.add_argument("fit_b", metavar="B.nc", help="second fit file")
    m.add_argument("--format", choices=("table", "json"), default="table",
                   help="output format (default: table)")


def _check_out_file(out: str | None) -> None:
    """Check ``--out FILE`` of gaps/trajectory before any work (its folder must exist)."""
    if out is None:
        return
    path = Path(out).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserInputError(f"{out}: the folder {parent} does not exist")
    check_writable(path)


def _write_text(text: str, out: str | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    _check_out_file(out)
    path = Path(out).expanduser()
    atomic_write_text(path, text)
    print(f"wrote {path}", file=sys.stderr)


def _fit(args) -> int:
    # everything that can be checked without JAX first (one-line errors, exit 2) ...
    from llmnas_transfer.io.runs import parse_dataset_attrs, read_levels, read_runs

    out = Path(args.out).expanduser()
    if out.is_dir():
        raise UserInputError(f"--out {out}: is a directory; give a file name such as fit.nc")
    if out.suffix.lower() != ".nc":
        raise UserInputError(f"--out {out}: the fit file must end in .nc (netCDF), "
                             f"e.g. {out.with_suffix('.nc').name}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserInputError(f"--out {out}: the folder {parent} does not exist")
    check_writable(out)
    if args.method == "nuts" and args.warmup < 1:
        raise UserInputError(f"--warmup must be at least 1 with --method nuts, got {args.warmup}")
    progress = show_progress(args)
    attrs: dict = {}
    if args.levels:
        attrs.update(read_levels(args.levels))
    for spec in args.dataset_attrs:
        for k, v in parse_dataset_attrs(spec).items():
            attrs.setdefault(k, {}).update(v)
    runs = read_runs(args.runs)
    from llmnas_transfer.fit.preparation import check_levels

    # ... then the names the fit will use (still before any compiling or sampling); a
    # mistake there is the only line printed
    check_levels(runs, reference=args.reference, datasets=args.datasets, tasks=args.tasks,
                 dataset_attrs=attrs)
    from llmnas_transfer.fit.fitfile import fit_info, notices_of, save_fit
    from llmnas_transfer.fit.inference import fit_runs
    from llmnas_transfer.summarize.posterior import diagnostics

    print(runs.report(), file=sys.stderr)
    what = (f"sampling {args.chains} chains x ({args.warmup} warmup + {args.draws} draws)"
            if args.method == "nuts" else f"SVI, {args.svi_steps} steps")
    print(f"{what} ...", file=sys.stderr)
    dt = fit_runs(
        runs, method=args.method, chains=args.chains, draws=args.draws,
        warmup=args.warmup, seed=args.seed, reference=args.reference,
        forecast=args.forecast, datasets=args.datasets, tasks=args.tasks,
        dataset_attrs=attrs, target_accept=args.target_accept, dense_mass=args.dense_mass,
        svi_steps=args.svi_steps, svi_learning_rate=args.svi_learning_rate,
        prior_draws=args.prior_draws, progress=progress, trend=args.trend,
        bursts=args.bursts,
    )
    for note in notices_of(dt):
        print(f"note: {note}", file=sys.stderr)
    save_fit(dt, out)
    spec_obs = len(json.loads(dt.attrs["spec"])["observed"])
    info = fit_info(dt)
    print(f"fit: {args.method}, {info.seconds_sampling:.1f} s sampling, "
          f"{info.seconds_total:.1f} s in all ({info.chain_method} chains); "
          f"{spec_obs} settings with data; wrote {out}", file=sys.stderr)
    diag = diagnostics(dt)
    cols = [c for c in ("mean", "sd", "hdi94_lb", "hdi94_ub", "ess_bulk", "ess_tail", "r_hat")
            if c in diag.summary.columns]
    table = diag.summary[cols]
    print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    print(diag.text())
    if not diag.ok and args.strict:
        print("llmnas-transfer fit: --strict: diagnostic checks failed (the fit file was "
              "written for inspection)", file=sys.stderr)
        return 1
    return 0


def _load(path: str):
    from llmnas_transfer.fit.fitfile import load_fit

    return load_fit(path)


def add_nuts_options(p: argparse.ArgumentParser, *, svi: bool = False) -> None:
    """``--chains``, ``--draws``, ``--warmup`` and ``--target-accept`` (shared by ``fit``
    and ``backtest``); with ``svi`` the draws and warmup also serve ``--method svi``."""
    p.add_argument("--chains", type=int_arg(1, 64), default=4,
                   help="NUTS chains, up to one per core at a time (1-64)")
    p.add_argument("--draws", type=int_arg(1, 10**6), default=1000,
                   help="posterior draws per chain"
                        + (" (SVI: draws from the fitted guide)" if svi else ""))
    p.add_argument("--warmup", type=int_arg(0 if svi else 1, 10**6), default=1000,
                   help="NUTS warmup steps per chain" + (" (at least 1 for NUTS)" if svi else ""))
    p.add_argument("--target-accept", type=float_arg(0.5, 1.0, high_open=True), default=0.9,
                   help="NUTS target acceptance probability, in [0.5, 1)")


def add_bursts_option(p: argparse.ArgumentParser) -> None:
    """``--bursts {auto,on,off}`` (shared by ``fit`` and ``backtest``)."""
    p.add_argument("--bursts", choices=("auto", "on", "off"), default="auto",
                   help="collapse episodes (a healthy/collapsed regime per iteration) and "
                        "overdispersed counts in the model; 'auto' switches them on when "
                        "successive iteration rates vary over 3x as much as binomial "
                        "noise allows (default: auto; the fit's notes say which)")


def _gaps(args) -> int:
    from llmnas_transfer.summarize.posterior import format_table, posterior_gaps

    _check_out_file(args.out)
    dt = _load(args.fit)
    df = posterior_gaps(dt, ci=args.ci, thresholds=args.thresholds, reference=args.reference,
                        iteration=args.iteration)
    spec = json.loads(dt.attrs["spec"])
    if not spec["has_accuracy"]:
        print("note: the runs have no accuracy data, so only validity gaps are reported",
              file=sys.stderr)
    _write_text(format_table(df, args.format), args.out)
    return 0


def _trajectory(args) -> int:
    from llmnas_transfer.summarize.posterior import format_table, trajectory
    from llmnas_transfer.validate import check_levels

    _check_out_file(args.out)
    if args.quantiles is not None:  # before the fit is read
        check_levels("--quantiles", args.quantiles)
    table = trajectory(_load(args.fit), ci=args.ci, quantiles=args.quantiles)
    _write_text(format_table(table, args.format), args.out)
    return 0


def _same_runs(a, b, name_a: str, name_b: str) -> None:
    """Both fits must hold the log-likelihood of the same runs and counts."""
    import numpy as np

    for path, dt in ((name_a, a), (name_b, b)):
        if "log_likelihood" not in dt.children or "n_valid" not in dt[
                "log_likelihood"].dataset:
            raise UserInputError(f"{path}: the fit has no pointwise log-likelihood (refit "
                                 "with this version of llmnas-transfer)")
        if "observed_data" not in dt.children:
            raise UserInputError(f"{path}: the fit has no observed data")
    ra = list(a["log_likelihood"].dataset["run"].values)
    rb = list(b["log_likelihood"].dataset["run"].values)
    obs_a = a["observed_data"].dataset["n_valid"].values
    obs_b = b["observed_data"].dataset["n_valid"].values
    ng_a = a["constant_data"].dataset["n_generated"].values
    ng_b = b["constant_data"].dataset["n_generated"].values
    if ra != rb or obs_a.shape != obs_b.shape or not (
            np.array_equal(obs_a, obs_b) and np.array_equal(ng_a, ng_b)):
        raise UserInputError(f"{name_a} and {name_b} are fits of different data (runs or "
                             "counts differ); LOO compares models of the same runs only")


def compare_fits(a, b, names: tuple[str, str] = ("A", "B")) -> dict:
    """PSIS-LOO of two fits of the same runs: the preferred model, the elpd difference
    and its standard error, and Pareto-k counts. ``a`` and ``b`` are fit DataTrees."""
    import warnings

    import arviz as az
    import numpy as np

    out: dict = {"unit": "one run (all iterations of one trial), state marginalised",
                 "models": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, dt in zip(names, (a, b), strict=True):
            loo = az.loo(dt)
            k = np.asarray(loo.pareto_k.values if hasattr(loo, "pareto_k") else [])
            out["models"][name] = {
                "trend": json.loads(dt.attrs.get("spec", "{}")).get("trend", "shared"),
                "elpd_loo": float(loo.elpd), "se": float(loo.se), "p_loo": float(loo.p),
                "n_runs": int(k.size), "pareto_k_above_0.7": int(np.sum(k > 0.7)),
            }
        cmp = az.compare(dict(zip(names, (a, b), strict=True)), round_to="none")
    best = str(cmp.index[0])
    other = str(cmp.index[1])
    out["preferred"] = best
    # elpd of the preferred model minus the other's (>= 0), and its standard error
    out["elpd_diff"] = out["models"][best]["elpd_loo"] - out["models"][other]["elpd_loo"]
    out["dse"] = float(cmp.loc[other, "dse"])
    out["weights"] = {str(i): float(w) for i, w in cmp["weight"].items()}
    return out


def _compare(args) -> int:
    _check_out_file(args.out)
    for path in (args.fit_a, args.fit_b):
        if not Path(path).expanduser().exists():
            raise UserInputError(f"{path}: file not found")
    a, b = _load(args.fit_a), _load(args.fit_b)
    _same_runs(a, b, args.fit_a, args.fit_b)
    res = compare_fits(a, b, (args.fit_a, args.fit_b))
    if args.format == "json":
        _write_text(json.dumps(res, indent=1) + "\n", args.out)
        return 0
    lines = []
    for name, m in res["models"].items():
        lines.append(f"{name}: trend {m['trend']}, elpd_loo {m['elpd_loo']:.1f} "
                     f"(se {m['se']:.1f}), p_loo {m['p_loo']:.1f}, Pareto k > 0.7 for "
                     f"{m['pareto_k_above_0.7']} of {m['n_runs']} runs")
    diff, dse = res["elpd_diff"], res["dse"]
    ratio = diff / dse if dse > 0 else float("inf")
    lines.append(f"preferred: {res['preferred']} (elpd difference {diff:.1f}, se {dse:.1f}; "
                 f"{ratio:.1f} standard errors)")
    if ratio < 2:
        lines.append("the difference is within two standard errors: the data do not "
                     "clearly prefer either model")
    bad = sum(m["pareto_k_above_0.7"] for m in res["models"].values())
    if bad:
        lines.append(f"warning: {bad} Pareto k values above 0.7: the LOO estimates of those "
                     "runs are unreliable")
    _write_text("\n".join(lines) + "\n", args.out)
    return 0


def _check_out_dir(out: str) -> Path:
    """Check that the folder ``out`` can be created or written, creating nothing."""
    from llmnas_transfer.io.atomic import probe_folder

    p = Path(out).expanduser()
    for anc in (p, *p.parents):
        if anc.exists():
            if not anc.is_dir():
                raise UserInputError(f"--out {p}: cannot write here, {anc} is a file, not a "
                                     "folder")
            probe_folder(anc, what=f"--out {p}")
            return p
    return p  # pragma: no cover - the root always exists


def _count_files(files) -> int:
    """Files in ``check``'s ``{name: path or [paths]}`` mapping."""
    return sum(len(v) if isinstance(v, (list, tuple)) else 1 for v in files.values())


def _check(args) -> int:
    from llmnas_transfer.summarize.posterior import check

    _check_out_dir(args.out)
    dt = _load(args.fit)
    res = check(dt, args.out, ci=args.ci)
    loo = res["loo"]
    print(f"LOO (per run): elpd {loo['elpd_loo']:.1f} (se {loo['se']:.1f}), p_loo "
          f"{loo['p_loo']:.1f}, Pareto k above {loo['pareto_k_threshold']} for "
          f"{loo['pareto_k_above_threshold']} of {loo['n_runs']} runs")
    if loo["pareto_k_above_threshold"]:
        print("warning: some runs are influential (high Pareto k): the LOO estimate is "
              "unreliable for them; look at those runs in ppc_rates.png", file=sys.stderr)
    ppc = res["ppc"]
    extreme = ppc[(ppc["p_value"] < 0.01) | (ppc["p_value"] > 0.99)]
    print(f"posterior predictive checks: {len(extreme)} of {len(ppc)} statistics with "
          "p < 0.01 or p > 0.99")
    print(res["diagnostics"].text())
    print(f"wrote {_count_files(res['files'])} files to {args.out}", file=sys.stderr)
    return 0
