"""The "afternoon version": a straightforward vectorised-NumPy simulator of the same model.

This is what a researcher would write without JAX: one ``numpy.random.Generator``, float64,
a Python loop over refinement iterations, and every (setting, trial, candidate) of an
iteration drawn in one vectorised call. It computes the same per-(trial, iteration)
summaries as :func:`llmnas_transfer.sim.candidates` (validity counts, accuracy and novelty sums
and sums of squares over valid candidates, fixed-bin histograms) and, if asked, the
per-candidate values. It uses different random streams, so it agrees with the library in
distribution, not draw for draw; ``benchmarks/bench_simulate.py`` checks the agreement.

Example
-------
>>> from llmnas_transfer.sim.params import load_defaults
>>> d = load_defaults()
>>> out = simulate_numpy(0, d, ["cifar-10"], ["classification"], num_trials=3,
...                      num_iterations=2, num_candidates=4)
>>> out["n_valid"].shape
(1, 3, 2)
"""

from __future__ import annotations

import numpy as np

from llmnas_transfer.sim.params import ModelDefaults


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate_numpy(
    seed: int,
    defaults: ModelDefaults,
    datasets: list[str],
    tasks: list[str],
    *,
    num_trials: int,
    num_iterations: int,
    num_candidates: int,
    bins: int = 20,
    per_candidate: bool = False,
) -> dict[str, np.ndarray]:
    """Simulate every (dataset, task) setting; arrays have shape ``(setting, trial, iter)``.

    Returns a dict with ``n_valid``, ``accuracy_sum``, ``accuracy_sumsq``, ``novelty_sum``,
    ``novelty_sumsq``, ``state``, ``p_valid``, ``accuracy_hist`` and ``novelty_hist``
    (trailing ``bin`` axis, if ``bins``), and ``valid``/``accuracy``/``novelty``
    (trailing ``candidate`` axis, NaN where invalid) if ``per_candidate``.
    """
    rng = np.random.default_rng(seed)
    p = {k: float(v) for k, v in defaults.dynamics.items()}
    eff = defaults.effects(list(datasets), list(tasks))
    vo = np.asarray(eff.validity_offset, np.float64)[:, None]
    ao = np.asarray(eff.accuracy_offset, np.float64)[:, None, None]
    no = np.asarray(eff.novelty_offset, np.float64)[:, None, None]
    S, R, T, N = vo.shape[0], num_trials, num_iterations, num_candidates

    out = {name: np.zeros((S, R, T)) for name in
           ("accuracy_sum", "accuracy_sumsq", "novelty_sum", "novelty_sumsq", "state",
            "p_valid")}
    out["n_valid"] = np.zeros((S, R, T), np.int64)
    if bins:
        out["accuracy_hist"] = np.zeros((S, R, T, bins), np.int64)
        out["novelty_hist"] = np.zeros((S, R, T, bins), np.int64)
    if per_candidate:
        out["valid"] = np.zeros((S, R, T, N), bool)
        out["accuracy"] = np.zeros((S, R, T, N))
        out["novelty"] = np.zeros((S, R, T, N))
    rows = np.arange(S * R)[:, None] * bins

    s = p["init_sd"] * rng.standard_normal((S, R))
    for t in range(T):
        pv = _expit(p["validity_intercept"] + p["validity_slope"] * s - vo)
        valid = rng.random((S, R, N)) < pv[..., None]
        acc = _expit(ao + p["accuracy_slope"] * s[..., None]
                     + p["accuracy_noise"] * rng.standard_normal((S, R, N)))
        nov = _expit(p["novelty_intercept"] + no + p["novelty_slope"] * s[..., None]
                     + p["novelty_noise"] * rng.standard_normal((S, R, N)))
        acc_v = np.where(valid, acc, 0.0)
        nov_v = np.where(valid, nov, 0.0)
        out["n_valid"][..., t] = valid.sum(-1)
        out["accuracy_sum"][..., t] = acc_v.sum(-1)
        out["accuracy_sumsq"][..., t] = (acc_v**2).sum(-1)
        out["novelty_sum"][..., t] = nov_v.sum(-1)
        out["novelty_sumsq"][..., t] = (nov_v**2).sum(-1)
        out["state"][..., t] = s
        out["p_valid"][..., t] = pv
        if bins:
            w = valid.reshape(S * R, N)
            for name, x in (("accuracy_hist", acc), ("novelty_hist", nov)):
                idx = np.minimum((x * bins).astype(np.int64), bins - 1).reshape(S * R, N)
                counts = np.bincount((rows + idx).ravel(), weights=w.ravel(),
                                     minlength=S * R * bins)
                out[name][:, :, t] = counts.reshape(S, R, bins).astype(np.int64)
        if per_candidate:
            out["valid"][:, :, t] = valid
            out["accuracy"][:, :, t] = np.where(valid, acc, np.nan)
            out["novelty"][:, :, t] = np.where(valid, nov, np.nan)
        s = s + p["kappa"] * (1.0 - s) + p["state_noise"] * rng.standard_normal((S, R))
    return out
