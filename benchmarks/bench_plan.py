"""How long does a full study plan take, against a plain NumPy loop doing the same work?

Question: does :func:`llmnas_transfer.study.plan.plan` size a study (at least 8 designs x
500 simulated studies each) in under 60 s on the 2-core CPU, and at least 20x faster than
the loop a researcher would write without JAX?

Measured in one process, in this order:

1. ``plan_cold``: ``plan(...)`` once (compiles included);
2. ``plan_warm``: ``plan(...)`` again, ``--repeats`` times (minimum; the steady state);
3. ``numpy_loop``: a Python loop over designs and studies; each study is simulated with
   the vectorised-NumPy simulator of ``benchmarks/baseline_numpy.py`` (every candidate
   drawn, the state path per trial) and analysed with the same estimator (the
   iteration-pooled validity estimate by Newton steps over Gauss-Hermite nodes, sandwich
   variance over trials, delta method, Student-t interval). The loop runs
   ``--loop-studies`` studies per design; its time is scaled to the plan's number of
   studies (it is linear in them). The assurance it finds is reported beside the plan's
   (same model, other random streams: they agree within Monte Carlo error).

The design grid: CIFAR-10 (reference) vs AudioSet classification, validity gap, width
goal 0.10, trials (5, 10, 15, 20, 30, 40, 60, 80) x iterations (5, 10) x 20 candidates:
16 designs (one compiled kernel serves them all).

Usage::

    .venv/bin/python benchmarks/bench_plan.py [--studies 500] [--loop-studies 25]
        [--repeats 2] [--json benchmarks/results/bench_plan.json]

Prints the versions and ``jax.devices()`` first; the machine is shared, so the load
average is recorded.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, peak_rss_mb, write_json  # noqa: E402

TRIALS = (5, 10, 15, 20, 30, 40, 60, 80)
ITERATIONS = (5, 10)
CANDIDATES = (20,)
COMPONENT = "validity"
REFERENCE = ("cifar-10", "classification")
COMPARE = ("audioset", "classification")
BUDGET_S = 60.0
TARGET_RATIO = 20.0


_GH_X, _GH_W = np.polynomial.hermite.hermgauss(24)
_NODES, _WEIGHTS = _GH_X * np.sqrt(2.0), _GH_W / np.sqrt(np.pi)


def _expit(x):
    return 1.0 / (1.0 + np.exp(-x))


def _model_validity(y, dyn, eff, n):
    """The planner's iteration-pooled validity estimate of one setting, in NumPy:
    ``(estimate of E_T, per-trial influences)``; ``y`` is (R, T)."""
    r, t = y.shape
    kappa = _expit(np.log(dyn["kappa"] / (1 - dyn["kappa"])) + eff["rate"])
    m, v = np.zeros(t), np.zeros(t)
    v[0] = dyn["init_sd"] ** 2
    for i in range(1, t):
        m[i] = m[i - 1] + kappa * (eff["asymptote"] - m[i - 1])
        v[i] = (1 - kappa) ** 2 * v[i - 1] + dyn["state_noise"] ** 2
    s = m[:, None] + np.sqrt(v)[:, None] * _NODES  # (T, K)

    def curve(delta):
        p = _expit(dyn["validity_intercept"] + dyn["validity_slope"] * s - delta)
        return (p @ _WEIGHTS, -(p * (1 - p)) @ _WEIGHTS, (p * p) @ _WEIGHTS)

    delta = eff["delta"]
    e0, d0, q0 = curve(delta)
    w = -d0 / np.maximum((e0 - q0) / n + q0 - e0 * e0, 1e-6)
    ybar = y.mean(0)
    for _ in range(12):
        e, d, _q = curve(delta)
        step = -np.sum(w * (ybar - e)) / max(-np.sum(w * d), 1e-12)
        delta += np.clip(step, -2.0, 2.0)
    e, d, _q = curve(delta)
    psi = (w * (y - e)).sum(1)
    psi -= psi.mean()
    return e[-1], -d[-1] * psi / (-np.sum(w * d))


def _loop_study(seed, defaults, effs, r, t, n, ci):
    """One study by NumPy: simulate both settings, analyse the validity gap as the
    planner does (iteration-pooled estimate, sandwich variance, delta method, t interval)."""
    from baseline_numpy import simulate_numpy
    from scipy import stats

    out = simulate_numpy(seed, defaults, [REFERENCE[0], COMPARE[0]], ["classification"],
                         num_trials=r, num_iterations=t, num_candidates=n, bins=0)
    y = out["n_valid"] / n  # (S, R, T)
    est_r, phi_r = _model_validity(y[0], defaults.dynamics, effs[0], n)
    est_s, phi_s = _model_validity(y[1], defaults.dynamics, effs[1], n)
    gap = 1 - est_s / est_r
    vs = (1 / est_r) ** 2 * np.sum(phi_s**2) / (r * (r - 1))
    vr = (est_s / est_r**2) ** 2 * np.sum(phi_r**2) / (r * (r - 1))
    var = vs + vr
    df = max(var**2 / ((vs**2 + vr**2) / (r - 1)), 1.0) if var > 0 else r - 1
    half = stats.t.ppf(0.5 + ci / 2, df) * math.sqrt(var)
    return gap, 2 * half


def numpy_loop(defaults, loop_studies: int, width: float, ci: float) -> dict:
    eff = defaults.effects([REFERENCE[0], COMPARE[0]], ["classification"])
    effs = [{"delta": float(eff.validity_offset[i]), "rate": float(eff.rate_offset[i]),
             "asymptote": float(eff.asymptote[i])} for i in range(2)]
    assurance = {}
    t0 = time.perf_counter()
    for r in TRIALS:
        for t in ITERATIONS:
            for n in CANDIDATES:
                ok = 0
                for j in range(loop_studies):
                    _, w = _loop_study(j, defaults, effs, r, t, n, ci)
                    ok += bool(np.isfinite(w) and w <= width)
                assurance[f"{r}x{t}x{n}"] = ok / loop_studies
    return {"seconds": time.perf_counter() - t0, "assurance": assurance}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=500)
    ap.add_argument("--loop-studies", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--width", type=float, default=0.1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    info = header("bench_plan")
    from llmnas_transfer.sim.params import load_defaults
    from llmnas_transfer.study.plan import plan

    defaults = load_defaults()
    kw = dict(reference=":".join(REFERENCE), compare=":".join(COMPARE), component=COMPONENT,
              width=args.width, trials=TRIALS, iterations=ITERATIONS, candidates=CANDIDATES,
              defaults=defaults, studies=args.studies, seed=0)
    n_designs = len(TRIALS) * len(ITERATIONS) * len(CANDIDATES)
    t = time.perf_counter()
    df = plan(**kw)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        plan(**kw)
        warm.append(time.perf_counter() - t)
    warm_s = min(warm) if warm else cold
    print(f"plan: {n_designs} designs x {args.studies} studies: cold {cold:.1f} s, "
          f"warm {warm_s:.1f} s (min of {len(warm)})")

    loop = numpy_loop(defaults, args.loop_studies, args.width, 0.94)
    loop_full = loop["seconds"] * args.studies / args.loop_studies
    print(f"numpy loop: {n_designs} designs x {args.loop_studies} studies in "
          f"{loop['seconds']:.1f} s -> {loop_full:.0f} s for {args.studies} studies")
    ratio_cold, ratio_warm = loop_full / cold, loop_full / warm_s
    print(f"ratio (loop / plan): {ratio_cold:.1f}x cold, {ratio_warm:.1f}x warm; "
          f"targets: plan < {BUDGET_S:.0f} s, ratio >= {TARGET_RATIO:.0f}x")
    plan_assurance = {f"{r.trials}x{r.iterations}x{r.candidates}": r.assurance
                      for r in df.itertuples()}
    for k, v in loop["assurance"].items():
        print(f"  {k}: assurance plan {plan_assurance[k]:.3f}, loop {v:.3f} "
              f"({args.loop_studies} studies)")
    import os

    record = {
        **info, "designs": n_designs, "studies": args.studies,
        "plan_cold_s": cold, "plan_warm_s": warm_s, "plan_warm_all_s": warm,
        "loop_studies": args.loop_studies, "loop_s": loop["seconds"],
        "loop_scaled_s": loop_full, "ratio_cold": ratio_cold, "ratio_warm": ratio_warm,
        "meets_budget": cold < BUDGET_S, "meets_ratio": ratio_cold >= TARGET_RATIO,
        "plan_assurance": plan_assurance, "loop_assurance": loop["assurance"],
        "peak_rss_mb": peak_rss_mb(), "loadavg_after": os.getloadavg(),
    }
    if args.json:
        write_json(args.json, record)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
