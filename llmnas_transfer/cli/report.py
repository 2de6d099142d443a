"""CLI command ``report``: one self-contained HTML page of a fit file or a study folder.

``llmnas-transfer report FIT.nc --out report.html`` renders a fit written by ``fit``;
``llmnas-transfer report DIR --out report.html`` renders a folder written by
``reproduce``. The page embeds its figures and style, so it opens offline (see
:mod:`llmnas_transfer.summarize.report`). The input kind and ``--out`` are checked before
any work; a mistake ends with a one-line message and exit status 2.

Example
-------
>>> import argparse
>>> p = argparse.ArgumentParser(); register(p.add_subparsers())
>>> p.parse_args(["report", "fit.nc", "--out", "r.html"]).ci
0.94
"""

from __future__ import annotations

import argparse
import sys

from llmnas_transfer.cli.options import add_command, add_progress_option, ci_arg, show_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report`` to the CLI.

    Example
    -------
    >>> p = argparse.ArgumentParser(); register(p.add_subparsers())
    >>> p.parse_args(["report", "study", "--out", "study.html"]).source
    'study'
    """
    p = add_command(
        subparsers, "report", _report, out="FILE",
        out_help="output HTML file (must end in .html), e.g. report.html",
        help="one self-contained HTML report of a fit file or a study folder",
        description="Write one self-contained HTML page (figures embedded, no network "
                    "access needed) of a fit file written by 'fit' (data summary, "
                    "diagnostics, transfer gaps with HDIs and regime probabilities, "
                    "trajectories and forecasts, posterior predictive checks) or of a "
                    "study folder written by 'reproduce' (configuration, targets, tables, "
                    "figures).")
    p.add_argument("source", metavar="FIT_OR_DIR",
                   help="fit file (.nc) written by 'llmnas-transfer fit', or a folder "
                        "written by 'llmnas-transfer reproduce'")
    p.add_argument("--ci", type=ci_arg, default=0.94,
                   help="HDI probability of a fit's intervals, in (0, 1)")
    add_progress_option(p, text="hide the progress display")


def _report(args: argparse.Namespace) -> int:
    from llmnas_transfer.summarize.report import write_report

    path = write_report(args.source, args.out, ci=args.ci, progress=show_progress(args))
    print(f"wrote {path}", file=sys.stderr)
    return 0
