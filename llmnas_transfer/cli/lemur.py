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

from llmnas_transfer.errors import UserInputError


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if v < 0 or v >= 2**31:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**31), got {v}")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _use_cpu_devices(n: int) -> None:
    """Ask JAX for ``n`` CPU devices so chains run in parallel (only before JAX starts)."""
    try:
        import jax

        jax.config.update("jax_num_cpu_devices", int(n))
    except Exception:  # backend already initialised: chains then run sequentially
        pass


def _lemur(args: argparse.Namespace) -> int:
    from llmnas_transfer.study import lemur

    chains = args.chains or lemur.RUN_SETTINGS[bool(args.quick)]["num_chains"]
    _use_cpu_devices(chains)
    if args.write_priors is not None and args.quick:
        raise UserInputError("--write-priors needs the full fit; drop --quick")
    write = False if args.write_priors is None else (args.write_priors or True)
    rep = lemur.run_lemur(args.out, quick=args.quick, seed=args.seed, write_priors=write,
                          progress=not args.quiet, num_chains=chains)
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
    res = scenarios.run_scenario(args.name, args.out, seed=args.seed, num_trials=args.trials)
    if not args.quiet:
        cols = ["statistic", "published", "expected", "simulated", "simulated_se", "run_sd"]
        res["comparison"][cols].to_string(sys.stdout, index=False, float_format="%.4f")
        print(f"\nwrote {len(res['files'])} files to {args.out}")
    return 0


def register(subparsers) -> None:
    """Add the ``lemur`` and ``scenario`` commands."""
    p = subparsers.add_parser(
        "lemur", help="fit the bundled LEMUR first-epoch accuracies; write tables and figures",
        description="Fit the LEMUR real first-epoch accuracies (NUTS), rank transfer, held-out "
                    "coverage and the real-vs-simulated comparison; write CSV tables, figures "
                    "and the accuracy priors to --out.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="fewer draws, bootstrap resamples and simulated trials")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--chains", type=_positive, default=None, help="NUTS chains")
    p.add_argument("--write-priors", nargs="?", const="", default=None, metavar="PATH",
                   help="also save the LLM accuracy priors for the calibration (to the "
                        "package's data/lemur_accuracy_priors.json, or PATH)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_lemur)

    s = subparsers.add_parser(
        "scenario", help="simulate a named published scenario and compare with its numbers",
        description="Fit a named scenario (e.g. khalid2026) to its published numbers, "
                    "simulate it and write the comparison table and a figure to --out.")
    s.add_argument("name", metavar="NAME", help="scenario name, e.g. khalid2026")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder")
    s.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    s.add_argument("--trials", type=_positive, default=2000, help="simulated runs")
    s.add_argument("--quiet", action="store_true", help="print nothing but errors")
    s.set_defaults(func=_scenario)
