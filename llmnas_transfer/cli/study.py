"""CLI commands ``reproduce``, ``simulate`` and ``calibrate``.

``llmnas-transfer reproduce --out DIR`` runs the whole study (see
:func:`llmnas_transfer.study.reproduce.run_study`); ``simulate`` runs a custom grid and writes
netCDF, Parquet or CSV (see :mod:`llmnas_transfer.io.results`); ``calibrate`` re-derives
a parameter set (``--set paper|lemur``), writes it to ``--out`` (or, with ``--in-place``,
over the shipped file) with its held-out report beside it, and prints the expected value
of every target. ``--params paper|lemur|FILE`` picks the parameters that ``reproduce`` and
``simulate`` use.

A non-empty ``reproduce --out`` folder is refused unless it holds an earlier study
(``study.json``) or ``--force`` is given.

Example
-------
>>> from llmnas_transfer.cli import main
>>> main(["simulate", "--out", "/nonexistent-dir/x.txt"])  # doctest: +SKIP
2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmnas_transfer.cli.options import (
    add_command,
    add_grid_options,
    add_params_option,
    add_progress_option,
    add_seed_option,
    load_params,
    show_progress,
    split_names,
)
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.validate import check_int


def _add_grid(p: argparse.ArgumentParser) -> None:
    add_grid_options(p)
    add_seed_option(p)
    add_params_option(p)


def register(subparsers) -> None:
    """Add ``reproduce``, ``simulate`` and ``calibrate`` to the CLI."""
    p = add_command(
        subparsers, "reproduce", _reproduce, out="DIR",
        help="run the study: figures, tables and targets in one folder",
        description="Simulate the study, write DIR/figures (five figures, PNG and PDF), "
                    "DIR/tables (validity, accuracy, gaps, targets), DIR/results.nc and "
                    "print a summary. A non-empty DIR is refused unless it holds an earlier "
                    "study or --force is given.")
    _add_grid(p)
    p.add_argument("--check-trials", type=int, default=2000, metavar="N",
                   help="trials of the large-trial check of the targets (default 2000; "
                        "0 judges the targets on the exact expected values only)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder that holds no earlier study")
    add_progress_option(p, text="hide the progress display")

    s = add_command(
        subparsers, "simulate", _simulate, out="FILE", out_help="output .nc, .parquet or .csv",
        help="simulate a custom grid and save the results",
        description="Simulate a dataset x task grid and write the results; the format "
                    "follows the suffix of --out: .nc (netCDF), .parquet or .csv (tidy "
                    "table; per-candidate values go to FILE.candidates.<suffix>).")
    _add_grid(s)
    s.add_argument("--per-candidate", action="store_true",
                   help="also keep every candidate's validity, accuracy and novelty")
    s.add_argument("--chunk-size", type=int, metavar="N",
                   help="trials per compiled call (default: chosen from the grid size; "
                        "results do not depend on it)")
    s.add_argument("--bins", type=int, default=20,
                   help="accuracy/novelty histogram bins (0 disables; default 20)")
    add_progress_option(s)

    c = add_command(
        subparsers, "calibrate", _calibrate, out="PATH", out_required=False,
        out_help="parameters file (.json) to write; without it, --in-place is needed",
        help="re-derive a parameter set from its targets",
        description="Fit a parameter set to its targets (optax on exact expectations): "
                    "'paper' to data/targets.csv, 'lemur' to those plus "
                    "data/targets_lemur.csv. Then calibrate again without the section 3.4 "
                    "regimes and 3.5 hardest cell, and without the section 3.3 accuracy "
                    "ordering, to check whether they follow from the rest. Writes the "
                    "parameters, the held-out report beside them (NAME.heldout.csv) and "
                    "prints the expected value of every target.")
    c.add_argument("--set", dest="target_set", choices=("paper", "lemur"), default="paper",
                   help="target set to calibrate on (default: paper)")
    c.add_argument("--in-place", action="store_true",
                   help="overwrite the set's parameters file the package ships (instead of "
                        "--out)")
    c.add_argument("--steps", type=int, default=3000, help="optimiser steps (default 3000)")
    c.add_argument("--no-heldout", action="store_true",
                   help="skip the held-out check (two more calibrations)")
    add_progress_option(c)


# ------------------------------------------------------------------ handlers
def _reproduce(args: argparse.Namespace) -> int:
    from llmnas_transfer.study import reproduce

    outputs = reproduce.run_study(
        args.seed, out_dir=args.out, num_trials=args.trials, num_iterations=args.iterations,
        num_candidates=args.candidates, datasets=split_names(args.datasets),
        tasks=split_names(args.tasks), check_trials=args.check_trials,
        defaults=load_params(args.params), force=args.force, progress=show_progress(args),
    )
    reproduce.print_summary(outputs)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from llmnas_transfer.io import results as results_io
    from llmnas_transfer.sim.candidates import simulate

    out = Path(args.out)
    write = results_io.writer_for(out)  # validates suffix and folder before simulating
    ds = simulate(
        args.seed, datasets=split_names(args.datasets), tasks=split_names(args.tasks),
        num_trials=args.trials, num_iterations=args.iterations,
        num_candidates=args.candidates, per_candidate=args.per_candidate, bins=args.bins,
        chunk_size=args.chunk_size, defaults=load_params(args.params),
        progress=show_progress(args),
    )
    path = write(ds)
    extra = ""
    if args.per_candidate and out.suffix.lower() != ".nc":
        extra = f" (+ {results_io.candidates_path(path).name})"
    print(f"wrote {path}{extra}: {ds.sizes['dataset']} datasets x {ds.sizes['task']} tasks x "
          f"{ds.sizes['trial']} trials x {ds.sizes['iteration']} iterations x "
          f"{int(ds['n_generated'])} candidates")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from llmnas_transfer.io import atomic
    from llmnas_transfer.study import derive

    check_int("--steps", args.steps, 1, 1_000_000)
    if args.out and args.in_place:
        raise UserInputError("give either --out PATH or --in-place, not both")
    if not args.out and not args.in_place:
        raise UserInputError(
            "calibrate needs --out PATH (a new parameters file) or --in-place (overwrite the "
            "file the package ships)")
    out = Path(args.out) if args.out else derive.default_params_path(args.target_set)
    if out.suffix.lower() != ".json":
        raise UserInputError(f"{out}: the parameters file must end in .json")
    out = atomic.check_writable(out)
    heldout_out = atomic.check_writable(derive.heldout_path(out))
    res = derive.calibrate(target_set=args.target_set, steps=args.steps,
                           heldout=not args.no_heldout, progress=show_progress(args))
    atomic.atomic_write_text(out, res.defaults.to_json())
    _print_report(res.report)
    counted = res.report[res.report["role"] == "target"]
    msg = (f"wrote {out}; {int(counted['met'].sum())}/{len(counted)} counted targets met "
           f"(expected values; set {args.target_set!r})")
    if res.heldout is not None:
        atomic.atomic_write(heldout_out, lambda tmp: res.heldout.to_csv(
            tmp, index=False, float_format="%.6g"))
        follows = res.heldout[res.heldout["verdict"] == "follows"]
        msg += (f"; held-out check ({heldout_out.name}): {len(follows)}/{len(res.heldout)} "
                "left-out statements follow from the rest")
    print(msg)
    return 0


def _print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    tab = Table(title="Targets: paper value vs the model's expected value")
    for col in ("target", "paper", "expected", "met", "role", "fitted"):
        tab.add_column(col)
    for _, r in report.iterrows():
        tab.add_row(str(r["target"]), str(r["paper_text"]),
                    f"{r['expected_value']:.4f}", "yes" if r["met"] else "NO",
                    str(r["role"]), "yes" if r["fitted"] else "no")
    Console(file=sys.stdout).print(tab)
