"""Command line: ``llmnas-transfer <command> ...``.

Each group of commands lives in its own module with a ``register(subparsers)`` function:
:mod:`~llmnas_transfer.cli.study` (reproduce, simulate, calibrate),
:mod:`~llmnas_transfer.cli.fit` (fit, gaps, trajectory, check),
:mod:`~llmnas_transfer.cli.backtest` (backtest),
:mod:`~llmnas_transfer.cli.lemur` (lemur, scenario), :mod:`~llmnas_transfer.cli.sweep`
(sweep), :mod:`~llmnas_transfer.cli.report` (report) and
:mod:`~llmnas_transfer.cli.plan` (plan); the options they share (grid,
seed, counts, progress) are built by :mod:`~llmnas_transfer.cli.options`. Commands keep
compiled programs in JAX's persistent cache (:mod:`llmnas_transfer.cache`). A user's mistake
(:class:`~llmnas_transfer.errors.UserInputError`) ends with a one-line message on stderr
and exit code 2, never a traceback.

Example
-------
>>> main(["--version"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from llmnas_transfer import __version__
from llmnas_transfer.errors import UserInputError

COMMAND_MODULES: tuple[str, ...] = ("study", "fit", "backtest", "lemur", "sweep", "report",
                                    "plan")

#: the top-level ``--help`` text (plain words; the module docstring is reStructuredText)
DESCRIPTION = (
    "Simulate how LLM-driven architecture-synthesis trends transfer beyond CIFAR-10, and fit "
    "the model to observed runs. Run 'llmnas-transfer COMMAND --help' for a command's "
    "options. A mistake in the input ends with a one-line message and exit status 2."
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered command."""
    from llmnas_transfer.cli.options import HelpFormatter

    parser = _Parser(prog="llmnas-transfer", description=DESCRIPTION,
                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"llmnas-transfer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"llmnas_transfer.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from llmnas_transfer.cache import enable_compilation_cache

    enable_compilation_cache()
    try:
        return int(args.func(args) or 0)
    except UserInputError as exc:
        msg = " ".join(str(exc).split())
        print(f"llmnas-transfer {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmnas-transfer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
