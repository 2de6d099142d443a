"""Sample the posterior of prepared runs: NUTS (NumPyro's MCMC) or SVI (a Gaussian guide).

:func:`sample_nuts` runs NUTS from a :class:`~llmnas_transfer.fit.laplace.LaplaceStart`
(chains in parallel when there are enough JAX devices, see :func:`set_cpu_devices`);
:func:`sample_svi` fits a full-rank (or, above 200 latent dimensions, low-rank) Gaussian
guide with optax Adam and draws from it. Both return a :class:`Sampled`: the draws of
every site as ``(chain, draw, ...)`` arrays, deterministic sites included
(:func:`deterministic_sites`), and the settings to record with the fit.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.infer import (
    MCMC,
    NUTS,
    SVI,
    Predictive,
    Trace_ELBO,
    init_to_median,
    init_to_value,
)
from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoMultivariateNormal

from llmnas_transfer.fit.laplace import LaplaceStart
from llmnas_transfer.fit.model import (
    DETERMINISTIC_DIMS,
    ModelSpec,
    derived_quantities,
    prior_medians,
    runs_model,
)
from llmnas_transfer.fit.preparation import Prepared
from llmnas_transfer.validate import check_float, check_int

#: NUTS statistics kept per draw (ArviZ's ``sample_stats``)
EXTRA_FIELDS = ("potential_energy", "energy", "num_steps", "accept_prob", "diverging")
#: SVI mini-batch (runs per step) used when there are more runs than this
SVI_BATCH = 2048
#: the SVI guide's initial scale is 0.1 up to about this many runs (paper size, where the
#: Laplace posterior sds of the dynamics are 0.06-0.07 on the unconstrained scale) and
#: shrinks as 1/sqrt(runs) beyond
SVI_SCALE_RUNS = 500


class Sampled(NamedTuple):
    """Posterior draws and how they were made.

    ``samples`` maps every site (latent and deterministic) to a ``(chain, draw, ...)``
    array; ``attrs`` holds the sampler's settings as recorded in the fit's attributes
    (chains, draws, warmup, chain_method, metric and, for SVI, svi_steps and
    svi_learning_rate). NUTS keeps its ``mcmc`` object (sampler statistics) and the
    ``deterministic`` sites it added to the draws; SVI keeps its ELBO ``losses``.
    """

    method: str
    samples: dict
    attrs: dict
    mcmc: MCMC | None = None
    deterministic: dict | None = None
    losses: np.ndarray | None = None


def set_cpu_devices(n: int) -> int:
    """Ask JAX for ``n`` CPU devices (parallel chains); must run before the first JAX op.

    Returns the number of devices available afterwards.

    Example
    -------
    >>> set_cpu_devices(1) >= 1
    True
    """
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except RuntimeError:
        pass  # the backend is already running: use what it has
    return jax.local_device_count()


@partial(jax.jit, static_argnames=("spec",))
def _deterministic_kernel(flat: dict, spec: ModelSpec) -> dict:
    def one(draw):
        out = derived_quantities(draw, spec)
        return {k: v for k, v in out.items() if k not in ("params", "effects")}

    n = next(iter(flat.values())).shape[0]
    return jax.lax.map(one, flat, batch_size=min(256, n))


def deterministic_sites(samples: dict, spec: ModelSpec) -> dict:
    """The model's deterministic sites (levels, offsets, expected rates, gaps) for every
    draw of its sampled sites (``(chain, draw, ...)`` arrays), in one compiled map.

    NUTS samples the model without them (``runs_model(..., deterministic=False)``): they
    do not enter the density, and leaving them out makes initialisation much cheaper.

    Example
    -------
    >>> from llmnas_transfer.io.runs import toy_runs
    >>> from llmnas_transfer.fit.preparation import prepare
    >>> runs = toy_runs(num_iterations=1)
    >>> p = prepare(runs)
    >>> s = sample_svi(jax.random.key(0), p, steps=20, learning_rate=0.01, draws=5)
    >>> latent = {k: s.samples[k] for k in s.samples if k not in DETERMINISTIC_DIMS}
    >>> deterministic_sites(latent, p.spec)["validity"].shape[:2]
    (1, 5)
    """
    shape = next(iter(samples.values())).shape[:2]
    flat = {k: jnp.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in samples.items()}
    out = jax.device_get(_deterministic_kernel(flat, spec))
    return {k: np.asarray(v).reshape(shape + np.shape(v)[1:]) for k, v in out.items()}


def sample_nuts(
    key: jax.Array,
    prep: Prepared,
    start: LaplaceStart,
    *,
    chains: int,
    draws: int,
    warmup: int,
    target_accept: float = 0.9,
    dense_mass: bool = True,
    adapt_metric: bool | None = None,
    progress: bool = False,
) -> Sampled:
    """Run NUTS on prepared runs from a Laplace start (NumPyro's ``MCMC``).

    The chains start at ``start.init_params``; the metric is the Laplace covariance,
    adapted in the warmup only where the approximation failed (``adapt_metric=None``) or
    when ``adapt_metric`` is True. Chains run in parallel when there are at least
    ``chains`` JAX devices, else one after another.

    Example
    -------
    >>> from llmnas_transfer.io.runs import toy_runs
    >>> from llmnas_transfer.fit.laplace import laplace_start
    >>> from llmnas_transfer.fit.preparation import prepare
    >>> runs = toy_runs(num_iterations=2)
    >>> p = prepare(runs)
    >>> s = sample_nuts(jax.random.key(1), p, laplace_start(jax.random.key(0), p, 1),
    ...                 chains=1, draws=20, warmup=20)  # doctest: +SKIP
    >>> s.attrs["metric"], s.samples["kappa"].shape  # doctest: +SKIP
    ('laplace', (1, 20))
    """
    chains = check_int("chains", chains, 1, 64)
    draws = check_int("draws", draws, 1, 10**6)
    warmup = check_int("warmup", warmup, 1, 10**6)
    target_accept = check_float("target_accept", target_accept, 0.5, 1.0, high_open=True)
    spec, data = prep.spec, prep.data
    chain_method = ("parallel" if jax.local_device_count() >= chains and chains > 1
                    else "sequential")
    adapt = (not start.converged) if adapt_metric is None else bool(adapt_metric)
    kernel = NUTS(runs_model, target_accept_prob=target_accept,
                  dense_mass=dense_mass, adapt_mass_matrix=adapt,
                  inverse_mass_matrix=start.inverse_mass_matrix(dense_mass))
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method=chain_method, progress_bar=progress)
    mcmc.run(key, data, extra_fields=EXTRA_FIELDS, init_params=start.init_params,
             spec=spec, n_valid=data.n_valid, deterministic=False)
    latent = jax.device_get(mcmc.get_samples(group_by_chain=True))
    det = deterministic_sites(latent, spec)
    attrs = {"chains": chains, "draws": draws, "warmup": warmup,
             "chain_method": chain_method, "metric": "adapted" if adapt else "laplace"}
    return Sampled("nuts", {**latent, **det}, attrs, mcmc=mcmc, deterministic=det)


def sample_svi(
    key: jax.Array,
    prep: Prepared,
    *,
    steps: int,
    learning_rate: float,
    draws: int,
    batch: int | None = None,
    progress: bool = False,
) -> Sampled:
    """Fit a Gaussian guide by SVI (optax Adam, cosine decay) and draw from it.

    The guide is full rank (``AutoMultivariateNormal``) up to 200 latent dimensions, else
    low rank (rank 20). ``batch`` runs per step: by default all runs up to
    :data:`SVI_BATCH`, else random mini-batches of that size. The draws come as one chain.

    Example
    -------
    >>> from llmnas_transfer.io.runs import toy_runs
    >>> from llmnas_transfer.fit.preparation import prepare
    >>> runs = toy_runs(num_iterations=1)
    >>> s = sample_svi(jax.random.key(0), prepare(runs),
    ...                steps=30, learning_rate=0.01, draws=10)
    >>> s.attrs["chain_method"], s.losses.shape
    ('svi', (30,))
    """
    import optax

    steps = check_int("svi_steps", steps, 1, 10**7)
    draws = check_int("draws", draws, 1, 10**6)
    spec, data = prep.spec, prep.data
    n_runs = int(data.n_generated.shape[0])
    if batch is None:
        batch = n_runs if n_runs <= SVI_BATCH else SVI_BATCH
    batch = check_int("svi_batch", batch, 1, 10**9)
    sub = None if batch >= n_runs else batch
    lr = check_float("svi_learning_rate", learning_rate, 0.0, 1.0, low_open=True,
                     high_open=True)
    k_init, k_run, k_draw = jax.random.split(key, 3)
    schedule = optax.cosine_decay_schedule(lr, steps, alpha=0.05)
    optim = numpyro.optim.optax_to_numpyro(
        optax.chain(optax.clip_by_global_norm(100.0), optax.adam(schedule)))
    # the guide starts at the prior centres of the dynamics, with a scale near that of
    # the posterior, which shrinks as 1/sqrt(runs) (Adam moves the scale by about the
    # learning rate per step, so a start 10x too wide costs hundreds of steps)
    init_scale = 0.1 * min(1.0, (SVI_SCALE_RUNS / n_runs) ** 0.5)
    guide = AutoMultivariateNormal(runs_model, init_loc_fn=init_to_value(values=prior_medians()),
                                   init_scale=init_scale)
    svi = SVI(runs_model, guide, optim, Trace_ELBO())
    res = svi.run(k_run, steps, data, spec=spec, n_valid=data.n_valid, subsample_size=sub,
                  progress_bar=progress)
    # the dimension of the latent space decides the guide: full rank up to 200 dimensions
    if guide.latent_dim > 200:  # full rank too costly: refit with a low-rank guide
        guide = AutoLowRankMultivariateNormal(runs_model, rank=20,
                                              init_loc_fn=init_to_median(num_samples=15))
        svi = SVI(runs_model, guide, optim, Trace_ELBO())
        res = svi.run(k_run, steps, data, spec=spec, n_valid=data.n_valid, subsample_size=sub,
                      progress_bar=progress)
    k_lat, k_det = jax.random.split(k_draw)
    latent = guide.sample_posterior(k_lat, res.params, data, spec=spec, n_valid=data.n_valid,
                                    sample_shape=(draws,))
    det = Predictive(runs_model, posterior_samples=latent,
                     return_sites=list(DETERMINISTIC_DIMS))(k_det, data, spec=spec,
                                                            n_valid=data.n_valid)
    samples = {k: np.asarray(v)[None] for k, v in {**latent, **det}.items()
               if k != "n_valid"}
    attrs = {"chains": 1, "draws": draws, "warmup": 0, "chain_method": "svi",
             "metric": "none", "svi_steps": steps, "svi_learning_rate": lr}
    return Sampled("svi", samples, attrs, losses=np.asarray(res.losses))


__all__ = [
    "EXTRA_FIELDS", "SVI_BATCH", "SVI_SCALE_RUNS", "Sampled", "deterministic_sites",
    "sample_nuts", "sample_svi", "set_cpu_devices",
]
