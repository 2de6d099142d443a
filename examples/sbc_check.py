"""Simulation-based calibration of the NUTS fit, with a report and PIT ECDF figure.

Draws parameters from the model's prior, simulates runs with the library's simulator,
fits each replicate with NUTS as ``fit_runs`` does (:func:`llmnas_transfer.fit.checks.sbc`)
and reports, per parameter, ArviZ's PIT uniformity p-value, a Kolmogorov-Smirnov p-value,
and the fractions of PITs in the lowest and highest decile (10% each for a calibrated
fit). Writes ``sbc.nc`` (the PITs, the negative control, divergences), ``sbc_summary.json``
and ``sbc_ecdf.png`` under ``--out``. The slow test
``tests/fit/test_checks.py::test_sbc_uniform_and_negative_control_fails`` is the
100-replicate run at seed 2026.

Usage::

    python examples/sbc_check.py --seed 2026 --replicates 100 --out results/sbc
    python examples/sbc_check.py --quick --out /tmp/sbc

Every example accepts ``--quick`` (tiny sizes) and ``--out DIR`` (where files go).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax

# parallel chains on CPU: one chain a device (set before any JAX computation)
jax.config.update("jax_num_cpu_devices", 2)

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from llmnas_transfer.fit import checks  # noqa: E402
from llmnas_transfer.io.atomic import atomic_paths  # noqa: E402
from llmnas_transfer.summarize import figures as plotting  # noqa: E402
from llmnas_transfer.summarize import posterior as summarize  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example_output/sbc")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for smoke tests")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--replicates", type=int, default=100)
    args = parser.parse_args(argv)
    out = Path(args.out)

    if args.quick:
        spec = checks.sbc_spec(num_iterations=3)
        kw = dict(num_replicates=3, num_trials=2, warmup=20, draws=20, chains=1)
    else:
        spec = checks.sbc_spec()
        kw = dict(num_replicates=args.replicates)
    t0 = time.perf_counter()
    dt = checks.sbc(jax.random.key(args.seed), spec, progress=True, **kw)
    seconds = time.perf_counter() - t0

    pits = {k: np.asarray(v.values).ravel() for k, v in dt["prior_sbc"].dataset.items()}
    p_arviz = checks.uniformity_pvalues(dt, "prior_sbc")
    p_control = checks.uniformity_pvalues(dt, "biased_sbc")
    level = 0.01 / len(pits)
    rows = {
        name: {
            "p_uniformity": p_arviz[name],
            "p_ks": float(stats.kstest(x, "uniform").pvalue),
            "frac_below_0.1": float(np.mean(x < 0.1)),
            "frac_above_0.9": float(np.mean(x > 0.9)),
            "p_negative_control": p_control[name],
        }
        for name, x in pits.items()
    }
    summary = {
        "seed": args.seed, "replicates": int(kw["num_replicates"]), "seconds": seconds,
        "level": level, "passes": bool(min(p_arviz.values()) > level),
        "negative_control_fails": bool(max(p_control.values()) < 0.01),
        "divergences": int(dt["sbc_stats"].dataset["divergences"].sum()),
        "sites": rows,
        "versions": {"python": platform.python_version(), "jax": jax.__version__},
        "devices": [str(d) for d in jax.devices()],
    }

    print(f"SBC: {summary['replicates']} replicates, seed {args.seed}, {seconds:.0f} s, "
          f"{summary['divergences']} divergences")
    print(f"{'parameter':<22}{'p (ArviZ)':>10}{'p (KS)':>9}{'<0.1':>7}{'>0.9':>7}"
          f"{'control p':>11}")
    for name, r in rows.items():
        print(f"{name:<22}{r['p_uniformity']:>10.4f}{r['p_ks']:>9.4f}"
              f"{r['frac_below_0.1']:>7.2f}{r['frac_above_0.9']:>7.2f}"
              f"{r['p_negative_control']:>11.2g}")
    print(f"uniform at level {level:.4f} (0.01 / {len(pits)}): {summary['passes']}; "
          f"negative control fails: {summary['negative_control_fails']}")

    fig = summarize.plot_sbc(dt, pvalues=p_arviz)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_paths([out / "sbc.nc", out / "sbc_summary.json"]) as (nc, js):
        dt.to_netcdf(nc)
        js.write_text(json.dumps(summary, indent=2) + "\n")
    written = plotting.save_figure(fig, out / "sbc_ecdf")
    print("wrote", out / "sbc.nc", out / "sbc_summary.json", *written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
