"""The public API imports, and heavy optional layers stay off the simulator's path."""

import subprocess
import sys

import llmnas_transfer as lt


def test_public_api_is_importable():
    for name in lt.__all__:
        assert hasattr(lt, name), name
    assert lt.__version__


def test_simulator_import_does_not_pull_plotting_or_arviz():
    code = ("import sys, llmnas_transfer, llmnas_transfer.sim.candidates; "
            "print('matplotlib' in sys.modules, 'arviz' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
