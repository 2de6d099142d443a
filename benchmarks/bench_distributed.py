"""Speed-up of a 2-process sweep (jax.distributed on loopback) over 1 process, same run.

The script launches the processes itself: first one process with one CPU device, then two
processes with one CPU device each, joined through ``jax.distributed`` on 127.0.0.1 (gloo
collectives). Every process compiles on a small warm-up sweep of the same chunk shape, then
times the same sweep a few times; the figure is the minimum of process 0's wall times. It
also checks that the two runs' totals are identical bit for bit.

Usage::

    .venv/bin/python benchmarks/bench_distributed.py [--quick] [--json PATH]

On GPU or TPU hosts give each process its devices as usual; on CPU each process gets
``JAX_NUM_CPU_DEVICES=1`` here, so 2 processes use 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, header, write_json  # noqa: E402

GRID = dict(num_iterations=10, num_candidates=1000, bins=0, path="summary")
TIMEOUT_S = 1800


def _worker(args) -> int:
    """One process of a run: warm up, time one sweep, write totals and time (process 0)."""
    from llmnas_transfer.study.distributed import initialize, resolve_options

    if args.coordinator:
        initialize(resolve_options(args.coordinator, args.num_processes, args.process_id,
                                   timeout_s=120))
    import jax
    import numpy as np

    from llmnas_transfer.study.sweeps import BLOCK, sweep

    n_dev = len(jax.devices())
    chunk = 4 * BLOCK * n_dev
    sweep(0, num_trials=chunk, chunk_size=chunk, **GRID)  # compile
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ds = sweep(0, num_trials=args.trials, chunk_size=chunk, **GRID)
        times.append(time.perf_counter() - t)
    wall = min(times)
    if jax.process_index() == 0:
        totals = {v: ds[v].values for v in ds.data_vars if v.startswith("total_")
                  or v in ("n_valid", "trials_with_valid")}
        np.savez(args.out + ".npz", **totals)
        Path(args.out).write_text(json.dumps({
            "wall_s": wall, "wall_s_all": times, "n_processes": jax.process_count(),
            "n_devices": n_dev,
            "devices": [str(d) for d in jax.devices()], "chunk_size": chunk,
            "candidates": args.trials * ds.sizes["dataset"] * ds.sizes["task"]
            * GRID["num_iterations"] * GRID["num_candidates"]}))
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n: int, trials: int, repeats: int, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), JAX_NUM_CPU_DEVICES="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    coord = f"127.0.0.1:{_free_port()}"
    procs = []
    for i in range(n):
        cmd = [sys.executable, __file__, "--worker", "--trials", str(trials), "--out", str(out),
               "--repeats", str(repeats)]
        if n > 1:
            cmd += ["--coordinator", coord, "--num-processes", str(n), "--process-id", str(i)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        try:
            _, err = p.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise SystemExit(f"{n}-process run took longer than {TIMEOUT_S} s") from None
        if p.returncode:
            raise SystemExit(f"{n}-process run failed ({p.returncode}):\n{err[-3000:]}")
    return json.loads(out.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer trials")
    ap.add_argument("--json", metavar="PATH", help="write the record here")
    ap.add_argument("--trials", type=int, help="trials per setting (default 16384; 4096 quick)")
    ap.add_argument("--repeats", type=int, help="timed sweeps per run, the minimum is kept "
                                                "(default 3; 2 quick)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--coordinator", help=argparse.SUPPRESS)
    ap.add_argument("--num-processes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
    import tempfile

    import numpy as np

    info = header("bench_distributed")
    trials = args.trials or (4096 if args.quick else 16384)
    repeats = args.repeats or (2 if args.quick else 3)
    with tempfile.TemporaryDirectory() as d:
        one = _launch(1, trials, repeats, Path(d) / "one.json")
        a = dict(np.load(Path(d) / "one.json.npz"))
        two = _launch(2, trials, repeats, Path(d) / "two.json")
        b = dict(np.load(Path(d) / "two.json.npz"))
    identical = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    speedup = one["wall_s"] / two["wall_s"]
    rec = {**info, "case": "sweep_2proc_summary", "trials": trials, "repeats": repeats, **GRID,
           "one_process": one, "two_processes": two, "speedup": speedup,
           "identical": bool(identical), "n_devices": two["n_devices"],
           "candidates_per_s": two["candidates"] / two["wall_s"],
           "candidates_per_s_one_process": one["candidates"] / one["wall_s"],
           "loadavg_at_end": os.getloadavg()}
    print(f"1 process : {one['wall_s']:.2f} s ({one['devices']})")
    print(f"2 processes: {two['wall_s']:.2f} s ({two['devices']})")
    print(f"speed-up {speedup:.2f}x; totals identical: {identical}; "
          f"load average now {os.getloadavg()}")
    if args.json:
        write_json(args.json, rec)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
