"""Benchmark: fitting observed runs with NUTS (paper size), SVI (100x), and a PyMC baseline.

Questions answered (numbers go to ``--out DIR/bench_fit.json``):

1. NUTS on paper-size per-candidate data (32 settings x 15 trials x 10 iterations x 20
   candidates, validity and first-epoch accuracy): wall time, minimum bulk ESS, max r_hat,
   divergences and minimum ESS per second. Target: <= 60 s, min bulk ESS >= 400, no
   divergences, r_hat <= 1.01.
2. SVI on 100x that data (1500 trials per setting): time to convergence. Target < 2 min.
3. The same model (state marginalised by the same grid filter) in PyMC, sampled with
   PyMC's NUTS on the same data: minimum ESS per second, and the ratio to NumPyro.
4. Fit speed at the CLI's default settings (4 chains x (1000 warmup + 1000 draws)) on
   ``examples/runs_counts.csv`` (key ``fit_speed``): a cold fit (a new process, empty
   persistent compilation cache), a fit in a new process with a warm persistent cache,
   and a second fit in the same process (the compiled programs reused), with the
   compile time (first minus second fit of one process) and the diagnostics (max r_hat,
   divergences, minimum bulk ESS per draw). In the same process, against the default as
   the baseline, two other settings, each fitted twice (the second fit is timed, the
   first compiles): a shorter warmup (300) and the diagonal Laplace metric
   (``dense_mass=False``); key ``variants``, with their time and ESS per second as
   ratios to the default's. Targets: cold <= 30 s, second fit <= 10 s.
5. The cost of one gradient of the model's potential (``--gradient-only``, key
   ``gradient``): microseconds per value-and-gradient, in a compiled loop of 1000, on
   ``examples/runs_counts.csv`` and ``examples/runs_bursty.csv``, with the scans over
   iterations written out (``llmnas_transfer.sim.dynamics.scan_unroll``, the default)
   and, as the baseline in the same run, rolled (one step per loop step); the ratio and
   the compile time of each.
6. What keeping every program in the persistent cache saves (``--cache-only``, key
   ``cache_threshold``): the CLI fit of ``--speed-file`` with ``--warmup 100 --draws
   100``, each threshold (``llmnas_transfer.cache.MIN_COMPILE_SECONDS``: 0, the
   default, and as the baseline 0.5) with its own empty cache folder, called once cold
   and then twice warm, the thresholds alternating; the ratio of the warm times.

Compilation is timed separately: the fit is first run for 2 warmup + 2 draws
(``first_call_s``: compiling the model's functions and the sampler), then for real
(``wall_s``: sampling, plus re-compiling the sampler loop, which NumPyro builds anew for
each MCMC object; the model's own compiled functions are reused). ``min_ess_per_s`` is
the minimum bulk ESS over ``wall_s``. The machine may be shared: the load average is
recorded next to every timing.

Usage::

    python benchmarks/bench_fit.py --out results/          # full
    python benchmarks/bench_fit.py --quick --out results/  # small smoke run
    python benchmarks/bench_fit.py --skip-pymc --skip-svi
    python benchmarks/bench_fit.py --speed-only --out results/  # only question 4
    python benchmarks/bench_fit.py --gradient-only --out results/  # only question 5
    python benchmarks/bench_fit.py --cache-only --out results/  # only question 6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_results", help="output folder")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=200,
                    help="NumPyro warmup (the metric comes from the Laplace start)")
    ap.add_argument("--draws", type=int, default=800)
    ap.add_argument("--pymc-warmup", type=int, default=500,
                    help="PyMC tuning steps (its dense metric is adapted from scratch)")
    ap.add_argument("--pymc-draws", type=int, default=None,
                    help="PyMC draws per chain (default: --draws); ESS per second does "
                         "not depend on the run length")
    ap.add_argument("--svi-steps", type=int, default=2000)
    ap.add_argument("--svi-factor", type=int, default=100, help="SVI data multiple")
    ap.add_argument("--skip-svi", action="store_true")
    ap.add_argument("--skip-pymc", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-accept", type=float, default=0.8,
                    help="NUTS target acceptance (fit_runs' default is the more cautious "
                         "0.9: one divergence was seen at 0.8 on the smaller data of "
                         "tests/fit/test_inference.py)")
    ap.add_argument("--dense-mass", action=argparse.BooleanOptionalAction, default=True,
                    help="NUTS dense (default) or diagonal mass matrix")
    ap.add_argument("--skip-speed", action="store_true",
                    help="skip the fit-speed runs of examples/runs_counts.csv")
    ap.add_argument("--speed-only", action="store_true",
                    help="only the fit-speed runs (question 4)")
    ap.add_argument("--speed-file", default="examples/runs_counts.csv",
                    help="runs file of the fit-speed runs")
    ap.add_argument("--grid-check", action="store_true",
                    help="only print the grid filter's log-likelihood error against a "
                         "192-point grid, for several grid sizes and state noises")
    ap.add_argument("--gradient-only", action="store_true",
                    help="only the gradient cost, scans written out against rolled "
                         "(question 5)")
    ap.add_argument("--cache-only", action="store_true",
                    help="only the CLI fit with every program cached against programs "
                         "under 0.5 s of compiling left out (question 6)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed loops per case of --gradient-only (the median is kept)")
    args = ap.parse_args(argv)
    if args.grid_check:
        return _grid_check(args)
    for flag, file, make in (
            ("gradient_only", "bench_fit_gradient.json", _gradient_speed),
            ("cache_only", "bench_fit_cache.json", _cache_record),
            ("speed_only", "bench_fit_speed.json", _speed_record)):
        if getattr(args, flag):
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            path = out / file
            path.write_text(json.dumps(make(args), indent=2) + "\n")
            print(f"wrote {path}")
            return 0
    import jax

    jax.config.update("jax_num_cpu_devices", max(args.chains, 1))
    import arviz as az
    import numpy as np
    import numpyro

    from llmnas_transfer import simulate
    from llmnas_transfer.fit.fitfile import fit_info
    from llmnas_transfer.fit.inference import fit_runs
    from llmnas_transfer.fit.preparation import prepare
    from llmnas_transfer.io.runs import runs_from_simulation
    from llmnas_transfer.summarize.posterior import diagnostics

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trials, iters, cands = (4, 6, 10) if args.quick else (15, 10, 20)
    datasets = "cifar-10,audioset" if args.quick else None
    tasks = "classification,generation" if args.quick else None
    if args.quick:
        args.warmup, args.draws, args.svi_steps, args.svi_factor = 100, 100, 300, 4
        args.pymc_warmup = 100
    env = {
        "python": platform.python_version(), "jax": jax.__version__,
        "numpyro": numpyro.__version__, "arviz": az.__version__,
        "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "note": "shared CPU: timings are noisy",
    }
    print(json.dumps(env))
    res: dict = {"env": env, "sizes": {"trials": trials, "iterations": iters,
                                       "candidates": cands, "quick": args.quick}}

    sim = simulate(args.seed, datasets=datasets, tasks=tasks, num_trials=trials,
                   num_iterations=iters, num_candidates=cands, per_candidate=True, bins=0)
    runs = runs_from_simulation(sim, novelty=False)
    print(runs.report())

    # --------------------------------------------------------------- NUTS (NumPyro)
    t = time.perf_counter()
    dt0 = fit_runs(runs, chains=args.chains, warmup=2, draws=2, seed=args.seed, prior_draws=2,
                   dense_mass=args.dense_mass, target_accept=args.target_accept)
    compile_s = fit_info(dt0).seconds_sampling
    print(f"numpyro first call (compile + 4 iterations): {compile_s:.1f} s "
          f"({time.perf_counter() - t:.1f} s with post-processing)")
    load_before = _load()
    dt = fit_runs(runs, chains=args.chains, warmup=args.warmup, draws=args.draws,
                  seed=args.seed, prior_draws=100, dense_mass=args.dense_mass,
                  target_accept=args.target_accept)
    info = fit_info(dt)
    d = diagnostics(dt)
    wall = info.seconds_sampling
    ss = dt["sample_stats"].dataset
    nuts = {
        "chains": args.chains, "warmup": args.warmup, "draws": args.draws,
        "dense_mass": args.dense_mass, "target_accept": args.target_accept,
        "chain_method": info.chain_method,
        "wall_s": round(wall, 2),
        "first_call_s": round(compile_s, 2),
        "total_with_postprocessing_s": round(info.seconds_total, 2),
        "min_ess_bulk": round(d.stats["min_ess_bulk"], 1),
        "min_ess_tail": round(d.stats["min_ess_tail"], 1),
        "max_r_hat": round(d.stats["max_r_hat"], 4), "divergences": d.stats["divergences"],
        "max_r_hat_quantity": str(d.summary["r_hat"].idxmax()),
        "min_ess_bulk_quantity": str(d.summary["ess_bulk"].idxmin()),
        "mean_leapfrog_steps": round(float(ss["n_steps"].mean()), 1),
        "num_summarised_quantities": int(len(d.summary)),
        "load_avg_before": load_before, "load_avg_after": _load(),
    }
    nuts["min_ess_per_s"] = round(nuts["min_ess_bulk"] / wall, 2)
    nuts["meets_targets"] = bool(wall <= 60 and nuts["min_ess_bulk"] >= 400
                                 and nuts["divergences"] == 0 and nuts["max_r_hat"] <= 1.01)
    res["numpyro_nuts"] = nuts
    print("numpyro NUTS:", json.dumps(nuts))

    # --------------------------------------------------------------- SVI on 100x
    if not args.skip_svi:
        big = simulate(args.seed + 1, datasets=datasets, tasks=tasks,
                       num_trials=trials * args.svi_factor, num_iterations=iters,
                       num_candidates=cands, per_candidate=True, bins=0)
        big_runs = runs_from_simulation(big, novelty=False)
        del big
        load_before = _load()
        sdt = fit_runs(big_runs, method="svi", svi_steps=args.svi_steps, draws=500,
                       seed=args.seed, prior_draws=20)
        sinfo = fit_info(sdt)
        sd = diagnostics(sdt)
        loss = sdt["optimization"].dataset["loss"].values
        # compare the SVI posterior means of the dynamics with the NUTS ones (paper size)
        # and with the true values the data were simulated at (z = error / SVI sd)
        from llmnas_transfer.sim.params import load_defaults

        truth = load_defaults().dynamics_params()
        comp = {}
        for v in ("kappa", "state_noise", "init_sd", "validity_slope", "accuracy_noise"):
            m = float(sdt["posterior"].dataset[v].mean())
            sd_ = float(sdt["posterior"].dataset[v].std())
            comp[v] = {"svi_mean": m, "svi_sd": sd_, "truth": float(getattr(truth, v)),
                       "z_vs_truth": round((m - float(getattr(truth, v))) / sd_, 2),
                       "nuts_mean_paper_size": float(dt["posterior"].dataset[v].mean())}
        res["svi_100x"] = {
            "runs": int(big_runs.num_trials), "candidates": int(big_runs.cells["n_generated"]
                                                                .sum()),
            "steps": args.svi_steps, "seconds_optimisation_and_draws":
                round(sinfo.seconds_sampling, 2),
            "seconds_total_with_postprocessing": round(sinfo.seconds_total, 2),
            "final_loss": float(np.mean(loss[-max(len(loss) // 10, 1):])),
            "relative_change_last_10pct": sd.stats["relative_change"],
            "change_in_standard_errors": round(sd.stats["change_in_se"], 2),
            "converged": sd.ok, "load_avg_before": load_before, "load_avg_after": _load(),
            "dynamics": comp,
        }
        print("SVI:", json.dumps(res["svi_100x"]))

    # --------------------------------------------------------------- PyMC baseline
    if not args.skip_pymc:
        try:
            res["pymc_nuts"] = _pymc(prepare(runs), args)
            r = res["pymc_nuts"]
            if "min_ess_per_s" in r:
                res["ratio_numpyro_over_pymc_min_ess_per_s"] = round(
                    nuts["min_ess_per_s"] / max(r["min_ess_per_s"], 1e-12), 2)
        except ImportError as exc:
            res["pymc_nuts"] = {"skipped": f"pymc not installed ({exc}); "
                                           "pip install 'llmnas-transfer[bench]'"}
        print("PyMC:", json.dumps(res["pymc_nuts"]))

    if not args.skip_speed:
        res["fit_speed"] = _fit_speed(args)

    path = out / "bench_fit.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


#: run in a new process: two fits of one file at the CLI's defaults, timed, as JSON
_FITS_IN_ONE_PROCESS = r"""
import json, os, sys, time
t0 = time.perf_counter()
from llmnas_transfer.cache import enable_compilation_cache
enable_compilation_cache()
from llmnas_transfer.fit.fitfile import fit_info
from llmnas_transfer.fit.inference import fit_runs
from llmnas_transfer.summarize.posterior import diagnostics
out = {"import_s": round(time.perf_counter() - t0, 2), "fits": []}
for kw in json.loads(sys.argv[2]):
    load = [round(x, 2) for x in os.getloadavg()]
    t = time.perf_counter()
    dt = fit_runs(sys.argv[1], seed=0, **kw)
    wall = time.perf_counter() - t
    info, d = fit_info(dt), diagnostics(dt)
    ss = dt["sample_stats"].dataset
    n = int(ss.sizes["chain"] * ss.sizes["draw"])
    out["fits"].append({
        "settings": kw, "warmup": info.warmup,
        "wall_s": round(wall, 2), "seconds_sampling": info.seconds_sampling,
        "seconds_total": info.seconds_total, "chain_method": info.chain_method,
        "max_r_hat": round(float(d.stats["max_r_hat"]), 4),
        "divergences": int(d.stats["divergences"]),
        "min_ess_bulk": round(float(d.stats["min_ess_bulk"]), 1),
        "min_ess_bulk_per_draw": round(float(d.stats["min_ess_bulk"]) / n, 3),
        "mean_leapfrog_steps": round(float(ss["n_steps"].mean()), 1),
        "load_avg_before": load, "load_avg_after": [round(x, 2) for x in os.getloadavg()]})
print("RESULT " + json.dumps(out))
"""


def _gradient_speed(args) -> dict:
    """Microseconds per value-and-gradient of the potential, scans written out
    (``scan_unroll``) against rolled (``MAX_UNROLL = 1``), each compiled anew."""
    import statistics

    import jax
    import jax.numpy as jnp
    from _common import devices, machine, versions
    from numpyro.infer.util import potential_energy

    from llmnas_transfer.fit.laplace import _unconstrained_init
    from llmnas_transfer.fit.model import prior_medians, runs_model
    from llmnas_transfer.fit.preparation import pad_runs, prepare
    from llmnas_transfer.io.runs import read_runs
    from llmnas_transfer.sim import dynamics

    env = {**versions(), "devices": devices(), **machine()}
    print(json.dumps(env), flush=True)
    root = Path(__file__).resolve().parents[1]
    res: dict = {"env": env, "loop": 1000, "repeats": args.repeats, "cases": []}
    default_unroll = dynamics.MAX_UNROLL
    for name in ("examples/runs_counts.csv", "examples/runs_bursty.csv"):
        prep = prepare(read_runs(root / name))
        data = pad_runs(prep.data)
        kw = {"spec": prep.spec, "n_valid": data.n_valid, "deterministic": False}
        z = _unconstrained_init(jax.random.key(0), data, prep.spec,
                                tuple(sorted(prior_medians().items())))
        row = {"file": name, "runs": int(data.n_generated.shape[0]),
               "iterations": prep.spec.num_iterations, "bursts": prep.spec.bursts}
        for label, cap in (("rolled", 1), ("unrolled", default_unroll)):
            dynamics.MAX_UNROLL = cap
            jax.clear_caches()  # runs_loglik is jitted: trace it again with the new cap
            vg = jax.value_and_grad(lambda z, d: potential_energy(runs_model, (d,), kw, z))

            def loop(z, d, vg=vg):
                def body(i, c):
                    v, g = vg(jax.tree.map(lambda a: a + 1e-6 * c, z), d)
                    return c + 1e-9 * (v + sum(jnp.sum(x) for x in jax.tree.leaves(g)))
                return jax.lax.fori_loop(0, 1000, body, 0.0)

            t = time.perf_counter()
            compiled = jax.jit(loop).lower(z, data).compile()
            row[f"{label}_compile_s"] = round(time.perf_counter() - t, 2)
            jax.block_until_ready(compiled(z, data))
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                jax.block_until_ready(compiled(z, data))
                times.append((time.perf_counter() - t) * 1e3)  # us per gradient
            row[f"{label}_us"] = round(statistics.median(times), 1)
            row[f"{label}_load_avg"] = _load()
        dynamics.MAX_UNROLL = default_unroll
        row["ratio_rolled_over_unrolled"] = round(row["rolled_us"] / row["unrolled_us"], 2)
        print(json.dumps(row), flush=True)
        res["cases"].append(row)
    return res


#: settings compared with the default in the fit-speed run (question 4)
_VARIANTS = {"warmup_300": {"warmup": 300}, "diagonal_metric": {"dense_mass": False}}


def _cache_record(args) -> dict:
    from _common import header

    return {"env": header("bench_fit --cache-only"), "cache_threshold": _cache_ab(args)}


def _speed_record(args) -> dict:
    from _common import header

    return {"env": header("bench_fit --speed-only"), "fit_speed": _fit_speed(args)}


def _cache_ab(args) -> dict:
    """Question 6: CLI fits with cache thresholds 0 (default) and 0.5 (baseline), each
    with its own cache folder: one cold call, then warm calls, alternating."""
    import subprocess
    import tempfile

    from llmnas_transfer.cache import MIN_COMPILE_SECONDS

    root = Path(__file__).resolve().parents[1]
    runs = str(root / args.speed_file)
    thresholds = (MIN_COMPILE_SECONDS, 0.5)
    res: dict = {"runs_file": args.speed_file,
                 "settings": "CLI fit --warmup 100 --draws 100, seed 0",
                 "thresholds": list(thresholds), "calls": []}
    with tempfile.TemporaryDirectory() as tmp:
        for call in ("cold", "warm", "warm"):
            for th in thresholds:
                code = ("import sys; import llmnas_transfer.cache as c; "
                        f"c.MIN_COMPILE_SECONDS = {th!r}; "
                        "from llmnas_transfer.cli import main; sys.exit(main())")
                env = {**os.environ, "LLMNAS_TRANSFER_CACHE": str(Path(tmp) / f"c{th}")}
                load = _load()
                t = time.perf_counter()
                r = subprocess.run([sys.executable, "-c", code, "fit", runs, "--out",
                                    str(Path(tmp) / f"f{th}.nc"), "--no-progress",
                                    "--warmup", "100", "--draws", "100"],
                                   env=env, capture_output=True, text=True)
                row = {"threshold": th, "call": call,
                       "wall_s": round(time.perf_counter() - t, 2),
                       "load_avg": [load, _load()], "returncode": r.returncode}
                if r.returncode not in (0, 1):
                    row["error"] = r.stderr[-2000:]
                res["calls"].append(row)
                print(json.dumps(row), flush=True)
    warm = {th: [c["wall_s"] for c in res["calls"]
                 if c["threshold"] == th and c["call"] == "warm"] for th in thresholds}
    res["warm_mean_s"] = {str(th): round(sum(v) / len(v), 2) for th, v in warm.items()}
    res["warm_ratio_default_to_baseline"] = round(
        sum(warm[thresholds[0]]) / sum(warm[thresholds[1]]), 3)
    return res


def _fit_speed(args) -> dict:
    """Fit-speed runs (question 4), each in a new process: the CLI on an empty
    persistent cache (cold) and on the cache it left (warm), and fits in one process
    (``fit_runs``: the default twice, the second reusing the compiled programs, then each
    of :data:`_VARIANTS` twice)."""
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parents[1]
    runs = str((root / args.speed_file) if not Path(args.speed_file).is_absolute()
               else args.speed_file)
    cli = [sys.executable, "-c", "import sys; from llmnas_transfer.cli import main; "
           "sys.exit(main())"]
    res: dict = {"runs_file": args.speed_file,
                 "settings": "CLI defaults: 4 chains x (1000 warmup + 1000 draws), seed 0"}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XDG_CACHE_HOME": tmp}
        env.pop("LLMNAS_TRANSFER_CACHE", None)
        for name in ("cli_cold_s", "cli_warm_cache_s"):
            load = _load()
            t = time.perf_counter()
            r = subprocess.run([*cli, "fit", runs, "--out", str(Path(tmp) / "f.nc"),
                                "--no-progress"], env=env, capture_output=True, text=True)
            res[name] = round(time.perf_counter() - t, 2)
            res[name.replace("_s", "_load_avg")] = [load, _load()]
            if r.returncode not in (0, 1):
                res[name.replace("_s", "_error")] = r.stderr[-2000:]
            print(f"{name}: {res[name]} s (load {load})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:  # fits in one process, empty cache
        env = {**os.environ, "XDG_CACHE_HOME": tmp}
        env.pop("LLMNAS_TRANSFER_CACHE", None)
        # the default settings twice, then each variant twice (its first fit compiles)
        fits = json.dumps([{}, {}, *[v for v in _VARIANTS.values() for _ in (0, 1)]])
        r = subprocess.run([sys.executable, "-c", _FITS_IN_ONE_PROCESS, runs, fits], env=env,
                           capture_output=True, text=True, cwd=root)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        res["same_process_error"] = r.stderr[-2000:]
        return res
    same = json.loads(line[-1][len("RESULT "):])
    first, second, *others = same["fits"]
    res["same_process"] = same
    res["first_fit_s"], res["second_fit_s"] = first["wall_s"], second["wall_s"]

    def ess_per_s(f):
        return f["min_ess_bulk"] / f["wall_s"]

    res["variants"] = {
        name: {"settings": kw, "wall_s": f["wall_s"], "max_r_hat": f["max_r_hat"],
               "divergences": f["divergences"],
               "min_ess_bulk_per_draw": f["min_ess_bulk_per_draw"],
               "mean_leapfrog_steps": f["mean_leapfrog_steps"],
               "time_ratio_to_default": round(f["wall_s"] / second["wall_s"], 3),
               "ess_per_s_ratio_to_default": round(ess_per_s(f) / ess_per_s(second), 3)}
        for (name, kw), f in zip(_VARIANTS.items(), others[1::2], strict=True)}
    res["compile_s_estimate"] = round(first["wall_s"] - second["wall_s"], 2)
    res["sampling_s"] = second["seconds_sampling"]
    res["meets_targets"] = bool(res.get("cli_cold_s", 1e9) <= 30
                                and second["wall_s"] <= 10)
    print("fit speed:", json.dumps({k: v for k, v in res.items() if k != "same_process"}),
          flush=True)
    return res


def _grid_check(args) -> int:
    """Log-likelihood of paper-size data at the shipped parameters, on grids of several
    sizes, against a 192-point grid (the marginalisation's quadrature error)."""
    import dataclasses

    import jax.numpy as jnp

    from llmnas_transfer import simulate
    from llmnas_transfer.fit.model import runs_loglik
    from llmnas_transfer.fit.preparation import prepare
    from llmnas_transfer.io.runs import runs_from_simulation
    from llmnas_transfer.sim.params import load_defaults

    sim = simulate(args.seed, num_trials=15, num_iterations=10, num_candidates=20,
                   per_candidate=True, bins=0)
    prep = prepare(runs_from_simulation(sim, novelty=False))
    d = load_defaults()
    effects = d.effects(list(prep.spec.datasets), list(prep.spec.tasks))
    print("state_noise  grid_size  loglik  error_vs_192")
    for q in (0.113, 0.05, 0.04, 0.03, 0.02):
        p = d.dynamics_params()._replace(state_noise=jnp.float32(q))
        ref = None
        for g in (192, 24, 32, 40, 48, 64):
            spec = dataclasses.replace(prep.spec, grid_size=g)
            ll = float(runs_loglik(p, effects, prep.data, spec).sum())
            ref = ll if ref is None else ref
            if g != 192:
                print(f"{q:11.3f}  {g:9d}  {ll:10.2f}  {ll - ref:+.3f}")
    return 0


def _pymc(prep, args) -> dict:
    """The model of :mod:`llmnas_transfer.fit.model` (validity + accuracy, state marginalised
    on the same grid with the same forward algorithm) in PyMC, sampled with PyMC's NUTS."""
    import arviz as az
    import numpy as np
    import pymc as pm
    import pytensor
    import pytensor.tensor as pt
    from scipy.special import gammaln

    from llmnas_transfer.fit.model import ACCURACY_PRIOR, DIFFICULTY_PRIOR

    spec, data = prep.spec, prep.data
    nd, nk, T, G, W = len(spec.datasets), len(spec.tasks), spec.num_iterations, \
        spec.grid_size, spec.grid_width
    feats = np.asarray(spec.features, np.float64)
    free_t = list(spec.free_tasks)
    free_m = list(spec.free_modalities)
    di = np.asarray(data.dataset_idx)
    ki = np.asarray(data.task_idx)
    rows = di * nk + ki
    ng = np.asarray(data.n_generated, np.float64)
    nv = np.asarray(data.n_valid, np.float64)
    acc = [np.asarray(x, np.float64) for x in data.accuracy]
    const = gammaln(ng + 1) - gammaln(nv + 1) - gammaln(ng - nv + 1)
    x = np.linspace(-W, W, G)
    obs_d = sorted({d for d, _ in spec.observed})
    unobs_d = [i for i in range(nd) if i not in obs_d]
    with pm.Model() as pm_model:
        kappa = pm.Beta("kappa", 2.0, 5.0)
        q = pm.LogNormal("state_noise", np.log(0.1), 0.5)
        sd0 = pm.LogNormal("init_sd", np.log(0.3), 0.5)
        bs = pm.Normal("validity_slope", 1.5, 1.0)
        design = np.concatenate([np.ones((nd, 1)), feats], axis=1)

        def level(name, prefix, prior, tau):
            # the regression integrated out (as in llmnas_transfer.fit.model.level_marginal)
            m0, s0 = (np.asarray(a, np.float64) for a in prior)
            xo = design[obs_d]
            cov = (xo * s0**2) @ xo.T + tau**2 * np.eye(len(obs_d))
            lobs = pm.MvNormal(name + "_observed", mu=xo @ m0, cov=cov)
            zr = pm.Normal(prefix + "_regression_z", 0.0, 1.0, shape=len(m0))
            out = pt.zeros(nd)
            out = pt.set_subtensor(out[obs_d], lobs)
            if unobs_d:  # beta from its exact conditional, as level_regression
                prec = np.diag(s0**-2) + xo.T @ xo / tau**2
                chol = pt.linalg.cholesky(prec)
                rhs = m0 / s0**2 + pt.dot(xo.T, lobs) / tau**2
                mean = pt.linalg.solve(prec, rhs)
                beta = mean + pt.linalg.solve_triangular(chol.T, zr, lower=False)
                z = pm.Normal(name + "_z", 0.0, 1.0, shape=len(unobs_d))
                out = pt.set_subtensor(out[unobs_d], pt.dot(design[unobs_d], beta) + tau * z)
            return out

        tau_d = pm.LogNormal("difficulty_sd", np.log(0.2), 0.6)
        diff = level("difficulty", "difficulty", DIFFICULTY_PRIOR, tau_d)
        comp = pt.zeros(nk)
        if free_t:
            c = pm.Normal("task_complexity_free", 0.5, 1.0, shape=len(free_t))
            comp = pt.set_subtensor(comp[free_t], c)
        inter = pt.zeros((nd, nk))
        if free_t and free_m:
            g = pm.Normal("interaction_free", 0.0, 0.5, shape=(len(free_m), len(free_t)))
            for i, mod in enumerate(spec.modalities):
                if mod in free_m:
                    inter = pt.set_subtensor(inter[i, free_t], g[free_m.index(mod)])
        delta = (diff[:, None] + comp[None, :] + inter).reshape((-1,))
        tau_a = pm.LogNormal("accuracy_sd", np.log(0.2), 0.6)
        lev = level("accuracy_level", "accuracy", ACCURACY_PRIOR, tau_a)
        tacc = pt.zeros(nk)
        if free_t:
            ta = pm.Normal("task_accuracy_free", 0.0, 0.5, shape=len(free_t))
            tacc = pt.set_subtensor(tacc[free_t], ta)
        alpha = (lev[:, None] + tacc[None, :]).reshape((-1,))
        lam = pm.Normal("accuracy_slope", 0.3, 0.5)
        sig = pm.LogNormal("accuracy_noise", np.log(0.4), 0.5)
        # prior moments of the state (closed form of dynamics.state_moments)
        t_idx = np.arange(T, dtype=np.float64)
        rho = 1.0 - kappa
        m_t = 1.0 - rho**t_idx
        r2 = rho**2
        v_t = r2**t_idx * sd0**2 + q**2 * (1.0 - r2**t_idx) / (1.0 - r2)
        s = m_t[:, None] + pt.sqrt(v_t)[:, None] * x[None, :]  # (T, G)
        mu = s[:-1] + kappa * (1.0 - s[:-1])
        zz = (s[1:, None, :] - mu[:, :, None]) / q
        trans = pt.special.softmax(-0.5 * zz**2, axis=-1)  # (T-1, G, G)
        init = np.exp(-0.5 * x**2)
        init = init / init.sum()
        eta = bs * s[None] - delta[:, None, None]  # (S, T, G)
        logp = -pt.softplus(-eta)
        loc = alpha[:, None, None] + lam * s[None]
        inv = 1.0 / sig**2
        ngT, nvT = ng.T[..., None], nv.T[..., None]
        k_, n_, sm, sq, cst = (a.T for a in acc)
        em = (ngT * logp[rows].transpose(1, 0, 2) - (ngT - nvT) * eta[rows].transpose(1, 0, 2)
              + inv * (loc[rows].transpose(1, 0, 2) * sm[..., None]
                       - 0.5 * n_[..., None] * loc[rows].transpose(1, 0, 2) ** 2))
        fixed = (const.T - 0.5 * k_ * (np.log(2 * np.pi) + 2 * pt.log(sig)) - 0.5 * inv * sq
                 + cst)

        def update(pred, e):
            mx = pt.max(e, axis=-1, keepdims=True)
            wv = pred * pt.exp(e - mx)
            c = pt.sum(wv, axis=-1, keepdims=True)
            return wv / c, (pt.log(c) + mx)[:, 0]

        a1, l1 = update(pt.as_tensor(np.broadcast_to(init, (ng.shape[0], G))), em[0])

        def step(tr, e, alpha_prev):
            pred = pt.dot(alpha_prev, tr) + 1e-30
            a, ll = update(pred, e)
            return a, ll

        (_, lls), _ = pytensor.scan(step, sequences=[trans, em[1:]], outputs_info=[a1, None])
        pm.Potential("runs", l1.sum() + lls.sum() + fixed.sum())
    t = time.perf_counter()
    idata = pm.sample(draws=2, tune=2, chains=args.chains, cores=args.chains, model=pm_model,
                      init="jitter+adapt_full", progressbar=False, random_seed=args.seed,
                      compute_convergence_checks=False)
    compile_s = time.perf_counter() - t
    load_before = _load()
    t = time.perf_counter()
    pymc_draws = args.draws if args.pymc_draws is None else args.pymc_draws
    idata = pm.sample(draws=pymc_draws, tune=args.pymc_warmup, chains=args.chains,
                      cores=args.chains, init="jitter+adapt_full", progressbar=False,
                      model=pm_model,
                      random_seed=args.seed, compute_convergence_checks=False)
    wall = time.perf_counter() - t
    names = list(idata["posterior"].dataset.data_vars)
    summ = az.summary(idata, var_names=names, ci_kind="hdi", ci_prob=0.94, round_to="none")
    ss = idata["sample_stats"].dataset
    out = {
        "pymc": pm.__version__, "pytensor": pytensor.__version__, "chains": args.chains,
        "warmup": args.pymc_warmup, "draws": pymc_draws, "wall_s": round(wall, 2),
        "compile_s_estimate": round(compile_s, 2),
        "min_ess_bulk": round(float(summ["ess_bulk"].min()), 1),
        "max_r_hat": round(float(summ["r_hat"].max()), 4),
        "divergences": int(ss["diverging"].sum()),
        "load_avg_before": load_before, "load_avg_after": _load(),
        "note": "same priors, same grid (G, width) and forward algorithm as the NumPyro "
                "model; PyMC's own NUTS with a full mass matrix (init=jitter+adapt_full)",
    }
    out["min_ess_per_s"] = round(out["min_ess_bulk"] / wall, 2)
    return out


if __name__ == "__main__":
    sys.exit(main())
