"""Shared fixtures: CPU only, fixed seeds, strict promotion for simulator tests."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import contextlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 2)


@pytest.fixture
def key():
    """A fresh key per test, derived with fold_in from a fixed root."""
    return jax.random.fold_in(jax.random.key(20261126), 1)


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


#: Test modules of work still in progress at the last stop (issues 3 and 5: NUTS fits,
#: summary path, sweeps). They pass or fail on their own merits with ``-m slow``; they are
#: kept out of the default (CI) run until their issues are closed, because their fits take
#: many minutes on 2 cores. See the issues' closing notes.
IN_PROGRESS = {
    "test_inference.py", "test_summarize.py", "test_cli_fit.py", "test_calibration.py",
    "test_sufficient.py", "test_sweep.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in IN_PROGRESS:
            item.add_marker(pytest.mark.slow)
