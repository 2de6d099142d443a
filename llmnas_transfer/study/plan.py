"""Plan a study: how many trials, iterations and candidates a question needs (assurance).

:func:`plan` answers "how big must my study be?" for one transfer-gap component of one or
more settings against a reference. For every design (trials ``R`` x iterations ``T`` x
candidates ``N`` per iteration) it simulates many studies from the design prior and
analyses each with a fast approximate posterior of the component; the share of studies
that reach the goal is the design's **assurance**.

Design prior
    ``defaults`` (a parameter set: ``paper``, ``lemur`` or a file) is a point prior on
    the parameters; the spread between studies is then the model's own trial-to-trial
    spread (initial state, state noise) and the binomial noise of the candidates (with
    bursts on, also the collapse regimes and the beta-binomial spread). A pilot
    fit (``pilot``: a fit file or its ``DataTree``) gives one posterior draw per study.

Simulation
    Studies are simulated in one jitted call per chunk of studies and candidate count,
    vmapped over studies, on the summary path
    (:func:`llmnas_transfer.sim.summary.summary_chunk`, no histograms), and analysed in
    the same call. Every design with fewer trials or iterations reuses the first trials
    and iterations of the largest design: the key scheme (:mod:`llmnas_transfer.sim.keys`)
    makes a trial's first ``T`` iterations the same numbers whatever the number of
    iterations. Keys::

        study key   = fold_in(key(seed), study index)
        trial keys  = the simulator's scheme under the study key
        draw key    = fold_in(study key, 0xFFFFFFFF)   picks the pilot-fit draw

    A simulated study's data depend only on (seed, design, study index): not on the other
    designs of the grid, the number of studies or the chunking (its float32 analysis is
    equal up to rounding).

Many devices, many processes
    The chunks of studies are dealt out to devices (``devices_per_process`` per process)
    and processes (``jax.distributed``, as in :mod:`llmnas_transfer.study.sweeps`), one
    chunk per device at a time. Each device runs the one-device program on whole chunks
    (a program partitioned over a mesh can round the float32 analysis differently), and
    the results are all-gathered by a collective that only copies data: the numbers are
    the same bits for any number of devices and processes. See ``docs/scaling-out.md``.

Approximate posterior (one per simulated study)
    Per setting and trial ``r`` the study gives the validity rates ``y_rt``, the number of
    valid candidates ``n_r`` and their accuracy sum ``a_r`` at iteration ``T``, and the
    gain ``g_r = y_rT - y_r1``.

    * Validity (``method="model"``): the dynamics are taken as known (the study's prior
      draw) and the setting's validity offset ``delta`` is the root of
      ``sum_t w_t (mean_r y_rt - E_t(delta)) = 0`` with model-based weights; the expected
      final validity is ``E_T(delta)``. Without trial-to-trial spread this is the binomial
      maximum-likelihood estimate. ``method="final"``: the mean of ``y_rT``.
    * Accuracy: ``sum a_r / sum n_r``, then chance-normalised. Gain: the mean of ``g_r``.

    Their covariance is the between-trial (sandwich) covariance of each trial's influence
    on them, divided by ``R``: it holds the trial-to-trial spread and the binomial noise of
    the candidates together, whatever their split. The component (a ratio of these
    estimates, :func:`llmnas_transfer.sim.gaps.gap_components`,
    :func:`~llmnas_transfer.sim.gaps.trend_gap`) gets its standard error by the delta
    method (gradients by JAX) and a Student-t interval with Welch-Satterthwaite degrees of
    freedom. ``docs/planning.md`` compares these intervals with full NUTS fits of the same
    simulated studies.

Example
-------
>>> df = plan("cifar-10:classification", "stl-10:classification", component="validity",
...           width=0.2, trials=(5, 10), candidates=20, iterations=5, studies=40)
>>> list(df.columns)
['trials', 'iterations', 'candidates', 'expected_width', 'assurance', 'p_regime_correct', \
'candidates_total', 'recommended']
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.fit.fitfile import load_fit, spec_of
from llmnas_transfer.fit.model import params_from_sample
from llmnas_transfer.fit.preparation import parse_reference
from llmnas_transfer.progress import progress_bar
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.candidates import (
    MAX_CANDIDATES,
    MAX_ITERATIONS,
    has_bursts,
    has_feedback,
)
from llmnas_transfer.sim.dynamics import dispersed_rate, regime_validity, validity_logit
from llmnas_transfer.sim.expectation import expected, expected_state_moments
from llmnas_transfer.sim.gaps import (
    DEFAULT_THRESHOLDS,
    check_thresholds,
    classify_regime,
    gap_components,
    trend_gap,
)
from llmnas_transfer.sim.keys import as_key, key_words, trial_keys
from llmnas_transfer.sim.params import DynamicsParams, ModelDefaults, SettingEffects, load_defaults
from llmnas_transfer.sim.samplers import binomial
from llmnas_transfer.sim.summary import STREAM_VALID, summary_chunk, trial_path
from llmnas_transfer.sim.types import Array, PRNGKey
from llmnas_transfer.study.distributed import (
    agree_all,
    gather_rows,
    initialize,
    peer_lost,
    resolve_options,
)
from llmnas_transfer.validate import check_choice, check_float, check_int

#: the components a plan can size for
COMPONENTS: tuple[str, ...] = ("validity", "accuracy", "combined", "trend")
#: default design grids
DEFAULT_TRIALS: tuple[int, ...] = (5, 10, 15, 20, 30, 40, 60, 80, 100, 150)
DEFAULT_ITERATIONS: tuple[int, ...] = (10,)
DEFAULT_CANDIDATES: tuple[int, ...] = (10, 20, 50, 100)
DEFAULT_STUDIES = 500
#: output columns (``cost`` only when a cost per candidate is given)
PLAN_COLUMNS: tuple[str, ...] = (
    "trials", "iterations", "candidates", "expected_width", "assurance",
    "p_regime_correct", "candidates_total", "cost", "recommended",
)
MAX_TRIALS = 100_000
MAX_STUDIES = 1_000_000
#: (trial, iteration) pairs simulated per compiled call (bounds memory; no effect on numbers)
PAIRS_PER_CALL = 2**17
#: fold_in data of the key that picks a pilot-fit draw (above every 31-bit setting id)
DRAW_STREAM = 0xFFFFFFFF

#: Gauss-Hermite nodes and weights (standard normal) of the model-based validity estimate
_GH_X, _GH_W = np.polynomial.hermite.hermgauss(24)
GH_NODES = (_GH_X * np.sqrt(2.0)).astype(np.float32)
GH_WEIGHTS = (_GH_W / np.sqrt(np.pi)).astype(np.float32)
#: analyses of a simulated study: ``model`` pools all iterations (default), ``final``
#: uses the last iteration's rates only
METHODS: tuple[str, ...] = ("model", "final")


class StudyAnalyses(NamedTuple):
    """Per-study analyses of every design: arrays of shape
    ``(study, trials, iterations, candidates, compared)`` (grid order as the inputs).

    ``estimate``, ``se`` and ``df``: the approximate posterior's centre, standard error and
    degrees of freedom; ``low``/``high`` its ``ci`` interval; ``truth``: the component's
    true value under the study's parameters (expected values of the model).
    """

    trials: tuple[int, ...]
    iterations: tuple[int, ...]
    candidates: tuple[int, ...]
    compare: tuple[tuple[str, str], ...]
    estimate: np.ndarray
    se: np.ndarray
    df: np.ndarray
    low: np.ndarray
    high: np.ndarray
    truth: np.ndarray


# ----------------------------------------------------------------------------- inputs
def parse_setting(text: str | Sequence[str], what: str = "setting") -> tuple[str, str]:
    """A registered ``(dataset, task)`` from ``"DATASET:TASK"`` (names checked, with hints).

    Example
    -------
    >>> parse_setting("STL-10:classification")
    ('stl-10', 'classification')
    """
    try:
        d, t = parse_reference(text)
    except UserInputError:
        raise UserInputError(f"{what} must look like DATASET:TASK (e.g. stl-10:classification), "
                             f"got {text!r}") from None
    registry.get_dataset(d)
    registry.get_task(t)
    return d, t


def _settings(compare) -> list[tuple[str, str]]:
    if isinstance(compare, str):
        items = [c for c in compare.split(",") if c.strip()]
    elif compare and isinstance(compare[0], str) and ":" not in compare[0] and len(compare) == 2:
        items = [tuple(compare)]
    else:
        items = list(compare)
    if not items:
        raise UserInputError("compare needs at least one DATASET:TASK setting")
    return [parse_setting(c, "compare") for c in items]


def _grid(name: str, values, high: int, low: int = 1) -> tuple[int, ...]:
    if isinstance(values, (int, np.integer)):
        values = (int(values),)
    out = tuple(sorted({check_int(name, v, low, high) for v in values}))
    if not out:
        raise UserInputError(f"{name}: give at least one value")
    return out


# ----------------------------------------------------------------------------- kernel
_NEWTON_STEPS = 12


def _validity_curve(delta: Array, s_nodes: Array, params: DynamicsParams) -> tuple[Array, ...]:
    """``E_t(delta)``, its derivative and ``E[p^2]``: expected validity per iteration at the
    state nodes ``s_nodes`` (``(..., T, K)``; Gauss-Hermite weights on the last axis)."""
    w = jnp.asarray(GH_WEIGHTS)
    p = jax.nn.sigmoid(validity_logit(s_nodes, params, delta[..., None, None]))
    return (jnp.sum(w * p, -1), -jnp.sum(w * p * (1.0 - p), -1), jnp.sum(w * p * p, -1))


def _model_validity(y: Array, mask: Array, s_nodes: Array, params: DynamicsParams,
                    delta0: Array, num_candidates: int, t_final: Array):
    """Iteration-pooled estimate of the expected validity at ``t_final`` of one setting.

    ``y`` (R, T) per-trial validity rates; ``mask`` (R, T) the trials and iterations of the
    design. With the dynamics known, the setting's validity offset ``delta`` is the root of
    ``sum_t w_t (mean_r y_rt - E_t(delta)) = 0`` with model-based weights
    ``w_t = -E_t' / Var_t`` (at the prior's ``delta0``; ``Var_t`` the between-trial variance
    of ``y_rt``: binomial plus state spread). Returns the estimate of ``E_T(delta)`` and each
    trial's influence on it (R,), for the between-trial (sandwich) variance.
    """
    e0, d0, q0 = _validity_curve(delta0, s_nodes, params)
    n = jnp.asarray(num_candidates, jnp.float32)
    var_t = jnp.maximum((e0 - q0) / n + q0 - e0 * e0, 1e-6)
    w = jnp.where(mask.any(0), -d0 / var_t, 0.0)  # (T,)
    r = jnp.maximum(mask[:, 0].sum(), 1.0)
    ybar = jnp.sum(jnp.where(mask, y, 0.0), 0) / r  # (T,)

    def newton(delta, _):
        e, d, _q = _validity_curve(delta, s_nodes, params)
        u = jnp.sum(w * (ybar - e))
        du = -jnp.sum(w * d)
        step = jnp.clip(-u / jnp.maximum(du, 1e-12), -2.0, 2.0)
        return delta + step, None

    delta, _ = jax.lax.scan(newton, delta0, None, length=_NEWTON_STEPS)
    e, d, _q = _validity_curve(delta, s_nodes, params)
    du = jnp.maximum(-jnp.sum(w * d), 1e-12)
    psi = jnp.sum(jnp.where(mask, w * (y - e), 0.0), -1)  # (R,)
    psi = jnp.where(mask[:, 0], psi - jnp.sum(psi) / r, 0.0)
    e_fin = jnp.sum(jnp.where(t_final, e, 0.0))
    d_fin = jnp.sum(jnp.where(t_final, d, 0.0))
    return e_fin, -d_fin * psi / du  # d E_T / d delta * d delta / d psi


def _setting_estimates(y, n, a, mask_r, r_count, t_final, model_v, y_t, mask_rt):
    """Estimates (V, A, G) of one setting and design and per-trial influences (R, 3).

    ``y, n, a`` are (R,) at the final iteration, ``y_t`` (R, T) all rates; ``model_v`` a
    pair (estimate, influences) of the model-based validity, or ``None`` for the
    final-iteration mean.
    """
    def mean(x):
        return jnp.sum(jnp.where(mask_r, x, 0.0)) / r_count

    g = y - y_t[:, 0]
    nbar, abar = mean(n), mean(a)
    acc = abar / jnp.where(nbar > 0, nbar, jnp.nan)
    if model_v is None:
        v = mean(y)
        phi_v = jnp.where(mask_r, y - v, 0.0)
    else:
        v, phi_v = model_v
    gbar = mean(g)
    phi = jnp.stack([phi_v, jnp.where(mask_r, (a - acc * n) / nbar, 0.0),
                     jnp.where(mask_r, g - gbar, 0.0)], -1)
    return jnp.stack([v, acc, gbar]), phi


def _component_value(component: str, th_s: Array, th_r: Array, chance_s: Array,
                     chance_r: Array) -> Array:
    """The component from (V, A, G) of a setting and of the reference."""
    if component == "trend":
        return trend_gap(th_s[2], th_r[2])
    g = gap_components(th_s[0], th_s[1], th_r[0], th_r[1], chance_s=chance_s,
                       chance_ref=chance_r)
    return {"validity": g["validity_gap"], "accuracy": g["accuracy_gap"],
            "combined": g["combined_gap"]}[component]


def _true_value(component: str, ev_validity, ev_accuracy, iterations, s, ref, chance):
    """The component from expected values ``(S, T)`` at iteration ``T`` of each entry."""
    idx = jnp.asarray(iterations) - 1
    v = ev_validity[:, idx]
    a = ev_accuracy[:, idx]
    if component == "trend":
        gain = v - ev_validity[:, :1]
        return trend_gap(gain[s], gain[ref])
    g = gap_components(v[s], a[s], v[ref], a[ref], chance_s=chance[s], chance_ref=chance[ref])
    return {"validity": g["validity_gap"], "accuracy": g["accuracy_gap"],
            "combined": g["combined_gap"]}[component]


def _analyse_study(n_valid: Array, accuracy_sum: Array, p: DynamicsParams, e: SettingEffects,
                   trials: Array, iterations: Array, num_candidates: Array, *, component: str,
                   method: str):
    """Estimate, reference/setting variances of the component for every design of one
    simulated study (``n_valid``, ``accuracy_sum``: ``(S, R_max, T_max)``); shapes
    ``(nR, nT, S-1)``."""
    r_max, t_max = n_valid.shape[1:]
    nf = n_valid.astype(jnp.float32)
    y_t = nf / jnp.asarray(num_candidates, jnp.float32)  # (S, R, T)
    chance = jnp.broadcast_to(jnp.asarray(e.chance, jnp.float32), nf.shape[:1])
    m, v = expected_state_moments(p, e, t_max, num_candidates)  # (S, T)
    s_nodes = m[..., None] + jnp.sqrt(v)[..., None] * jnp.asarray(GH_NODES)  # (S, T, K)
    delta0 = jnp.broadcast_to(jnp.asarray(e.validity_offset, jnp.float32), nf.shape[:1])
    r_idx = jnp.arange(r_max)
    t_idx = jnp.arange(t_max)

    def design(r, t):  # r trials, t iterations (traced ints)
        mask_r = r_idx < r
        mask_rt = mask_r[:, None] & (t_idx < t)[None]
        t_final = t_idx == t - 1
        rf = r.astype(jnp.float32)

        def setting(ys, ns, as_, yts, dl0, nodes):
            mv = None
            if method == "model":
                mv = _model_validity(yts, mask_rt, nodes, p, dl0, num_candidates, t_final)
            return _setting_estimates(ys, ns, as_, mask_r, rf, t_final, mv, yts, mask_rt)

        fin = jnp.sum(jnp.where(t_final, 1.0, 0.0) * y_t, -1)  # (S, R) at t
        nfin = jnp.sum(jnp.where(t_final, nf, 0.0), -1)
        afin = jnp.sum(jnp.where(t_final, accuracy_sum, 0.0), -1)
        th, phi = jax.vmap(setting)(fin, nfin, afin, y_t, delta0, s_nodes)  # (S,3), (S,R,3)
        cov = jnp.einsum("srk,srl->skl", phi, phi) / (rf * (rf - 1.0))
        f = partial(_component_value, component)
        est = jax.vmap(f, in_axes=(0, None, 0, None))(th[1:], th[0], chance[1:], chance[0])
        g_s, g_r = jax.vmap(jax.grad(f, argnums=(0, 1)), in_axes=(0, None, 0, None))(
            th[1:], th[0], chance[1:], chance[0])
        var_s = jnp.einsum("sk,skl,sl->s", g_s, cov[1:], g_s)
        var_r = jnp.einsum("sk,kl,sl->s", g_r, cov[0], g_r)
        return est, var_s, var_r

    return jax.vmap(lambda r: jax.vmap(lambda t: design(r, t))(iterations))(trials)


def _counts(key: PRNGKey, params: DynamicsParams, effects: SettingEffects, setting_ids: Array,
            r_max: int, t_max: int, num_candidates: Array, bursts: bool = True) -> Array:
    """Valid counts ``(S, R, T)`` only: the ``n_valid`` of
    :func:`~llmnas_transfer.sim.summary.summary_chunk` without feedback (same keys, states,
    collapse regimes, dispersion and validity streams), without drawing accuracies or
    novelties. ``bursts`` (static) as there: ``False`` promises that collapse and
    dispersion are off and leaves them out."""
    tkeys = trial_keys(key, setting_ids, jnp.arange(r_max, dtype=jnp.int32))  # (S, R)
    kc, states, collapsed = jax.vmap(jax.vmap(lambda k, e: trial_path(k, params, t_max, e),
                                              in_axes=(0, None)))(tkeys, effects)  # (S, R, T)
    k0, k1 = key_words(kc)
    prob = jax.nn.sigmoid(validity_logit(states, params,
                                         jnp.asarray(effects.validity_offset)[:, None, None]))
    if bursts:
        prob = dispersed_rate(k0, k1, regime_validity(prob, collapsed, params), params)
    return binomial(k0, k1, STREAM_VALID, jnp.asarray(num_candidates, jnp.int32), prob)


@partial(jax.jit,
         static_argnames=("component", "r_max", "t_max", "feedback", "bursts", "method"))
def _study_kernel(keys: PRNGKey, params: DynamicsParams, effects: SettingEffects,
                  setting_ids: Array, trials: Array, iterations: Array, num_candidates: Array,
                  *, component: str, r_max: int, t_max: int, feedback: bool, bursts: bool,
                  method: str):
    """Simulate and analyse a batch of studies (leading axis of ``keys``, ``params``,
    ``effects``); setting 0 is the reference. The design grids ``trials``, ``iterations``
    and the candidate count are traced: one compile serves every grid with the same
    largest design. Validity and trend need only the valid counts (:func:`_counts`) when
    there is no feedback. ``feedback`` and ``bursts`` (static) tell the simulation whether
    the prior may have feedback strengths or bursts (:func:`_prior`). Returns
    ``(estimate, var_s, var_r, truth)`` of shape
    ``(B, nR, nT, S - 1)`` (truth ``(B, nT, S - 1)``)."""
    counts_only = component in ("validity", "trend") and not feedback

    def one(key, p, e):
        if counts_only:
            nv = _counts(key, p, e, setting_ids, r_max, t_max, num_candidates, bursts)
            acc = jnp.zeros(nv.shape, jnp.float32)
        else:
            summ = summary_chunk(key, p, e, setting_ids, jnp.arange(r_max, dtype=jnp.int32),
                                 num_iterations=t_max, num_candidates=num_candidates,
                                 bins=0, feedback=feedback, bursts=bursts)
            nv, acc = summ.n_valid, summ.accuracy_sum
        est, vs, vr = _analyse_study(nv, acc, p, e, trials, iterations, num_candidates,
                                     component=component, method=method)
        chance = jnp.asarray(e.chance, jnp.float32)
        ev = expected(p, e, t_max, num_candidates)
        truth = jnp.stack([_true_value(component, ev.validity, ev.accuracy, iterations, s, 0,
                                       chance) for s in range(1, est.shape[-1] + 1)], -1)
        return est, vs, vr, truth

    return jax.vmap(one)(keys, params, effects)


# ----------------------------------------------------------------------------- prior
def _pilot_draws(pilot, settings: list[tuple[str, str]]):
    """Posterior draws of a pilot fit: ``(DynamicsParams, SettingEffects)`` with a leading
    draw axis, effects restricted to ``settings`` (in that order)."""
    dt = load_fit(pilot) if isinstance(pilot, (str, os.PathLike)) else pilot
    if not isinstance(dt, xr.DataTree):
        raise UserInputError(f"pilot must be a fit file or its DataTree, got {type(dt).__name__}")
    spec = spec_of(dt)
    post = dt["posterior"].dataset
    want = set(DynamicsParams._fields) | {"validity_offset", "accuracy_offset",
                                         "novelty_offset", "rate_offset", "asymptote"}
    sample = {k: jnp.asarray(np.asarray(post[k].values, np.float32).reshape(
        (-1,) + post[k].shape[2:])) for k in post.data_vars if k in want}
    missing = [k for k in ("kappa", "validity_offset") if k not in sample]
    if missing:
        raise UserInputError(f"pilot fit lacks the posterior site(s) {', '.join(missing)}")
    flat = []
    for d, t in settings:
        if d not in spec.datasets or t not in spec.tasks:
            raise UserInputError(
                f"{d}:{t} is not a setting of the pilot fit (datasets: "
                f"{', '.join(spec.datasets)}; tasks: {', '.join(spec.tasks)}); refit the pilot "
                "with --datasets/--tasks")
        flat.append(spec.datasets.index(d) * len(spec.tasks) + spec.tasks.index(t))
    params, effects = jax.vmap(lambda s: params_from_sample(s, spec))(sample)
    effects = jax.tree.map(lambda x: jnp.asarray(x)[:, np.asarray(flat)], effects)
    return params, effects


def _prior(reference, compare, defaults, pilot):
    """Settings (reference first), the design prior, whether it has feedback and whether
    it has bursts (in any draw of a pilot fit)."""
    ref = parse_setting(reference, "reference")
    comp = _settings(compare)
    if ref in comp:
        raise UserInputError(f"{ref[0]}:{ref[1]} is the reference; compare it with another setting")
    if len(set(comp)) != len(comp):
        raise UserInputError("compare names a setting twice")
    settings = [ref, *comp]
    if pilot is not None:
        params, effects = _pilot_draws(pilot, settings)
        feedback = bool(np.any(np.asarray(params.feedback_validity) != 0)
                        or np.any(np.asarray(params.feedback_accuracy) != 0))
        bursts = bool(np.any(np.asarray(params.collapse_enter) > 0)
                      or np.any(np.asarray(params.validity_dispersion) > 0))
        return settings, (params, effects, int(params.kappa.shape[0])), feedback, bursts
    defaults = defaults or load_defaults()
    params = defaults.dynamics_params()
    dsets = list(dict.fromkeys(d for d, _ in settings))
    tasks = list(dict.fromkeys(t for _, t in settings))
    grid = defaults.effects(dsets, tasks)  # dataset-major grid; keep our settings
    flat = np.array([dsets.index(d) * len(tasks) + tasks.index(t) for d, t in settings])
    effects = jax.tree.map(lambda x: jnp.asarray(x)[flat] if jnp.ndim(x) else x, grid)
    return settings, (params, effects, None), has_feedback(params), has_bursts(params)


def _study_params(key: PRNGKey, ids: np.ndarray, prior, n_settings: int):
    """Study keys and per-study ``(params, effects)`` (leading study axis)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(ids, jnp.uint32))
    params, effects, n_draws = prior
    if n_draws is None:  # point prior: broadcast
        b = len(ids)
        return keys, (jax.tree.map(lambda x: jnp.broadcast_to(x, (b,) + jnp.shape(x)), params),
                      jax.tree.map(lambda x: jnp.broadcast_to(
                          jnp.broadcast_to(x, (n_settings,)), (b, n_settings)), effects))
    pick = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, DRAW_STREAM), (), 0,
                                                 n_draws))(keys)
    return keys, (jax.tree.map(lambda x: x[pick], params),
                  jax.tree.map(lambda x: x[pick], effects))


def _chunk_runner(devices: tuple, key: PRNGKey, prior, n_set: int, sids: Array, grid_r: Array,
                  grid_t: Array, **kw) -> Callable[[np.ndarray, int], tuple[np.ndarray, ...]]:
    """``run(ids, n_c)``: the kernel's outputs (host float64, leading axis
    ``len(devices) * chunk``) for ``ids`` of shape ``(len(devices), chunk)``, row ``d``
    simulated on ``devices[d]``.

    Each process runs :func:`_study_kernel` on the rows of its own devices, a compiled
    program of one device and one chunk, exactly the program of a one-device run (a
    program partitioned over a mesh can round differently). The rows are then
    concatenated on every process by a collective that only moves data
    (:func:`~llmnas_transfer.study.distributed.gather_rows`); a failed collective raises
    :class:`~llmnas_transfer.study.distributed.PeerLostError`."""
    me = jax.process_index()
    local = [(i, d) for i, d in enumerate(devices) if d.process_index == me]
    multi = jax.process_count() > 1

    def run(ids: np.ndarray, n_c: int) -> tuple[np.ndarray, ...]:
        parts = []
        for i, dev in local:  # dispatched asynchronously: the local devices run together
            keys, (p, e) = _study_params(key, ids[i], prior, n_set)
            args = jax.device_put((keys, p, e, sids, grid_r, grid_t, jnp.int32(n_c)), dev)
            parts.append(_study_kernel(*args, **kw))
        try:
            out = parts[0] if len(devices) == 1 else gather_rows(parts, devices)
            return tuple(np.asarray(x, np.float64) for x in out)
        except Exception as exc:  # noqa: BLE001 - any failure of the collective
            if not multi:
                raise
            raise peer_lost(exc) from exc

    return run


def _devices(per_process: int) -> tuple:
    """The first ``per_process`` local devices of every process, process by process (the
    same tuple on every process)."""
    local = jax.local_devices()
    n = check_int("devices_per_process", per_process, 1, 2**31 - 1)
    if n > len(local):
        hint = (f" (on CPU start with JAX_NUM_CPU_DEVICES={n})"
                if local[0].platform == "cpu" else "")
        raise UserInputError(f"asked for {n} devices per process but only {len(local)} "
                             f"are available{hint}")
    by_process: dict[int, list] = {}
    for d in jax.devices():
        by_process.setdefault(d.process_index, []).append(d)
    return tuple(d for p in sorted(by_process) for d in by_process[p][:n])


# ----------------------------------------------------------------------------- public
def simulate_studies(
    reference: str | Sequence[str] = "cifar-10:classification",
    compare: str | Sequence = "stl-10:classification",
    *,
    component: str = "combined",
    ci: float = 0.94,
    trials: int | Sequence[int] = DEFAULT_TRIALS,
    iterations: int | Sequence[int] = DEFAULT_ITERATIONS,
    candidates: int | Sequence[int] = DEFAULT_CANDIDATES,
    defaults: ModelDefaults | None = None,
    pilot: str | os.PathLike | xr.DataTree | None = None,
    studies: int = DEFAULT_STUDIES,
    study_offset: int = 0,
    seed: int = 0,
    chunk_studies: int | None = None,
    method: str = "model",
    progress: bool | Callable[[int, int], None] = False,
    devices_per_process: int = 1,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> StudyAnalyses:
    """Simulate ``studies`` studies per design and analyse each (the engine of :func:`plan`).

    Studies ``study_offset .. study_offset + studies - 1`` are simulated; a study's numbers
    depend only on (seed, design, study index), not on ``chunk_studies`` or on the other
    designs. See the module docstring for the prior, the keys and the approximation.

    The chunks of studies are spread over the first ``devices_per_process`` local devices
    of every process (one process, or every process of a ``jax.distributed`` run), one
    chunk per device at a time; each device simulates and analyses whole chunks with the
    program of a one-device run, so the numbers are the same bits for any number of
    devices and processes. That program is compiled once per device: more than one
    device per process pays off only for long plans.

    ``coordinator``, ``num_processes``, ``process_id`` join a multi-process run as
    :func:`llmnas_transfer.study.sweeps.sweep` does (all three or none; before any other
    JAX work of the process). Every process calls with the same arguments and gets the
    same result; a peer that dies mid-run raises
    :class:`~llmnas_transfer.study.distributed.PeerLostError`.

    Example
    -------
    >>> a = simulate_studies(component="validity", trials=(4, 8), iterations=3,
    ...                      candidates=10, studies=6)
    >>> a.estimate.shape
    (6, 2, 1, 1, 1)
    """
    if (coordinator, num_processes, process_id) != (None, None, None):
        initialize(resolve_options(coordinator, num_processes, process_id))
    # every process reads the prior (a pilot file missing on one host stops them all)
    settings, prior, feedback, bursts = agree_all(
        lambda: _prior(reference, compare, defaults, pilot))
    comp = settings[1:]
    n_set = len(settings)
    component = check_choice("component", component, COMPONENTS)
    method = check_choice("method", method, METHODS)
    ci = check_float("ci", ci, 0.0, 1.0, low_open=True, high_open=True)
    trials_g = _grid("trials", trials, MAX_TRIALS, low=2)
    iters_g = _grid("iterations", iterations, MAX_ITERATIONS, low=2 if component == "trend"
                    else 1)
    cands_g = _grid("candidates", candidates, MAX_CANDIDATES)
    studies = check_int("studies", studies, 1, MAX_STUDIES)
    study_offset = check_int("study_offset", study_offset, 0, 2**32 - 1 - studies)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    sids = jnp.asarray(np.array([registry.setting_id(d, t) for d, t in settings], np.uint32))
    r_max, t_max = max(trials_g), max(iters_g)
    grid_r = jnp.asarray(trials_g, jnp.int32)
    grid_t = jnp.asarray(iters_g, jnp.int32)
    if chunk_studies is None:  # a power of two: few distinct compiled shapes
        chunk_studies = max(1, min(studies, PAIRS_PER_CALL // (n_set * r_max * t_max)))
        chunk_studies = 1 << (chunk_studies - 1).bit_length()
    chunk_studies = check_int("chunk_studies", chunk_studies, 1, MAX_STUDIES)
    n_chunks = math.ceil(studies / chunk_studies)
    devices = agree_all(lambda: _devices(devices_per_process))
    n_dev = len(devices)
    run = _chunk_runner(devices, as_key(seed), prior, n_set, sids, grid_r, grid_t,
                        component=component, r_max=r_max, t_max=t_max, feedback=feedback,
                        bursts=bursts, method=method)
    shape = (studies, len(trials_g), len(iters_g), len(cands_g), n_set - 1)
    est, vs, vr = (np.empty(shape) for _ in range(3))
    truth = np.empty((studies, len(iters_g), len(cands_g), n_set - 1))
    total = n_chunks * len(cands_g)
    bar = progress_bar(progress if jax.process_index() == 0 else False, total,
                       label="simulating studies", unit="chunks", min_total=2)
    done = 0
    try:
        for j, n_c in enumerate(cands_g):
            for first in range(0, n_chunks, n_dev):  # one chunk per device
                chunks = range(first, min(first + n_dev, n_chunks))
                # chunk c: studies c * chunk_studies ... (the last one padded); devices
                # without a chunk repeat the first one, and their results are dropped
                ids = study_offset + np.stack([
                    np.arange(c * chunk_studies, (c + 1) * chunk_studies)
                    for c in (chunks[d] if d < len(chunks) else first for d in range(n_dev))])
                out = run(ids, n_c)
                for d, c in enumerate(chunks):
                    lo = c * chunk_studies
                    k = min(chunk_studies, studies - lo)
                    rows = slice(d * chunk_studies, d * chunk_studies + k)
                    e_, a_, b_, t_ = (x[rows] for x in out)
                    est[lo:lo + k, :, :, j] = e_
                    vs[lo:lo + k, :, :, j] = a_
                    vr[lo:lo + k, :, :, j] = b_
                    truth[lo:lo + k, :, j] = t_
                done += len(chunks)
                bar(done, total)
    finally:
        bar(None, total)
    return _intervals(trials_g, iters_g, cands_g, tuple(comp), est, vs, vr, truth, ci)


def _intervals(trials, iterations, candidates, compare, est, vs, vr, truth, ci) -> StudyAnalyses:
    """Student-t intervals with Welch-Satterthwaite degrees of freedom (host, NumPy)."""
    from scipy import stats

    r = np.asarray(trials, float).reshape(1, -1, 1, 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = vs + vr
        df = var**2 / (vs**2 / (r - 1) + vr**2 / (r - 1))
        df = np.where(np.isfinite(df), np.maximum(df, 1.0), r - 1)
        se = np.sqrt(var)
        q = stats.t.ppf(0.5 + ci / 2.0, df)
        ok = np.isfinite(est) & np.isfinite(se)
        low = np.where(ok, est - q * se, np.nan)
        high = np.where(ok, est + q * se, np.nan)
    truth_b = np.broadcast_to(truth[:, None], est.shape)
    return StudyAnalyses(tuple(trials), tuple(iterations), tuple(candidates), compare, est,
                         se, df, low, high, np.array(truth_b))


def summarize_studies(analyses: StudyAnalyses, *, width: float | None = None,
                      assurance: float = 0.8, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                      cost_per_candidate: float | None = None) -> pd.DataFrame:
    """One row per design (:data:`PLAN_COLUMNS`) from :func:`simulate_studies`' output.

    A study meets the goal when every compared setting does: its interval is at most
    ``width`` wide, or (``width=None``) its regime is called right. A regime is **called**
    when the whole interval lies inside one regime (easy below the first threshold, hard
    above the second, moderate between); the call is right when that regime is the true
    one. ``expected_width`` is the mean over studies of the widest interval.

    Example
    -------
    >>> a = simulate_studies(component="validity", trials=(4, 8), iterations=3,
    ...                      candidates=10, studies=6)
    >>> int(summarize_studies(a, width=0.3)["recommended"].sum()) <= 1
    True
    """
    assurance = check_float("assurance", assurance, 0.0, 1.0, low_open=True, high_open=True)
    lo_t, hi_t = check_thresholds(thresholds)
    if width is not None:
        width = check_float("width", width, 0.0, None, low_open=True)
    if cost_per_candidate is not None:
        cost_per_candidate = check_float("cost_per_candidate", cost_per_candidate, 0.0, None)
    a = analyses
    w = a.high - a.low
    w = np.where(np.isfinite(w), w, np.inf)
    w_study = w.max(axis=-1)  # (B, nR, nT, nN)
    true_regime = np.vectorize(lambda g: {"easy": 0, "moderate": 1, "hard": 2}[g])(
        classify_regime(np.nan_to_num(a.truth, nan=np.inf), (lo_t, hi_t)))
    called = np.where(a.high < lo_t, 0, np.where(a.low > hi_t, 2,
                      np.where((a.low >= lo_t) & (a.high <= hi_t), 1, -1)))
    right = (called == true_regime).all(axis=-1)
    p_right = right.mean(axis=0)
    goal = (w_study <= width).mean(axis=0) if width is not None else p_right
    finite = np.where(np.isfinite(w_study), w_study, np.nan)
    with np.errstate(invalid="ignore"):
        mean_w = np.nanmean(finite, axis=0) if np.isfinite(finite).any() else \
            np.full(finite.shape[1:], np.nan)
    n_set = len(a.compare) + 1
    rows = []
    for i, r in enumerate(a.trials):
        for k, t in enumerate(a.iterations):
            for j, n in enumerate(a.candidates):
                total = r * t * n * n_set
                row = {"trials": r, "iterations": t, "candidates": n,
                       "expected_width": float(mean_w[i, k, j]),
                       "assurance": float(goal[i, k, j]),
                       "p_regime_correct": float(p_right[i, k, j]),
                       "candidates_total": total}
                if cost_per_candidate is not None:
                    row["cost"] = total * cost_per_candidate
                rows.append(row)
    df = pd.DataFrame(rows)
    ok = df["assurance"] >= assurance
    df["recommended"] = False
    if ok.any():
        best = df[ok].sort_values(["candidates_total", "trials", "iterations"]).index[0]
        df.loc[best, "recommended"] = True
    cols = [c for c in PLAN_COLUMNS if c in df.columns]
    df = df[cols].sort_values(["iterations", "candidates", "trials"], kind="stable")
    df = df.reset_index(drop=True)
    df.attrs.update({"goal": "width" if width is not None else "regime", "width": width,
                     "target": assurance, "studies": int(a.estimate.shape[0]),
                     "compare": [f"{d}:{t}" for d, t in a.compare],
                     "thresholds": (lo_t, hi_t), "true_value": _true_summary(a)})
    return df


def _true_summary(a: StudyAnalyses) -> list[float]:
    """Mean true component per compared setting (over studies and designs)."""
    return [float(np.nanmean(a.truth[..., s])) for s in range(a.truth.shape[-1])]


def plan(
    reference: str | Sequence[str] = "cifar-10:classification",
    compare: str | Sequence = "stl-10:classification",
    *,
    component: str = "combined",
    width: float | None = None,
    ci: float = 0.94,
    assurance: float = 0.8,
    trials: int | Sequence[int] = DEFAULT_TRIALS,
    iterations: int | Sequence[int] = DEFAULT_ITERATIONS,
    candidates: int | Sequence[int] = DEFAULT_CANDIDATES,
    defaults: ModelDefaults | None = None,
    pilot: str | os.PathLike | xr.DataTree | None = None,
    studies: int = DEFAULT_STUDIES,
    cost_per_candidate: float | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    seed: int = 0,
    chunk_studies: int | None = None,
    method: str = "model",
    progress: bool | Callable[[int, int], None] = False,
    devices_per_process: int = 1,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> pd.DataFrame:
    """Assurance of every design for a transfer-gap question; the cheapest one that suffices.

    Parameters
    ----------
    reference : ``"DATASET:TASK"`` the gaps are relative to (default CIFAR-10 classification).
    compare : setting(s) to compare, ``"D:T"``, ``"D:T,D:T"`` or a list of them.
    component : ``validity``, ``accuracy``, ``combined`` (default) or ``trend``.
    width : the goal "the ``ci`` interval is at most ``width`` wide" (a fraction, e.g.
        0.10); ``None`` (default) makes the goal "call the regime right".
    ci : probability of the interval (default 0.94, the fit's HDI convention).
    assurance : the probability of reaching the goal a design must have (default 0.8).
    trials, iterations, candidates : the designs: single values or sequences (the grid is
        their product). Trials must be at least 2.
    defaults : design prior as a parameter set (a point prior; default the shipped
        ``paper`` set). Ignored when ``pilot`` is given.
    pilot : a pilot study's fit (file or ``DataTree``): each simulated study draws its
        parameters from that posterior.
    studies : simulated studies per design (Monte Carlo SE of an assurance ``a`` is
        ``sqrt(a (1 - a) / studies)``, 0.018 at ``a = 0.8`` and 500 studies).
    cost_per_candidate : GPU hours per candidate; adds the ``cost`` column.
    thresholds : regime thresholds ``(easy_below, hard_above)`` on the component.
    seed : integer seed; the same seed gives the same numbers.
    chunk_studies : studies per compiled call (memory only; results do not depend on it).
    method : the analysis of a simulated study: ``"model"`` (default) estimates each
        setting's final validity from all its iterations, the dynamics known;
        ``"final"`` from the last iteration's rates only (model-free, wider).
    progress : ``True`` for a progress bar, or a callback ``f(done, total)`` (process 0
        only).
    devices_per_process : local devices each process spreads the chunks of studies over
        (default 1; each device compiles the kernel once). Results do not depend on it.
    coordinator, num_processes, process_id : join a multi-process run (``HOST:PORT`` of
        process 0, the process count, this process's index; all three or none), as
        :func:`llmnas_transfer.study.distributed.initialize` does; before any other JAX
        work of the process. Every process calls ``plan`` with the same arguments, the
        studies are spread over the processes, and every process gets the same table,
        the same bits as one process. A peer that dies mid-run raises
        :class:`~llmnas_transfer.study.distributed.PeerLostError`.

    Returns
    -------
    DataFrame with :data:`PLAN_COLUMNS` (``cost`` only with ``cost_per_candidate``), one
    row per design; ``recommended`` marks the cheapest design (fewest candidates in all,
    ``candidates_total = trials x iterations x candidates x settings``) whose assurance
    reaches ``assurance``. ``df.attrs`` records the goal, target, studies and the true
    component value(s) under the prior.

    Example
    -------
    >>> df = plan(compare="stl-10:classification", component="validity", width=0.25,
    ...           trials=(4, 8), iterations=4, candidates=(10, 20), studies=30, seed=1)
    >>> len(df), int(df["recommended"].sum()) <= 1
    (4, True)
    """
    assurance = check_float("assurance", assurance, 0.0, 1.0, low_open=True, high_open=True)
    thresholds = check_thresholds(thresholds)
    if width is not None:
        width = check_float("width", width, 0.0, None, low_open=True)
    if cost_per_candidate is not None:
        cost_per_candidate = check_float("cost_per_candidate", cost_per_candidate, 0.0, None)
    a = simulate_studies(reference, compare, component=component, ci=ci, trials=trials,
                         iterations=iterations, candidates=candidates, defaults=defaults,
                         pilot=pilot, studies=studies, seed=seed, chunk_studies=chunk_studies,
                         method=method, progress=progress,
                         devices_per_process=devices_per_process, coordinator=coordinator,
                         num_processes=num_processes, process_id=process_id)
    return summarize_studies(a, width=width, assurance=assurance, thresholds=thresholds,
                             cost_per_candidate=cost_per_candidate)


def recommendation(df: pd.DataFrame, *, component: str = "combined",
                   compare: Sequence[str] | None = None) -> str:
    """A one-paragraph recommendation from :func:`plan`'s table.

    Example
    -------
    >>> df = pd.DataFrame({"trials": [5], "iterations": [10], "candidates": [20],
    ...     "expected_width": [0.3], "assurance": [0.1], "p_regime_correct": [0.1],
    ...     "candidates_total": [2000], "recommended": [False]})
    >>> df.attrs.update(goal="width", width=0.1, target=0.8, studies=100)
    >>> recommendation(df).startswith("No design")
    True
    """
    at = df.attrs
    goal = (f"an interval at most {at.get('width'):.3g} wide" if at.get("goal") == "width"
            else "the regime called right (interval inside the true regime)")
    what = f"the {component} gap of {', '.join(compare or at.get('compare', []))}".rstrip()
    n = int(at.get("studies", 0)) or 1
    target = float(at.get("target", 0.8))
    rec = df[df["recommended"]]
    if rec.empty:
        best = df.sort_values("assurance", ascending=False).iloc[0]
        return (f"No design in the grid reaches {goal} for {what} with assurance "
                f"{target:.2f}; the best, {int(best.trials)} trials x "
                f"{int(best.iterations)} iterations x {int(best.candidates)} candidates, "
                f"reaches it in {best.assurance:.0%} of {n} simulated studies. Add more "
                "trials to the grid: between-trial spread shrinks only with more trials.")
    r = rec.iloc[0]
    se = math.sqrt(max(r.assurance * (1 - r.assurance), 1e-12) / n)
    cost = f", cost {r.cost:.4g} GPU hours" if "cost" in df.columns else ""
    alts = []
    more_r = df[(df.candidates == r.candidates) & (df.iterations == r.iterations)
                & (df.trials > r.trials)]
    more_n = df[(df.trials == r.trials) & (df.iterations == r.iterations)
                & (df.candidates > r.candidates)]
    if not more_r.empty:
        m = more_r.iloc[0]
        alts.append(f"{int(m.trials)} trials (x{m.trials / r.trials:.2g} the candidates) "
                    f"would narrow the expected width to {m.expected_width:.3f}")
    if not more_n.empty:
        m = more_n.iloc[0]
        alts.append(f"{int(m.candidates)} candidates per iteration (x"
                    f"{m.candidates / r.candidates:.2g}) to {m.expected_width:.3f}")
    tail = (" For comparison, " + " and ".join(alts) + ": extra candidates only shrink the "
            "binomial noise of each trial, extra trials also the trial-to-trial spread."
            ) if alts else ""
    return (f"Run {int(r.trials)} trials x {int(r.iterations)} iterations x "
            f"{int(r.candidates)} candidates per iteration per setting "
            f"({int(r.candidates_total):,} candidates in all{cost}): it is the cheapest "
            f"design in the grid that reaches {goal} for {what} in {r.assurance:.0%} of "
            f"{n} simulated studies (Monte Carlo SE {se:.1%}; target {target:.0%}). Its "
            f"expected interval width is {r.expected_width:.3f} and it calls the regime "
            f"right with probability {r.p_regime_correct:.0%}.{tail}")


def study_runs(
    study: int,
    reference: str | Sequence[str] = "cifar-10:classification",
    compare: str | Sequence = "stl-10:classification",
    *,
    trials: int,
    iterations: int,
    candidates: int,
    defaults: ModelDefaults | None = None,
    pilot: str | os.PathLike | xr.DataTree | None = None,
    seed: int = 0,
    accuracy: bool = False,
) -> pd.DataFrame:
    """The runs of simulated study ``study`` of a design, as a counts-form runs table.

    These are the numbers :func:`simulate_studies` analyses for that study (same keys,
    same summary path), ready for :func:`llmnas_transfer.io.runs.runs_from_frame` and a
    full fit (``docs/planning.md`` compares the two analyses). ``accuracy`` adds
    ``accuracy_mean`` and ``accuracy_sd`` of the valid candidates.

    Example
    -------
    >>> df = study_runs(3, trials=2, iterations=2, candidates=5)
    >>> list(df.columns), len(df)
    (['dataset', 'task', 'trial', 'iteration', 'n_generated', 'n_valid'], 8)
    """
    settings, prior, feedback, bursts = _prior(reference, compare, defaults, pilot)
    trials = check_int("trials", trials, 1, MAX_TRIALS)
    iterations = check_int("iterations", iterations, 1, MAX_ITERATIONS)
    candidates = check_int("candidates", candidates, 1, MAX_CANDIDATES)
    study = check_int("study", study, 0, 2**32 - 1)
    keys, (p, e) = _study_params(as_key(check_int("seed", seed, 0, 2**63 - 1)),
                                 np.array([study]), prior, len(settings))
    sids = jnp.asarray(np.array([registry.setting_id(d, t) for d, t in settings], np.uint32))
    summ = _runs_kernel(keys[0], jax.tree.map(lambda x: x[0], p),
                        jax.tree.map(lambda x: x[0], e), sids, trials=trials,
                        iterations=iterations, num_candidates=candidates, feedback=feedback,
                        bursts=bursts)
    nv = np.asarray(summ.n_valid)  # (S, R, T)
    s_idx, r_idx, t_idx = np.meshgrid(np.arange(len(settings)), np.arange(trials),
                                      np.arange(iterations), indexing="ij")
    df = pd.DataFrame({
        "dataset": [settings[i][0] for i in s_idx.ravel()],
        "task": [settings[i][1] for i in s_idx.ravel()],
        "trial": r_idx.ravel(), "iteration": t_idx.ravel() + 1,
        "n_generated": candidates, "n_valid": nv.ravel().astype(np.int64)})
    if accuracy:
        s1 = np.asarray(summ.accuracy_sum, np.float64).ravel()
        s2 = np.asarray(summ.accuracy_sumsq, np.float64).ravel()
        n = df["n_valid"].to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, s1 / n, np.nan)
            var = np.where(n > 1, (s2 - n * mean**2) / np.maximum(n - 1, 1), 0.0)
        df["accuracy_mean"] = np.clip(mean, 0.0, 1.0)
        df["accuracy_sd"] = np.where(n > 0, np.clip(np.sqrt(np.maximum(var, 0.0)), 0, 0.5),
                                     np.nan)
    return df


@partial(jax.jit,
         static_argnames=("trials", "iterations", "num_candidates", "feedback", "bursts"))
def _runs_kernel(key, params, effects, setting_ids, *, trials, iterations, num_candidates,
                 feedback, bursts):
    return summary_chunk(key, params, effects, setting_ids,
                         jnp.arange(trials, dtype=jnp.int32), num_iterations=iterations,
                         num_candidates=num_candidates, bins=0, feedback=feedback,
                         bursts=bursts)


def plot_assurance(df: pd.DataFrame, *, ci: float = 0.94):
    """Assurance against trials, one line per candidate count (a panel per iteration count),
    with the target and the recommended design marked.

    Example
    -------
    >>> df = pd.DataFrame({"trials": [5, 10], "iterations": [10, 10], "candidates": [20, 20],
    ...     "expected_width": [0.3, 0.2], "assurance": [0.2, 0.9], "p_regime_correct": [0.1, 0.5],
    ...     "candidates_total": [2000, 4000], "recommended": [False, True]})
    >>> df.attrs.update(goal="width", width=0.25, target=0.8, studies=100)
    >>> len(plot_assurance(df).axes)
    1
    """
    import textwrap

    from matplotlib import colormaps
    from matplotlib.figure import Figure

    at = df.attrs
    iters = sorted(df["iterations"].unique())
    fig = Figure(figsize=(5.2 * len(iters), 4.2), layout="constrained")
    axes = fig.subplots(1, len(iters), squeeze=False)[0]
    cands = sorted(df["candidates"].unique())
    cmap = colormaps["viridis"]
    n = int(at.get("studies", 0)) or 1
    target = float(at.get("target", 0.8))
    for ax, t in zip(axes, iters, strict=True):
        for i, c in enumerate(cands):
            sub = df[(df.iterations == t) & (df.candidates == c)].sort_values("trials")
            se = np.sqrt(sub.assurance * (1 - sub.assurance) / n)
            colour = cmap(0.85 * i / max(len(cands) - 1, 1))
            ax.errorbar(sub.trials, sub.assurance, yerr=1.96 * se, marker="o", ms=3,
                        capsize=2, color=colour, label=f"{c} candidates / iteration")
        rec = df[(df.iterations == t) & df.recommended]
        if not rec.empty:
            ax.plot(rec.trials, rec.assurance, marker="*", ms=14, color="crimson",
                    linestyle="none", label="recommended")
        ax.axhline(target, color="0.3", linestyle="--", linewidth=1,
                   label=f"target assurance {target:.2f}")
        ax.set_xscale("log")
        ticks = sorted(df["trials"].unique())
        ax.set_xticks(ticks, [str(x) for x in ticks])
        ax.minorticks_off()
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("trials per setting (count, log scale)")
        ax.set_ylabel("assurance (probability of reaching the goal)")
        ax.set_title(f"{t} iterations per trial", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    goal = (f"the {ci:.0%} interval at most {at.get('width'):.3g} wide"
            if at.get("goal") == "width" else "the regime called right")
    text = (f"Goal: {goal}. Each point is the share of {n} simulated studies reaching the "
            f"goal; error bars are 95% Monte Carlo intervals (share +- 1.96 binomial SE over "
            f"studies). Each study is analysed with a {ci:.0%} Student-t interval of the "
            "approximate posterior (delta method, between-trial variance).")
    fig.supxlabel(textwrap.fill(text, int(fig.get_figwidth() * 15)), fontsize=7.5,
                  ha="left", x=0.01, multialignment="left")
    return fig


__all__ = ["COMPONENTS", "PLAN_COLUMNS", "StudyAnalyses", "parse_setting", "plan", "plot_assurance",
           "recommendation", "simulate_studies", "study_runs", "summarize_studies"]
