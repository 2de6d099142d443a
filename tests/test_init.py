"""The public API: every name loads, stays one object, and heavy layers load on demand."""

import importlib
import subprocess
import sys

import llmnas_transfer as lt


def test_public_api_is_importable():
    for name in lt.__all__:
        assert hasattr(lt, name), name
    assert lt.__version__
    assert lt.__all__ == sorted(lt.__all__)


def test_public_names_are_functions_or_classes_not_modules():
    import types

    for name in lt.__all__:
        assert not isinstance(getattr(lt, name), types.ModuleType), name


def test_public_name_is_one_object_after_every_submodule_is_imported():
    import pkgutil

    before = {name: getattr(lt, name) for name in lt.__all__}
    for info in pkgutil.walk_packages(lt.__path__, "llmnas_transfer."):
        if info.name != "llmnas_transfer.__main__":
            importlib.import_module(info.name)
    for name, obj in before.items():
        assert getattr(lt, name) is obj, name


def test_sweep_can_be_called_twice():
    # the lazy loader once rebound lt.sweep to its submodule after the first call
    kwargs = dict(datasets="cifar-10", tasks="classification", num_trials=4,
                  num_iterations=2, num_candidates=3, bins=0)
    first = lt.sweep(0, **kwargs)
    second = lt.sweep(0, **kwargs)
    assert callable(lt.sweep)
    assert first["n_valid"].values.tolist() == second["n_valid"].values.tolist()


def test_simulator_import_does_not_pull_plotting_or_arviz():
    code = ("import sys, llmnas_transfer, llmnas_transfer.sim.candidates; "
            "print('matplotlib' in sys.modules, 'arviz' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_package_import_is_light():
    code = ("import sys, llmnas_transfer; "
            "print(sorted(m for m in ('pandas', 'xarray', 'numpyro', 'arviz', 'matplotlib', "
            "'rich', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
