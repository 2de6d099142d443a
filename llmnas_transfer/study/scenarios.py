"""Named scenarios: published runs re-expressed in the state-space model.

``get("khalid2026")`` is the 22-cycle CIFAR-10 run of Khalid, Ignatov and Timofte 2026
(arXiv 2601.02997): validity 44.0% in the first cycle, a peak of 74.5%, settling at
50.6%; mean first-epoch accuracy 28.06% -> 50.99%; share of valid candidates above 40%
accuracy 2.04% -> 96.81%. The parameters are fitted to these numbers with optax when the
scenario is first asked for (:func:`fit_scenario`); nothing is typed in.

The package's model rises monotonically: with ``validity_slope > 0`` and the state
moving towards 1, expected validity cannot rise and then fall. ``khalid2026`` adds one
mechanism, **ambition drift**, composed from the dynamics functions (their equations are
unchanged): as refinement goes on the LLM writes bigger, more ambitious models, so the
validity offset grows with the cycle::

    delta_t = delta + eta (1 - (1 - rho)^(t - 1))          (eta >= 0, 0 < rho < 1)
    P(valid at cycle t) = sigmoid(validity_logit(s_t, params, delta_t))

Accuracy is untouched by the drift. ``khalid2026-base`` is the same fit with ``eta = 0``
(the plain state-space model), to show what the model alone can and cannot express.
Runs are simulated with the package's own :func:`~llmnas_transfer.sim.dynamics.run_trials`
(the drift enters as its ``validity_shift``) and key scheme
(:mod:`llmnas_transfer.sim.keys`).

Statistics of one run (``N`` candidates per cycle; ``N = 50`` by default, because
Adhikari et al. 2026 report 1,100 candidates over 22 cycles for the same pipeline):
``validity_first`` (cycle 1), ``validity_peak`` (largest per-cycle validity rate over
the run), ``validity_settled`` (mean over the last three cycles), ``accuracy_first`` /
``accuracy_last`` (mean first-epoch accuracy of valid candidates in cycles 1 and T) and
``share_above_first`` / ``share_above_last`` (their share above 40%). The fit matches the
expected value of each single-run statistic: exact Gauss-Hermite expectations for all
but the peak, whose expectation (the mean of a maximum over noisy cycles, well above the
maximum of the mean curve) is estimated with common random numbers.

Example
-------
>>> sc = get("khalid2026")
>>> sc.num_iterations, sc.dataset
(22, 'cifar-10')
>>> tab = compare(sc, num_trials=200)
>>> "validity_peak" in set(tab["statistic"])
True
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import xarray as xr

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.io.bundled import published_value
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.dynamics import (
    Candidates,
    accuracy_logit,
    run_trials,
    state_moments,
    to_accuracy,
    transition_mean,
    validity_logit,
)
from llmnas_transfer.sim.expectation import gauss_normal_mean
from llmnas_transfer.sim.keys import as_key, setting_key, trial_key
from llmnas_transfer.sim.params import (
    DynamicsParams,
    ModelDefaults,
    SettingEffects,
    load_defaults,
)
from llmnas_transfer.sim.types import Array, PRNGKey
from llmnas_transfer.summarize.figures import prepare_output_folder, save_figure
from llmnas_transfer.summarize.tables import write_csv
from llmnas_transfer.validate import check_size

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

STATISTICS: tuple[str, ...] = (
    "validity_first", "validity_peak", "validity_settled", "accuracy_first",
    "accuracy_last", "share_above_first", "share_above_last",
)
#: which published quantity (``published_llm_nas_numbers.csv``) each statistic matches
PUBLISHED_QUANTITY: dict[str, str] = {
    "validity_first": "valid_rate_first_cycle",
    "validity_peak": "valid_rate_peak",
    "validity_settled": "valid_rate_stabilised",
    "accuracy_first": "mean_acc_epoch1_first",
    "accuracy_last": "mean_acc_epoch1_last",
    "share_above_first": "frac_acc_gt_40_first",
    "share_above_last": "frac_acc_gt_40_last",
}
SETTLE_CYCLES = 3
THRESHOLD = 0.40
_CRN_PATHS = 512
_CHUNK = 512
MAX_RUNS = 10**7
MAX_CANDIDATES = 10**5
FIGURE_DPI = 110


class AmbitionDrift(NamedTuple):
    """Extra validity offset ``eta (1 - (1 - rho)^(t-1))`` at cycle ``t``."""

    size: Array
    rate: Array


def drift_path(drift: AmbitionDrift, num_iterations: int) -> Array:
    """The drift added to the validity offset at cycles ``1..T`` (shape ``(T,)``).

    Example
    -------
    >>> d = drift_path(AmbitionDrift(jnp.float32(1.0), jnp.float32(0.5)), 3)
    >>> [round(float(x), 3) for x in d]
    [0.0, 0.5, 0.75]
    """
    t = jnp.arange(num_iterations, dtype=jnp.float32)
    return drift.size * (1.0 - (1.0 - drift.rate) ** t)


@dataclass(frozen=True)
class Scenario:
    """A named, fitted scenario: one setting, its dynamics, drift and the published run."""

    name: str
    description: str
    dataset: str
    task: str
    num_iterations: int
    num_candidates: int
    params: DynamicsParams
    effects: SettingEffects
    drift: AmbitionDrift
    published: dict[str, float]
    fit_report: pd.DataFrame = field(repr=False, compare=False)
    losses: np.ndarray = field(repr=False, compare=False)


# ---------------------------------------------------------------------------- expectations
def _state_grid(params: DynamicsParams, T: int, effects: SettingEffects | None = None):
    m, v = state_moments(params, T, effects)
    return m, jnp.sqrt(v)


def expected_curves(params: DynamicsParams, effects: SettingEffects, drift: AmbitionDrift,
                    num_iterations: int, threshold: float = THRESHOLD) -> dict[str, Array]:
    """Exact expected validity, accuracy and share above ``threshold`` per cycle.

    Gauss-Hermite quadrature over ``s_t ~ N(m_t, v_t)`` (the state is Gaussian), as in
    :mod:`llmnas_transfer.sim.expectation`, with the drifted validity offset.
    ``accuracy`` and ``share_above`` are expectations of one run's cycle mean,
    ``E_s[E[acc | s]]`` (what a single published run estimates); ``accuracy_pooled`` and
    ``share_above_pooled`` pool candidates over runs, ``E[p acc] / E[p]`` (what
    :func:`llmnas_transfer.sim.expectation.expected` returns). They differ because runs with a
    higher state are both more valid and more accurate.

    Example
    -------
    >>> sc = get("khalid2026")
    >>> c = expected_curves(sc.params, sc.effects, sc.drift, 22)
    >>> c["validity"].shape
    (22,)
    """
    m, sd = _state_grid(params, num_iterations, effects)
    delta = effects.validity_offset + drift_path(drift, num_iterations)
    # accuracy = chance + (1 - chance) x: the threshold on x's logit scale
    floor = effects.chance
    x_thr = (threshold - floor) / (1.0 - floor)
    c = jnp.log(x_thr) - jnp.log1p(-x_thr)

    def p_valid(s, dlt):
        return jax.nn.sigmoid(validity_logit(s, params, dlt[..., None]))

    def acc_given_s(s):  # E[acc | s] by an inner quadrature
        mu = accuracy_logit(s, params, effects.accuracy_offset)
        x = gauss_normal_mean(jax.nn.sigmoid, mu, jnp.broadcast_to(params.accuracy_noise,
                                                                   mu.shape))
        return to_accuracy(x, floor)

    def above_given_s(s):
        mu = accuracy_logit(s, params, effects.accuracy_offset)
        return jax.scipy.stats.norm.cdf((mu - c) / params.accuracy_noise)

    ep = gauss_normal_mean(lambda s: p_valid(s, delta), m, sd)
    epa = gauss_normal_mean(lambda s: p_valid(s, delta) * acc_given_s(s), m, sd)
    eph = gauss_normal_mean(lambda s: p_valid(s, delta) * above_given_s(s), m, sd)
    return {
        "validity": ep,
        "accuracy": gauss_normal_mean(acc_given_s, m, sd),
        "share_above": gauss_normal_mean(above_given_s, m, sd),
        "accuracy_pooled": epa / ep,
        "share_above_pooled": eph / ep,
    }


def _crn_noise(num_iterations: int, paths: int = _CRN_PATHS, seed: int = 0):
    k = jax.random.key(seed)
    k0, k1, k2 = jax.random.split(k, 3)
    return (jax.random.normal(k0, (paths,)), jax.random.normal(k1, (paths, num_iterations)),
            jax.random.normal(k2, (paths, num_iterations)))


def expected_peak(params: DynamicsParams, effects: SettingEffects, drift: AmbitionDrift,
                  num_iterations: int, num_candidates: int,
                  noise: tuple[Array, Array, Array] | None = None) -> Array:
    """Expected largest per-cycle validity rate of one run (common random numbers).

    State paths follow ``s_{t+1} = transition_mean(s_t) + state_noise e_t`` with fixed
    normals; each cycle's validity rate is ``p_t + sqrt(p_t (1 - p_t) / N) u_t`` (normal
    approximation of the binomial rate of ``N`` candidates). Differentiable in the
    parameters, so the fit can match the published single-run peak. ``noise`` holds the
    fixed normals ``(z0 (paths,), e (paths, T), u (paths, T))`` (default: seed 0).

    Example
    -------
    >>> sc = get("khalid2026")
    >>> 0 < float(expected_peak(sc.params, sc.effects, sc.drift, 22, 50)) < 1
    True
    """
    z0, e, u = _crn_noise(num_iterations) if noise is None else noise
    delta = effects.validity_offset + drift_path(drift, num_iterations)

    def body(s, e_t):
        return transition_mean(s, params, effects) + params.state_noise * e_t, s

    _, s = jax.lax.scan(body, params.init_sd * z0, e.T)  # (T, paths)
    p = jax.nn.sigmoid(validity_logit(s, params, delta[:, None]))
    rate = p + jnp.sqrt(p * (1 - p) / num_candidates) * u.T
    return jnp.mean(jnp.max(rate, axis=0))


def expected_statistics(scenario: Scenario) -> dict[str, float]:
    """Expected value of each single-run statistic of :data:`STATISTICS`.

    Example
    -------
    >>> sorted(expected_statistics(get("khalid2026"))) == sorted(STATISTICS)
    True
    """
    return {k: float(v) for k, v in _stats_fn(
        scenario.params, scenario.effects, scenario.drift, scenario.num_iterations,
        scenario.num_candidates).items()}


def _stats_fn(params, effects, drift, T, N, noise=None) -> dict[str, Array]:
    c = expected_curves(params, effects, drift, T)
    return {
        "validity_first": c["validity"][0],
        "validity_peak": expected_peak(params, effects, drift, T, N, noise),
        "validity_settled": jnp.mean(c["validity"][-SETTLE_CYCLES:]),
        "accuracy_first": c["accuracy"][0], "accuracy_last": c["accuracy"][-1],
        "share_above_first": c["share_above"][0], "share_above_last": c["share_above"][-1],
    }


# ---------------------------------------------------------------------------- fit
class _Raw(NamedTuple):
    kappa: Array
    state_noise: Array
    init_sd: Array
    validity_intercept: Array
    validity_slope: Array
    accuracy_offset: Array
    accuracy_slope: Array
    accuracy_noise: Array
    drift_size: Array
    drift_rate: Array


def _logit(x):
    return float(np.log(x) - np.log1p(-x))


def _prior_centres(base: DynamicsParams, effects: SettingEffects) -> _Raw:
    """Prior means on the unconstrained scale: the package defaults (drift: eta=1, rho=.5)."""
    f = jnp.float32
    return _Raw(
        jnp.asarray(_logit(float(base.kappa)), f), jnp.log(base.state_noise),
        jnp.log(base.init_sd), base.validity_intercept, jnp.log(base.validity_slope),
        effects.accuracy_offset, jnp.log(base.accuracy_slope), jnp.log(base.accuracy_noise),
        jnp.asarray(0.0, f), jnp.asarray(0.0, f),
    )


#: prior sds on the unconstrained scale (stated assumptions: weak, centred on the defaults)
PRIOR_SD = _Raw(*(np.float32(v) for v in (1.0, 0.7, 0.7, 2.0, 0.7, 1.5, 1.5, 0.7, 1.0, 1.5)))


def _constrain(raw: _Raw, base: DynamicsParams, effects: SettingEffects, drift_on: bool):
    p = base._replace(
        kappa=jax.nn.sigmoid(raw.kappa), state_noise=jnp.exp(raw.state_noise),
        init_sd=jnp.exp(raw.init_sd), validity_intercept=raw.validity_intercept,
        validity_slope=jnp.exp(raw.validity_slope), accuracy_slope=jnp.exp(raw.accuracy_slope),
        accuracy_noise=jnp.exp(raw.accuracy_noise),
    )
    e = effects._replace(accuracy_offset=raw.accuracy_offset)
    on = jnp.float32(1.0 if drift_on else 0.0)
    d = AmbitionDrift(on * jnp.exp(raw.drift_size), jax.nn.sigmoid(raw.drift_rate))
    return p, e, d


def fit_scenario(
    targets: dict[str, float],
    *,
    dataset: str = "cifar-10",
    task: str = "classification",
    num_iterations: int = 22,
    num_candidates: int = 50,
    drift: bool = True,
    steps: int = 3000,
    learning_rate: float = 0.06,
    scale: float = 0.005,
    defaults: ModelDefaults | None = None,
) -> tuple[DynamicsParams, SettingEffects, AmbitionDrift, pd.DataFrame, np.ndarray]:
    """Fit dynamics (and the drift) of one setting to single-run statistics.

    Minimises ``sum(((expected - target) / scale)^2)`` plus Gaussian priors
    (:data:`PRIOR_SD`, centred on ``defaults``, the shipped ``paper`` set if ``None``) with
    optax Adam (step size cosine-decayed from ``learning_rate``) on the expected statistics
    of :func:`_stats_fn`. ``targets`` are fractions
    keyed by :data:`STATISTICS` (any subset).

    Example
    -------
    >>> p, e, d, rep, losses = fit_scenario({"validity_first": 0.44}, steps=50,
    ...                                     num_iterations=5)
    >>> list(rep.columns)[:3]
    ['statistic', 'target', 'expected']
    """
    unknown = [k for k in targets if k not in STATISTICS]
    if unknown:
        raise UserInputError(f"unknown statistic(s) {', '.join(unknown)}; valid values: "
                             f"{', '.join(STATISTICS)}")
    defaults = defaults or load_defaults()
    base = defaults.dynamics_params()
    effects = jax.tree.map(lambda x: x[0], defaults.effects([dataset], [task]))
    keys = list(targets)
    tvec = jnp.asarray([targets[k] for k in keys], jnp.float32)
    centres = _prior_centres(base, effects)
    noise = _crn_noise(num_iterations)

    def objective(raw):
        p, e, d = _constrain(raw, base, effects, drift)
        st = _stats_fn(p, e, d, num_iterations, num_candidates, noise)
        val = jnp.stack([st[k] for k in keys])
        prior = sum(jnp.sum(((r - c) / s) ** 2)
                    for r, c, s in zip(raw, centres, PRIOR_SD, strict=True))
        return jnp.sum(((val - tvec) / scale) ** 2) + prior

    # a cosine decay of the step size: large steps first, then a settled optimum
    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05)
    opt = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))

    @jax.jit
    def run(raw):
        def update(carry, _):
            raw, state = carry
            loss, g = jax.value_and_grad(objective)(raw)
            upd, state = opt.update(g, state, raw)
            return (optax.apply_updates(raw, upd), state), loss

        (raw, _), losses = jax.lax.scan(update, (raw, opt.init(raw)), None, length=steps)
        return raw, losses

    raw, losses = run(centres)
    losses = np.asarray(losses)
    p, e, d = _constrain(raw, base, effects, drift)
    st = _stats_fn(p, e, d, num_iterations, num_candidates, noise)
    report = pd.DataFrame({"statistic": keys, "target": [targets[k] for k in keys],
                           "expected": [float(st[k]) for k in keys]})
    report["miss"] = report["expected"] - report["target"]
    return p, e, d, report, losses


# ---------------------------------------------------------------------------- registry
def khalid2026_targets() -> dict[str, float]:
    """The published Khalid et al. 2026 numbers as fractions, read from the bundled CSV.

    Example
    -------
    >>> khalid2026_targets()["validity_first"]
    0.44
    """
    return {k: published_value(q) / 100.0 for k, q in PUBLISHED_QUANTITY.items()}


def _khalid(drift: bool, name: str, defaults: ModelDefaults) -> Scenario:
    targets = khalid2026_targets()
    T = int(published_value("n_sft_cycles"))
    p, e, d, rep, losses = fit_scenario(targets, num_iterations=T, drift=drift,
                                        defaults=defaults)
    desc = ("Khalid, Ignatov and Timofte 2026 (arXiv 2601.02997): 22 LoRA fine-tuning cycles "
            "of DeepSeek-Coder-7B on CIFAR-10, 50 candidates per cycle (assumed). ")
    desc += ("State-space model plus ambition drift of the validity offset." if drift else
             "Plain state-space model (no drift): cannot rise and then fall.")
    return Scenario(name, desc, "cifar-10", "classification", T, 50, p, e, d, targets,
                    rep, losses)


_BUILDERS: dict[str, Callable[[ModelDefaults], Scenario]] = {
    "khalid2026": lambda d: _khalid(True, "khalid2026", d),
    "khalid2026-base": lambda d: _khalid(False, "khalid2026-base", d),
}


def names() -> tuple[str, ...]:
    """Names of the available scenarios.

    Example
    -------
    >>> names()
    ('khalid2026', 'khalid2026-base')
    """
    return tuple(_BUILDERS)


def get(name: str, defaults: ModelDefaults | None = None) -> Scenario:
    """The named scenario, fitted on first use with priors centred on ``defaults`` (the
    shipped ``paper`` set if ``None``), then cached for the life of the process.

    Example
    -------
    >>> get("khalid2026").num_candidates
    50
    """
    if name not in _BUILDERS:
        raise UserInputError(f"unknown scenario {name!r}; valid values: {', '.join(names())}")
    return _get(name, (defaults or load_defaults()).to_json())


@functools.cache
def _get(name: str, defaults_json: str) -> Scenario:
    return _BUILDERS[name](ModelDefaults.from_dict(json.loads(defaults_json)))


# ---------------------------------------------------------------------------- simulate
@partial(jax.jit, static_argnames=("num_iterations", "num_candidates"))
def _simulate_runs(skey: PRNGKey, params: DynamicsParams, effects: SettingEffects,
                   extra_offset: Array, trial_ids: Array, threshold: Array, *,
                   num_iterations: int, num_candidates: int):
    def reduce(c: Candidates):
        acc = jnp.where(c.valid, c.accuracy, 0.0)
        return (jnp.sum(c.valid, dtype=jnp.int32), jnp.sum(acc),
                jnp.sum(c.valid & (acc > threshold), dtype=jnp.int32), c.state, c.p_valid)

    def one_trial(tkey):
        return run_trials(tkey, params, effects, num_iterations=num_iterations,
                          num_candidates=num_candidates, reduce=reduce,
                          validity_shift=extra_offset)

    return jax.vmap(one_trial)(trial_key(skey, trial_ids))


def simulate_scenario(key: int | PRNGKey, scenario: Scenario, *, num_trials: int = 1000,
                      num_candidates: int | None = None) -> xr.Dataset:
    """Monte Carlo runs of a scenario: the package's :func:`~llmnas_transfer.sim.dynamics.step`
    scanned over cycles (:func:`~llmnas_transfer.sim.dynamics.run_trials`) with the
    drifted validity offset.

    Keys follow :mod:`llmnas_transfer.sim.keys`: setting key ``fold_in(key,
    setting_id(dataset, task))``, trial key ``fold_in(setting_key, trial)``; with zero
    drift the draws equal those of ``simulate`` for the same parameters.

    Returns an :class:`xarray.Dataset` with dims ``(trial, iteration)``: ``n_valid``,
    ``validity_rate``, ``accuracy_mean`` (NaN where no candidate is valid),
    ``share_above`` (share of valid candidates above 40%), ``state`` and ``p_valid``.

    Example
    -------
    >>> ds = simulate_scenario(0, get("khalid2026"), num_trials=3)
    >>> dict(ds.sizes)
    {'trial': 3, 'iteration': 22}
    """
    num_trials = check_size("num_trials", num_trials, MAX_RUNS)
    N = scenario.num_candidates if num_candidates is None else check_size(
        "num_candidates", num_candidates, MAX_CANDIDATES)
    key = as_key(key)
    skey = setting_key(key, jnp.uint32(registry.setting_id(scenario.dataset, scenario.task)))
    T = scenario.num_iterations
    extra = drift_path(scenario.drift, T)
    parts = []
    for lo in range(0, num_trials, _CHUNK):  # fixed chunk shape: one compile per (T, N)
        ids = jnp.arange(lo, lo + _CHUNK, dtype=jnp.int32)
        out = _simulate_runs(skey, scenario.params, scenario.effects, extra, ids,
                             jnp.float32(THRESHOLD), num_iterations=T, num_candidates=N)
        parts.append([np.asarray(x)[: num_trials - lo] for x in out])
    nv, asum, nab, s, p = (np.concatenate(xs) for xs in zip(*parts, strict=True))
    nv = np.asarray(nv)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(nv > 0, np.asarray(asum) / nv, np.nan)
        share = np.where(nv > 0, np.asarray(nab) / nv, np.nan)
    dims = ("trial", "iteration")
    return xr.Dataset(
        {"n_valid": (dims, nv), "validity_rate": (dims, nv / N),
         "accuracy_mean": (dims, acc), "share_above": (dims, share),
         "state": (dims, np.asarray(s)), "p_valid": (dims, np.asarray(p))},
        coords={"trial": np.arange(num_trials), "iteration": np.arange(1, T + 1)},
        attrs={"scenario": scenario.name, "num_candidates": N, "threshold": THRESHOLD},
    )


def run_statistics(ds: xr.Dataset) -> pd.DataFrame:
    """The single-run statistics of :data:`STATISTICS`, one row per simulated run.

    Example
    -------
    >>> len(run_statistics(simulate_scenario(0, get("khalid2026"), num_trials=5)))
    5
    """
    v = ds["validity_rate"].values
    a = ds["accuracy_mean"].values
    h = ds["share_above"].values
    return pd.DataFrame({
        "validity_first": v[:, 0], "validity_peak": v.max(1),
        "validity_settled": v[:, -SETTLE_CYCLES:].mean(1),
        "accuracy_first": a[:, 0], "accuracy_last": a[:, -1],
        "share_above_first": h[:, 0], "share_above_last": h[:, -1],
        "validity_drop": v.max(1) - v[:, -SETTLE_CYCLES:].mean(1),
    })


def compare(scenario: Scenario | str, *, seed: int = 0, num_trials: int = 2000,
            num_candidates: int | None = None, runs: xr.Dataset | None = None) -> pd.DataFrame:
    """Published numbers beside simulated runs of the scenario (all as fractions).

    Columns: ``statistic``, ``published``, ``expected`` (the fitted model's exact or CRN
    expectation), ``simulated`` (mean over runs) with ``simulated_se`` (Monte Carlo SE),
    ``run_sd`` and ``run_q05``/``run_q95`` (spread of one run, the scale on which one
    published run should be judged), ``z_run = (published - simulated) / run_sd`` and
    ``percentile`` (share of simulated runs below the published value). ``runs`` reuses
    the output of :func:`simulate_scenario` instead of simulating. The last row,
    ``validity_drop = validity_peak - validity_settled``, is not fitted: it measures the
    peak-then-settle shape, and its ``percentile`` says how rarely a simulated run drops
    as far as the published one.

    Example
    -------
    >>> t = compare("khalid2026", num_trials=100)
    >>> bool((t["simulated_se"] > 0).all())
    True
    """
    sc = get(scenario) if isinstance(scenario, str) else scenario
    if runs is None:
        runs = simulate_scenario(seed, sc, num_trials=num_trials, num_candidates=num_candidates)
    num_candidates = int(runs.attrs["num_candidates"])
    stats = run_statistics(runs)
    exp = expected_statistics(sc) if num_candidates in (None, sc.num_candidates) else {}
    if exp:
        exp["validity_drop"] = exp["validity_peak"] - exp["validity_settled"]
    published = dict(sc.published)
    if "validity_peak" in published and "validity_settled" in published:
        published["validity_drop"] = published["validity_peak"] - published["validity_settled"]
    rows = []
    for k in (*STATISTICS, "validity_drop"):
        x = stats[k].to_numpy()
        x = x[np.isfinite(x)]
        pub = published.get(k, np.nan)
        sd = float(x.std(ddof=1))
        rows.append({
            "statistic": k, "published": pub, "expected": exp.get(k, np.nan),
            "simulated": float(x.mean()), "simulated_se": sd / np.sqrt(x.size),
            "run_sd": sd, "run_q05": float(np.quantile(x, 0.05)),
            "run_q95": float(np.quantile(x, 0.95)),
            "z_run": (pub - float(x.mean())) / sd if sd > 0 else np.nan,
            "percentile": float(np.mean(x < pub)), "runs": int(x.size),
        })
    out = pd.DataFrame(rows)
    out.insert(0, "scenario", sc.name)
    return out


def describe(scenario: Scenario | str, defaults: ModelDefaults | None = None) -> pd.DataFrame:
    """Fitted parameters of a scenario beside ``defaults`` (the ``paper`` set if ``None``).

    Example
    -------
    >>> list(describe("khalid2026").columns)
    ['parameter', 'scenario', 'default']
    """
    d = defaults or load_defaults()
    sc = get(scenario, d) if isinstance(scenario, str) else scenario
    base = d.dynamics_params()
    eff = jax.tree.map(lambda x: x[0], d.effects([sc.dataset], [sc.task]))
    rows = [{"parameter": f, "scenario": float(getattr(sc.params, f)),
             "default": float(getattr(base, f))}
            for f in ("kappa", "state_noise", "init_sd", "validity_intercept",
                      "validity_slope", "accuracy_slope", "accuracy_noise")]
    rows += [{"parameter": "validity_offset", "scenario": float(sc.effects.validity_offset),
              "default": float(eff.validity_offset)},
             {"parameter": "accuracy_offset", "scenario": float(sc.effects.accuracy_offset),
              "default": float(eff.accuracy_offset)},
             {"parameter": "drift_size", "scenario": float(sc.drift.size), "default": 0.0},
             {"parameter": "drift_rate", "scenario": float(sc.drift.rate), "default": np.nan}]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- narrow spread
def implied_logit_normal(mean: float, share_above: float,
                         threshold: float = THRESHOLD) -> tuple[float, float]:
    """Location and sd of a logit-normal with this mean and share above ``threshold``.

    Used to read what the published 50.99% mean with 96.81% above 40% says about the
    spread of first-epoch accuracies within one cycle.

    Example
    -------
    >>> loc, sd = implied_logit_normal(0.5099, 0.9681)
    >>> round(sd, 2)
    0.24
    """
    from scipy.optimize import brentq
    from scipy.stats import norm

    if not (0 < mean < 1 and 0 < share_above < 1 and 0 < threshold < 1):
        raise UserInputError("mean, share_above and threshold must lie in (0, 1)")
    c = float(np.log(threshold) - np.log1p(-threshold))
    zq = float(norm.ppf(1 - share_above))
    x, w = np.polynomial.hermite.hermgauss(60)
    z = x * np.sqrt(2.0)
    w = w / np.sqrt(np.pi)

    def mean_at(sd):  # loc fixed by the share: loc = c - zq * sd
        return float(np.sum(w / (1 + np.exp(-(c - zq * sd + sd * z))))) - mean

    lo, hi = 1e-4, 10.0
    if mean_at(lo) * mean_at(hi) > 0:
        raise UserInputError("no logit-normal has this mean and share above the threshold")
    sd = brentq(mean_at, lo, hi, xtol=1e-10)
    return c - zq * sd, sd


# ---------------------------------------------------------------------------- run + figure
def plot_scenario(scenario: Scenario, ds: xr.Dataset) -> Figure:
    """Figure of a scenario's runs beside its published numbers.

    Expected curves, the 5-95% range of single simulated runs, one example run and the
    published numbers, for validity, mean accuracy and share above 40%. Drawn with the
    object-oriented :class:`matplotlib.figure.Figure` API (no pyplot, no backend).

    Example
    -------
    >>> sc = get("khalid2026")
    >>> len(plot_scenario(sc, simulate_scenario(0, sc, num_trials=20)).axes)
    3
    """
    from matplotlib.figure import Figure

    sc = scenario
    T = sc.num_iterations
    t = np.arange(1, T + 1)
    cur = {k: np.asarray(v) for k, v in
           expected_curves(sc.params, sc.effects, sc.drift, T).items()}
    pub = sc.published
    panels = (("validity_rate", "validity", "validity rate (fraction of generated)"),
              ("accuracy_mean", "accuracy", "mean first-epoch accuracy of valid"),
              ("share_above", "share_above", f"share of valid above {THRESHOLD:.0%} accuracy"))
    fig = Figure(figsize=(11, 3.2))
    axes = fig.subplots(1, 3)
    for ax, (var, key, label) in zip(axes, panels, strict=True):
        x = ds[var].values
        lo, hi = np.nanquantile(x, [0.05, 0.95], axis=0)
        ax.fill_between(t, lo, hi, color="C0", alpha=0.2, lw=0,
                        label=f"5-95% of single runs (N={ds.attrs['num_candidates']})")
        ax.plot(t, cur[key], color="C0", label="expected")
        ax.plot(t, x[0], color="0.4", lw=0.7, ls="--", label="one simulated run")
        ax.set_xlabel("fine-tuning cycle")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1)
    a0, a1, a2 = axes
    a0.scatter([1], [pub["validity_first"]], color="C3", zorder=5, label="published")
    a0.axhline(pub["validity_peak"], color="C3", ls=":", lw=1, label="published peak")
    a0.plot(t[-SETTLE_CYCLES:], [pub["validity_settled"]] * SETTLE_CYCLES, color="C3", lw=3,
            label="published settled")
    a1.scatter([1, T], [pub["accuracy_first"], pub["accuracy_last"]], color="C3", zorder=5)
    a2.scatter([1, T], [pub["share_above_first"], pub["share_above_last"]], color="C3",
               zorder=5)
    a0.legend(fontsize=6, loc="lower right")
    fig.suptitle(f"Scenario {sc.name}", fontsize=10)
    fig.tight_layout()
    return fig


def run_scenario(name: str, out_dir: str | os.PathLike, *, seed: int = 0,
                 num_trials: int = 2000, defaults: ModelDefaults | None = None) -> dict:
    """Fit, simulate and compare a scenario; write CSV tables and a figure to ``out_dir``.

    ``defaults`` (the ``paper`` set if ``None``) centres the scenario's priors.

    Files: ``scenario_<name>_comparison.csv``, ``scenario_<name>_parameters.csv``,
    ``scenario_<name>_fit.csv`` and ``scenario_<name>.png``/``.pdf``.

    Example
    -------
    >>> out = run_scenario("khalid2026", "results/scenarios", num_trials=100)  # doctest: +SKIP
    """
    sc = get(name, defaults)
    out = prepare_output_folder(out_dir)
    ds = simulate_scenario(seed, sc, num_trials=num_trials)
    comp = compare(sc, runs=ds)
    files = [write_csv(table, out / f"scenario_{name}_{part}.csv", float_format="%.6g")
             for part, table in (("comparison", comp), ("parameters", describe(sc, defaults)),
                                 ("fit", sc.fit_report))]
    files += save_figure(plot_scenario(sc, ds), out / f"scenario_{name}", dpi=FIGURE_DPI,
                         bbox_inches="tight")
    return {"comparison": comp, "files": files}
