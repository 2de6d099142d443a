"""Start NUTS from a Laplace approximation: posterior mode, curvature, chain starts.

:func:`laplace_start` runs L-BFGS on the model's potential from several points at once,
takes the Hessian at the best end point and returns a :class:`LaplaceStart`: the mode, its
covariance (NUTS's initial metric) and one start per chain drawn from that Gaussian. Both
:func:`~llmnas_transfer.fit.inference.fit_runs` and :func:`llmnas_transfer.fit.checks.sbc`
start their chains here.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import init_to_value

from llmnas_transfer.fit.model import ModelSpec, RunsData, prior_medians, runs_model
from llmnas_transfer.fit.preparation import Prepared
from llmnas_transfer.validate import check_int


class LaplaceStart(NamedTuple):
    """Starting points and initial metric of NUTS from a Laplace approximation.

    ``mode`` is the posterior mode in the unconstrained space (a dict of sites), ``cov``
    the inverse Hessian of the potential there (flattened in the order of
    :func:`jax.flatten_util.ravel_pytree`, i.e. sorted site names), ``init_params`` one
    draw per chain from ``N(mode, cov)`` and ``converged`` whether the Hessian was finite
    and positive definite (else ``cov`` is the identity and NUTS adapts from scratch).
    """

    mode: dict
    cov: np.ndarray
    init_params: dict
    converged: bool
    potential: float

    def inverse_mass_matrix(self, dense: bool) -> dict | jax.Array | None:
        """Initial inverse mass matrix for NumPyro's NUTS (``None`` when not converged)."""
        if not self.converged:
            return None
        if dense:
            return {tuple(sorted(self.mode)): jnp.asarray(self.cov)}
        return jnp.asarray(np.diag(self.cov))


@partial(jax.jit, static_argnames=("spec", "values"))
def _unconstrained_init(key, data: RunsData, spec: ModelSpec, values: tuple) -> dict:
    """Unconstrained values of the latent sites: ``values`` (name, value) where given,
    else ``init_to_uniform`` draws (only their shapes are used by the caller).

    One compiled trace of the model. ``numpyro.infer.util.initialize_model`` gives the
    same sites, but first checks the potential and its gradient op by op: about 15 s
    of eager compilation on the first call for each data shape on the 2-core CPU."""
    from numpyro.distributions.transforms import biject_to
    from numpyro.handlers import seed, substitute, trace

    model = substitute(seed(runs_model, key), substitute_fn=init_to_value(values=dict(values)))
    tr = trace(model).get_trace(data, spec=spec, n_valid=data.n_valid, deterministic=False)
    return {name: biject_to(site["fn"].support).inv(site["value"])
            for name, site in tr.items()
            if site["type"] == "sample" and not site["is_observed"]}


@partial(jax.jit, static_argnames=("spec", "max_iter"))
def _laplace_solve(z0s: dict, data: RunsData, spec: ModelSpec, max_iter: int):
    """L-BFGS on the potential from each start (leading axis of ``z0s``, vmapped), then
    the Hessian at the best end point. Compiled once per data shape and spec, not once
    per fit. Returns ``(x, potential(x), hessian)``."""
    import optax
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import potential_energy

    _, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], z0s))
    x0s = jax.vmap(lambda z: ravel_pytree(z)[0])(z0s)
    kwargs = {"spec": spec, "n_valid": data.n_valid, "deterministic": False}

    def potential(x):
        return potential_energy(runs_model, (data,), kwargs, unravel(x))

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(potential)

    def solve(x0):
        def body(carry, _):
            x, state = carry
            v, g = value_and_grad(x, state=state)
            u, state = opt.update(g, state, x, value=v, grad=g, value_fn=potential)
            return (optax.apply_updates(x, u), state), v

        (x, _), _ = jax.lax.scan(body, (x0, opt.init(x0)), None, length=max_iter)
        return x, potential(x)

    xs, funs = jax.vmap(solve)(x0s)
    best = jnp.argmin(jnp.where(jnp.isfinite(funs), funs, jnp.inf))
    x = xs[best]
    return x, funs[best], jax.hessian(potential)(x)


def laplace_start(key: jax.Array, prep: Prepared, chains: int, *, max_iter: int = 150,
                  num_starts: int = 8) -> LaplaceStart:
    """Find the posterior mode (L-BFGS in the unconstrained space) and the curvature there.

    Starting NUTS from draws of this Gaussian approximation, with its covariance as the
    initial metric, spends the warmup on adapting rather than on finding the typical set
    (the first warmup trajectories from a poor start and a unit metric are hundreds of
    leapfrog steps long). The chains still start at different points, so r_hat keeps its
    power to show chains that have not mixed.

    The posterior can have minor local modes (SBC found one 30 nats below the main mode,
    with ``kappa`` near 0, that NUTS started there did not leave), so L-BFGS runs from
    ``num_starts`` points at once and the lowest potential wins. Start 0 puts the scalar
    dynamics at their prior medians and every other unconstrained coordinate at 0; the
    others keep the prior medians and draw the rest uniformly on (-2, 2), as NumPyro's
    ``init_to_uniform`` does.

    Example
    -------
    >>> from llmnas_transfer.io.runs import toy_runs
    >>> from llmnas_transfer.fit.preparation import prepare
    >>> runs = toy_runs(num_iterations=2)
    >>> s = laplace_start(jax.random.key(0), prepare(runs), 2)
    >>> s.init_params["kappa"].shape, s.converged
    ((2,), True)
    """
    from jax.flatten_util import ravel_pytree

    num_starts = check_int("num_starts", num_starts, 1, 1024)
    spec, data = prep.spec, prep.data
    k_model, k_draw = jax.random.split(key)
    k_starts = jax.random.fold_in(key, 2)
    # the optimiser starts from the prior centres of the dynamics (a random start can
    # end in a poor local mode, e.g. one with a negative validity slope)
    medians = prior_medians()
    z = _unconstrained_init(k_model, data, spec, tuple(sorted(medians.items())))
    fixed = set(medians)
    names = sorted(z)
    starts = {}
    for i, name in enumerate(names):
        v = jnp.asarray(z[name])
        if name in fixed:
            starts[name] = jnp.broadcast_to(v, (num_starts,) + v.shape)
        else:
            u = jax.random.uniform(jax.random.fold_in(k_starts, i), (num_starts,) + v.shape,
                                   v.dtype, -2.0, 2.0)
            starts[name] = u.at[0].set(0.0)
    _, unravel = ravel_pytree(z)
    x, fun, hess = jax.device_get(_laplace_solve(starts, data, spec, max_iter))
    n = x.shape[0]
    hess = 0.5 * (np.asarray(hess, np.float64) + np.asarray(hess, np.float64).T)
    ok = bool(np.all(np.isfinite(hess)) and np.isfinite(fun))
    if ok:
        w, v = np.linalg.eigh(hess)
        ok = bool(w.min() > 0)
    if ok:
        cov = (v / w) @ v.T
        chol = np.linalg.cholesky(cov + 1e-9 * np.eye(n))
    else:
        cov, chol = np.eye(n), np.eye(n) * 0.1
    zz = np.asarray(jax.random.normal(k_draw, (chains, n), jnp.float32), np.float64)
    chain_starts = np.asarray(x, np.float64) + zz @ chol.T
    init = jax.vmap(unravel)(jnp.asarray(chain_starts, jnp.float32))
    if chains == 1:  # NumPyro takes a single chain's start without the chain axis
        init = jax.tree.map(lambda a: a[0], init)
    return LaplaceStart(unravel(jnp.asarray(x)), cov, init, ok, float(fun))


__all__ = ["LaplaceStart", "laplace_start"]
