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

__all__ = [
    "DataFormatError",
    "DynamicsParams",
    "ModelDefaults",
    "SettingEffects",
    "UnknownSettingError",
    "UserInputError",
    "__version__",
    "accuracy_table",
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
