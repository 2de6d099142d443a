"""Run every simulator benchmark and print one table.

Each case of ``benchmarks/bench_simulate.py`` runs in a fresh Python process (so the peak
memory of a row is that case's own), then this script computes, in the same run:

* ``ratio_numpy`` - candidates/s over the vectorised-NumPy baseline of the same workload
  (``numpy_candidates`` for the per-candidate rows, ``numpy_summary`` for the
  1000-candidate summary rows);
* ``ratio_floor`` - candidates/s over the random-number floor: ``jax.random.normal``
  variates per second (float32, threefry) divided by 3, the raw variates a candidate
  consumes (``rng_floor``). Above 1 means faster than merely drawing the candidates' noise.

It also checks that JAX and NumPy agree statistically (per-iteration validity rate and
trial-mean accuracy of cifar-10/classification within 5 standard errors) and that the
sharded sweep's numbers are identical to the single-device ones. The
``sweep_2proc_summary`` case runs ``benchmarks/bench_distributed.py``, which launches a
1-process and a 2-process (``jax.distributed`` on loopback) sweep and reports the speed-up
and whether their totals are identical. If
``benchmarks/bench_fit.py`` exists, it is run too and its records are added; a missing or
failing fit benchmark is reported, not fatal.

Usage::

    .venv/bin/python benchmarks/run_all.py [--quick] [--json PATH] [--markdown]

Runs unchanged on a GPU (the cases use the default JAX device; the sharded case uses all
local devices). On CPU the sharded case is given ``JAX_NUM_CPU_DEVICES=nproc``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, run_python, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
ORDER = [
    "rng_floor", "numpy_candidates", "jax_candidates", "jax_simulate", "numpy_summary",
    "jax_summary_moments", "jax_summary_hist20", "jax_summary_sharded",
    "jax_summary_hist20_sharded", "sweep_1e9_summary", "sweep_1e9_candidates",
    "sweep_2proc_summary",
]
#: cases run by their own script (processes launched by that script)
SCRIPTS = {"sweep_2proc_summary": "bench_distributed.py"}
BASELINE = {
    "numpy_candidates": "numpy_candidates", "jax_candidates": "numpy_candidates",
    "jax_simulate": "numpy_candidates", "sweep_1e9_candidates": "numpy_candidates",
    "numpy_summary": "numpy_summary", "jax_summary_moments": "numpy_summary",
    "jax_summary_hist20": "numpy_summary", "jax_summary_sharded": "numpy_summary",
    "jax_summary_hist20_sharded": "numpy_summary",
    "sweep_1e9_summary": "numpy_summary", "sweep_2proc_summary": "numpy_summary",
}
AGREE = {"jax_candidates": "numpy_candidates", "jax_summary_hist20": "numpy_summary",
         "jax_summary_moments": "numpy_summary"}


def _run_case(name: str, quick: bool, tmp: Path) -> dict:
    out = tmp / f"{name}.json"
    env = {}
    if name.endswith("_sharded"):
        env["JAX_NUM_CPU_DEVICES"] = str(max(2, os.cpu_count() or 2))
    args = ["--case", name, "--json", str(out)] + (["--quick"] if quick else [])
    script = SCRIPTS.get(name, "bench_simulate.py")
    if name in SCRIPTS:
        args = args[2:]
    t = time.perf_counter()
    p = run_python(HERE / script, args, env=env, timeout=3600)
    if p.returncode != 0 or not out.exists():
        print(f"  {name}: FAILED ({p.returncode})\n{p.stderr[-2000:]}", file=sys.stderr)
        return {"case": name, "error": p.stderr[-2000:]}
    rec = json.loads(out.read_text())
    print(f"  {name}: {rec['candidates_per_s']:.3g} candidates/s "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    return rec


def _agree(a: dict, b: dict) -> bool:
    sa, sb = a.get("stats"), b.get("stats")
    if not sa or not sb:
        return False
    ok = True
    for k in ("validity", "accuracy"):
        for x, y, ex, ey in zip(sa[k], sb[k], sa[k + "_se"], sb[k + "_se"], strict=True):
            ok &= abs(x - y) < 5 * math.sqrt(ex**2 + ey**2)
    return bool(ok)


def _fit_records(quick: bool, tmp: Path) -> list[dict]:
    """Rows from ``benchmarks/bench_fit.py`` (NUTS, SVI, PyMC), if the script exists."""
    script = HERE / "bench_fit.py"
    if not script.exists():
        return [{"case": "fit (benchmarks/bench_fit.py)", "notes": "not present"}]
    out = tmp / "fit"
    try:
        p = run_python(script, (["--quick"] if quick else []) + ["--out", str(out)],
                       timeout=7200)
    except Exception as exc:  # noqa: BLE001 - never fail the simulator table
        return [{"case": "fit", "notes": f"failed: {exc}"}]
    path = out / "bench_fit.json"
    if p.returncode != 0 or not path.exists():
        return [{"case": "fit", "notes": f"failed (exit {p.returncode})",
                 "error": p.stderr[-2000:]}]
    res = json.loads(path.read_text())
    rows = []
    nuts = res.get("numpyro_nuts")
    if nuts:
        rows.append({"case": "fit_nuts_numpyro", "compile_s": nuts.get("first_call_s"),
                     "notes": f"min ESS/s {nuts.get('min_ess_per_s')}, wall "
                              f"{nuts.get('wall_s')} s, {nuts.get('divergences')} "
                              f"divergences, max r_hat {nuts.get('max_r_hat')}", **nuts})
    pymc = res.get("pymc_nuts")
    if pymc:
        ratio = res.get("ratio_numpyro_over_pymc_min_ess_per_s")
        note = (pymc["skipped"] if "skipped" in pymc else
                f"min ESS/s {pymc.get('min_ess_per_s')}; NumPyro/PyMC {ratio}x")
        rows.append({"case": "fit_nuts_pymc", "notes": note, **pymc})
    svi = res.get("svi_100x")
    if svi:
        rows.append({"case": "fit_svi_100x",
                     "notes": f"{svi.get('seconds_optimisation_and_draws')} s, converged "
                              f"{svi.get('converged')}",
                     **{k: v for k, v in svi.items() if k != "dynamics"}})
    return rows or [{"case": "fit", "notes": "bench_fit.json had no records"}]


def _fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(records: list[dict], markdown: bool = False) -> str:
    cols = ["case", "candidates/s", "compile s", "peak mem MB", "x NumPy", "x floor", "notes"]
    rows = []
    for r in records:
        rows.append([
            r["case"], _fmt(r.get("candidates_per_s"), ".3g"), _fmt(r.get("compile_s"), ".1f"),
            _fmt(r.get("peak_mem_mb"), ".0f"), _fmt(r.get("ratio_numpy"), ".2f"),
            _fmt(r.get("ratio_floor"), ".2f"), r.get("notes", ""),
        ])
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        return "\n".join(lines)
    w = [max(len(str(c)) for c in col) for col in zip(cols, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{x}}}" for x in w)
    return "\n".join([fmt.format(*cols), fmt.format(*("-" * x for x in w))]
                     + [fmt.format(*(str(c) for c in row)) for row in rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller workloads (a few minutes)")
    ap.add_argument("--json", metavar="PATH", help="write one record per case")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--cases", nargs="+", choices=ORDER, help="run only these cases")
    ap.add_argument("--no-fit", action="store_true", help="skip benchmarks/bench_fit.py")
    args = ap.parse_args(argv)
    info = header("run_all")
    t0 = time.perf_counter()
    names = args.cases or ORDER
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        recs = {n: _run_case(n, args.quick, tmp) for n in names}
        fit = [] if args.no_fit else _fit_records(args.quick, tmp)
    floor = recs.get("rng_floor", {}).get("candidates_per_s")
    out = []
    for n in names:
        r = recs[n]
        if "error" in r:
            out.append({**r, "notes": "FAILED"})
            continue
        base = recs.get(BASELINE.get(n, ""), {}).get("candidates_per_s")
        r["ratio_numpy"] = r["candidates_per_s"] / base if base else None
        r["ratio_floor"] = r["candidates_per_s"] / floor if floor else None
        notes = []
        if n in AGREE and AGREE[n] in recs:
            r["agrees_with_numpy"] = _agree(r, recs[AGREE[n]])
            notes.append("agrees with NumPy" if r["agrees_with_numpy"] else "DISAGREES")
        if n.endswith("_sharded"):
            notes.append(f"{r['n_devices']} devices: {r['speedup']:.2f}x over 1, "
                         + ("identical" if r["identical"] else "NOT IDENTICAL"))
        if n in SCRIPTS:
            notes.append(f"{r['n_devices']} processes: {r['speedup']:.2f}x over 1, "
                         + ("identical" if r["identical"] else "NOT IDENTICAL"))
        if n.startswith("sweep_1e9"):
            notes.append(f"{r['n_candidates']:.2g} candidates streamed")
        if n == "rng_floor":
            notes.append(f"{r['normals_per_s']:.3g} normals/s")
        r["notes"] = "; ".join(notes)
        r["loadavg_at_start"] = r.get("machine", {}).get("loadavg")
        out.append(r)
    out += fit
    print()
    print(table(out, args.markdown))
    print(f"\n# total {time.perf_counter() - t0:.0f} s; load average now {os.getloadavg()}")
    if args.json:
        keys = ("case", "candidates_per_s", "compile_s", "peak_mem_mb", "ratio_numpy",
                "ratio_floor")
        env = {"versions": info["versions"], "devices": info["devices"],
               "machine": info["machine"], "quick": args.quick}
        write_json(args.json, [
            {**{k: r.get(k) for k in keys},
             **{k: v for k, v in r.items()
                if k not in keys and k not in ("versions", "machine", "devices", "benchmark")},
             "env": env}
            for r in out])
    return 0


if __name__ == "__main__":
    sys.exit(main())
