"""Command-line options shared by the commands: name lists, grid, seed, counts, progress,
multi-process runs.

Argument types check values with :mod:`llmnas_transfer.validate` and turn its
:class:`~llmnas_transfer.errors.UserInputError` into :class:`argparse.ArgumentTypeError`,
so argparse prints the message on one line and exits with status 2. Heavy modules (JAX,
the simulator) are imported only inside the helpers that need them: ``--help`` stays
fast, and the commands can still set JAX's CPU device count before its backend starts.

Example
-------
>>> import argparse
>>> p = argparse.ArgumentParser()
>>> add_grid_options(p); add_seed_option(p); add_progress_option(p)
>>> a = p.parse_args(["--datasets", "cifar-10,svhn", "stl-10", "--seed", "3"])
>>> split_names(a.datasets), a.trials, a.seed, a.no_progress
(['cifar-10', 'svhn', 'stl-10'], 15, 3, False)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.study.distributed import DEFAULT_TIMEOUT_S, MAX_PROCESSES, check_coordinator
from llmnas_transfer.validate import check_float, check_int, did_you_mean

#: largest seed the simulator accepts (:func:`llmnas_transfer.sim.candidates.as_key`)
MAX_SEED = 2**63 - 1


# ------------------------------------------------------------------ help
class HelpFormatter(argparse.HelpFormatter):
    """Help that shows every option's default: ``(default: X)`` is appended to a help text
    that does not already mention its default (flags and options without a default are
    left as they are)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or "%(default)" in text:
            return text
        default = action.default
        if default is None or default is argparse.SUPPRESS or default is False \
                or default == [] or not action.option_strings \
                or isinstance(action, argparse._StoreTrueAction):
            return text
        return f"{text} (default: %(default)s)"


# ------------------------------------------------------------------ commands
def add_command(subparsers, name: str, func, *, help: str, description: str,
                out: str | None = None, out_help: str = "output folder",
                out_required: bool = True) -> argparse.ArgumentParser:
    """Add the sub-command ``name`` that runs ``func(args)``, with its ``--out`` option.

    ``out`` is the metavar of ``--out`` (``"DIR"``, ``"FILE"``, ...); ``None`` adds none.

    Example
    -------
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> p = add_command(sub, "demo", print, help="a demo", description="A demo.", out="DIR")
    >>> p.parse_args(["--out", "x"]).out
    'x'
    """
    p = subparsers.add_parser(name, help=help, description=description,
                              formatter_class=HelpFormatter)
    if out is not None:
        p.add_argument("--out", required=out_required, metavar=out, help=out_help)
    p.set_defaults(func=func)
    return p


# ------------------------------------------------------------------ argument types
def _arg_type(convert, check, type_name: str):
    """An argparse type: ``convert(text)`` (argparse's wording when it fails), then
    ``check(value)``, whose :class:`~llmnas_transfer.errors.UserInputError` becomes the
    one-line :class:`argparse.ArgumentTypeError`."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {type_name} value: {text!r}") from None
        try:
            return check(value)
        except UserInputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = type_name  # argparse names the type in its own messages
    return parse


def int_arg(low: int | None = None, high: int | None = None, *, name: str = "value"):
    """An argument type: an integer in ``[low, high]`` (argparse's message names the
    option: ``argument --draws: value must be ...``).

    Example
    -------
    >>> int_arg(1, 10)("3")
    3
    >>> int_arg(1, 10)("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: value must be an integer in [1, 10], got 0
    >>> seed_arg("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: seed must be an integer in [0, 9223372036854775807], got -1
    """
    return _arg_type(int, lambda v: check_int(name, v, low, high), "int")


def float_arg(low: float | None = None, high: float | None = None, *,
              low_open: bool = False, high_open: bool = False):
    """An argument type: a finite number between ``low`` and ``high``.

    Example
    -------
    >>> float_arg(0, 1, low_open=True, high_open=True)("0.9")
    0.9
    >>> float_arg(0, 1, low_open=True, high_open=True)("1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: value must be in (0, 1), got 1.0
    """
    return _arg_type(float, lambda v: check_float("value", v, low, high, low_open=low_open,
                                                   high_open=high_open), "float")


#: argument type of ``--seed``: an integer in ``[0, 2**63)``
seed_arg = int_arg(0, MAX_SEED, name="seed")
#: argument type of a count that must be at least 1 (``--chains``, ``--trials``)
positive_int_arg = int_arg(1)
#: argument type of ``--ci``: a probability in (0, 1)
ci_arg = float_arg(0, 1, low_open=True, high_open=True)


def split_names(values: Sequence[str] | str | None) -> list[str] | None:
    """Names given as ``--datasets a,b c``: ``["a", "b", "c"]``; ``None`` stays ``None``
    (the built-ins). An option given with no name at all is a user error.

    Example
    -------
    >>> split_names(["cifar-10,svhn", " stl-10 "])
    ['cifar-10', 'svhn', 'stl-10']
    >>> split_names(None) is None
    True
    """
    if values is None:
        return None
    chunks = [values] if isinstance(values, str) else values
    out = [v.strip() for chunk in chunks for v in chunk.split(",") if v.strip()]
    if not out:
        raise UserInputError("an empty name list was given; omit the option to use the built-ins")
    return out


def names_arg(text: str) -> list[str]:
    """Argument type of a comma-separated name list (``--datasets a,b``).

    Example
    -------
    >>> names_arg("cifar-10, svhn")
    ['cifar-10', 'svhn']
    """
    try:
        return split_names(text)
    except UserInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ------------------------------------------------------------------ option groups
def add_grid_options(p: argparse.ArgumentParser, *, trials: int = 15,
                     trials_help: str = "independent trials") -> None:
    """``--datasets``, ``--tasks`` (read them with :func:`split_names`), ``--trials``,
    ``--iterations`` and ``--candidates``. Counts are plain integers: the library checks
    their range with messages that name the argument (``num_trials`` ...)."""
    p.add_argument("--datasets", nargs="+", metavar="NAME",
                   help="datasets, comma- or space-separated (default: the 8 built-ins)")
    p.add_argument("--tasks", nargs="+", metavar="NAME",
                   help="tasks, comma- or space-separated (default: the 4 built-ins)")
    p.add_argument("--trials", type=int, default=trials,
                   help=f"{trials_help} (default {trials})")
    p.add_argument("--iterations", type=int, default=10,
                   help="refinement iterations per trial (default 10)")
    p.add_argument("--candidates", type=int, default=20,
                   help="candidates generated per iteration (default 20)")


def add_seed_option(p: argparse.ArgumentParser) -> None:
    """``--seed`` (:func:`seed_arg`, default 0)."""
    p.add_argument("--seed", type=seed_arg, default=0, help="random seed (default 0)")


#: names of the shipped parameter sets (:data:`llmnas_transfer.sim.params.PARAM_SETS`)
PARAM_SET_NAMES: tuple[str, ...] = ("paper", "lemur")


def add_params_option(p: argparse.ArgumentParser) -> None:
    """``--params paper|lemur|FILE``: read it with :func:`load_params`."""
    p.add_argument("--params", metavar="paper|lemur|FILE",
                   help="parameter set: 'paper' (calibrated on the paper's statements), "
                        "'lemur' (on LEMUR's real first-epoch accuracies) or a parameters "
                        "JSON written by 'calibrate' (default: paper)")


def add_progress_option(p: argparse.ArgumentParser, *,
                        text: str = "hide the progress bar") -> None:
    """``--no-progress`` (``args.no_progress``); ``text`` is its help. Progress shows by
    default when stderr is a terminal: read it with :func:`show_progress`."""
    p.add_argument("--no-progress", action="store_true",
                   help=f"{text} (default: shown when stderr is a terminal)")


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to show progress: stderr is a terminal and ``--no-progress`` was not given.

    Example
    -------
    >>> show_progress(argparse.Namespace(no_progress=True))
    False
    """
    if getattr(args, "no_progress", False):
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def coordinator_arg(text: str) -> str:
    """Argument type of ``--coordinator``: ``HOST:PORT``.

    Example
    -------
    >>> coordinator_arg("10.0.0.1:1234")
    '10.0.0.1:1234'
    """
    try:
        return check_coordinator(text)
    except UserInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_distributed_options(p: argparse.ArgumentParser, *, command: str,
                            primary: str = "writes the output") -> None:
    """``--coordinator``, ``--num-processes``, ``--process-id`` and
    ``--coordinator-timeout`` of ``command``, whose process 0 does what ``primary`` says
    (``"writes the output"``); turn them into a
    run with :func:`llmnas_transfer.study.distributed.resolve_options` and
    :func:`~llmnas_transfer.study.distributed.initialize` before any JAX work.

    Example
    -------
    >>> p = argparse.ArgumentParser()
    >>> add_distributed_options(p, command="sweep")
    >>> a = p.parse_args(["--coordinator", "h:1", "--num-processes", "2", "--process-id", "1"])
    >>> a.coordinator, a.num_processes, a.process_id, a.coordinator_timeout
    ('h:1', 2, 1, 60)
    """
    g = p.add_argument_group(
        "several processes or hosts (jax.distributed)",
        "Give all three of --coordinator, --num-processes and --process-id, or none. When "
        "none is given, JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are "
        "read, then JAX's cluster auto-detection (SLURM, Open MPI, TPU pods, Kubernetes); "
        f"otherwise the {command} runs in this process only.")
    g.add_argument("--coordinator", type=coordinator_arg, metavar="HOST:PORT",
                   help="address of process 0, which listens on PORT (default: none, "
                        "a single process)")
    g.add_argument("--num-processes", type=int_arg(1, MAX_PROCESSES, name="--num-processes"),
                   metavar="N", help="number of processes in the run (default: none)")
    g.add_argument("--process-id", type=int_arg(0, MAX_PROCESSES - 1, name="--process-id"),
                   metavar="I", help=f"this process's index, 0 to N-1; process 0 {primary} "
                                     "(default: none)")
    g.add_argument("--coordinator-timeout", type=int_arg(1, 86400,
                                                         name="--coordinator-timeout"),
                   default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="how long to wait for the coordinator and for every process to "
                        "join, and after how long without a heartbeat a process counts as "
                        f"dead (default {DEFAULT_TIMEOUT_S})")


# ------------------------------------------------------------------ values
def stop_on_lost_peer(command: str, exc: BaseException, advice: str) -> None:
    """Print a lost peer's one-line error (``advice``: what the user can do) and end the
    process at once with exit code 1 (JAX's own shutdown would wait for the dead peer,
    then abort).

    Example
    -------
    >>> callable(stop_on_lost_peer)
    True
    """
    from llmnas_transfer.study.distributed import exit_now

    msg = " ".join(str(exc).split())
    print(f"llmnas-transfer {command}: error: {msg}; {advice}", file=sys.stderr)
    exit_now(1)


def secondary_done(what: str) -> int:
    """A process other than 0 says it is done and what process 0 does; returns 0.

    Example
    -------
    >>> secondary_done("writes out.nc")
    process 0 of 1: done; process 0 writes out.nc
    0
    """
    import jax

    print(f"process {jax.process_index()} of {jax.process_count()}: done; process 0 {what}")
    return 0


def load_params(value: str | None):
    """The :class:`~llmnas_transfer.sim.params.ModelDefaults` of ``--params``, or ``None``
    (the shipped ``paper`` set) when the option was not given.

    ``paper`` and ``lemur`` name the shipped sets; anything else is a file path. A value
    that is neither a set nor an existing file is a
    :class:`~llmnas_transfer.errors.UserInputError` (exit 2) naming the closest set.

    Example
    -------
    >>> load_params("lemur").provenance["target_set"]
    'lemur'
    >>> load_params("lemr")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    llmnas_transfer.errors.UserInputError: --params: 'lemr' is neither ...did you mean 'lemur'?...
    """
    if not value:
        return None
    from pathlib import Path

    from llmnas_transfer.sim.params import load_defaults, load_param_set

    if value in PARAM_SET_NAMES:
        return load_param_set(value)
    path = Path(value).expanduser()
    if not path.exists() and path.suffix.lower() != ".json" and len(path.parts) == 1:
        raise UserInputError(
            f"--params: {value!r} is neither a parameter set nor a file"
            f"{did_you_mean(value, PARAM_SET_NAMES)}; valid sets: {', '.join(PARAM_SET_NAMES)}")
    return load_defaults(path)
