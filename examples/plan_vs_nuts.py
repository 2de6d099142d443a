"""Check the planner's fast approximate posterior against full NUTS fits of the same studies.

For each design ``RxTxN`` (trials x iterations x candidates) the script takes simulated
studies ``0 .. k-1`` of :func:`llmnas_transfer.study.plan.simulate_studies` (the very
numbers the planner analyses: :func:`~llmnas_transfer.study.plan.study_runs`), fits each
with NUTS as ``llmnas-transfer fit`` does (:func:`llmnas_transfer.fit.inference.fit_runs`)
and compares the widths of the two intervals of the gap component, study by study, and
their coverage of the true value. The planner's coverage is also given over ``--mc``
studies (cheap). NUTS results are saved after every fit (``OUT/nuts_fits.json``); a
rerun with the same ``--out`` reuses them.

Writes ``OUT/plan_vs_nuts.csv`` (one row per design) and ``OUT/plan_vs_nuts.md`` (the
table of ``docs/planning.md``).

Usage::

    python examples/plan_vs_nuts.py --designs 8x10x20,15x10x20,30x10x20 --studies 4 \\
        --out results/plan_vs_nuts
    python examples/plan_vs_nuts.py --quick --out /tmp/pvn

Every example accepts ``--quick`` (tiny sizes) and ``--out DIR`` (where files go).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

# parallel chains on CPU: one chain a device (set before any JAX computation)
jax.config.update("jax_num_cpu_devices", 2)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from llmnas_transfer.fit.inference import fit_runs  # noqa: E402
from llmnas_transfer.io.atomic import atomic_write_text  # noqa: E402
from llmnas_transfer.io.runs import runs_from_frame  # noqa: E402
from llmnas_transfer.study.plan import simulate_studies, study_runs  # noqa: E402
from llmnas_transfer.summarize.posterior import posterior_gaps  # noqa: E402


def _design(text: str) -> tuple[int, int, int]:
    r, t, n = (int(x) for x in text.lower().split("x"))
    return r, t, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--designs", default="8x10x20,15x10x20,30x10x20",
                    help="designs RxTxN, comma-separated (default %(default)s)")
    ap.add_argument("--studies", type=int, default=4, help="NUTS-fitted studies per design")
    ap.add_argument("--mc", type=int, default=500,
                    help="studies for the planner's own coverage (default %(default)s)")
    ap.add_argument("--reference", default="cifar-10:classification")
    ap.add_argument("--compare", default="audioset:classification")
    ap.add_argument("--component", default="validity")
    ap.add_argument("--ci", type=float, default=0.94)
    ap.add_argument("--method", default="model", choices=("model", "final"),
                    help="the planner's analysis of a study (default %(default)s)")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="one tiny design, one short fit")
    ap.add_argument("--out", default="plan_vs_nuts", help="output folder")
    args = ap.parse_args(argv)
    if args.quick:
        args.designs, args.studies, args.mc = "4x3x10", 1, 50
        args.chains, args.draws, args.warmup = 1, 30, 30
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "nuts_fits.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    setting = dict(reference=args.reference, compare=args.compare)
    d_cmp, t_cmp = args.compare.split(":")
    rows = []
    for text in args.designs.split(","):
        r, t, n = _design(text)
        approx = simulate_studies(**setting, component=args.component, ci=args.ci, trials=r,
                                  iterations=t, candidates=n, studies=max(args.mc,
                                                                          args.studies),
                                  seed=args.seed, method=args.method)
        a_w = (approx.high - approx.low)[:, 0, 0, 0, 0]
        a_cover = ((approx.low <= approx.truth) & (approx.truth <= approx.high))[:, 0, 0, 0, 0]
        truth = float(approx.truth[0, 0, 0, 0, 0])
        nuts = []
        for j in range(args.studies):
            key = f"{text}/{j}/{args.component}/{args.chains}x{args.draws}+{args.warmup}"
            if key not in cache:
                df = study_runs(j, **setting, trials=r, iterations=t, candidates=n,
                                seed=args.seed, accuracy=args.component != "validity")
                t0 = time.perf_counter()
                dt = fit_runs(runs_from_frame(df, source=f"study {j} of {text}"),
                              chains=args.chains, draws=args.draws, warmup=args.warmup,
                              seed=j, reference=args.reference, prior_draws=20)
                gaps = posterior_gaps(dt, ci=args.ci)
                row = gaps[(gaps.dataset == d_cmp) & (gaps.task == t_cmp)
                           & (gaps.component == args.component)].iloc[0]
                div = int(dt["sample_stats"].dataset["diverging"].sum())
                cache[key] = {"mean": float(row["mean"]), "sd": float(row["sd"]),
                              "low": float(row.hdi_low), "high": float(row.hdi_high),
                              "divergences": div, "seconds": time.perf_counter() - t0}
                atomic_write_text(cache_path, json.dumps(cache, indent=1))
                print(f"{text} study {j}: NUTS width {row.hdi_high - row.hdi_low:.3f}, "
                      f"planner {a_w[j]:.3f} ({cache[key]['seconds']:.0f} s, {div} "
                      "divergences)", flush=True)
            nuts.append(cache[key])
        n_w = np.array([x["high"] - x["low"] for x in nuts])
        n_cover = np.array([x["low"] <= truth <= x["high"] for x in nuts])
        k = args.studies
        rows.append({
            "design": f"{r} x {t} x {n}", "trials": r, "iterations": t, "candidates": n,
            "true_gap": truth, "studies_fitted": k,
            "planner_width_same_studies": float(a_w[:k].mean()),
            "nuts_width": float(n_w.mean()),
            "width_ratio": float(a_w[:k].mean() / n_w.mean()),
            "planner_cover_same_studies": int(a_cover[:k].sum()),
            "nuts_cover": int(n_cover.sum()),
            "planner_width_mc": float(a_w.mean()), "planner_coverage_mc": float(a_cover.mean()),
            "mc_studies": len(a_w),
            "divergences": int(sum(x["divergences"] for x in nuts)),
        })
    table = pd.DataFrame(rows)
    table.insert(0, "method", args.method)
    atomic_write_text(out / "plan_vs_nuts.csv", table.to_csv(index=False))
    md = ["| design (R x T x N) | true gap | planner width | NUTS width | ratio | covered "
          "(planner / NUTS) | planner coverage over MC studies |",
          "|---|---|---|---|---|---|---|"]
    for x in rows:
        md.append(f"| {x['design']} | {x['true_gap']:.3f} | "
                  f"{x['planner_width_same_studies']:.3f} | {x['nuts_width']:.3f} | "
                  f"{x['width_ratio']:.2f} | {x['planner_cover_same_studies']}/{k} / "
                  f"{x['nuts_cover']}/{k} | {x['planner_coverage_mc']:.3f} "
                  f"({x['mc_studies']} studies) |")
    atomic_write_text(out / "plan_vs_nuts.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
