"""Fit the real LEMUR first-epoch accuracies with the model's accuracy likelihood.

The data are the bundled LEMUR per-architecture table
(:func:`llmnas_transfer.io.bundled.load_lemur`): one first-epoch accuracy per architecture
(``e1_mean``, the mean over the architecture's hyperparameter trials, by default).
Architectures fall into groups ``g = (dataset d, source k)``; ``k`` is ``llm``, ``human``,
``algorithmic_ga`` and so on.

Model (logit scale; the likelihood is :func:`llmnas_transfer.fit.model.logit_accuracy_loglik`
on the sufficient statistics of :func:`llmnas_transfer.fit.model.accuracy_stats`, the same
accuracy likelihood as the observed-runs model)::

    level_d            ~ N(-1, 1.5^2)              dataset level (source llm)
    source_effect_k    ~ N(0, 1), = 0 for llm      shift of source k
    cell_sd            ~ HalfNormal(0.5)           partial pooling of the cells
    mu_g = accuracy_logit(0, ., level_d + source_effect_k + cell_sd e_g),  e_g ~ N(0, 1)
                                                   (the dynamics' accuracy logit at s = 0)
    log_spread_d       ~ N(log 0.5, 0.75^2)
    spread_source_k    ~ N(0, 0.5^2), = 0 for llm
    spread_cell_sd     ~ HalfNormal(0.3)
    sigma_g = exp(log_spread_d + spread_source_k + spread_cell_sd f_g),   f_g ~ N(0, 1)
    logit(acc_i) ~ N(mu_g(i), sigma_g(i)^2)        one per architecture i

``mean_accuracy_g = E[sigmoid(mu_g + sigma_g Z)]`` is recorded as a deterministic. Groups
with at least 300 architectures are sampled in the centred form, the others non-centred
(:func:`centring`); this changes NUTS's efficiency, not the model. The
gap of dataset ``d`` for LLM-generated architectures is
``1 - mean_accuracy_{d,llm} / mean_accuracy_{cifar-10,llm}`` (the ``accuracy_gap`` of
:func:`llmnas_transfer.sim.gaps.gap_components`).

Besides the fit: rank transfer of architectures between CIFAR-10 and each other dataset
(:func:`rank_transfer`), a held-out check of the 90% posterior predictive intervals
(:func:`holdout_check`), the priors that ground the calibration
(:func:`derive_lemur_accuracy_priors`; the shipped ones are read by
:func:`~llmnas_transfer.io.bundled.load_lemur_accuracy_priors`), and :func:`run_lemur`,
which writes all of it to a folder (``llmnas-transfer lemur --out DIR``).

Example
-------
>>> df = load_lemur(dataset="cifar-10,svhn", source="llm")
>>> fit = fit_lemur(df, num_warmup=100, num_samples=100, num_chains=1)
>>> {"posterior", "sample_stats"} <= set(fit.tree.children)
True
>>> accuracy_gaps(fit)["dataset"].tolist()
['svhn']
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import scipy.stats
from numpyro.infer import Predictive

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.fit.assemble import DrawsAdapter
from llmnas_transfer.fit.model import accuracy_stats, logit_accuracy_loglik
from llmnas_transfer.fit.sampling import (
    MAX_TREE_DEPTH,
    ModelNutsProgram,
    model_nuts_program,
    sampling_threads,
)
from llmnas_transfer.io.atomic import atomic_write
from llmnas_transfer.io.bundled import (
    LEMUR_MAP,
    PRIORS_FILE,
    load_lemur,
    save_lemur_accuracy_priors,
)
from llmnas_transfer.io.bundled import (  # re-exported: the priors' reader and location
    load_lemur_accuracy_priors as load_lemur_accuracy_priors,
)
from llmnas_transfer.io.bundled import priors_path as priors_path
from llmnas_transfer.sim.candidates import simulate
from llmnas_transfer.sim.dynamics import accuracy_logit
from llmnas_transfer.sim.expectation import logitnormal_mean
from llmnas_transfer.sim.keys import as_key
from llmnas_transfer.sim.params import DynamicsParams
from llmnas_transfer.summarize.figures import prepare_output_folder, save_figure
from llmnas_transfer.summarize.tables import write_csv
from llmnas_transfer.validate import check_choice, check_float, check_int

#: order in which sources are listed; ``llm`` is the reference source of the model
SOURCES: tuple[str, ...] = (
    "llm", "human", "human_variant", "algorithmic_ga", "algorithmic_ast", "rag_extracted",
)
REFERENCE_DATASET = "cifar-10"
REFERENCE_SOURCE = "llm"
STATISTICS: tuple[str, ...] = ("e1_mean", "e1_median", "e1_max")
#: accuracies are clipped to [EPS, 1 - EPS] before the logit, as in ``accuracy_stats``
EPS = 1e-4
CI_PROB = 0.94

#: What each mapping of a study dataset to a LEMUR dataset assumes (see docs/real-data.md).
MAPPING_ASSUMPTIONS: dict[str, tuple[str, str]] = {
    "cifar-10": ("same", "same dataset and 32x32 input; the study's reference"),
    "cifar-100": ("same", "same dataset"),
    "svhn": ("same", "same dataset"),
    "imagenet": (
        "stand-in",
        "Imagenette (10 easy ImageNet classes, LEMUR resizes to low resolution) stands in "
        "for ImageNet-1k at 224x224; 10 instead of 1000 classes makes it far easier, so the "
        "level is an upper bound on ImageNet first-epoch accuracy",
    ),
    "fashion-mnist": (
        "upper bound",
        "MNIST is a lower bound on the difficulty of Fashion-MNIST (same 28x28 grey input, "
        "10 classes, easier images), so the level is an upper bound on accuracy",
    ),
}


# ---------------------------------------------------------------------------- data
class LemurData(NamedTuple):
    """Architectures arranged in ``(dataset, source)`` groups for the model.

    ``accuracy`` holds one value per architecture row; ``arch_group`` its group index.
    Groups are ordered dataset-major; ``group_label`` is ``"dataset/source"``.
    """

    datasets: tuple[str, ...]
    sources: tuple[str, ...]
    group_dataset: np.ndarray
    group_source: np.ndarray
    group_label: tuple[str, ...]
    arch_group: np.ndarray
    accuracy: np.ndarray
    nn: np.ndarray
    statistic: str

    @property
    def num_groups(self) -> int:
        return len(self.group_label)

    def subset(self, keep: np.ndarray) -> LemurData:
        """The same groups with only the architecture rows where ``keep`` is true."""
        keep = np.asarray(keep, bool)
        return self._replace(arch_group=self.arch_group[keep], accuracy=self.accuracy[keep],
                             nn=self.nn[keep])

    def group_of(self, dataset: str, source: str) -> int:
        """Index of the group ``(dataset, source)``."""
        label = f"{dataset}/{source}"
        if label not in self.group_label:
            raise UserInputError(f"no group {label!r}; groups: {', '.join(self.group_label)}")
        return self.group_label.index(label)


class AccStats(NamedTuple):
    """Per-group sufficient statistics from :func:`llmnas_transfer.fit.model.accuracy_stats`."""

    n: jax.Array
    sum_z: jax.Array
    sumsq_z: jax.Array
    sum_logjac: jax.Array


def _classification(df: pd.DataFrame, task: str, metric: str) -> pd.DataFrame:
    sub = df[(df["task"] == task) & (df["metric"] == metric)]
    if sub.empty:
        pairs = sorted({f"{a}/{b}" for a, b in zip(df["task"], df["metric"], strict=True)})
        raise UserInputError(f"no rows with task {task!r} and metric {metric!r}; "
                             f"available task/metric: {', '.join(pairs)}")
    return sub


def arrange_lemur_data(
    df: pd.DataFrame | None = None,
    *,
    statistic: str = "e1_mean",
    task: str = "img-classification",
    metric: str = "acc",
) -> LemurData:
    """Arrange a :func:`~llmnas_transfer.io.bundled.load_lemur` table for the model.

    Only rows of one ``task`` and ``metric`` enter (classification accuracy by default:
    the other LEMUR tasks have at most 11 architectures and other metrics).

    Example
    -------
    >>> d = arrange_lemur_data(load_lemur(dataset="cifar-10"))
    >>> d.group_label[0], len(d.accuracy)
    ('cifar-10/llm', 2215)
    """
    check_choice("statistic", statistic, STATISTICS)
    df = load_lemur() if df is None else df
    df = _classification(df, task, metric)
    names = sorted(set(map(str, df["dataset"])))
    datasets = tuple([REFERENCE_DATASET] if REFERENCE_DATASET in names else []) + tuple(
        d for d in names if d != REFERENCE_DATASET)
    present = set(map(str, df["source"]))
    sources = tuple(s for s in SOURCES if s in present) + tuple(
        sorted(present - set(SOURCES)))
    if REFERENCE_SOURCE not in sources:
        sources = (REFERENCE_SOURCE,) + sources  # keeps the reference parameterisation
    pairs = set(zip(map(str, df["dataset"]), map(str, df["source"]), strict=True))
    groups = [(d, s) for d in datasets for s in sources if (d, s) in pairs]
    index = {g: i for i, g in enumerate(groups)}
    arch_group = np.asarray([index[(str(d), str(s))] for d, s in
                             zip(df["dataset"], df["source"], strict=True)], np.int32)
    return LemurData(
        datasets=datasets, sources=sources,
        group_dataset=np.asarray([datasets.index(d) for d, _ in groups], np.int32),
        group_source=np.asarray([sources.index(s) for _, s in groups], np.int32),
        group_label=tuple(f"{d}/{s}" for d, s in groups),
        arch_group=arch_group,
        accuracy=df[statistic].to_numpy(float),
        nn=df["nn"].astype(str).to_numpy(),
        statistic=statistic,
    )


def group_stats(data: LemurData) -> AccStats:
    """Sufficient statistics per group, through :func:`~llmnas_transfer.fit.model.accuracy_stats`.

    Example
    -------
    >>> s = group_stats(arrange_lemur_data(load_lemur(dataset="cifar-10", source="llm")))
    >>> int(s.n[0])
    58
    """
    G = data.num_groups
    counts = np.bincount(data.arch_group, minlength=G)
    width = max(int(counts.max(initial=0)), 1)
    order = np.argsort(data.arch_group, kind="stable")
    g_sorted = data.arch_group[order]
    pos = np.arange(len(order)) - np.concatenate([[0], np.cumsum(counts)])[g_sorted]
    acc = np.full((G, width), np.nan, np.float32)
    mask = np.zeros((G, width), bool)
    acc[g_sorted, pos] = data.accuracy[order]
    mask[g_sorted, pos] = True
    n, sz, szz, lj = accuracy_stats(jnp.asarray(acc), jnp.asarray(mask), eps=EPS)
    return AccStats(n, sz, szz, lj)


def logit(accuracy) -> np.ndarray:
    """Logit of accuracies clipped to ``[EPS, 1 - EPS]`` (the clipping of the fit)."""
    a = np.clip(np.asarray(accuracy, float), EPS, 1 - EPS)
    return np.log(a) - np.log1p(-a)


# ---------------------------------------------------------------------------- model
def _zero_params() -> DynamicsParams:
    z = jnp.zeros((), jnp.float32)
    return DynamicsParams(*([z] * len(DynamicsParams._fields)))


#: groups with at least this many architectures use the centred parameterisation
CENTRE_MIN_ARCHITECTURES = 300


def centring(stats: AccStats) -> np.ndarray:
    """Which groups to parameterise centred: those with many architectures.

    A sampler choice, not a model change. Where a group's data pin its level far more
    tightly than ``cell_sd`` does, the non-centred form makes NUTS take very long
    trajectories (on LEMUR 450 leapfrog steps per draw against 60 with the 7 largest groups
    centred); where the data are weak, the centred form has a funnel (on the synthetic
    test design, all-centred gave 31 divergences in 1,000 draws, this rule none).
    """
    return np.asarray(stats.n) >= CENTRE_MIN_ARCHITECTURES


def lemur_model(
    group_dataset: jax.Array,
    group_source: jax.Array,
    arch_group: jax.Array | None,
    stats: AccStats | None = None,
    centred: jax.Array | None = None,
    *,
    num_datasets: int,
    num_sources: int,
) -> None:
    """NumPyro model of per-architecture first-epoch accuracies (see the module docstring).

    With ``stats`` (per-group :class:`AccStats`) the likelihood is the shared
    sufficient-statistics likelihood. With ``stats=None`` the model is generative: it draws
    ``logit_accuracy`` for every architecture in ``arch_group`` (prior and posterior
    predictive checks). ``centred`` (boolean per group, default all false) picks the
    parameterisation of each group's level and spread (:func:`centring`): the sites
    ``cell_raw`` and ``spread_raw`` are the level and log spread where it is true and
    standardised deviations where it is false. Posterior draws must be replayed with the
    ``centred`` they were fitted with.
    """
    G = group_dataset.shape[0]
    with numpyro.plate("dataset", num_datasets):
        level = numpyro.sample("level", dist.Normal(-1.0, 1.5))
        log_spread = numpyro.sample("log_spread", dist.Normal(float(np.log(0.5)), 0.75))
    src = src_sp = jnp.zeros(1)  # source 0 (llm) is the reference
    if num_sources > 1:
        with numpyro.plate("source_contrast", num_sources - 1):
            s1 = numpyro.sample("source_effect", dist.Normal(0.0, 1.0))
            s2 = numpyro.sample("spread_source", dist.Normal(0.0, 0.5))
        src = jnp.concatenate([src, s1])
        src_sp = jnp.concatenate([src_sp, s2])
    cell_sd = numpyro.sample("cell_sd", dist.HalfNormal(0.5))
    spread_cell_sd = numpyro.sample("spread_cell_sd", dist.HalfNormal(0.3))
    loc = level[group_dataset] + src[group_source]
    loc_spread = log_spread[group_dataset] + src_sp[group_source]
    c = jnp.zeros(G, bool) if centred is None else jnp.asarray(centred, bool)
    with numpyro.plate("group", G):
        e = numpyro.sample("cell_raw", dist.Normal(jnp.where(c, loc, 0.0),
                                                   jnp.where(c, cell_sd, 1.0)))
        f = numpyro.sample("spread_raw", dist.Normal(jnp.where(c, loc_spread, 0.0),
                                                     jnp.where(c, spread_cell_sd, 1.0)))
    offset = jnp.where(c, e, loc + cell_sd * e)
    # the location of logit accuracy is the dynamics' accuracy_logit at state 0
    mu = numpyro.deterministic("mu", accuracy_logit(jnp.zeros(()), _zero_params(), offset))
    sigma = numpyro.deterministic(
        "sigma", jnp.exp(jnp.where(c, f, loc_spread + spread_cell_sd * f)))
    numpyro.deterministic("mean_accuracy", logitnormal_mean(mu, sigma))
    if stats is not None:
        numpyro.factor("accuracy_loglik", jnp.sum(logit_accuracy_loglik(
            stats.n, mu, sigma, stats.sum_z, stats.sumsq_z, stats.sum_logjac)))
    else:
        with numpyro.plate("architecture", arch_group.shape[0]):
            numpyro.sample("logit_accuracy", dist.Normal(mu[arch_group], sigma[arch_group]))


def _model_args(data: LemurData):
    return (jnp.asarray(data.group_dataset), jnp.asarray(data.group_source),
            jnp.asarray(data.arch_group))


def _model_kwargs(data: LemurData):
    return {"num_datasets": len(data.datasets), "num_sources": len(data.sources)}


# ---------------------------------------------------------------------------- fit
class LemurFit(NamedTuple):
    """A fitted LEMUR model: the ArviZ DataTree, the data it saw, the raw samples and the
    per-group parameterisation they were drawn in (:func:`centring`)."""

    tree: Any
    data: LemurData
    samples: dict
    centred: np.ndarray


def fit_lemur(
    df: pd.DataFrame | LemurData | None = None,
    *,
    seed: int | jax.Array = 0,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    target_accept: float = 0.9,
    statistic: str = "e1_mean",
    exclude: np.ndarray | None = None,
    progress: bool = False,
) -> LemurFit:
    """Fit :func:`lemur_model` by NUTS and return an ArviZ DataTree.

    Parameters
    ----------
    df : a :func:`~llmnas_transfer.io.bundled.load_lemur` table, prepared
        :class:`LemurData`, or ``None`` for every classification architecture.
    seed : integer seed or PRNG key; the same seed gives the same draws.
    num_warmup, num_samples, num_chains : NUTS settings. Up to one chain per core runs
        at a time (:func:`~llmnas_transfer.fit.sampling.model_nuts_program`); chain ``i``
        gives the same draws whatever the number of cores or JAX devices.
    exclude : boolean mask over the architecture rows to leave out of the likelihood
        (held-out rows); the groups stay.
    progress : ``True`` for a bar of the NUTS iterations on stderr, or a callback
        ``f(done, total)``.

    Returns
    -------
    :class:`LemurFit`; ``fit.tree`` has groups ``posterior`` (dims ``dataset``,
    ``source_contrast``, ``group``) and ``sample_stats``.

    Example
    -------
    >>> fit = fit_lemur(load_lemur(dataset="svhn", source="llm"), num_warmup=50,
    ...                 num_samples=50, num_chains=1)
    >>> fit.tree["posterior"].dataset["mu"].dims
    ('chain', 'draw', 'group')
    """
    import arviz as az

    data = df if isinstance(df, LemurData) else arrange_lemur_data(df, statistic=statistic)
    num_warmup = check_int("num_warmup", num_warmup, 1)
    num_samples = check_int("num_samples", num_samples, 1)
    num_chains = check_int("num_chains", num_chains, 1)
    target_accept = check_float("target_accept", target_accept, 0.5, 1.0, high_open=True)
    train = data if exclude is None else data.subset(~np.asarray(exclude, bool))
    stats = group_stats(train)
    centred = centring(stats)
    gd, gs, _ = _model_args(train)
    kwargs = _model_kwargs(train)
    run = model_nuts_program(ModelNutsProgram(
        lemur_model, tuple(sorted(kwargs.items())), num_chains, warmup=num_warmup,
        draws=num_samples, target_accept=float(target_accept),
        threads=sampling_threads(num_chains)))
    args = (gd, gs, None, stats, jnp.asarray(centred))
    samples, sample_stats = run(as_key(seed), args, progress=progress)
    coords = {"dataset": list(data.datasets), "group": list(data.group_label)}
    dims = {"level": ["dataset"], "log_spread": ["dataset"],
            "cell_sd": [], "spread_cell_sd": [], "cell_raw": ["group"], "spread_raw": ["group"],
            "mu": ["group"], "sigma": ["group"], "mean_accuracy": ["group"]}
    if len(data.sources) > 1:
        coords["source_contrast"] = list(data.sources[1:])
        dims |= {"source_effect": ["source_contrast"], "spread_source": ["source_contrast"]}
    tree = az.from_numpyro(DrawsAdapter(samples, lemur_model, args, kwargs,
                                        stats=sample_stats, max_tree_depth=MAX_TREE_DEPTH),
                           coords=coords, dims=dims)
    if "observed_data" in tree.children:  # holds only the empty factor site
        tree = tree.drop_nodes("observed_data")
    tree.attrs.update({"model": "llmnas_transfer.study.lemur.lemur_model",
                       "statistic": data.statistic,
                       "num_train_architectures": int(len(train.accuracy)),
                       "centred_groups": ",".join(np.asarray(data.group_label)[centred])})
    return LemurFit(tree, data, samples, centred)


def convergence_summary(fit: LemurFit) -> dict:
    """Largest r_hat, smallest bulk and tail ESS, and the number of divergences of a fit.

    Example
    -------
    >>> d = convergence_summary(fit_lemur(load_lemur(dataset="svhn", source="llm"),
    ...                                   num_warmup=50, num_samples=50, num_chains=1))
    >>> sorted(d)
    ['divergences', 'draws', 'max_r_hat', 'min_ess_bulk', 'min_ess_tail']
    """
    import arviz as az

    names = [v for v in ("level", "log_spread", "source_effect", "spread_source", "cell_sd",
                         "spread_cell_sd", "mu", "sigma") if v in fit.tree["posterior"].dataset]
    s = az.summary(fit.tree, var_names=names, ci_kind="hdi", ci_prob=CI_PROB,
                   round_to="none")
    div = fit.tree["sample_stats"].dataset["diverging"].values
    r_hat = s["r_hat"].to_numpy(float)  # NaN with one chain
    return {"max_r_hat": float(r_hat[np.isfinite(r_hat)].max()) if np.isfinite(r_hat).any()
            else float("nan"),
            "min_ess_bulk": float(np.nanmin(s["ess_bulk"])),
            "min_ess_tail": float(np.nanmin(s["ess_tail"])),
            "divergences": int(div.sum()), "draws": int(div.size)}


def _posterior(fit: LemurFit, name: str) -> np.ndarray:
    """Posterior draws ``(chain, draw, ...)`` as a NumPy array."""
    return np.asarray(fit.tree["posterior"].dataset[name].values)


def group_table(fit: LemurFit) -> pd.DataFrame:
    """Per (dataset, source): observed and fitted first-epoch accuracy distributions.

    Columns: ``dataset, source, n, observed_mean, observed_sd, observed_q05,
    observed_q95`` (over the group's architectures), ``mean_accuracy`` (posterior mean)
    with ``_hdi_lo``/``_hdi_hi`` (94% HDI), ``mu`` and ``sigma`` (logit location and spread,
    posterior mean and sd), and the 5%/50%/95% quantiles of the posterior predictive
    accuracy of a new architecture of the group.
    """
    import arviz as az

    data = fit.data
    s = az.summary(fit.tree, var_names=["mean_accuracy", "mu", "sigma"], ci_kind="hdi",
                   ci_prob=CI_PROB, round_to="none")
    mu, sigma = _posterior(fit, "mu"), _posterior(fit, "sigma")
    rng = np.random.default_rng(0)
    z = rng.standard_normal(mu.shape[:2] + (1,))
    pred = 1.0 / (1.0 + np.exp(-(mu + sigma * z)))  # one predictive draw per posterior draw
    rows = []
    for g, label in enumerate(data.group_label):
        d, src = label.split("/")
        a = data.accuracy[data.arch_group == g]
        q = np.quantile(pred[..., g], [0.05, 0.5, 0.95])
        rows.append({
            "dataset": d, "source": src, "n": int(a.size),
            "observed_mean": float(a.mean()) if a.size else np.nan,
            "observed_sd": float(a.std(ddof=1)) if a.size > 1 else np.nan,
            "observed_q05": float(np.quantile(a, 0.05)) if a.size else np.nan,
            "observed_q95": float(np.quantile(a, 0.95)) if a.size else np.nan,
            "mean_accuracy": s.loc[f"mean_accuracy[{label}]", "mean"],
            "mean_accuracy_hdi_lo": s.loc[f"mean_accuracy[{label}]", "hdi94_lb"],
            "mean_accuracy_hdi_hi": s.loc[f"mean_accuracy[{label}]", "hdi94_ub"],
            "mu": s.loc[f"mu[{label}]", "mean"], "mu_sd": s.loc[f"mu[{label}]", "sd"],
            "sigma": s.loc[f"sigma[{label}]", "mean"],
            "sigma_sd": s.loc[f"sigma[{label}]", "sd"],
            "predictive_q05": q[0], "predictive_q50": q[1], "predictive_q95": q[2],
        })
    return pd.DataFrame(rows)


def accuracy_gaps(fit: LemurFit, source: str = REFERENCE_SOURCE,
                  reference: str = REFERENCE_DATASET) -> pd.DataFrame:
    """Posterior accuracy gap of each dataset relative to ``reference`` for one source.

    Three versions per dataset, each with posterior mean, sd and 94% HDI (``az.summary``
    with ``ci_kind="hdi", ci_prob=0.94``): ``accuracy_gap = 1 - A_d / A_ref`` (the
    convention of :func:`llmnas_transfer.sim.gaps.gap_components`; negative means ``d`` is
    easier), ``accuracy_difference = A_d - A_ref`` and ``logit_difference = mu_d -
    mu_ref``, where ``A`` is the group's ``mean_accuracy``.
    """
    import arviz as az

    data = fit.data
    ref = data.group_of(reference, source)
    others = [d for d in data.datasets if d != reference
              and f"{d}/{source}" in data.group_label]
    if not others:
        raise UserInputError(f"no dataset besides {reference!r} has source {source!r}")
    idx = [data.group_of(d, source) for d in others]
    A, mu = _posterior(fit, "mean_accuracy"), _posterior(fit, "mu")
    post = {
        "accuracy_gap": 1.0 - A[..., idx] / A[..., ref, None],
        "accuracy_difference": A[..., idx] - A[..., ref, None],
        "logit_difference": mu[..., idx] - mu[..., ref, None],
    }
    tree = az.from_dict({"posterior": post}, dims={k: ["dataset"] for k in post},
                        coords={"dataset": others})
    s = az.summary(tree, ci_kind="hdi", ci_prob=CI_PROB, round_to="none")
    rows = []
    for d in others:
        row = {"dataset": d, "reference": reference, "source": source}
        for k in post:
            r = s.loc[f"{k}[{d}]"]
            row.update({k: r["mean"], f"{k}_sd": r["sd"], f"{k}_hdi_lo": r["hdi94_lb"],
                        f"{k}_hdi_hi": r["hdi94_ub"]})
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- rank transfer
def _kendall_tau_b_weighted(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of the samples that repeat point ``i`` ``w[b, i]`` times.

    Exact for bootstrap resamples: copies of one point form pairs tied in both
    variables, which tau-b leaves out of the numerator and counts as ties.
    """
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])
    tx = (sx == 0).astype(float)
    ty = (sy == 0).astype(float)
    s = sx * sy
    n = w.sum(1)
    n0 = n * (n - 1) / 2
    num = 0.5 * ((w @ s) * w).sum(1)
    n1 = 0.5 * (((w @ tx) * w).sum(1) - n)  # pairs tied in x
    n2 = 0.5 * (((w @ ty) * w).sum(1) - n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / np.sqrt((n0 - n1) * (n0 - n2))


def _spearman_rows(xb: np.ndarray, yb: np.ndarray) -> np.ndarray:
    rx = scipy.stats.rankdata(xb, axis=1)
    ry = scipy.stats.rankdata(yb, axis=1)
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))


def bootstrap_correlations(x, y, *, n_boot: int = 2000, seed: int = 0,
                           ci_prob: float = 0.95) -> dict:
    """Spearman and Kendall (tau-b) correlations with percentile bootstrap intervals.

    Point estimates are :func:`scipy.stats.spearmanr` and :func:`scipy.stats.kendalltau`
    on the data; intervals resample pairs ``n_boot`` times (seeded).

    Example
    -------
    >>> r = bootstrap_correlations([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], n_boot=200)
    >>> round(r["spearman"], 3), r["spearman_lo"] <= r["spearman"] <= r["spearman_hi"]
    (0.8, True)
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.size
    if n < 3 or y.size != n:
        raise UserInputError(f"need at least 3 paired values (got {n} and {y.size})")
    n_boot = check_int("n_boot", n_boot, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    sp = _spearman_rows(x[idx], y[idx])
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0)
    kt = np.concatenate([_kendall_tau_b_weighted(x, y, w[i:i + 256])
                         for i in range(0, n_boot, 256)])
    lo, hi = (1 - ci_prob) / 2, 1 - (1 - ci_prob) / 2
    rs = scipy.stats.spearmanr(x, y)
    kt0 = scipy.stats.kendalltau(x, y)
    return {
        "n": n, "spearman": float(rs.statistic), "spearman_p": float(rs.pvalue),
        "spearman_lo": float(np.nanquantile(sp, lo)), "spearman_hi": float(np.nanquantile(sp, hi)),
        "kendall": float(kt0.statistic), "kendall_p": float(kt0.pvalue),
        "kendall_lo": float(np.nanquantile(kt, lo)), "kendall_hi": float(np.nanquantile(kt, hi)),
    }


def rank_transfer(
    df: pd.DataFrame | None = None,
    *,
    reference: str = REFERENCE_DATASET,
    statistic: str = "e1_mean",
    n_boot: int = 2000,
    seed: int = 0,
    ci_prob: float = 0.95,
    min_pairs: int = 5,
) -> pd.DataFrame:
    """Do architectures that rank high on ``reference`` rank high on another dataset?

    For every other classification dataset and source (and ``all`` sources pooled), pair
    the architectures (same ``nn`` name) trained on both and report Spearman's rho and
    Kendall's tau-b of ``statistic`` with percentile bootstrap intervals (``ci_prob``).
    Cells with fewer than ``min_pairs`` pairs are left out.

    Example
    -------
    >>> t = rank_transfer(load_lemur(dataset="cifar-10,svhn", source="llm"), n_boot=100)
    >>> t[["dataset", "source", "n"]].values.tolist()
    [['svhn', 'llm', 57], ['svhn', 'all', 57]]
    """
    check_choice("statistic", statistic, STATISTICS)
    df = load_lemur() if df is None else df
    df = _classification(df, "img-classification", "acc")
    names = sorted(set(map(str, df["dataset"])))
    if reference not in names:
        raise UserInputError(f"unknown reference {reference!r}; valid values: {', '.join(names)}")
    cols = ["nn", "source", statistic]
    ref = df[df["dataset"] == reference][cols].astype({"nn": str, "source": str})
    rows = []
    for d in names:
        if d == reference:
            continue
        tgt = df[df["dataset"] == d][["nn", statistic]].astype({"nn": str})
        m = ref.merge(tgt, on="nn", suffixes=("_ref", "_target"))
        srcs = [s for s in SOURCES if s in set(m["source"])] + ["all"]
        for s in srcs:
            sub = m if s == "all" else m[m["source"] == s]
            if len(sub) < min_pairs:
                continue
            r = bootstrap_correlations(sub[f"{statistic}_ref"], sub[f"{statistic}_target"],
                                       n_boot=n_boot, seed=seed, ci_prob=ci_prob)
            rows.append({"reference": reference, "dataset": d, "source": s, **r})
    if not rows:
        raise UserInputError(f"no dataset shares at least {min_pairs} architectures with "
                             f"{reference!r}")
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- held-out check
def holdout_split(data: LemurData, fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean mask over architecture rows: ``True`` for held-out architectures.

    A random ``fraction`` of the distinct architecture names (``nn``) is held out
    (NumPy ``default_rng(seed)``), so an architecture is held out on every dataset at once.
    """
    fraction = check_float("fraction", fraction, 0.0, 1.0, low_open=True, high_open=True)
    names = np.unique(data.nn)
    rng = np.random.default_rng(seed)
    k = int(round(fraction * names.size))
    held = rng.choice(names, size=k, replace=False)
    return np.isin(data.nn, held)


def coverage_band(n: int, prob: float = 0.90, num_se: float = 3.0) -> tuple[float, float]:
    """``prob +- num_se * sqrt(prob (1 - prob) / n)``: where coverage of ``n`` held-out
    architectures falls under a correct model (binomial SE; posterior uncertainty ignored).

    Example
    -------
    >>> [round(v, 3) for v in coverage_band(100)]
    [0.81, 0.99]
    """
    se = float(np.sqrt(prob * (1 - prob) / max(n, 1)))
    return prob - num_se * se, min(1.0, prob + num_se * se)


def holdout_check(
    data: LemurData | pd.DataFrame | None = None,
    *,
    fraction: float = 0.2,
    prob: float = 0.90,
    seed: int = 0,
    num_se: float = 3.0,
    **fit_kwargs,
) -> tuple[pd.DataFrame, LemurFit]:
    """Hold out a random ``fraction`` of architectures, fit the rest, check coverage.

    For each held-out architecture the central ``prob`` posterior predictive interval of
    its group (quantiles of one predictive draw per posterior draw, from
    :func:`lemur_model` with ``stats=None``) is compared with its accuracy. Returns a
    table per dataset (and ``all``) with ``n``, ``covered``, ``coverage``, the binomial
    ``se``, the band of :func:`coverage_band` and ``within_band``, plus the fit.
    """
    data = data if isinstance(data, LemurData) else arrange_lemur_data(data)
    held = holdout_split(data, fraction, seed)
    fit = fit_lemur(data, exclude=held, seed=seed, **fit_kwargs)
    test = data.subset(held)
    samples = {k: v.reshape((-1,) + v.shape[2:]) for k, v in fit.samples.items()}
    pred = Predictive(lemur_model, samples, return_sites=["logit_accuracy"])(
        jax.random.fold_in(as_key(seed), 1), *_model_args(test), None,
        jnp.asarray(fit.centred), **_model_kwargs(test)
    )["logit_accuracy"]
    pred = np.asarray(pred)
    lo_q, hi_q = (1 - prob) / 2, 1 - (1 - prob) / 2
    lo, hi = np.quantile(pred, [lo_q, hi_q], axis=0)
    z = logit(test.accuracy)
    covered = (z >= lo) & (z <= hi)
    ds = np.asarray(test.datasets)[test.group_dataset[test.arch_group]]
    rows = []
    for d in list(data.datasets) + ["all"]:
        m = np.ones_like(covered) if d == "all" else ds == d
        n = int(m.sum())
        if n == 0:
            continue
        c = int(covered[m].sum())
        blo, bhi = coverage_band(n, prob, num_se)
        rows.append({"dataset": d, "n": n, "covered": c, "coverage": c / n,
                     "nominal": prob, "se": float(np.sqrt(prob * (1 - prob) / n)),
                     "band_lo": blo, "band_hi": bhi, "within_band": blo <= c / n <= bhi,
                     "below_interval": int((z[m] < lo[m]).sum()),
                     "above_interval": int((z[m] > hi[m]).sum())})
    return pd.DataFrame(rows), fit


# ---------------------------------------------------------------------------- priors
def derive_lemur_accuracy_priors(fit: LemurFit | None = None, *, seed: int = 0,
                                 **fit_kwargs) -> dict:
    """Posterior of the LLM-source accuracy level for each study dataset with a stand-in.

    For every study dataset in :data:`llmnas_transfer.io.bundled.LEMUR_MAP` returns the
    posterior mean and sd of ``mu_{d,llm}`` (logit scale: the location of the logit
    first-epoch accuracy of LLM-generated architectures), of the spread ``sigma_{d,llm}``
    and of the mean accuracy, the LEMUR dataset used and the assumption the mapping makes.
    Fits :func:`fit_lemur` on all classification architectures (NUTS) when ``fit`` is
    ``None``. :func:`~llmnas_transfer.io.bundled.save_lemur_accuracy_priors` writes the
    result; :func:`~llmnas_transfer.io.bundled.load_lemur_accuracy_priors` reads it back.

    Example
    -------
    >>> p = derive_lemur_accuracy_priors(num_warmup=100, num_samples=100,
    ...                                  num_chains=1)  # doctest: +SKIP
    >>> sorted(p["datasets"])  # doctest: +SKIP
    ['cifar-10', 'cifar-100', 'fashion-mnist', 'imagenet', 'svhn']
    """
    fit = fit if fit is not None else fit_lemur(seed=seed, **fit_kwargs)
    data = fit.data
    mu, sigma = _posterior(fit, "mu"), _posterior(fit, "sigma")
    A = _posterior(fit, "mean_accuracy")
    out = {}
    for study, lemur_name in LEMUR_MAP.items():
        g = data.group_of(lemur_name, REFERENCE_SOURCE)
        relation, text = MAPPING_ASSUMPTIONS.get(study, ("stand-in", ""))
        out[study] = {
            "lemur_dataset": lemur_name, "relation": relation, "assumption": text,
            "source": REFERENCE_SOURCE,
            "n_architectures": int((data.arch_group == g).sum()),
            "logit_level_mean": float(mu[..., g].mean()),
            "logit_level_sd": float(mu[..., g].std(ddof=1)),
            "logit_spread_mean": float(sigma[..., g].mean()),
            "logit_spread_sd": float(sigma[..., g].std(ddof=1)),
            "mean_accuracy_mean": float(A[..., g].mean()),
            "mean_accuracy_sd": float(A[..., g].std(ddof=1)),
        }
    d = convergence_summary(fit)
    return {
        "datasets": out,
        "provenance": {
            "derived_by": "llmnas_transfer.study.lemur.derive_lemur_accuracy_priors "
                          "(llmnas-transfer lemur --write-priors)",
            "date": _dt.date.today().isoformat(),
            "data": "LEMUR lemur_epoch1_by_arch.csv.gz, img-classification / acc, "
                    f"statistic {data.statistic}",
            "data_sha256": _data_digest(),
            "model": "llmnas_transfer.study.lemur.lemur_model (NUTS)",
            "seed": int(seed) if isinstance(seed, (int, np.integer)) else str(seed),
            "num_chains": int(fit.tree["posterior"].dataset.sizes["chain"]),
            "num_draws": int(fit.tree["posterior"].dataset.sizes["draw"]),
            "max_r_hat": d["max_r_hat"], "min_ess_bulk": d["min_ess_bulk"],
            "divergences": d["divergences"],
            "licence": "LEMUR data: MIT, Copyright (c) 2024- ABrain One and contributors",
        },
    }


def _data_digest() -> str:
    ref = resources.files("llmnas_transfer.data").joinpath("lemur/lemur_epoch1_by_arch.csv.gz")
    return hashlib.sha256(ref.read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------- real vs simulated
def simulated_accuracies(
    datasets: Sequence[str], *, seed: int = 0, num_trials: int = 200,
    iterations: Sequence[int] = (1, 10), num_candidates: int = 20,
) -> dict[tuple[str, int], np.ndarray]:
    """First-epoch accuracies of valid simulated candidates (shipped defaults).

    Returns ``{(study_dataset, iteration): accuracies}`` from
    :func:`llmnas_transfer.sim.candidates` (classification task).
    """
    T = int(max(iterations))
    r = simulate(seed, datasets=list(datasets), tasks="classification", num_trials=num_trials,
                 num_iterations=T, num_candidates=num_candidates, per_candidate=True, bins=0)
    out = {}
    for d in datasets:
        for t in iterations:
            a = r["accuracy"].sel(dataset=d, task="classification", iteration=t).values
            out[(d, int(t))] = a[np.isfinite(a)]
    return out


def real_vs_simulated(fit: LemurFit, simulated: dict[tuple[str, int], np.ndarray],
                      source: str = REFERENCE_SOURCE) -> pd.DataFrame:
    """Table: real LEMUR accuracies (mapped dataset, one source) beside simulated ones.

    Simulated means carry a Monte Carlo SE (sd / sqrt(n) over candidates; candidates of
    one trial are correlated through the state, so this SE is a lower bound).
    """
    data = fit.data
    rows = []
    for (study, t), sim in sorted(simulated.items()):
        lemur_name = LEMUR_MAP.get(study)
        if lemur_name is None or f"{lemur_name}/{source}" not in data.group_label:
            continue
        g = data.group_of(lemur_name, source)
        real = data.accuracy[data.arch_group == g]
        rows.append({
            "study_dataset": study, "lemur_dataset": lemur_name, "source": source,
            "relation": MAPPING_ASSUMPTIONS.get(study, ("stand-in", ""))[0],
            "real_n": int(real.size), "real_mean": float(real.mean()),
            "real_sd": float(real.std(ddof=1)),
            "real_q05": float(np.quantile(real, 0.05)),
            "real_q95": float(np.quantile(real, 0.95)),
            "sim_iteration": int(t), "sim_n": int(sim.size), "sim_mean": float(sim.mean()),
            "sim_mean_se": float(sim.std(ddof=1) / np.sqrt(sim.size)),
            "sim_sd": float(sim.std(ddof=1)),
            "sim_q05": float(np.quantile(sim, 0.05)),
            "sim_q95": float(np.quantile(sim, 0.95)),
            "ks_distance": float(scipy.stats.ks_2samp(real, sim).statistic),
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- run + figures
class LemurReport(NamedTuple):
    """Everything :func:`run_lemur` computed, plus the files it wrote."""

    fit: LemurFit
    diagnostics: dict
    groups: pd.DataFrame
    gaps: pd.DataFrame
    rank_transfer: pd.DataFrame
    coverage: pd.DataFrame
    real_vs_simulated: pd.DataFrame
    priors: dict
    files: tuple[Path, ...]


#: settings of ``run_lemur`` (full) and ``run_lemur(quick=True)``
RUN_SETTINGS = {
    False: {"num_warmup": 1000, "num_samples": 1000, "num_chains": 4, "n_boot": 2000,
            "num_trials": 300},
    True: {"num_warmup": 100, "num_samples": 100, "num_chains": 2, "n_boot": 100,
           "num_trials": 30},
}
#: resolution of the PNG figures :func:`run_lemur` writes
FIGURE_DPI = 110
#: number format of the CSV tables :func:`run_lemur` writes
CSV_FLOAT_FORMAT = "%.6g"


def plot_real_vs_simulated(fit: LemurFit, simulated: dict[tuple[str, int], np.ndarray],
                           source: str = REFERENCE_SOURCE):
    """Figure: real LEMUR accuracies (histogram), fitted posterior predictive density
    (median and 94% band over posterior draws) and simulated accuracies of the mapped
    study datasets (shipped defaults, iterations 1 and 10)."""
    from matplotlib.figure import Figure

    data = fit.data
    studies = [d for d in LEMUR_MAP if f"{LEMUR_MAP[d]}/{source}" in data.group_label]
    fig = Figure(figsize=(3.2 * len(studies), 3.1))
    axes = fig.subplots(1, len(studies), squeeze=False)
    grid = np.linspace(0.002, 0.998, 300)
    zg = logit(grid)
    mu, sigma = _posterior(fit, "mu"), _posterior(fit, "sigma")
    rng = np.random.default_rng(0)
    bins = np.linspace(0, 1, 41)
    for ax, study in zip(axes[0], studies, strict=True):
        g = data.group_of(LEMUR_MAP[study], source)
        real = data.accuracy[data.arch_group == g]
        ax.hist(real, bins=bins, density=True, color="0.75", edgecolor="0.5",
                label=f"LEMUR, {source} architectures")
        take = rng.choice(mu[..., g].size, size=min(400, mu[..., g].size), replace=False)
        m, s = mu[..., g].ravel()[take], sigma[..., g].ravel()[take]
        dens = (np.exp(-0.5 * ((zg[None] - m[:, None]) / s[:, None]) ** 2)
                / (s[:, None] * np.sqrt(2 * np.pi)) / (grid * (1 - grid))[None])
        lo, med, hi = np.quantile(dens, [0.03, 0.5, 0.97], axis=0)
        ax.fill_between(grid, lo, hi, color="C0", alpha=0.3, lw=0)
        ax.plot(grid, med, color="C0", label="fitted (94% band)")
        for t, ls in ((1, ":"), (10, "-")):
            sim = simulated.get((study, t))
            if sim is not None and sim.size:
                h, e = np.histogram(sim, bins=bins, density=True)
                ax.step(e[:-1], h, where="post", color="C3", ls=ls,
                        label=f"simulated (defaults), iteration {t}")
        ax.set_title(f"{study} (LEMUR: {LEMUR_MAP[study]}, n={real.size})", fontsize=9)
        ax.set_xlabel("first-epoch accuracy (fraction)")
        ax.set_xlim(0, 1)
    axes[0][0].set_ylabel("density (per unit accuracy)")
    axes[0][0].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    return fig


def plot_gap_forest(gaps: pd.DataFrame):
    """Forest plot of ``accuracy_difference`` (posterior mean, 94% HDI) per dataset."""
    from matplotlib.figure import Figure

    srcs = list(dict.fromkeys(gaps["source"]))
    dsets = list(dict.fromkeys(gaps["dataset"]))
    fig = Figure(figsize=(6.2, 0.45 * len(dsets) * max(1, len(srcs)) ** 0.5 + 1.2))
    ax = fig.subplots()
    step = 0.8 / max(len(srcs), 1)
    for j, s in enumerate(srcs):
        sub = gaps[gaps["source"] == s].set_index("dataset")
        y = np.asarray([dsets.index(d) for d in sub.index]) + (j - (len(srcs) - 1) / 2) * step
        x = sub["accuracy_difference"].to_numpy()
        ax.errorbar(x, y, xerr=[x - sub["accuracy_difference_hdi_lo"].to_numpy(),
                                sub["accuracy_difference_hdi_hi"].to_numpy() - x],
                    fmt="o", ms=4, capsize=2, label=s, color=f"C{j}")
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(range(len(dsets)), dsets)
    ax.invert_yaxis()
    ref = gaps["reference"].iloc[0]
    ax.set_xlabel(f"mean first-epoch accuracy minus {ref} (fraction; 94% HDI)")
    ax.set_title(f"Accuracy gap relative to {ref}, LEMUR architectures", fontsize=10)
    ax.legend(fontsize=7, title="source", title_fontsize=7)
    fig.tight_layout()
    return fig


def plot_rank_transfer(ranks: pd.DataFrame):
    """Spearman's rho (bootstrap interval) of CIFAR-10 vs each dataset, by source."""
    from matplotlib.figure import Figure

    dsets = list(dict.fromkeys(ranks["dataset"]))
    srcs = list(dict.fromkeys(ranks["source"]))
    fig = Figure(figsize=(6.2, 0.5 * len(dsets) + 1.6))
    ax = fig.subplots()
    step = 0.8 / max(len(srcs), 1)
    for j, s in enumerate(srcs):
        sub = ranks[ranks["source"] == s]
        y = np.asarray([dsets.index(d) for d in sub["dataset"]]) + (j - (len(srcs) - 1) / 2) * step
        x = sub["spearman"].to_numpy()
        ax.errorbar(x, y, xerr=[x - sub["spearman_lo"].to_numpy(),
                                sub["spearman_hi"].to_numpy() - x],
                    fmt="o", ms=3.5, capsize=2, label=s, color="k" if s == "all" else f"C{j}")
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(range(len(dsets)), dsets)
    ax.invert_yaxis()
    ax.set_xlim(-1, 1)
    ref = ranks["reference"].iloc[0]
    ax.set_xlabel(f"Spearman rank correlation with {ref} (95% bootstrap interval)")
    ax.set_title("Rank transfer of first-epoch accuracy, same architecture", fontsize=10)
    ax.legend(fontsize=6, title="source", title_fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_coverage(coverage: pd.DataFrame):
    """Held-out coverage of the 90% predictive intervals per dataset, with the band.

    Error bars: 95% intervals (coverage +- 1.96 binomial SE), the convention of every
    study figure; the band is the acceptance band of :func:`coverage_band`.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.2, 3.0))
    ax = fig.subplots()
    x = np.arange(len(coverage))
    c = coverage["coverage"].to_numpy()
    se = np.sqrt(c * (1 - c) / coverage["n"].to_numpy())
    ax.errorbar(x, c, yerr=1.959963984540054 * se, fmt="o", color="C0", capsize=2,
                label="held-out coverage (95% interval, ±1.96 binomial SE)")
    ax.fill_between(x, coverage["band_lo"], coverage["band_hi"], step="mid", color="C2",
                    alpha=0.2, label="band: nominal ± 3 binomial SE")
    ax.axhline(coverage["nominal"].iloc[0], color="C2", lw=0.8)
    ax.set_xticks(x, [f"{d}\nn={n}" for d, n in zip(coverage["dataset"], coverage["n"],
                                                    strict=True)], fontsize=7)
    ax.set_ylabel("share inside 90% interval")
    ax.set_title("Posterior predictive check on held-out architectures", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _run_settings(quick: bool, num_chains: int | None) -> dict:
    cfg = dict(RUN_SETTINGS[bool(quick)])
    if num_chains is not None:
        cfg["num_chains"] = check_int("num_chains", num_chains, 1)
    return cfg


def _analyse(cfg: dict, *, quick: bool, seed: int, say,
             progress: bool = False) -> tuple[LemurReport, dict, dict]:
    """Every computation of :func:`run_lemur`, in its order (``files`` left empty); also
    the held-out fit's convergence summary and the simulated accuracies."""
    fit_kw = {k: cfg[k] for k in ("num_warmup", "num_samples", "num_chains")}
    fit_kw["progress"] = progress
    data = arrange_lemur_data()
    say(f"fitting {len(data.accuracy)} architectures in {data.num_groups} groups")
    fit = fit_lemur(data, seed=seed, **fit_kw)
    diag = convergence_summary(fit)
    groups = group_table(fit)
    gaps = pd.concat([accuracy_gaps(fit, s) for s in data.sources
                      if sum(lbl.endswith(f"/{s}") for lbl in data.group_label) > 1],
                     ignore_index=True)
    say("rank transfer")
    ranks = rank_transfer(n_boot=cfg["n_boot"], seed=seed)
    say("held-out check")
    coverage, hfit = holdout_check(data, seed=seed, **fit_kw)
    hdiag = convergence_summary(hfit)
    say("simulating the mapped study datasets")
    sim = simulated_accuracies(list(LEMUR_MAP), seed=seed, num_trials=cfg["num_trials"])
    rvs = real_vs_simulated(fit, sim)
    priors = derive_lemur_accuracy_priors(fit, seed=seed)
    priors["provenance"]["quick"] = bool(quick)
    report = LemurReport(fit, diag, groups, gaps, ranks, coverage, rvs, priors, ())
    return report, hdiag, sim


def _write_tables(out: Path, rep: LemurReport, held_out_diagnostics: dict) -> list[Path]:
    """The CSV tables, the priors (JSON) and the posterior (netCDF) of a report."""
    diagnostics = pd.DataFrame([{"fit": "all", **rep.diagnostics},
                                {"fit": "held_out", **held_out_diagnostics}])
    tables = {"lemur_groups": rep.groups, "lemur_gaps": rep.gaps,
              "lemur_rank_transfer": rep.rank_transfer,
              "lemur_holdout_coverage": rep.coverage,
              "lemur_real_vs_simulated": rep.real_vs_simulated,
              "lemur_diagnostics": diagnostics}
    files = [write_csv(df, out / f"{name}.csv", float_format=CSV_FLOAT_FORMAT)
             for name, df in tables.items()]
    files.append(save_lemur_accuracy_priors(rep.priors, out / PRIORS_FILE))
    nc = out / "lemur_posterior.nc"
    atomic_write(nc, lambda tmp: rep.fit.tree.to_netcdf(tmp, engine="h5netcdf"))
    return files + [nc]


def _write_figures(out: Path, rep: LemurReport, simulated: dict) -> list[Path]:
    gaps = rep.gaps
    figures = (
        ("lemur_real_vs_simulated", lambda: plot_real_vs_simulated(rep.fit, simulated)),
        ("lemur_gap_forest", lambda: plot_gap_forest(
            gaps[gaps["source"].isin([REFERENCE_SOURCE, "human"])])),
        ("lemur_rank_transfer", lambda: plot_rank_transfer(rep.rank_transfer)),
        ("lemur_holdout_coverage", lambda: plot_coverage(rep.coverage)),
    )
    files: list[Path] = []
    for stem, draw in figures:
        files += save_figure(draw(), out / stem, dpi=FIGURE_DPI, bbox_inches="tight")
    return files


def run_lemur(
    out_dir: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    write_priors: bool | str | Path = False,
    progress: bool = False,
    num_chains: int | None = None,
) -> LemurReport:
    """Fit the LEMUR data and write tables and figures to ``out_dir``.

    Writes ``lemur_groups.csv`` (per dataset and source: observed and fitted
    distributions), ``lemur_gaps.csv`` (accuracy gap to CIFAR-10, 94% HDI),
    ``lemur_rank_transfer.csv``, ``lemur_holdout_coverage.csv``,
    ``lemur_real_vs_simulated.csv``, ``lemur_diagnostics.csv``,
    ``lemur_accuracy_priors.json``, ``lemur_posterior.nc`` and the figures
    ``lemur_real_vs_simulated``, ``lemur_gap_forest``, ``lemur_rank_transfer`` and
    ``lemur_holdout_coverage`` (PNG and PDF). ``quick`` uses fewer draws, bootstrap
    resamples and simulated trials (:data:`RUN_SETTINGS`). ``write_priors`` also saves the
    priors to the package (``True``) or to a path.

    Example
    -------
    >>> rep = run_lemur("results/lemur", quick=True)  # doctest: +SKIP
    >>> rep.coverage[["dataset", "coverage"]]  # doctest: +SKIP
    """
    cfg = _run_settings(quick, num_chains)
    out = prepare_output_folder(out_dir)
    say = (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)
    rep, held_out_diagnostics, simulated = _analyse(cfg, quick=quick, seed=seed, say=say,
                                                    progress=progress)
    files = _write_tables(out, rep, held_out_diagnostics) + _write_figures(out, rep, simulated)
    if write_priors:
        target = None if write_priors is True else Path(write_priors)
        files.append(save_lemur_accuracy_priors(rep.priors, target))
    return rep._replace(files=tuple(files))
