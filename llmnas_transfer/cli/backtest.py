"""The ``backtest`` command: rolling-origin scores of the model's forecasts against naive
baselines (:func:`llmnas_transfer.study.backtest.backtest`).

Example
-------
>>> import argparse
>>> p = argparse.ArgumentParser(); register(p.add_subparsers())
>>> p.parse_args(["backtest", "runs.csv", "--origin", "16", "--horizon", "8"]).step
1
"""

from __future__ import annotations

import argparse
import json
import sys

from llmnas_transfer.cli.options import (
    add_command,
    add_progress_option,
    add_seed_option,
    ci_arg,
    int_arg,
    show_progress,
)
from llmnas_transfer.io.atomic import check_writable


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``backtest`` to the CLI."""
    from llmnas_transfer.cli.fit import add_bursts_option, add_nuts_options

    p = add_command(
        subparsers, "backtest", _backtest, out="FILE", out_required=False,
        out_help="write the score of every forecast target to this CSV (default: none)",
        help="rolling-origin forecast scores of the model against naive baselines",
        description="Fit the runs' iterations 1..k for k = ORIGIN, ORIGIN + STEP, ... and "
                    "score the forecasts of the next HORIZON observed validity rates "
                    "(quantile score over 19 levels, CRPS, coverage of the 50%, 90% and "
                    "--ci central intervals), with the naive baselines (replay of the past "
                    "rates, the last 4 iterations' mean with binomial noise, a "
                    "beta-binomial fitted to the past) scored on the same targets.")
    p.add_argument("runs", help="observed runs file (.csv, .parquet, .jsonl)")
    p.add_argument("--origin", type=int_arg(1, 10**6), required=True, metavar="K",
                   help="first origin: the first fit sees iterations 1..K")
    p.add_argument("--horizon", type=int_arg(1, 10**6), required=True, metavar="H",
                   help="iterations scored after each origin")
    p.add_argument("--step", type=int_arg(1, 10**6), default=1, metavar="S",
                   help="iterations between origins (default: 1)")
    add_nuts_options(p)
    p.add_argument("--trend", choices=("setting", "shared"), default="setting",
                   help="refinement trend, as for 'fit' (default: setting)")
    add_bursts_option(p)
    p.add_argument("--ci", type=ci_arg, default=0.94,
                   help="central interval whose coverage is reported besides 50%% and "
                        "90%% (default: 0.94)")
    p.add_argument("--figure", metavar="STEM",
                   help="draw the fan chart to STEM.png and STEM.pdf (default: none)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="format of the summary printed on stdout")
    add_seed_option(p)
    add_progress_option(p, text="hide the sampler's bar and the per-origin progress lines")


def _backtest(args) -> int:
    # everything the command will write is checked before any compiling or sampling
    out = check_writable(args.out) if args.out else None
    if args.figure:
        from pathlib import Path

        for ext in (".png", ".pdf"):
            check_writable(Path(args.figure).with_name(Path(args.figure).name + ext))
    from llmnas_transfer.io.runs import read_runs

    runs = read_runs(args.runs)
    # the origins, before any work
    from llmnas_transfer.study.backtest import check_origins

    check_origins(args.origin, args.horizon, args.step, int(runs.cells["iteration"].max()))
    from llmnas_transfer.io.atomic import atomic_write
    from llmnas_transfer.study.backtest import backtest
    from llmnas_transfer.summarize.posterior import format_table

    progress = show_progress(args)

    def on_origin(i, n, fit):
        if progress:
            print(f"origin {fit.origin} ({i + 1}/{n}): {fit.seconds:.1f} s, max r_hat "
                  f"{fit.max_rhat:.3f}, {fit.divergences} divergences", file=sys.stderr)

    print(runs.report(), file=sys.stderr)
    bt = backtest(runs, origin=args.origin, horizon=args.horizon, step=args.step,
                  chains=args.chains, warmup=args.warmup, draws=args.draws, seed=args.seed,
                  bursts=args.bursts, trend=args.trend, target_accept=args.target_accept,
                  ci=args.ci, on_origin=on_origin, progress=progress)
    for note in bt.notes:
        print(f"note: {note}", file=sys.stderr)
    if out is not None:
        atomic_write(out, lambda tmp: bt.scores.to_csv(tmp, index=False))
    if args.figure:
        from llmnas_transfer.summarize.figures import plot_backtest, save_figure

        save_figure(plot_backtest(bt.scores, bt.observed), args.figure)
    if args.format == "json":
        print(json.dumps({"summary": bt.summary.to_dict(orient="records"),
                          "fits": [f._asdict() for f in bt.fits],
                          "settings": bt.settings}, indent=2))
    else:
        print(format_table(bt.summary, args.format))
        if args.format == "table":
            worst = max(f.max_rhat for f in bt.fits)
            div = sum(f.divergences for f in bt.fits)
            print(f"{len(bt.fits)} fits (origins {', '.join(map(str, bt.settings['origins']))}"
                  f"; bursts {bt.settings['bursts']}): max r_hat {worst:.3f}, "
                  f"{div} divergences in all")
    return 0
