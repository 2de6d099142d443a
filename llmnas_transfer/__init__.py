"""llmnas-transfer: how far do LLM-driven architecture-synthesis trends transfer?

Three layers: simulate (:mod:`~llmnas_transfer.simulate`), fit
(:mod:`~llmnas_transfer.model`, :mod:`~llmnas_transfer.inference`) and summarize
(:mod:`~llmnas_transfer.metrics`, :mod:`~llmnas_transfer.summarize`).

Example
-------
>>> import llmnas_transfer as lt
>>> r = lt.simulate(0, datasets="cifar-10", tasks="classification", num_trials=2,
...                 num_iterations=2, num_candidates=3)
>>> int(r.sizes["trial"])
2
"""

from llmnas_transfer.errors import DataFormatError, UnknownSettingError, UserInputError
from llmnas_transfer.metrics import (
    accuracy_table,
    classify_regime,
    gap_components,
    gaps_table,
    novelty_table,
    validity_table,
)
from llmnas_transfer.params import DynamicsParams, ModelDefaults, SettingEffects, load_defaults
from llmnas_transfer.registry import (
    dataset_names,
    get_dataset,
    get_task,
    register_dataset,
    register_task,
    task_names,
)
from llmnas_transfer.simulate import simulate

__version__ = "0.1.0"

#: heavier layers, imported on first use so that ``simulate`` starts fast
_LAZY = {
    "run_study": "llmnas_transfer.reproduce",
    "save_results": "llmnas_transfer.results_io",
    "load_results": "llmnas_transfer.results_io",
    "read_runs": "llmnas_transfer.runs_io",
    "fit_runs": "llmnas_transfer.inference",
    "save_fit": "llmnas_transfer.inference",
    "load_fit": "llmnas_transfer.inference",
    "posterior_gaps": "llmnas_transfer.summarize",
    "trajectory": "llmnas_transfer.summarize",
    "check": "llmnas_transfer.summarize",
    "sweep": "llmnas_transfer.sweep",
    "load_lemur": "llmnas_transfer.datasets",
    "published_anchors": "llmnas_transfer.datasets",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llmnas_transfer' has no attribute {name!r}")

__all__ = [
    "DataFormatError",
    "DynamicsParams",
    "ModelDefaults",
    "SettingEffects",
    "UnknownSettingError",
    "UserInputError",
    "__version__",
    "accuracy_table",
    "check",
    "fit_runs",
    "load_fit",
    "load_lemur",
    "load_results",
    "posterior_gaps",
    "published_anchors",
    "read_runs",
    "run_study",
    "save_fit",
    "save_results",
    "sweep",
    "trajectory",
    "classify_regime",
    "dataset_names",
    "gap_components",
    "gaps_table",
    "get_dataset",
    "get_task",
    "load_defaults",
    "novelty_table",
    "register_dataset",
    "register_task",
    "simulate",
    "task_names",
    "validity_table",
]
