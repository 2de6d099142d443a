"""Check the fitting model: prior predictive, parameter recovery, simulation-based calibration.

* :func:`truth_from_defaults` maps simulator parameters (a
  :class:`~llmnas_transfer.sim.params.ModelDefaults`) onto the model's posterior variables,
  so a fit to simulated data can be compared with the truth (:func:`recovery_table`).
* :func:`defaults_from_draw` is the reverse: a prior draw of the model becomes simulator
  parameters, so :func:`llmnas_transfer.sim.candidates` generates the data for simulation-based
  calibration (:func:`sbc`). The data therefore come from the library's simulator, not
  from the model's own ``sample``: SBC also checks that the two agree.

Example
-------
>>> from llmnas_transfer.sim.params import load_defaults
>>> from llmnas_transfer.fit.model import ModelSpec
>>> from llmnas_transfer.sim import registry
>>> ds = ("cifar-10", "audioset")
>>> spec = ModelSpec(ds, ("classification",), ("image", "audio"),
...                  tuple(registry.get_dataset(d).features() for d in ds),
...                  ((0, 0), (1, 0)), (0, 0), 10)
>>> t = truth_from_defaults(load_defaults(), spec)
>>> round(float(t["kappa"]), 3)
0.231
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.fit.laplace import laplace_start
from llmnas_transfer.fit.model import (
    ModelSpec,
    NormalStats,
    RunsData,
    has_cell_level,
    observed_datasets,
    observed_index,
    prior_medians,
    runs_model,
    setting_summaries,
    trend_levels,
)
from llmnas_transfer.fit.preparation import prepare
from llmnas_transfer.fit.sampling import deterministic_sites
from llmnas_transfer.io.runs import runs_from_simulation
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.candidates import simulate
from llmnas_transfer.sim.params import (
    FEATURE_NAMES,
    TREND_TABLES,
    ModelDefaults,
    dynamics_from_dict,
    load_defaults,
    setting_key,
)
from llmnas_transfer.validate import check_float, check_int

#: scalar sites compared in recovery and SBC (when present in the model)
SCALAR_SITES: tuple[str, ...] = (
    "kappa", "state_noise", "init_sd", "validity_slope", "difficulty_intercept",
    "accuracy_intercept", "accuracy_slope", "accuracy_noise",
    "novelty_intercept", "novelty_slope", "novelty_noise",
)
#: vector quantities compared in recovery (dataset and task effects, regressions)
VECTOR_SITES: tuple[str, ...] = (
    "difficulty", "task_complexity", "interaction_free", "accuracy_level", "task_accuracy",
    "difficulty_coef", "accuracy_coef", "novelty_modality_free", "novelty_task_free",
)


def prior_predictive(key: jax.Array, data: RunsData, spec: ModelSpec,
                     num_samples: int = 500) -> dict:
    """Draws from the prior and prior predictive (``n_valid``) of the model.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> from llmnas_transfer.fit.model import NormalStats
    >>> spec = ModelSpec(("cifar-10",), ("classification",), ("image",), ((0.,) * 4,),
    ...                  ((0, 0),), (0, 0), 2, has_accuracy=False)
    >>> z = jnp.zeros((3, 2))
    >>> d = RunsData(jnp.zeros(3, jnp.int32), jnp.zeros(3, jnp.int32), z + 20, z,
    ...              NormalStats(z, z, z, z, z), NormalStats(z, z, z, z, z))
    >>> pp = prior_predictive(jax.random.key(0), d, spec, 10)
    >>> pp["n_valid"].shape, bool((pp["n_valid"] <= 20).all())
    ((10, 3, 2), True)
    """
    from numpyro.infer import Predictive

    return {k: np.asarray(v) for k, v in
            Predictive(runs_model, num_samples=num_samples)(key, data, spec=spec).items()}


def truth_from_defaults(defaults: ModelDefaults, spec: ModelSpec) -> dict[str, np.ndarray]:
    """True values of the model's posterior variables for simulator parameters.

    Only the variables the model has for ``spec`` are returned (no accuracy part without
    accuracy data, no novelty part without novelty data); the per-setting trend
    (``rate_offset``, ``asymptote``, the feedback strengths) under ``spec.trend ==
    "setting"``. The trend gains and trend gaps are the simulator's expectations
    (:func:`~llmnas_transfer.sim.expectation.expected`) at these parameters.

    Example
    -------
    >>> t = truth_from_defaults(load_defaults(), sbc_spec(has_accuracy=False))
    >>> "accuracy_slope" in t, t["difficulty"].shape
    (False, (2,))
    """
    d = _centred_units(defaults, spec) if spec.trend == "setting" else defaults.dynamics
    ds = [registry.get_dataset(n) for n in spec.datasets]
    ts = [registry.get_task(n) for n in spec.tasks]
    free_t = [spec.tasks[i] for i in spec.free_tasks]
    free_m = list(spec.free_modalities)
    out: dict[str, np.ndarray] = {
        "kappa": d["kappa"], "state_noise": d["state_noise"], "init_sd": d["init_sd"],
        "validity_slope": d["validity_slope"],
        # the model absorbs the validity intercept b0 into the difficulties (b0 = 0)
        "difficulty_intercept": -d["validity_intercept"],
        "difficulty": [defaults.dataset_difficulty(x) - d["validity_intercept"] for x in ds],
        "difficulty_coef": [defaults.difficulty_coef[f] for f in FEATURE_NAMES],
        "task_complexity": [0.0 if t.name == "classification" else
                            defaults.task_complexity_of(t) for t in ts],
    }
    if free_t and free_m:
        out["interaction_free"] = [
            [defaults.interaction.get(m, {}).get(t, 0.0) for t in free_t] for m in free_m]
    cell = np.asarray([[defaults.validity_setting.get(setting_key(x, k), 0.0)
                        for k in spec.tasks] for x in spec.datasets])
    if has_cell_level(spec) and cell.any():  # the cells' own validity levels (none:
        sd = float(np.sqrt(np.mean(cell**2)))     # no truth for a scale at 0 to recover)
        out["validity_sd_setting"], out["validity_z_setting"] = sd, cell / sd
    if spec.has_accuracy:
        out.update({
            "accuracy_intercept": defaults.accuracy_intercept,
            "accuracy_coef": [defaults.accuracy_coef[f] for f in FEATURE_NAMES],
            "accuracy_level": [defaults.dataset_accuracy(x) for x in ds],
            "task_accuracy": [0.0 if t.name == "classification" else
                              defaults.task_accuracy_of(t) for t in ts],
            "accuracy_slope": d["accuracy_slope"], "accuracy_noise": d["accuracy_noise"],
        })
    if spec.has_novelty:
        out.update({
            "novelty_intercept": d["novelty_intercept"], "novelty_slope": d["novelty_slope"],
            "novelty_noise": d["novelty_noise"],
        })
        if free_m:
            out["novelty_modality_free"] = [defaults.novelty_modality.get(m, 0.0)
                                            for m in free_m]
        if free_t:
            out["novelty_task_free"] = [defaults.novelty_task.get(t, 0.0) for t in free_t]
    eff = defaults.effects(list(spec.datasets), list(spec.tasks))
    if spec.trend == "setting":
        shape = (len(spec.datasets), len(spec.tasks))
        rate = np.asarray(eff.rate_offset, np.float64).reshape(shape)
        mu = np.asarray(eff.asymptote, np.float64).reshape(shape)
        r_c, mu_c = _trend_centres(defaults, spec)
        out["rate_offset"] = rate - r_c
        out["asymptote"] = mu / mu_c
        out["feedback_validity"] = d.get("feedback_validity", 0.0)
        if spec.has_accuracy:
            out["feedback_accuracy"] = d.get("feedback_accuracy", 0.0)
    summ = setting_summaries(dynamics_from_dict(defaults.dynamics), eff, spec)
    out["trend_gain"] = np.asarray(summ["trend_gain"])
    out["trend_gap"] = np.asarray(summ["trend_gap"])
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _centred_units(defaults: ModelDefaults, spec: ModelSpec) -> dict[str, float]:
    """The simulator's dynamics in the fit's units, where the trend offsets are centred
    over the settings with data: ``kappa`` the rate of their logit-average offset ``r``
    and the state measured in units of the geometric mean ``mu`` of their asymptotes (the
    slopes times ``mu``; ``init_sd``, ``state_noise`` and the feedback strengths divided
    by it). The simulated runs are the same; see :func:`~llmnas_transfer.fit.model._trend`.
    """
    d = dict(defaults.dynamics)
    r, mu = _trend_centres(defaults, spec)
    logit = math.log(d["kappa"]) - math.log1p(-d["kappa"]) + r
    d["kappa"] = 1.0 / (1.0 + math.exp(-logit))
    for name in ("validity_slope", "accuracy_slope", "novelty_slope"):
        d[name] = d[name] * mu
    for name in ("init_sd", "state_noise", "feedback_validity", "feedback_accuracy"):
        d[name] = d.get(name, 0.0) / mu
    return d


def _trend_centres(defaults: ModelDefaults, spec: ModelSpec) -> tuple[float, float]:
    """(mean rate offset, geometric-mean asymptote) of the simulator over the settings of
    ``spec`` with data."""
    eff = defaults.effects(list(spec.datasets), list(spec.tasks))
    shape = (len(spec.datasets), len(spec.tasks))
    i, j = observed_index(spec)
    rate = np.asarray(eff.rate_offset, np.float64).reshape(shape)[i, j]
    log_mu = np.log(np.asarray(eff.asymptote, np.float64).reshape(shape)[i, j])
    return float(rate.mean()), float(np.exp(log_mu.mean()))


def defaults_from_draw(draw: dict, spec: ModelSpec) -> ModelDefaults:
    """Simulator parameters from one draw of the model's prior (or posterior).

    ``draw`` maps site names to arrays of one draw (deterministic sites included).

    Example
    -------
    >>> spec = sbc_spec()
    >>> d = defaults_from_draw(truth_from_defaults(load_defaults(), spec), spec)
    >>> d.dynamics["validity_intercept"], round(d.dynamics["kappa"], 3)
    (0.0, 0.231)
    """
    g = {k: np.asarray(v, np.float64) for k, v in draw.items()}
    free_t = [spec.tasks[i] for i in spec.free_tasks]
    free_m = list(spec.free_modalities)
    feats = np.asarray(spec.features, np.float64)
    coef = g["difficulty_coef"]
    diff = g["difficulty"]
    dyn = {
        "kappa": g["kappa"], "state_noise": g["state_noise"], "init_sd": g["init_sd"],
        "validity_intercept": 0.0, "validity_slope": g["validity_slope"],
        "accuracy_slope": g.get("accuracy_slope", 0.0),
        "accuracy_noise": g.get("accuracy_noise", 1.0),
        "novelty_intercept": g.get("novelty_intercept", 0.0),
        "novelty_slope": g.get("novelty_slope", 0.0),
        "novelty_noise": g.get("novelty_noise", 1.0),
        "feedback_validity": g.get("feedback_validity", 0.0),
        "feedback_accuracy": g.get("feedback_accuracy", 0.0),
    }
    trend: dict[str, dict[str, float]] = {k: {} for k in TREND_TABLES}
    by_d, by_k = trend_levels(spec)
    if spec.trend == "setting":
        for level, names, used in (("dataset", spec.datasets, by_d),
                                   ("task", spec.tasks, by_k)):
            if not used:
                continue
            for part in ("rate", "asymptote"):
                if f"{part}_z_{level}" in g:
                    vals = g[f"{part}_sd_{level}"] * g[f"{part}_z_{level}"]
                    trend[f"{part}_{level}"] = {n: float(v)
                                                for n, v in zip(names, vals, strict=True)}
        for part in ("rate", "asymptote"):
            if f"{part}_z_setting" in g:
                vals = g[f"{part}_sd_setting"] * g[f"{part}_z_setting"]
                trend[f"{part}_setting"] = {
                    setting_key(d, k): float(vals[i, j])
                    for i, d in enumerate(spec.datasets) for j, k in enumerate(spec.tasks)}
    acc_coef = g.get("accuracy_coef", np.zeros(len(FEATURE_NAMES)))
    acc0 = float(g.get("accuracy_intercept", -1.0))
    level = g.get("accuracy_level", np.full(len(spec.datasets), -1.0))
    inter = {m: {t: 0.0 for t in spec.tasks} for m in registry.MODALITIES}
    if "interaction_free" in g:
        for i, m in enumerate(free_m):
            for j, t in enumerate(free_t):
                inter[m][t] = float(g["interaction_free"][i, j])
    cells = {}
    if "validity_z_setting" in g:  # the cells' own validity levels
        vals = g["validity_sd_setting"] * g["validity_z_setting"]
        cells = {setting_key(d, k): float(vals[i, j]) for i, d in enumerate(spec.datasets)
                 for j, k in enumerate(spec.tasks)}
    tc = g["task_complexity"]
    ta = g.get("task_accuracy", np.zeros(len(spec.tasks)))
    nov_m = {m: 0.0 for m in registry.MODALITIES}
    for i, m in enumerate(free_m):
        if "novelty_modality_free" in g:
            nov_m[m] = float(g["novelty_modality_free"][i])
    nov_t = {t: 0.0 for t in spec.tasks}
    for i, t in enumerate(free_t):
        if "novelty_task_free" in g:
            nov_t[t] = float(g["novelty_task_free"][i])
    out = ModelDefaults(
        dynamics={k: float(v) for k, v in dyn.items()},
        difficulty_coef={f: float(c) for f, c in zip(FEATURE_NAMES, coef, strict=True)},
        difficulty_residual={n: float(diff[i] - feats[i] @ coef)
                             for i, n in enumerate(spec.datasets)},
        accuracy_intercept=acc0,
        accuracy_coef={f: float(c) for f, c in zip(FEATURE_NAMES, acc_coef, strict=True)},
        accuracy_residual={n: float(level[i] - acc0 - feats[i] @ acc_coef)
                           for i, n in enumerate(spec.datasets)},
        task_complexity={t: float(tc[i]) for i, t in enumerate(spec.tasks)},
        task_accuracy_offset={t: float(ta[i]) for i, t in enumerate(spec.tasks)},
        interaction=inter,
        novelty_modality=nov_m,
        novelty_task=nov_t,
        validity_setting=cells,
        trend=trend,
        provenance={"derived_by": "llmnas_transfer.fit.checks.defaults_from_draw"},
    )
    if spec.trend != "setting" or not (by_d or by_k):
        return out
    # the model centres the offsets over the settings with data: so does the simulator,
    # through its dataset table (or its task table when there is one dataset)
    r_c, mu_c = _trend_centres(out, spec)
    names, level = (spec.datasets, "dataset") if by_d else (spec.tasks, "task")
    shifted = dict(out.trend)
    for part, centre in (("rate", r_c), ("asymptote", math.log(mu_c))):
        table = shifted[f"{part}_{level}"]
        shifted[f"{part}_{level}"] = {n: table.get(n, 0.0) - centre for n in names}
    return dataclasses.replace(out, trend=shifted)


def recovery_table(dt: xr.DataTree, truth: dict[str, np.ndarray], *, ci: float = 0.94,
                   names: Sequence[str] | None = None) -> pd.DataFrame:
    """Truth against the posterior: one row per scalar element of each variable.

    Columns: parameter, truth, mean, sd, hdi_low, hdi_high, inside, z (standardised error).

    Example
    -------
    >>> x = np.random.default_rng(0).normal(0.2, 0.05, (2, 200))
    >>> dt = xr.DataTree.from_dict({"posterior": xr.Dataset({"kappa": (("chain", "draw"), x)})})
    >>> recovery_table(dt, {"kappa": np.asarray(0.2)})[["parameter", "inside"]].values.tolist()
    [['kappa', True]]
    """
    import arviz as az

    post = dt["posterior"].dataset
    rows = []
    for name in names or truth:
        if name not in post or name not in truth:
            continue
        x = post[name]
        h = az.hdi(x, prob=ci, dim=["chain", "draw"])
        lo, hi = h.sel(ci_bound="lower").values, h.sel(ci_bound="upper").values
        mean, sd = x.mean(("chain", "draw")).values, x.std(("chain", "draw")).values
        tv = np.broadcast_to(truth[name], mean.shape)
        for idx in np.ndindex(mean.shape):
            label = name + ("" if not idx else "[" + ",".join(
                str(x[d].values[i]) if d in x.coords else str(i)
                for d, i in zip(x.dims[2:], idx, strict=True)) + "]")
            rows.append({
                "parameter": label, "truth": float(tv[idx]), "mean": float(mean[idx]),
                "sd": float(sd[idx]), "hdi_low": float(lo[idx]), "hdi_high": float(hi[idx]),
                "inside": bool(lo[idx] <= tv[idx] <= hi[idx]),
                "z": float((mean[idx] - tv[idx]) / sd[idx]) if sd[idx] > 0 else math.nan,
            })
    return pd.DataFrame(rows)


def sbc_spec(datasets: Sequence[str] = ("cifar-10", "audioset"),
             tasks: Sequence[str] = ("classification", "segmentation"),
             num_iterations: int = 6, has_accuracy: bool = True,
             trend: str = "setting", num_candidates: int = 10) -> ModelSpec:
    """A small all-observed :class:`ModelSpec` for SBC runs (built-in datasets only).

    Example
    -------
    >>> s = sbc_spec(num_iterations=3)
    >>> s.datasets, s.observed, s.num_iterations
    (('cifar-10', 'audioset'), ((0, 0), (0, 1), (1, 0), (1, 1)), 3)
    """
    ds = [registry.get_dataset(d) for d in datasets]
    ts = [registry.get_task(t) for t in tasks]
    obs = tuple((i, k) for i in range(len(datasets)) for k in range(len(tasks)))
    return ModelSpec(tuple(datasets), tuple(tasks), tuple(d.modality for d in ds),
                     tuple(d.features() for d in ds), obs, (0, 0), num_iterations,
                     has_accuracy=has_accuracy, trend=trend,
                     chance=tuple(tuple(registry.chance_level(d, t) for t in ts)
                                  for d in ds),
                     num_candidates=num_candidates)


def rank_pit(draws: np.ndarray, truth: float, u: float) -> float:
    """Randomised rank PIT of ``truth`` among posterior ``draws`` (chain, draw).

    The draws are thinned evenly to about their bulk effective sample size ``L`` (Talts
    et al. 2018: autocorrelated draws pile the ranks up at the ends), the rank
    ``k = #{thinned draws < truth}`` is counted and ``(k + u) / (L + 1)`` returned, with
    ``u`` uniform on (0, 1). For a calibrated posterior ``k`` is uniform on ``0..L`` and the
    PIT uniform on (0, 1) with no ties at 0 or 1, which tests of the order statistics such
    as ArviZ's ``uniformity_test`` would read as certain failure.

    Example
    -------
    >>> x = np.arange(200.0).reshape(2, 100) % 7
    >>> 0 < rank_pit(x, 3.0, 0.5) < 1
    True
    """
    from arviz_stats.base import array_stats

    chains = np.atleast_2d(np.asarray(draws, np.float64))
    chains = chains.reshape(-1, chains.shape[-1])  # (chain, draw); 1-d input is one chain
    flat = chains.reshape(-1)
    ess = float(array_stats.ess(chains, chain_axis=-2, draw_axis=-1))
    keep = int(np.clip(np.floor(ess if np.isfinite(ess) else flat.size), 1, flat.size))
    # chain-major flattening; even steps so every chain contributes
    thinned = flat[np.linspace(0, flat.size - 1, keep).round().astype(int)]
    k = int(np.sum(thinned < truth))
    return (k + float(u)) / (keep + 1)


def _sbc_sampler(spec: ModelSpec, template: RunsData, *, warmup: int, draws: int,
                 chains: int, target_accept: float, adapt_metric: bool):
    """NUTS as :func:`~llmnas_transfer.fit.sampling.sample_nuts` runs it (Laplace start and
    metric, dense mass), compiled once as a function of the data.

    NumPyro's ``MCMC.run`` recompiles its chain function on every call with parallel
    chains (about 27 s a replicate here against 2 s of sampling), so SBC uses the
    functional :func:`numpyro.infer.hmc.hmc` kernel, compiled once: one chain a device
    (``pmap``) where there are enough devices, else the chains in turn. Returns
    ``run(key, data, init_params, inverse_mass_matrix)``, giving the constrained draws
    (chain, draw, ...) and the divergence flags (chain, draw).
    """
    from functools import partial

    from numpyro.infer import init_to_value
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import initialize_model

    model = partial(runs_model, spec=spec, deterministic=False)
    info = initialize_model(jax.random.key(0), model, model_args=(template,),
                            model_kwargs={"n_valid": template.n_valid}, dynamic_args=True,
                            init_strategy=init_to_value(values=prior_medians()))
    block = tuple(sorted(info.param_info.z))
    init_kernel, sample_kernel = hmc(potential_fn_gen=info.potential_fn, algo="NUTS")

    def chain(k, z0, data: RunsData, inverse_mass_matrix):
        args, kwargs = (data,), {"n_valid": data.n_valid}
        state = init_kernel(z0, warmup, inverse_mass_matrix={block: inverse_mass_matrix},
                            adapt_mass_matrix=adapt_metric, dense_mass=[block],
                            target_accept_prob=target_accept, model_args=args,
                            model_kwargs=kwargs, rng_key=k)

        def step(s, _):
            s = sample_kernel(s, model_args=args, model_kwargs=kwargs)
            return s, (s.z, s.diverging)

        state, _ = jax.lax.scan(step, state, None, length=warmup)
        zs, div = jax.lax.scan(step, state, None, length=draws)[1]
        return jax.vmap(info.postprocess_fn(*args, **kwargs))(zs), div

    if jax.local_device_count() >= chains > 1:  # one chain a device, compiled once
        pchain = jax.pmap(chain, in_axes=(0, 0, None, None))

        def run(key, data, init_params, inverse_mass_matrix):
            return pchain(jax.random.split(key, chains), init_params, data,
                          inverse_mass_matrix)
    else:  # chains in turn (vmapped NUTS runs every chain to the longest tree)
        @jax.jit
        def run(key, data, init_params, inverse_mass_matrix):
            return jax.lax.map(lambda a: chain(*a, data, inverse_mass_matrix),
                               (jax.random.split(key, chains), init_params))

    return run


def sbc(
    key: jax.Array,
    spec: ModelSpec,
    *,
    num_replicates: int = 100,
    num_trials: int = 6,
    num_candidates: int = 10,
    warmup: int = 300,
    draws: int = 300,
    chains: int = 2,
    target_accept: float = 0.9,
    sites: Sequence[str] = ("kappa", "state_noise", "init_sd", "difficulty_intercept",
                            "validity_slope", "accuracy_slope", "accuracy_noise",
                            "trend_gap"),
    bias_sd: float = 1.0,
    grid_size: int | None = None,
    progress: bool = False,
) -> xr.DataTree:
    """Simulation-based calibration of the NUTS fit.

    For each replicate: draw parameters from the model's prior, simulate runs with
    :func:`llmnas_transfer.sim.candidates` at those parameters, fit with NUTS as
    :func:`~llmnas_transfer.fit.inference.fit_runs` does (start and metric from
    :func:`~llmnas_transfer.fit.laplace.laplace_start`, step size adapted in the warmup,
    the metric too where the Laplace Hessian failed) and record the PIT
    of each site (:func:`rank_pit`: the randomised rank of the truth among draws thinned
    to the effective sample size, exactly uniform for a calibrated fit). Returns a
    DataTree with group ``prior_sbc`` (the PITs, uniform when the fit is calibrated),
    ``biased_sbc``, a negative control (the PITs of the same posteriors shifted by
    ``bias_sd`` posterior standard deviations, which must fail the uniformity test), and
    ``sbc_stats`` (per replicate: divergences and whether the Laplace metric was used).
    ``grid_size`` is passed to :func:`~llmnas_transfer.fit.preparation.prepare`.
    A site with dims (here ``trend_gap``, per setting) gets one PIT per element, named
    ``trend_gap[dataset|task]``; elements that are constant (the reference's trend gap,
    0 by definition) are left out.

    Example
    -------
    >>> dt = sbc(jax.random.key(0), sbc_spec(num_iterations=3), num_replicates=2,
    ...          num_trials=2, warmup=10, draws=10, chains=1)
    >>> dt["prior_sbc"].dataset["kappa"].shape
    (1, 2)
    """
    import arviz as az

    num_replicates = check_int("num_replicates", num_replicates, 1)
    num_trials = check_int("num_trials", num_trials, 1)
    num_candidates = check_int("num_candidates", num_candidates, 1)
    warmup = check_int("warmup", warmup, 1)
    draws = check_int("draws", draws, 1)
    chains = check_int("chains", chains, 1, 64)
    target_accept = check_float("target_accept", target_accept, 0.5, 1.0, high_open=True)
    if not all(d in registry.BUILTIN_DATASET_NAMES for d in spec.datasets):
        raise UserInputError("sbc uses built-in datasets only")
    sites = [s for s in sites if spec.has_accuracy or not s.startswith("accuracy")]
    # the setting-level expectations (trend gaps) use the data's candidates per iteration
    spec = dataclasses.replace(spec, num_candidates=num_candidates)
    k_prior, k_rest, k_pit = jax.random.split(key, 3)
    template = _template_data(spec, num_trials, num_candidates)
    prior = prior_predictive(k_prior, template, spec, num_replicates)
    elements = _sbc_elements(prior, sites, spec)
    sites = list(elements)
    samplers: dict = {}
    pit = {s: np.zeros(num_replicates) for s in sites}
    biased = {s: np.zeros(num_replicates) for s in sites}
    divergences = np.zeros(num_replicates, np.int64)
    laplace = np.zeros(num_replicates, bool)
    u_all = np.asarray(jax.random.uniform(k_pit, (num_replicates, 2, len(sites))))
    for r in range(num_replicates):
        draw = {k: v[r] for k, v in prior.items() if k != "n_valid"}
        defaults = defaults_from_draw(draw, spec)
        sim = simulate(jax.random.fold_in(k_rest, 2 * r), datasets=list(spec.datasets),
                       tasks=list(spec.tasks), num_trials=num_trials,
                       num_iterations=spec.num_iterations, num_candidates=num_candidates,
                       per_candidate=True, bins=0, defaults=defaults)
        prep = prepare(runs_from_simulation(sim, accuracy=spec.has_accuracy, novelty=False),
                       reference=(spec.datasets[0], spec.tasks[0]), trend=spec.trend,
                       **({} if grid_size is None else {"grid_size": grid_size}))
        k_start, k_run = jax.random.split(jax.random.fold_in(k_rest, 2 * r + 1))
        start = laplace_start(k_start, prep, chains)
        init = start.init_params if chains > 1 else jax.tree.map(lambda a: a[None],
                                                                 start.init_params)
        adapt = not start.converged
        cache_key = (prep.spec, jax.tree.map(jnp.shape, prep.data), adapt)
        if cache_key not in samplers:
            samplers[cache_key] = _sbc_sampler(
                prep.spec, prep.data, warmup=warmup, draws=draws, chains=chains,
                target_accept=target_accept, adapt_metric=adapt)
        # start.cov is the identity where the Hessian failed (the metric is adapted then)
        post, div = jax.device_get(samplers[cache_key](
            k_run, prep.data, init, jnp.asarray(start.cov, jnp.float32)))
        post = {**post, **deterministic_sites(post, prep.spec)}
        divergences[r], laplace[r] = int(np.sum(div)), start.converged
        u = u_all[r]
        for j, s in enumerate(sites):
            name, idx = elements[s]
            x = np.asarray(post[name], np.float64)[(slice(None), slice(None), *idx)]
            truth = float(np.asarray(draw[name])[idx])
            pit[s][r] = rank_pit(x, truth, u[0, j])
            biased[s][r] = rank_pit(x + bias_sd * x.std(), truth, u[1, j])
        if progress:
            print(f"sbc replicate {r + 1}/{num_replicates}", flush=True)
    return az.from_dict({
        "prior_sbc": {s: v[None, :] for s, v in pit.items()},
        "biased_sbc": {s: v[None, :] for s, v in biased.items()},
        "sbc_stats": {"divergences": divergences[None, :], "laplace_metric": laplace[None, :]},
    })


def _sbc_elements(prior: dict, sites: Sequence[str], spec: ModelSpec
                  ) -> dict[str, tuple[str, tuple[int, ...]]]:
    """PIT names -> (site, element index): scalars as they are, arrays per element
    (``name[dataset|task]`` for (dataset, task) sites), constant elements left out."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for s in sites:
        x = np.asarray(prior[s])
        if x.ndim == 1:
            out[s] = (s, ())
            continue
        for idx in np.ndindex(x.shape[1:]):
            col = x[(slice(None), *idx)]
            if np.ptp(col) == 0:
                continue
            label = ("|".join((spec.datasets[idx[0]], spec.tasks[idx[1]])) if len(idx) == 2
                     else ",".join(map(str, idx)))
            out[f"{s}[{label}]"] = (s, idx)
    return out


def _template_data(spec: ModelSpec, num_trials: int, num_candidates: int = 10) -> RunsData:
    obs = [o for o in spec.observed for _ in range(num_trials)]
    n = len(obs)
    z = jnp.zeros((n, spec.num_iterations), jnp.float32)
    return RunsData(jnp.asarray([o[0] for o in obs], jnp.int32),
                    jnp.asarray([o[1] for o in obs], jnp.int32), z + num_candidates, z,
                    NormalStats(z, z, z, z, z), NormalStats(z, z, z, z, z),
                    z + 0.5 if spec.has_accuracy else None)


def uniformity_pvalues(dt: xr.DataTree, group: str = "prior_sbc") -> dict[str, float]:
    """p-values of ArviZ's PIT uniformity test per variable of an SBC group.

    Example
    -------
    >>> import arviz as az
    >>> u = np.random.default_rng(0).uniform(size=(1, 100))
    >>> p = uniformity_pvalues(az.from_dict({"prior_sbc": {"kappa": u, "skewed": u**3}}))
    >>> p["kappa"] > 0.01, p["skewed"] < 1e-6
    (True, True)
    """
    res = dt[group].dataset.azstats.uniformity_test()[0]
    return {k: float(v) for k, v in res.data_vars.items()}


__all__ = [
    "defaults_from_draw", "load_defaults", "observed_datasets", "prior_predictive",
    "rank_pit", "recovery_table", "sbc", "sbc_spec", "truth_from_defaults", "uniformity_pvalues",
]
