"""CLI command ``sweep``: a streaming what-if sweep with progress, ETA and resume.

``llmnas-transfer sweep --trials 100000 --candidates 1000 --out sweep.nc`` runs
:func:`llmnas_transfer.study.sweeps.sweep` chunk by chunk, shows a progress bar with the time
remaining and the candidates per second, writes a checkpoint (``OUT.ckpt.npz`` unless
``--checkpoint`` says otherwise) after every chunk, and writes the totals per (dataset,
task, iteration) to ``.nc`` or ``.csv`` at the end. After an interruption, the same command
with ``--resume`` continues from the last finished chunk; the result is identical to an
uninterrupted run. The checkpoint is removed once the output is written.

Across processes or hosts, start the same command in every process with
``--coordinator HOST:PORT --num-processes N --process-id I`` (or the environment variables
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or under SLURM,
Open MPI, TPU pods and Kubernetes nothing at all): the trials are spread over every
process's devices, the result is the same bits as on one process, and only process 0
writes the output and the checkpoint (see ``docs/scaling-out.md``).

Example
-------
>>> from llmnas_transfer.cli import main
>>> main(["sweep", "--trials", "10", "--out", "/nonexistent-dir/x.nc"])  # doctest: +SKIP
2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmnas_transfer.cli import options
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.study.distributed import (
    PeerLostError,
    agree,
    initialize,
    is_primary,
    resolve_options,
)


def register(subparsers) -> None:
    """Add ``sweep`` to the CLI."""
    p = options.add_command(
        subparsers, "sweep", _sweep, out="FILE", out_help="output .nc or .csv",
        help="streaming sweep over many trials (bounded memory, resumable)",
        description="Simulate a dataset x task grid for many trials, keeping only running "
                    "totals per (dataset, task, iteration); show progress and time "
                    "remaining; checkpoint after every chunk; write .nc or .csv.")
    options.add_grid_options(p, trials=1000, trials_help="trials per setting")
    p.add_argument("--bins", type=int, default=20,
                   help="accuracy/novelty histogram bins on [0, 1] (default 20; 0 = none)")
    p.add_argument("--path", choices=("auto", "summary", "candidates"), default="auto",
                   help="summary: draw each iteration's statistics directly (cost does not "
                        "grow with --candidates); candidates: draw every candidate (exact); "
                        "auto (default): summary from 200 candidates with histograms, 50 "
                        "without")
    options.add_seed_option(p)
    p.add_argument("--trial-offset", type=int, default=0, metavar="N",
                   help="index of the first trial (default 0)")
    p.add_argument("--chunk-size", type=int, metavar="N",
                   help="trials per chunk (default: chosen from the grid size; results do "
                        "not depend on it)")
    p.add_argument("--devices", type=int, metavar="N",
                   help="local devices to shard trials over (default: all; on CPU start "
                        "with JAX_NUM_CPU_DEVICES=N to have N)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="checkpoint file (default OUT.ckpt.npz)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint of an interrupted sweep")
    options.add_params_option(p)
    options.add_progress_option(p)
    options.add_distributed_options(p, command="sweep",
                                    primary="writes the output and the checkpoint")


def _sweep(args: argparse.Namespace) -> int:
    dist = resolve_options(args.coordinator, args.num_processes, args.process_id,
                           timeout_s=args.coordinator_timeout)
    out = Path(args.out).expanduser()
    ckpt = Path(args.checkpoint).expanduser() if args.checkpoint else \
        out.with_name(out.name + ".ckpt.npz")

    def check_files() -> None:  # on process 0 only: it alone writes these files
        if out.suffix not in (".nc", ".csv"):
            raise UserInputError(f"{out}: --out must end in .nc or .csv")
        if out.exists() and out.is_dir():
            raise UserInputError(
                f"{out}: is a folder; give a file name such as {out / 'sweep.nc'}")
        if not out.parent.is_dir():
            raise UserInputError(f"{out}: folder {out.parent} does not exist")
        if ckpt.exists() and not args.resume:
            raise UserInputError(
                f"{ckpt}: a checkpoint of an earlier sweep exists; add --resume to continue "
                "it or delete the file to start again")
        if args.resume and not ckpt.exists():
            raise UserInputError(f"{ckpt}: no checkpoint to resume from")

    if not dist.active or (dist.process_id == 0 and not dist.auto):
        check_files()  # fail fast, before waiting for other processes
    if dist.active:
        initialize(dist)  # before JAX starts its backend
        agree(check_files)  # every process stops if process 0's files are wrong
    from llmnas_transfer.study.sweeps import save_sweep, sweep

    try:
        ds = sweep(
            args.seed, datasets=options.split_names(args.datasets),
            tasks=options.split_names(args.tasks),
            num_trials=args.trials, num_iterations=args.iterations,
            num_candidates=args.candidates, bins=args.bins, path=args.path,
            trial_offset=args.trial_offset, chunk_size=args.chunk_size, devices=args.devices,
            checkpoint=ckpt, resume=args.resume, defaults=options.load_params(args.params),
            progress=options.show_progress(args),
        )
    except PeerLostError as exc:
        options.stop_on_lost_peer("sweep", exc, f"the checkpoint {ckpt} keeps every finished "
                                  "chunk: rerun with --resume (any number of processes)")
    if not is_primary():
        return options.secondary_done(f"writes {out}")
    save_sweep(ds, out)
    ckpt.unlink(missing_ok=True)
    rates = ds["validity_rate"].isel(iteration=-1)
    n_cells = ds.sizes["dataset"] * ds.sizes["task"] * ds.sizes["iteration"]
    print(f"wrote {out}: {ds.sizes['dataset']} datasets x {ds.sizes['task']} tasks x "
          f"{ds.sizes['iteration']} iterations, {int(ds['n_trials'])} trials each, "
          f"{int(ds['n_generated']) * n_cells:,} candidates; final validity rate "
          f"{float(rates.min()):.3f} to {float(rates.max()):.3f}")
    return 0
