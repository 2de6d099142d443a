"""Reproduce the study from Python: the same as ``llmnas-transfer reproduce --out DIR``.

Usage::

    python examples/reproduce_study.py --out results/study          # paper protocol
    python examples/reproduce_study.py --quick --out /tmp/study     # seconds, for smoke tests

Every example accepts ``--quick`` (tiny sizes) and ``--out DIR`` (where files go).
"""

from __future__ import annotations

import argparse

from llmnas_transfer.study import reproduce


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example_output/reproduce_study",
                        help="study folder (default: example_output/reproduce_study)")
    parser.add_argument("--quick", action="store_true", help="tiny protocol for smoke tests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.quick:
        protocol = dict(num_trials=2, num_iterations=10, num_candidates=5, check_trials=50)
    else:  # the paper's protocol, targets checked with 2000 extra trials
        protocol = dict(num_trials=15, num_iterations=10, num_candidates=20, check_trials=2000)

    out = reproduce.run_study(args.seed, out_dir=args.out, force=True, progress=True, **protocol)
    reproduce.print_summary(out)

    # the tables are pandas DataFrames as well as CSV files
    t = out.targets
    fitted = t[t["fitted"]]
    print(f"{int(fitted['met'].sum())}/{len(fitted)} targets met ({fitted['met_basis'].iloc[0]})")
    hard = out.gaps[(out.gaps["task"] == "classification") & (out.gaps["regime"] == "hard")]
    print("hard transfer (classification):", ", ".join(hard["dataset"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
