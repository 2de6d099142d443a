"""Start NUTS from a Laplace approximation: posterior mode, curvature, chain starts.

:func:`laplace_start` runs L-BFGS on the model's potential from several points at once,
takes the Hessian at the best end point (central differences of the gradient) and returns
a :class:`LaplaceStart`: the mode, its covariance (NUTS's initial metric) and one start
per chain drawn from that Gaussian. The solver is one compiled program per model and
padded data shape (:func:`~llmnas_transfer.fit.preparation.pad_runs`), reused by later
fits in the process and, through JAX's persistent cache, by later processes. Both
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
from llmnas_transfer.fit.preparation import Prepared, pad_runs
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


#: L-BFGS memory (pairs of steps and gradient changes kept)
_MEMORY = 10
#: Armijo sufficient-decrease constant of the backtracking line search
_ARMIJO = 1e-4
#: finite-difference step of the Hessian, relative to max(1, |x|)
_FD_STEP = 1e-3


def _two_loop(g, S, Y, rho, gamma):
    """L-BFGS direction ``-H g`` from the memory (oldest first; unused pairs are 0)."""
    def back(q, syr):
        s, y, r = syr
        a = r * jnp.dot(s, q)
        return q - a * y, a

    q, alphas = jax.lax.scan(back, g, (S, Y, rho), reverse=True)
    r = gamma * q

    def fwd(r, syra):
        s, y, rr, a = syra
        return r + s * (a - rr * jnp.dot(y, r)), None

    r, _ = jax.lax.scan(fwd, r, (S, Y, rho, alphas))
    return -r


@partial(jax.jit, static_argnames=("spec", "max_iter"))
def _laplace_solve(z0s: dict, data: RunsData, spec: ModelSpec, max_iter: int):
    """L-BFGS on the potential from each start (leading axis of ``z0s``), then the Hessian
    at the best end point. Returns ``(x, potential(x), hessian, potential per start)``.

    The potential and its gradient are evaluated at one place in the program, a batch of
    points per step of one scan: first ``2 max_iter`` steps of L-BFGS with a backtracking
    (Armijo) line search, every start at once, then the Hessian by central differences of
    the gradient at the best end point, a batch of ``num_starts`` points a step. XLA
    compiles each evaluation of the model (and each derivative of it) separately, so one
    evaluation site compiles several times faster than a solver with a line search and an
    exact Hessian (``jax.hessian``). Compiled once per padded data shape and spec and
    found in JAX's persistent cache by later processes (the data are arguments)."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import potential_energy

    _, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], z0s))
    x0s = jax.vmap(lambda z: ravel_pytree(z)[0])(z0s)
    B, n = x0s.shape
    m = _MEMORY
    kwargs = {"spec": spec, "n_valid": data.n_valid, "deterministic": False}

    def potential(x):
        return potential_energy(runs_model, (data,), kwargs, unravel(x))

    vg = jax.vmap(jax.value_and_grad(potential))
    n_opt = 2 * max_iter
    n_fd = -(-2 * n // B)  # steps of the finite differences
    f32 = x0s.dtype

    def accept_step(x, f, g, d, alpha, S, Y, rho, gamma, xt, ft, gt):
        """One start: accept the trial point (Armijo) or halve the step."""
        ok = jnp.isfinite(ft) & jnp.all(jnp.isfinite(gt)) & (
            ft <= f + _ARMIJO * alpha * jnp.dot(g, d))
        sv, yv = xt - x, gt - g
        sy = jnp.dot(sv, yv)
        keep = ok & (sy > 1e-10)
        S2 = jnp.where(keep, jnp.concatenate([S[1:], sv[None]]), S)
        Y2 = jnp.where(keep, jnp.concatenate([Y[1:], yv[None]]), Y)
        rho2 = jnp.where(keep, jnp.concatenate([rho[1:], (1.0 / jnp.where(keep, sy, 1.0))[None]]),
                         rho)
        gamma2 = jnp.where(keep, sy / jnp.maximum(jnp.dot(yv, yv), 1e-30), gamma)
        x2, f2, g2 = (jnp.where(ok, xt, x), jnp.where(ok, ft, f), jnp.where(ok, gt, g))
        d_new = _two_loop(g2, S2, Y2, rho2, gamma2)
        descent = jnp.dot(d_new, g2) < 0
        # no descent direction: forget the memory, steepest descent
        S2, Y2, rho2 = (jnp.where(descent, a, 0.0) for a in (S2, Y2, rho2))
        d_new = jnp.where(descent, d_new, -g2 / jnp.maximum(1.0, jnp.linalg.norm(g2)))
        tiny = alpha < 1e-6  # the line search failed: restart from steepest descent
        d2 = jnp.where(ok, d_new, jnp.where(tiny, -g / jnp.maximum(1.0, jnp.linalg.norm(g)), d))
        alpha2 = jnp.where(ok | tiny, 1.0, 0.5 * alpha)
        S2, Y2, rho2 = (jnp.where(ok | ~tiny, a, 0.0) for a in (S2, Y2, rho2))
        return x2, f2, g2, d2, alpha2, S2, Y2, rho2, gamma2

    def body(carry, i):
        x, f, g, d, alpha, S, Y, rho, gamma, buf = carry
        fd_phase = i >= n_opt
        best = jnp.argmin(jnp.where(jnp.isfinite(f), f, jnp.inf))
        xb = x[best]
        h = _FD_STEP * jnp.maximum(1.0, jnp.abs(xb))
        j = (i - n_opt) * B + jnp.arange(B)  # finite-difference points of this step
        col = j % n
        sign = jnp.where(j < n, 1.0, -1.0).astype(f32)
        fd_pts = xb[None] + sign[:, None] * h[col][:, None] * jax.nn.one_hot(col, n, dtype=f32)
        pts = jnp.where(fd_phase, fd_pts, x + alpha[:, None] * d)
        ft, gt = vg(pts)
        new = jax.vmap(accept_step)(x, f, g, d, alpha, S, Y, rho, gamma, pts, ft, gt)
        new = jax.tree.map(lambda a, b: jnp.where(fd_phase, a, b),
                           (x, f, g, d, alpha, S, Y, rho, gamma), new)
        at = jnp.where(fd_phase, (i - n_opt) * B, n_fd * B)  # the spare rows otherwise
        buf = jax.lax.dynamic_update_slice(buf, gt, (at, 0))
        return (*new, buf), None

    # the first step evaluates the starts themselves (f = inf accepts them)
    init = (x0s, jnp.full((B,), jnp.inf, f32), jnp.zeros_like(x0s), jnp.zeros_like(x0s),
            jnp.zeros((B,), f32), jnp.zeros((B, m, n), f32), jnp.zeros((B, m, n), f32),
            jnp.zeros((B, m), f32), jnp.ones((B,), f32),
            jnp.zeros(((n_fd + 1) * B, n), f32))
    (x, f, g, _, _, _, _, _, _, buf), _ = jax.lax.scan(
        body, init, jnp.arange(n_opt + n_fd))
    best = jnp.argmin(jnp.where(jnp.isfinite(f), f, jnp.inf))
    xb = x[best]
    h = _FD_STEP * jnp.maximum(1.0, jnp.abs(xb))
    hess = (buf[:n] - buf[n:2 * n]) / (2.0 * h[:, None])
    return xb, f[best], hess, f, g[best]


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
    ``init_to_uniform`` does. Each start gets ``2 max_iter`` evaluations of the potential
    and its gradient (line-search trials included).

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
    # empty runs up to the bucket size leave the potential unchanged and let fits of
    # similar sizes share the compiled solver
    spec, data = prep.spec, pad_runs(prep.data)
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
    x, fun, hess, _, grad = jax.device_get(_laplace_solve(starts, data, spec, max_iter))
    n = x.shape[0]
    hess = 0.5 * (np.asarray(hess, np.float64) + np.asarray(hess, np.float64).T)
    ok = bool(np.all(np.isfinite(hess)) and np.isfinite(fun))
    if ok:
        w, v = np.linalg.eigh(hess)
        ok = bool(w.min() > 0)
    if ok:
        cov = (v / w) @ v.T
        # one Newton step polishes the end point (float32 potentials of large data stop
        # the line search a little short of the mode); skipped if it is not small
        step, in_sds = newton_step(cov, grad)
        if np.all(np.isfinite(step)) and np.max(in_sds) < 1:
            x = np.asarray(x, np.float64) - step
        chol = np.linalg.cholesky(cov + 1e-9 * np.eye(n))
    else:
        cov, chol = np.eye(n), np.eye(n) * 0.1
    zz = np.asarray(jax.random.normal(k_draw, (chains, n), jnp.float32), np.float64)
    chain_starts = np.asarray(x, np.float64) + zz @ chol.T
    init = jax.vmap(unravel)(jnp.asarray(chain_starts, jnp.float32))
    if chains == 1:  # NumPyro takes a single chain's start without the chain axis
        init = jax.tree.map(lambda a: a[0], init)
    return LaplaceStart(unravel(jnp.asarray(x, jnp.float32)), cov, init, ok, float(fun))


__all__ = ["LaplaceStart", "laplace_start"]


def newton_step(cov: np.ndarray, grad) -> tuple[np.ndarray, np.ndarray]:
    """The Newton step ``cov @ grad`` of the potential and its size per coordinate in
    posterior sds (``sqrt(diag(cov))``): near 0 at the mode.

    Example
    -------
    >>> step, sds = newton_step(np.diag([4.0, 1.0]), np.asarray([0.5, 0.0]))
    >>> step.tolist(), sds.tolist()
    ([2.0, 0.0], [1.0, 0.0])
    """
    step = np.asarray(cov, np.float64) @ np.asarray(grad, np.float64)
    return step, np.abs(step) / np.sqrt(np.diag(cov))


def mode_newton_step(prep: Prepared, start: LaplaceStart) -> np.ndarray:
    """Per-coordinate Newton step from ``start.mode`` in posterior sds, with the exact
    gradient of the potential of ``prep``: how far the start is from the mode.

    Example
    -------
    >>> start = laplace_start(jax.random.key(0), prep, 1)  # doctest: +SKIP
    >>> bool(mode_newton_step(prep, start).max() < 0.01)  # doctest: +SKIP
    True
    """
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import potential_energy

    x, unravel = ravel_pytree(start.mode)
    kw = {"spec": prep.spec, "n_valid": prep.data.n_valid, "deterministic": False}
    grad = jax.grad(lambda v: potential_energy(runs_model, (prep.data,), kw, unravel(v)))(x)
    return newton_step(start.cov, grad)[1]
