"""llmnas-transfer: how far do LLM-driven architecture-synthesis trends transfer?

The package is laid out by layer; imports go one way, from the bottom up:

* :mod:`llmnas_transfer.sim` - layer 1, the refinement dynamics and the JAX simulator;
* :mod:`llmnas_transfer.io` - observed-runs, results and bundled-data files;
* :mod:`llmnas_transfer.fit` - layer 2, the NumPyro model, its fits and their checks;
* :mod:`llmnas_transfer.summarize` - layer 3, gaps, posterior summaries and figures;
* :mod:`llmnas_transfer.study` - workflows built from the layers (reproduce, derive the
  defaults, sweeps, scenarios, the LEMUR analysis);
* :mod:`llmnas_transfer.cli` - the ``llmnas-transfer`` command line.

The public names below are loaded on first use, so ``import llmnas_transfer`` stays light
and importing the dynamics alone loads no pandas, xarray or NumPyro.

Example
-------
>>> import llmnas_transfer as lt
>>> r = lt.simulate(0, datasets="cifar-10", tasks="classification", num_trials=2,
...                 num_iterations=2, num_candidates=3)
>>> int(r.sizes["trial"])
2
"""

from __future__ import annotations

import importlib

from llmnas_transfer.errors import DataFormatError as DataFormatError
from llmnas_transfer.errors import UnknownSettingError as UnknownSettingError
from llmnas_transfer.errors import UserInputError as UserInputError

__version__ = "0.1.0"

#: public name -> module that defines it (loaded on first use)
_PUBLIC = {
    "release_compiled": "llmnas_transfer.cache",
    "DynamicsParams": "llmnas_transfer.sim.params",
    "ModelDefaults": "llmnas_transfer.sim.params",
    "SettingEffects": "llmnas_transfer.sim.params",
    "load_defaults": "llmnas_transfer.sim.params",
    "dataset_names": "llmnas_transfer.sim.registry",
    "get_dataset": "llmnas_transfer.sim.registry",
    "get_task": "llmnas_transfer.sim.registry",
    "register_dataset": "llmnas_transfer.sim.registry",
    "register_task": "llmnas_transfer.sim.registry",
    "task_names": "llmnas_transfer.sim.registry",
    "simulate": "llmnas_transfer.sim.candidates",
    "classify_regime": "llmnas_transfer.sim.gaps",
    "gap_components": "llmnas_transfer.sim.gaps",
    "load_lemur": "llmnas_transfer.io.bundled",
    "published_anchors": "llmnas_transfer.io.bundled",
    "read_runs": "llmnas_transfer.io.runs",
    "save_results": "llmnas_transfer.io.results",
    "load_results": "llmnas_transfer.io.results",
    "fit_runs": "llmnas_transfer.fit.inference",
    "save_fit": "llmnas_transfer.fit.fitfile",
    "load_fit": "llmnas_transfer.fit.fitfile",
    "accuracy_table": "llmnas_transfer.summarize.tables",
    "gaps_table": "llmnas_transfer.summarize.tables",
    "novelty_table": "llmnas_transfer.summarize.tables",
    "validity_table": "llmnas_transfer.summarize.tables",
    "posterior_gaps": "llmnas_transfer.summarize.posterior",
    "trajectory": "llmnas_transfer.summarize.posterior",
    "check": "llmnas_transfer.summarize.posterior",
    "run_study": "llmnas_transfer.study.reproduce",
    "sweep": "llmnas_transfer.study.sweeps",
    "plan": "llmnas_transfer.study.plan",
}


def __getattr__(name: str):
    """Load a public name from its module on first use and keep it (PEP 562)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'llmnas_transfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = sorted(
    ["DataFormatError", "UnknownSettingError", "UserInputError", "__version__", *_PUBLIC]
)
