"""How does the cost of a simulation grow with trials, iterations and candidates?

Question: does the per-candidate path cost grow linearly in each of trials x iterations x
candidates, and does the summary path's cost stay flat in candidates (it should grow with
(trial, iteration) pairs only)?

One setting (cifar-10, classification), 20-bin histograms, summaries only (no
per-candidate output), one device. Around a base point (1024 trials, 10 iterations,
100 candidates) one size is varied at a time; each point is compiled once and then timed
``repeats`` times (steady state, wall clock). The plot shows the median with the min-max
range as error bars, on log-log axes, next to a slope-1 guide.

Usage::

    .venv/bin/python benchmarks/bench_scaling.py [--quick] [--json PATH] [--figure DIR]

Writes ``DIR/scaling.png`` and ``DIR/scaling.pdf`` (default ``docs/figures``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, header, write_json  # noqa: E402

BASE = {"trials": 1024, "iterations": 10, "candidates": 100}
GRID = {
    "trials": [256, 1024, 4096, 16384],
    "iterations": [5, 10, 20, 40, 80],
    "candidates": [10, 100, 1000, 10_000, 100_000],
}
QUICK = {
    "trials": [256, 1024, 4096],
    "iterations": [5, 20, 80],
    "candidates": [10, 1000, 100_000],
}
MAX_CANDIDATE_PATH = 2 * 10**8  # skip per-candidate points bigger than this (time, memory)


def _point(path: str, trials: int, iterations: int, candidates: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from llmnas_transfer.sim import registry
    from llmnas_transfer.sim.candidates import simulate_chunk
    from llmnas_transfer.sim.params import load_defaults

    d = load_defaults()
    eff = d.effects(["cifar-10"], ["classification"])
    sids = jnp.asarray(np.array([registry.setting_id("cifar-10", "classification")],
                                np.uint32))
    ids = jnp.arange(trials, dtype=jnp.int32)
    params, key = d.dynamics_params(), jax.random.key(0)

    def run():
        return simulate_chunk(key, params, eff, sids, ids, num_iterations=iterations,
                              num_candidates=candidates, bins=20, path=path)

    t = time.perf_counter()
    jax.block_until_ready(run())
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - t)
    return {"path": path, "trials": trials, "iterations": iterations,
            "candidates": candidates, "first_s": first, "times_s": times,
            "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "candidates_per_s": trials * iterations * candidates / statistics.median(times)}


def plot(points: list[dict], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
    styles = {"candidates": ("o-", "C0", "per-candidate path"),
              "summary": ("s--", "C3", "summary path")}
    for ax, axis in zip(axes, ("trials", "iterations", "candidates"), strict=True):
        for path, (style, color, label) in styles.items():
            pts = sorted((p for p in points if p["path"] == path and p["axis"] == axis),
                         key=lambda p: p[axis])
            if not pts:
                continue
            x = [p[axis] for p in pts]
            y = [p["median_s"] for p in pts]
            err = [[p["median_s"] - p["min_s"] for p in pts],
                   [p["max_s"] - p["median_s"] for p in pts]]
            ax.errorbar(x, y, yerr=err, fmt=style, color=color, label=label, capsize=3)
        xs = [v for p in points if p["axis"] == axis for v in [p[axis]]]
        if xs:  # slope-1 guide through the first per-candidate point
            first = min((p for p in points if p["axis"] == axis), key=lambda p: p[axis])
            lo, hi = min(xs), max(xs)
            ax.plot([lo, hi], [first["median_s"], first["median_s"] * hi / lo], ":",
                    color="0.5", label="slope 1 (linear)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        others = ", ".join(f"{BASE[k]} {k}" for k in BASE if k != axis)
        ax.set_xlabel({"trials": "trials per setting", "iterations": "iterations per trial",
                       "candidates": "candidates per iteration"}[axis])
        ax.set_title(f"vary {axis} ({others})", fontsize=9)
        ticks = sorted({p[axis] for p in points if p["axis"] == axis})
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("wall time per call (s), median; bars: min-max")
    axes[0].legend(fontsize=8)
    fig.suptitle("Cost of one simulate_chunk call (1 setting, 20-bin histograms, 1 device)",
                 fontsize=10)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    out = [folder / "scaling.png", folder / "scaling.pdf"]
    fig.savefig(out[0], dpi=110)
    fig.savefig(out[1])
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="PATH",
                    default=str(ROOT / "benchmarks" / "results" / "bench_scaling.json"))
    ap.add_argument("--figure", metavar="DIR", default=str(ROOT / "docs" / "figures"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the figure from the JSON of an earlier run")
    args = ap.parse_args(argv)
    if args.replot:
        import json

        old = json.loads(Path(args.json).read_text())
        print("wrote", *plot(old["points"], Path(args.figure)))
        return 0
    info = header("bench_scaling")
    grid = QUICK if args.quick else GRID
    points = []
    for axis, values in grid.items():
        for v in values:
            size = {**BASE, axis: v}
            for path in ("candidates", "summary"):
                n = size["trials"] * size["iterations"] * size["candidates"]
                if path == "candidates" and n > MAX_CANDIDATE_PATH:
                    continue
                p = _point(path, size["trials"], size["iterations"], size["candidates"],
                           args.repeats)
                p["axis"] = axis
                points.append(p)
                print(f"{axis:>10}={v:<7} {path:>10}: {p['median_s'] * 1e3:9.2f} ms "
                      f"(compile+first {p['first_s']:.1f} s)", flush=True)
    figs = plot(points, Path(args.figure))
    write_json(args.json, {**info, "base": BASE, "points": points,
                           "figures": [str(f) for f in figs]})
    print("wrote", *figs, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
