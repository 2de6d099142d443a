"""CLI command ``plan``: how many trials, iterations and candidates a transfer-gap question needs.

``llmnas-transfer plan --compare stl-10:classification --regime`` simulates many studies
per design (:func:`llmnas_transfer.study.plan.plan`), prints one row per design and a
one-paragraph recommendation, and with ``--out DIR`` writes ``DIR/plan.csv`` and the
figure ``DIR/plan_assurance.png``/``.pdf``. Every input is checked before anything is
simulated; a mistake ends with a one-line message and exit status 2.

Across processes or hosts, start the same command in every process with
``--coordinator HOST:PORT --num-processes N --process-id I`` (or the environment variables
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or under SLURM,
Open MPI, TPU pods and Kubernetes nothing at all): the simulated studies are spread over
the processes, the table is the same bits as on one process, and only process 0 prints
it and writes the files (see ``docs/scaling-out.md``).

Example
-------
>>> from llmnas_transfer.cli import main
>>> main(["plan", "--compare", "stl-10:classification", "--regime"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmnas_transfer.cli import options
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.study.distributed import (
    PeerLostError,
    agree,
    agree_all,
    initialize,
    is_primary,
    resolve_options,
)

#: default grids (kept equal to :mod:`llmnas_transfer.study.plan`'s, which the CLI does
#: not import before the arguments are checked)
DEFAULT_TRIALS = "5,10,15,20,30,40,60,80,100,150"
DEFAULT_ITERATIONS = "10"
DEFAULT_CANDIDATES = "10,20,50,100"
COMPONENTS = ("validity", "accuracy", "combined", "trend")


def _int_list(name: str, low: int, high: int):
    """Argument type: one integer or a comma-separated list, each in ``[low, high]``."""
    def parse(text: str) -> tuple[int, ...]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"{name}: give a number or a comma-separated list")
        out = []
        for p in parts:
            try:
                v = int(p)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name}: {p!r} is not an integer") from None
            if not low <= v <= high:
                raise argparse.ArgumentTypeError(
                    f"{name}: every value must be an integer in [{low}, {high}], got {v}")
            out.append(v)
        return tuple(sorted(set(out)))

    parse.__name__ = "integer list"
    return parse


def register(subparsers) -> None:
    """Add ``plan`` to the CLI."""
    p = options.add_command(
        subparsers, "plan", _plan, out="DIR", out_required=False,
        out_help="folder for plan.csv and the figure plan_assurance.png/.pdf (default: "
                 "print only)",
        help="size a study: trials, iterations and candidates for a transfer-gap question",
        description="Simulate many studies per design from the design prior, analyse each "
                    "with a fast approximate posterior of the compared gap component, and "
                    "report each design's assurance (the probability of reaching the goal) "
                    "and the cheapest design that reaches --assurance. Across processes "
                    "or hosts, start the same command in each with --coordinator, "
                    "--num-processes and --process-id: the table is the same, and "
                    "process 0 prints it and writes --out.")
    p.add_argument("--reference", default="cifar-10:classification", metavar="D:T",
                   help="reference setting DATASET:TASK (default cifar-10:classification)")
    p.add_argument("--compare", required=True, metavar="D:T[,D:T...]",
                   help="setting(s) to compare with the reference; a study meets the goal "
                        "when every one does (required)")
    p.add_argument("--component", choices=COMPONENTS, default="combined",
                   help="gap component to size for (default combined: the one regimes "
                        "are defined on)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--width", type=options.float_arg(0, 10, low_open=True), metavar="W",
                      help="goal: the --ci interval of the gap at most W wide (a fraction, "
                           "e.g. 0.10)")
    goal.add_argument("--regime", action="store_true",
                      help="goal: call the regime right, the interval inside the true regime "
                           "(default goal when --width is not given)")
    p.add_argument("--ci", type=options.ci_arg, default=0.94,
                   help="probability of the interval (default 0.94)")
    p.add_argument("--assurance", type=options.float_arg(0, 1, low_open=True, high_open=True),
                   default=0.8, metavar="A",
                   help="probability of reaching the goal a design needs (default 0.8)")
    p.add_argument("--trials", type=_int_list("--trials", 2, 100_000), default=DEFAULT_TRIALS,
                   metavar="R[,R...]",
                   help=f"trials per setting to try, at least 2 (default {DEFAULT_TRIALS})")
    p.add_argument("--iterations", type=_int_list("--iterations", 1, 10_000),
                   default=DEFAULT_ITERATIONS, metavar="T[,T...]",
                   help=f"refinement iterations per trial to try (default {DEFAULT_ITERATIONS})")
    p.add_argument("--candidates", type=_int_list("--candidates", 1, 10**6),
                   default=DEFAULT_CANDIDATES, metavar="N[,N...]",
                   help=f"candidates per iteration to try (default {DEFAULT_CANDIDATES})")
    p.add_argument("--studies", type=options.int_arg(10, 1_000_000, name="--studies"),
                   default=500,
                   help="simulated studies per design (default 500; Monte Carlo SE of an "
                        "assurance of 0.8 is 0.018)")
    p.add_argument("--method", choices=("model", "final"), default="model",
                   help="analysis of each simulated study: model (default; each setting's "
                        "validity from all iterations, dynamics known) or final (last "
                        "iteration only; model-free, wider)")
    options.add_params_option(p)
    p.add_argument("--from", dest="pilot", metavar="PILOT_FIT.nc",
                   help="design prior from a pilot study's fit (posterior draws); replaces "
                        "--params (default: none)")
    p.add_argument("--cost-per-candidate", type=options.float_arg(0), metavar="HOURS",
                   help="GPU hours per candidate; adds a cost column (default: none)")
    p.add_argument("--format", choices=("table", "csv"), default="table",
                   help="how to print the designs (default table)")
    options.add_seed_option(p)
    p.add_argument("--devices", type=options.int_arg(1, 2**31 - 1, name="--devices"),
                   default=1, metavar="N",
                   help="local devices per process to spread the studies over (default 1; "
                        "each device compiles the simulation once, so more pay off only "
                        "for long plans; on CPU start with JAX_NUM_CPU_DEVICES=N to have "
                        "N; results do not depend on it)")
    options.add_progress_option(p)
    options.add_distributed_options(p, command="plan",
                                    primary="prints the table and writes --out")


def _check_options(args: argparse.Namespace) -> list[str]:
    """The checks that read no file and start no JAX: the compared settings as ``D:T``."""
    from llmnas_transfer.study.plan import parse_setting

    ref = parse_setting(args.reference, "--reference")
    comp = [parse_setting(c, "--compare") for c in options.split_names(args.compare)]
    if ref in comp:
        raise UserInputError(f"--compare: {ref[0]}:{ref[1]} is the reference; compare another "
                             "setting")
    if args.component == "trend" and min(args.iterations) < 2:
        raise UserInputError("--iterations: the trend component needs at least 2 iterations")
    if args.pilot and args.params:
        raise UserInputError("give either --params or --from, not both")
    return [f"{d}:{t}" for d, t in comp]


def _check_out(args: argparse.Namespace) -> list[Path] | None:
    """The output files (``None`` without ``--out``), checked and their folder made; only
    the process that writes them runs this."""
    from llmnas_transfer.io.atomic import check_writable

    if not args.out:
        return None
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: --out must be a folder")
    return [check_writable(out / name) for name in
            ("plan.csv", "plan_assurance.png", "plan_assurance.pdf")]


def _load_inputs(args: argparse.Namespace):
    """The design prior: ``(defaults, pilot)`` from ``--params`` and ``--from``."""
    pilot = None
    if args.pilot:
        from llmnas_transfer.fit.fitfile import load_fit

        path = Path(args.pilot).expanduser()
        if not path.is_file():
            raise UserInputError(f"{path}: --from: fit file not found")
        pilot = load_fit(path)
    defaults = options.load_params(args.params)
    return defaults, pilot


def _plan(args: argparse.Namespace) -> int:
    dist = resolve_options(args.coordinator, args.num_processes, args.process_id,
                           timeout_s=args.coordinator_timeout)
    compare = _check_options(args)  # every process, before any JAX work
    if dist.active:
        if dist.process_id == 0 and not dist.auto:
            _check_out(args)  # fail fast, before waiting for other processes
        initialize(dist)  # before JAX starts its backend
        paths = agree(lambda: _check_out(args))  # every process stops if process 0's fails
        defaults, pilot = agree_all(lambda: _load_inputs(args))  # each process reads them
    else:
        paths = _check_out(args)
        defaults, pilot = _load_inputs(args)
    from llmnas_transfer.io.atomic import atomic_write
    from llmnas_transfer.study.plan import plan, plot_assurance, recommendation
    from llmnas_transfer.summarize.figures import save_figure

    try:
        df = plan(args.reference, compare, component=args.component, width=args.width,
                  ci=args.ci, assurance=args.assurance, trials=args.trials,
                  iterations=args.iterations, candidates=args.candidates, defaults=defaults,
                  pilot=pilot, studies=args.studies,
                  cost_per_candidate=args.cost_per_candidate, seed=args.seed,
                  method=args.method, progress=options.show_progress(args),
                  devices_per_process=args.devices)
    except PeerLostError as exc:
        options.stop_on_lost_peer("plan", exc, "nothing was written: rerun the command (any "
                                  "number of processes gives the same plan)")
    if not is_primary():
        return options.secondary_done(f"writes {Path(args.out).expanduser()}" if args.out
                                      else "prints the plan")
    if args.format == "csv":
        print(df.to_csv(index=False), end="")
    else:
        print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    truth = ", ".join(f"{c} {v:.3f}" for c, v in zip(compare, df.attrs["true_value"],
                                                     strict=True))
    print(f"\ntrue {args.component} gap under the design prior: {truth}")
    print(recommendation(df, component=args.component, compare=compare))
    if paths is not None:
        atomic_write(paths[0], lambda tmp: df.to_csv(tmp, index=False))
        save_figure(plot_assurance(df, ci=args.ci), paths[1].with_suffix(""))
        print(f"wrote {paths[0]} and {paths[1]} (.pdf beside it)")
    return 0
