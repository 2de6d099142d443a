"""How long does ``llmnas-transfer reproduce`` take at the paper's protocol, compile included?

Question: does the whole command (fresh process: imports, XLA compiles, 15-trial study,
2000-trial check of the targets, tables, five figures in PNG and PDF, netCDF) finish in
under 60 s on this machine, and how much of that is compilation?

Measured here, in this order:

1. ``cold``: the CLI in a fresh process, ``repeats`` times (min and median wall time).
2. ``baseline``: the same CLI with ``--check-trials 0`` (no large-trial check), run in
   the same session, so the ratio ``cold / baseline`` prices the check.
3. ``stages`` (fresh process): import time; ahead-of-time compile time of the two
   simulator kernels (``simulate_chunk.lower(...).compile()``, the paper shape and the
   check shape); then :func:`llmnas_transfer.study.reproduce.run_study` twice in one process:
   the difference first - second is what compilation and first-call warm-up cost end to
   end.

Usage::

    .venv/bin/python benchmarks/bench_reproduce.py [--repeats 3] [--json PATH]

The machine is shared: the load average before and after is recorded; read the numbers
with that in mind (min over repeats is the least noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 60.0
ROOT = Path(__file__).resolve().parents[1]


def _cli(out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "llmnas_transfer", "reproduce", "--out", str(out),
           "--no-progress", "--force", *extra]
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"reproduce failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return wall


def _stages() -> dict:
    """Runs in a fresh process (``--stages``); prints one JSON object."""
    t0 = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np

    import llmnas_transfer  # noqa: F401
    from llmnas_transfer.sim import registry
    from llmnas_transfer.sim.candidates import simulate_chunk
    from llmnas_transfer.sim.params import load_defaults
    from llmnas_transfer.study import reproduce

    t_import = time.perf_counter() - t0
    d = load_defaults()
    dn, tn = registry.BUILTIN_DATASET_NAMES, registry.BUILTIN_TASK_NAMES
    sids = jnp.asarray([registry.setting_id(a, b) for a in dn for b in tn], jnp.uint32)
    key = jax.random.key(0)
    compile_s = {}
    for name, trials, bins, per_cand in (("paper_shape", 15, 20, True),
                                         ("check_shape", 1024, 0, False)):
        t = time.perf_counter()
        simulate_chunk.lower(
            key, d.dynamics_params(), d.effects(dn, tn), sids,
            jnp.arange(trials, dtype=jnp.int32), num_iterations=10, num_candidates=20,
            bins=bins, per_candidate=per_cand,
        ).compile()
        compile_s[name] = time.perf_counter() - t
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            t = time.perf_counter()
            out = reproduce.run_study(0, out_dir=Path(tmp) / f"s{i}", force=True)
            runs.append({"wall_s": time.perf_counter() - t,
                         "stages_s": {k: round(v, 3) for k, v in out.timings.items()}})
    return {
        "import_s": t_import,
        "aot_compile_s": compile_s,
        "run_study_first": runs[0],
        "run_study_second": runs[1],
        "first_minus_second_s": runs[0]["wall_s"] - runs[1]["wall_s"],
        "devices": [str(x) for x in jax.devices()],
        "versions": {"jax": jax.__version__, "numpy": np.__version__,
                     "llmnas_transfer": llmnas_transfer.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" /
                                          "bench_reproduce.json"))
    ap.add_argument("--stages", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stages:
        print(json.dumps(_stages()))
        return 0

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cold = [_cli(Path(tmp) / f"cold{i}", []) for i in range(args.repeats)]
        base = [_cli(Path(tmp) / f"base{i}", ["--check-trials", "0"])
                for i in range(args.repeats)]
    p = subprocess.run([sys.executable, __file__, "--stages"], capture_output=True, text=True,
                       cwd=ROOT, check=True)
    stages = json.loads(p.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()

    result = {
        "benchmark": "bench_reproduce",
        "question": "reproduce at the paper protocol (15 trials x 10 iterations x 20 "
                    "candidates, 32 cells, 2000-trial check) end to end in a fresh process",
        "budget_s": BUDGET_S,
        "cold_wall_s": cold,
        "cold_min_s": min(cold),
        "cold_median_s": statistics.median(cold),
        "baseline_no_check_wall_s": base,
        "baseline_no_check_min_s": min(base),
        "ratio_cold_to_baseline": min(cold) / min(base),
        "ratio_cold_to_budget": min(cold) / BUDGET_S,
        "within_budget": max(cold) < BUDGET_S,
        "stages": stages,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "loadavg_before": load_before,
                    "loadavg_after": load_after},
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"devices: {stages['devices']}  versions: {stages['versions']}")
    print(f"cold reproduce (fresh process, {args.repeats}x): min {min(cold):.1f} s, median "
          f"{statistics.median(cold):.1f} s  (budget {BUDGET_S:.0f} s, ratio "
          f"{min(cold) / BUDGET_S:.2f})")
    print(f"baseline --check-trials 0: min {min(base):.1f} s; the 2000-trial check costs x"
          f"{min(cold) / min(base):.2f}")
    print(f"import {stages['import_s']:.1f} s; AOT compile: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in stages["aot_compile_s"].items()))
    print(f"run_study in-process: first {stages['run_study_first']['wall_s']:.1f} s, second "
          f"{stages['run_study_second']['wall_s']:.1f} s (compile + warm-up ~"
          f"{stages['first_minus_second_s']:.1f} s)")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          "(shared machine: timings are noisy)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
