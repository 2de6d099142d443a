"""CLI commands on real data: ``lemur`` (fit the bundled LEMUR accuracies) and ``scenario``
(a published run re-expressed in the model).

Example
-------
>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers(dest="command")
>>> register(sub)
>>> p.parse_args(["lemur", "--out", "results/lemur", "--quick"]).quick
True
"""

from __future__ import annotations

import argparse
import sys

from llmnas_transfer.cli.options import (
    add_command,
    add_params_option,
    add_progress_option,
    add_seed_option,
    load_params,
    positive_int_arg,
    show_progress,
)
from llmnas_transfer.errors import UserInputError


def _lemur(args: argparse.Namespace) -> int:
    if args.write_priors is not None and args.quick:
        raise UserInputError("--write-priors needs the full fit; drop --quick")
    from llmnas_transfer.study import lemur

    chains = args.chains or lemur.RUN_SETTINGS[bool(args.quick)]["num_chains"]
    write = False if args.write_priors is None else (args.write_priors or True)
    rep = lemur.run_lemur(args.out, quick=args.quick, seed=args.seed, write_priors=write,
                          progress=show_progress(args) and not args.quiet,
                          num_chains=chains)
    if not args.quiet:
        d = rep.diagnostics
        print(f"fit: max r_hat {d['max_r_hat']:.3f}, min ESS {d['min_ess_bulk']:.0f}, "
              f"{d['divergences']} divergences in {d['draws']} draws")
        cov = rep.coverage.set_index("dataset")
        print("held-out coverage of 90% intervals: " + ", ".join(
            f"{k} {r.coverage:.2f}" for k, r in cov.iterrows()))
        print(f"wrote {len(rep.files)} files to {args.out}")
    return 0


def _scenario(args: argparse.Namespace) -> int:
    from llmnas_transfer.study import scenarios

    if args.name not in scenarios.names():
        raise UserInputError(f"unknown scenario {args.name!r}; valid values: "
                             f"{', '.join(scenarios.names())}")
    defaults = load_params(args.params)
    res = scenarios.run_scenario(args.name, args.out, seed=args.seed, num_trials=args.trials,
                                 defaults=defaults)
    if not args.quiet:
        cols = ["statistic", "published", "expected", "simulated", "simulated_se", "run_sd"]
        res["comparison"][cols].to_string(sys.stdout, index=False, float_format="%.4f")
        print(f"\nwrote {len(res['files'])} files to {args.out}")
    return 0


def register(subparsers) -> None:
    """Add the ``lemur`` and ``scenario`` commands."""
    p = add_command(
        subparsers, "lemur", _lemur, out="DIR",
        help="fit the bundled LEMUR first-epoch accuracies; write tables and figures",
        description="Fit the LEMUR real first-epoch accuracies (NUTS), rank transfer, held-out "
                    "coverage and the real-vs-simulated comparison; write CSV tables, figures "
                    "and the accuracy priors to --out.")
    p.add_argument("--quick", action="store_true",
                   help="fewer draws, bootstrap resamples and simulated trials")
    add_seed_option(p)
    p.add_argument("--chains", type=positive_int_arg, default=None,
                   help="NUTS chains (default: 4, or 2 with --quick)")
    p.add_argument("--write-priors", nargs="?", const="", default=None, metavar="PATH",
                   help="also save the LLM accuracy priors for the calibration (to the "
                        "package's data/lemur_accuracy_priors.json, or PATH; default: not "
                        "saved)")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but errors (implies --no-progress)")
    add_progress_option(p)

    s = add_command(
        subparsers, "scenario", _scenario, out="DIR",
        help="simulate a named published scenario and compare with its numbers",
        description="Fit a named scenario (e.g. khalid2026) to its published numbers, "
                    "simulate it and write the comparison table and a figure to --out.")
    s.add_argument("name", metavar="NAME", help="scenario name, e.g. khalid2026")
    add_seed_option(s)
    add_params_option(s)
    s.add_argument("--trials", type=positive_int_arg, default=2000,
                   help="simulated runs (default 2000)")
    s.add_argument("--quiet", action="store_true", help="print nothing but errors")
