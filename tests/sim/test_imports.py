"""The pure-JAX core imports no data-frame, plotting, display or inference library."""

import subprocess
import sys

import pytest

HEAVY = ("pandas", "xarray", "rich", "matplotlib", "arviz", "numpyro")


@pytest.mark.parametrize("module", ["llmnas_transfer.sim.dynamics", "llmnas_transfer.sim.keys",
                                    "llmnas_transfer.sim.samplers"])
def test_core_imports_no_heavy_library(module):
    code = (f"import sys, {module}; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", f"{module} pulls in {out}"


def test_sim_does_not_import_io():
    """sim sits below io in the layers: loading every sim module loads no io module."""
    code = ("import sys, pkgutil, importlib, llmnas_transfer.sim as s; "
            "[importlib.import_module(m.name) for m in pkgutil.iter_modules(s.__path__, "
            "s.__name__ + '.')]; "
            "print(sorted(m for m in sys.modules if m.startswith('llmnas_transfer.') "
            "and m.split('.')[1] not in ('sim', 'errors', 'validate', 'progress', 'data')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
