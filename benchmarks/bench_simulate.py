"""Simulator throughput: the per-candidate path, the summary path, sharding and streaming,
against the vectorised-NumPy "afternoon version" and the random-number floor.

Each case runs in this process (``--case NAME``) and writes one JSON record with
``case, candidates_per_s, compile_s, peak_mem_mb`` and case-specific fields;
``benchmarks/run_all.py`` runs every case in a fresh process and computes the ratios.

Cases (``--quick`` shrinks the trial counts):

``rng_floor``
    ``jax.random.normal`` (float32, the default threefry) in calls of
    3 x 4096 x 10 x 20 variates: the random-number floor. Its ``candidates_per_s`` is the
    normal variates per second divided by 3, the raw variates one candidate consumes.
``numpy_candidates`` / ``jax_candidates`` / ``jax_simulate``
    1 setting (cifar-10, classification), 10^5 trials, 10 iterations, 20 candidates,
    20-bin histograms, per-candidate outputs: NumPy; the JAX kernel
    (``simulate_chunk``, 4096 trials per call, results fetched to host memory); the public
    ``simulate()`` (xarray assembly included).
``numpy_summary`` / ``jax_summary_moments`` / ``jax_summary_hist20``
    1000 candidates per iteration, 10 iterations; validity counts plus accuracy and
    novelty moments (and 20-bin histograms): NumPy (1 setting, 2000 trials) and the JAX
    summary path through ``sweep`` (all 32 settings, 2048 trials, one device, default
    chunks).
``jax_summary_sharded`` / ``jax_summary_hist20_sharded``
    the summary-path sweep (without / with 20-bin histograms) on one device and on all
    local devices (run it with ``JAX_NUM_CPU_DEVICES=2`` on CPU), checking that the
    numbers are identical.
``sweep_1e9_summary`` / ``sweep_1e9_candidates``
    streaming sweeps of 10^9 candidates (32 settings x 10 iterations) on each path; the
    peak resident memory of the process is the point (``--quick``: 10^8 on the candidate
    path).

Usage::

    .venv/bin/python benchmarks/bench_simulate.py --case jax_candidates [--quick] --json OUT

Every run prints the versions and ``jax.devices()`` first.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import device_peak_mb, header, peak_rss_mb, time_call, write_json  # noqa: E402

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def _setting(defaults, datasets, tasks):
    import jax.numpy as jnp
    import numpy as np

    from llmnas_transfer.sim import registry

    eff = defaults.effects(datasets, tasks)
    sids = jnp.asarray(np.array([registry.setting_id(d, t) for d in datasets for t in tasks],
                                np.uint32))
    return eff, sids


def _stats_from_trials(n_valid, acc_mean, N):
    """Per-iteration pooled validity rate and trial-mean accuracy with SEs (one setting)."""
    import numpy as np

    rate = n_valid / N  # (R, T)
    R = rate.shape[0]
    acc = np.where(np.isfinite(acc_mean), acc_mean, np.nan)
    k = np.sum(np.isfinite(acc), 0)
    return {
        "validity": rate.mean(0).tolist(),
        "validity_se": (rate.std(0, ddof=1) / np.sqrt(R)).tolist(),
        "accuracy": np.nanmean(acc, 0).tolist(),
        "accuracy_se": (np.nanstd(acc, 0, ddof=1) / np.sqrt(k)).tolist(),
    }


# ----------------------------------------------------------------------------- floor
PC = dict(T=10, N=20, bins=20, chunk=4096)


@case
def rng_floor(quick):
    import jax
    import jax.numpy as jnp

    n = 3 * PC["chunk"] * PC["T"] * PC["N"]
    f = jax.jit(lambda k: jax.random.normal(k, (n,), jnp.float32))
    key = jax.random.key(0)
    first, best, _ = time_call(lambda: f(key), 5 if quick else 10)
    return {"candidates_per_s": n / 3 / best, "normals_per_s": n / best,
            "compile_s": first - best, "seconds": best, "n_candidates": n // 3,
            "impl": str(jax.random.key_impl(key))}


# ----------------------------------------------------------------------------- per-candidate
def _pc_trials(quick):
    return 20_000 if quick else 100_000


@case
def numpy_candidates(quick):
    import numpy as np
    from baseline_numpy import simulate_numpy

    from llmnas_transfer.sim.params import load_defaults

    d = load_defaults()
    R, T, N = _pc_trials(quick), PC["T"], PC["N"]
    best, out = math.inf, None
    for _ in range(1 if quick else 2):
        t = time.perf_counter()
        out = simulate_numpy(0, d, ["cifar-10"], ["classification"], num_trials=R,
                             num_iterations=T, num_candidates=N, bins=PC["bins"],
                             per_candidate=True)
        best = min(best, time.perf_counter() - t)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = out["accuracy_sum"][0] / out["n_valid"][0]
    return {"candidates_per_s": R * T * N / best, "compile_s": None, "seconds": best,
            "n_candidates": R * T * N,
            "stats": _stats_from_trials(out["n_valid"][0], acc, N)}


@case
def jax_candidates(quick):
    import jax
    import numpy as np

    from llmnas_transfer.sim.candidates import simulate_chunk
    from llmnas_transfer.sim.params import load_defaults

    d = load_defaults()
    R, T, N, C = _pc_trials(quick), PC["T"], PC["N"], PC["chunk"]
    eff, sids = _setting(d, ["cifar-10"], ["classification"])
    params, key = d.dynamics_params(), jax.random.key(0)
    held = {}

    def run():
        parts = []
        for c in range(math.ceil(R / C)):
            ids = jax.numpy.arange(c * C, (c + 1) * C, dtype=jax.numpy.int32)
            out = simulate_chunk(key, params, eff, sids, ids, num_iterations=T,
                                 num_candidates=N, bins=PC["bins"], per_candidate=True)
            parts.append(jax.tree.map(np.asarray, out))  # results in host memory
        held["parts"] = parts
        return None

    first, best, _ = time_call(run, 2 if quick else 3)
    summ = [p[0] for p in held["parts"]]
    n_valid = np.concatenate([s.n_valid[0] for s in summ])[:R]
    acc_sum = np.concatenate([s.accuracy_sum[0] for s in summ])[:R]
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = acc_sum / n_valid
    return {"candidates_per_s": R * T * N / best, "compile_s": first - best, "seconds": best,
            "n_candidates": R * T * N, "stats": _stats_from_trials(n_valid, acc, N)}


@case
def jax_simulate(quick):
    from llmnas_transfer import simulate

    R, T, N = _pc_trials(quick), PC["T"], PC["N"]

    def run():
        return simulate(0, datasets="cifar-10", tasks="classification", num_trials=R,
                        num_iterations=T, num_candidates=N, bins=PC["bins"],
                        per_candidate=True, chunk_size=PC["chunk"])["n_valid"].values

    first, best, _ = time_call(run, 2 if quick else 3)
    return {"candidates_per_s": R * T * N / best, "compile_s": first - best, "seconds": best,
            "n_candidates": R * T * N}


# ----------------------------------------------------------------------------- summary path
SUMMARY_N, SUMMARY_T = 1000, 10


@case
def numpy_summary(quick):
    import numpy as np
    from baseline_numpy import simulate_numpy

    from llmnas_transfer.sim.params import load_defaults

    d = load_defaults()
    R, T, N = (400 if quick else 2000), SUMMARY_T, SUMMARY_N
    t = time.perf_counter()
    out = simulate_numpy(0, d, ["cifar-10"], ["classification"], num_trials=R,
                         num_iterations=T, num_candidates=N, bins=20)
    best = time.perf_counter() - t
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = out["accuracy_sum"][0] / out["n_valid"][0]
    return {"candidates_per_s": R * T * N / best, "compile_s": None, "seconds": best,
            "n_candidates": R * T * N,
            "stats": _stats_from_trials(out["n_valid"][0], acc, N)}


def _summary_sweep(quick, bins, devices=1, seed=0, trials=None, chunk=None):
    from llmnas_transfer.study.sweeps import sweep

    R = trials or (512 if quick else 2048)

    def run():
        return sweep(seed, num_trials=R, num_iterations=SUMMARY_T, num_candidates=SUMMARY_N,
                     bins=bins, path="summary", chunk_size=chunk, devices=devices)

    return R, run


def _sweep_stats(ds):
    s = ds.sel(dataset="cifar-10", task="classification")
    return {"validity": s["validity_rate"].values.tolist(),
            "validity_se": s["validity_rate_se"].values.tolist(),
            "accuracy": s["accuracy_trial_mean"].values.tolist(),
            "accuracy_se": s["accuracy_trial_se"].values.tolist()}


def _summary_case(quick, bins):
    R, run = _summary_sweep(quick, bins)
    held = {}

    def go():
        held["ds"] = run()
        return None

    first, best, _ = time_call(go, 2 if quick else 3)
    n = R * 32 * SUMMARY_T * SUMMARY_N
    return {"candidates_per_s": n / best, "compile_s": first - best, "seconds": best,
            "n_candidates": n, "pairs_per_s": n / SUMMARY_N / best,
            "stats": _sweep_stats(held["ds"])}


@case
def jax_summary_moments(quick):
    return _summary_case(quick, 0)


@case
def jax_summary_hist20(quick):
    return _summary_case(quick, 20)


def _sharded(quick, bins, trials_per_device):
    import jax
    import numpy as np

    n_dev = len(jax.local_devices())
    # the default chunk gives each device the same work per call in both runs
    R = trials_per_device * n_dev
    R, one = _summary_sweep(quick, bins, devices=1, trials=R)
    _, many = _summary_sweep(quick, bins, devices=n_dev, trials=R)
    held = {}
    f1, b1, _ = time_call(lambda: held.__setitem__("one", one()), 2 if quick else 3)
    fn, bn, _ = time_call(lambda: held.__setitem__("many", many()), 2 if quick else 3)
    same = all(np.array_equal(held["one"][v].values, held["many"][v].values, equal_nan=True)
               for v in held["one"].data_vars)
    n = R * 32 * SUMMARY_T * SUMMARY_N
    return {"candidates_per_s": n / bn, "compile_s": fn - bn, "seconds": bn,
            "n_candidates": n, "n_devices": n_dev, "one_device_candidates_per_s": n / b1,
            "speedup": b1 / bn, "identical": bool(same)}


@case
def jax_summary_sharded(quick):
    return _sharded(quick, 0, 1024 if quick else 4096)


@case
def jax_summary_hist20_sharded(quick):
    return _sharded(quick, 20, 256 if quick else 1024)


# ----------------------------------------------------------------------------- streaming
def _streaming(path, R, N, bins, quick):
    import resource

    from llmnas_transfer.study.sweeps import default_chunk_trials, sweep

    chunk = default_chunk_trials(32, 10, N, path, 1)
    kw = dict(num_iterations=10, num_candidates=N, bins=bins, path=path, devices=1,
              chunk_size=chunk)
    t = time.perf_counter()
    sweep(1, num_trials=chunk, **kw)  # compiles the chunk kernel (same chunk shape below)
    warm = time.perf_counter() - t
    rss_before = peak_rss_mb()
    t = time.perf_counter()
    ds = sweep(0, num_trials=R, **kw)
    wall = time.perf_counter() - t
    n = R * 32 * 10 * N
    return {"candidates_per_s": n / wall, "compile_s": warm, "seconds": wall,
            "n_candidates": n, "peak_rss_before_mb": rss_before, "chunk_trials": chunk,
            "validity_rate_final_mean": float(ds["validity_rate"].isel(iteration=-1).mean()),
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


@case
def sweep_1e9_summary(quick):
    return _streaming("summary", 3125, 1000, 20, quick)  # 3125 x 32 x 10 x 1000 = 1e9


@case
def sweep_1e9_candidates(quick):
    return _streaming("candidates", 15_625 if quick else 156_250, 20, 20, quick)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    info = header(f"bench_simulate:{args.case}")
    t = time.perf_counter()
    rec = CASES[args.case](args.quick)
    rec = {"case": args.case, **rec, "peak_mem_mb": peak_rss_mb(),
           "device_peak_mem_mb": device_peak_mb(), "total_s": time.perf_counter() - t,
           "quick": args.quick, **info}
    print({k: v for k, v in rec.items() if k not in ("stats", "versions", "machine")})
    if args.json:
        write_json(args.json, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
