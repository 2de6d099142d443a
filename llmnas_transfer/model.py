"""NumPyro models of observed runs; they reuse :mod:`llmnas_transfer.dynamics`.

The accuracy part is factored out so that the LEMUR fit (:mod:`llmnas_transfer.lemur`)
and the full observed-runs model share one likelihood.

Example
-------
>>> import jax.numpy as jnp
>>> n, sz, szz, lj = accuracy_stats(jnp.asarray([0.3, 0.4]))
>>> ll = logit_accuracy_loglik(n, jnp.asarray(-0.6), jnp.asarray(0.4), sz, szz, lj)
>>> bool(jnp.isfinite(ll))
True
"""

from __future__ import annotations

import jax.numpy as jnp

from llmnas_transfer._types import Array

_LOG_2PI = float(jnp.log(2 * jnp.pi))


def accuracy_stats(accuracy: Array, mask: Array | None = None, eps: float = 1e-4):
    """Sufficient statistics of first-epoch accuracies on the logit scale.

    Returns ``(n, sum_logit, sumsq_logit, sum_log_jacobian)``, summed over the last axis;
    ``mask`` marks the entries that are observed. Accuracies are clipped to
    ``[eps, 1 - eps]`` before the logit.
    """
    a = jnp.clip(jnp.nan_to_num(accuracy, nan=0.5), eps, 1 - eps)
    m = jnp.ones_like(a) if mask is None else mask.astype(a.dtype)
    z = jnp.log(a) - jnp.log1p(-a)
    logjac = -(jnp.log(a) + jnp.log1p(-a))  # d logit / d acc
    return m.sum(-1), (m * z).sum(-1), (m * z * z).sum(-1), (m * logjac).sum(-1)


def logit_accuracy_loglik(
    n: Array, loc: Array, scale: Array, sum_z: Array, sumsq_z: Array, sum_logjac: Array
) -> Array:
    """Log-likelihood of ``n`` accuracies with ``logit(acc) ~ Normal(loc, scale)``.

    Uses the sufficient statistics from :func:`accuracy_stats`; the Jacobian term makes it
    a density on the accuracy scale. Broadcasts over leading axes.
    """
    quad = sumsq_z - 2.0 * loc * sum_z + n * loc**2
    return -0.5 * n * (_LOG_2PI + 2.0 * jnp.log(scale)) - 0.5 * quad / scale**2 + sum_logjac
