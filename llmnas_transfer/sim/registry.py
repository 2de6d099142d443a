"""Registry of datasets and tasks: the settings a study is run over.

The eight datasets and four tasks of the reference study are built in. Users add their
own at run time with :func:`register_dataset` and :func:`register_task`; nothing in the
package needs editing.

Example
-------
>>> from llmnas_transfer.sim import registry
>>> registry.get_dataset("cifar-10").modality
'image'
>>> _ = registry.register_dataset("my-speech", modality="audio", resolution=16000,
...                               num_classes=35, replace=True)
>>> "my-speech" in registry.dataset_names()
True
>>> registry.unregister_dataset("my-speech")
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

from llmnas_transfer.errors import UnknownSettingError, UserInputError
from llmnas_transfer.validate import closest_name

MODALITIES: tuple[str, ...] = ("image", "audio", "text")


@dataclass(frozen=True)
class Dataset:
    """A dataset and the attributes the model reads.

    Attributes
    ----------
    name : lower-case identifier, e.g. ``"cifar-10"``.
    modality : one of ``"image"``, ``"audio"``, ``"text"``.
    resolution : input side in pixels (images), mel bins (audio) or tokens (text).
    num_classes : number of classes of the classification version of the dataset.
    channels : input channels (images), 1 otherwise.
    difficulty : optional override of the validity difficulty ``D_d`` (logit scale).
        ``None`` means: use the calibrated value for built-ins, or the attribute
        regression for user datasets.
    accuracy_level : optional override of the accuracy level ``alpha_d`` (logit scale of
        the chance-normalised accuracy, see :func:`chance_level`).
    """

    name: str
    modality: str
    resolution: int
    num_classes: int
    channels: int = 3
    difficulty: float | None = None
    accuracy_level: float | None = None
    description: str = ""

    def features(self) -> tuple[float, float, float, float]:
        """Attribute features used by the difficulty and accuracy regressions.

        ``(is_audio, is_text, log2(resolution / 32) for images else 0,
        log10(num_classes / 10))``.

        Example
        -------
        >>> get_dataset("cifar-10").features()
        (0.0, 0.0, 0.0, 0.0)
        """
        image_res = math.log2(self.resolution / 32.0) if self.modality == "image" else 0.0
        return (
            float(self.modality == "audio"),
            float(self.modality == "text"),
            image_res,
            math.log10(self.num_classes / 10.0),
        )

    @property
    def chance(self) -> float:
        """Accuracy of guessing on the classification version, ``1 / num_classes``.

        Example
        -------
        >>> get_dataset("nlp-sst2").chance
        0.5
        """
        return 1.0 / self.num_classes


@dataclass(frozen=True)
class Task:
    """A task formulation.

    Attributes
    ----------
    name : lower-case identifier, e.g. ``"segmentation"``.
    complexity : optional override of the task complexity ``C_k`` (logit scale).
    accuracy_offset : optional override of the task's accuracy offset (logit scale).
    interaction : optional per-modality overrides of the modality x task interaction.
    metric : the first-epoch score the task reports (``"accuracy"``, ``"mIoU"``, ...).
    has_chance : whether the metric has a chance level of ``1 / num_classes`` (accuracy
        of a classifier). Metrics without one (IoU, mAP, BLEU) have a floor of 0.
    """

    name: str
    complexity: float | None = None
    accuracy_offset: float | None = None
    interaction: dict[str, float] = field(default_factory=dict)
    description: str = ""
    metric: str = "score"
    has_chance: bool = False


_BUILTIN_DATASETS: tuple[Dataset, ...] = (
    Dataset("cifar-10", "image", 32, 10, 3, description="CIFAR-10, 32x32 RGB, 10 classes"),
    Dataset("cifar-100", "image", 32, 100, 3, description="CIFAR-100, 32x32 RGB"),
    Dataset("stl-10", "image", 96, 10, 3, description="STL-10, 96x96 RGB, 10 classes"),
    Dataset("svhn", "image", 32, 10, 3, description="Street View House Numbers, 32x32"),
    Dataset("fashion-mnist", "image", 28, 10, 1, description="Fashion-MNIST, 28x28 grey"),
    Dataset("imagenet", "image", 224, 1000, 3, description="ImageNet-1k at 224x224"),
    Dataset("audioset", "audio", 64, 527, 1, description="AudioSet, 64-bin log-mel input"),
    Dataset("nlp-sst2", "text", 64, 2, 1, description="SST-2 sentiment, 64-token input"),
)
_BUILTIN_TASKS: tuple[Task, ...] = (
    Task("classification", description="one label per input", metric="accuracy",
         has_chance=True),
    Task("segmentation", description="dense per-pixel (per-frame, per-token) labels",
         metric="mIoU"),
    Task("detection", description="localised objects or events", metric="mAP"),
    Task("generation", description="decoder-heavy generative models",
         metric="BLEU or task score"),
)

BUILTIN_DATASET_NAMES: tuple[str, ...] = tuple(d.name for d in _BUILTIN_DATASETS)
BUILTIN_TASK_NAMES: tuple[str, ...] = tuple(t.name for t in _BUILTIN_TASKS)
IMAGE_DATASET_NAMES: tuple[str, ...] = tuple(
    d.name for d in _BUILTIN_DATASETS if d.modality == "image"
)

_DATASETS: dict[str, Dataset] = {d.name: d for d in _BUILTIN_DATASETS}
_TASKS: dict[str, Task] = {t.name: t for t in _BUILTIN_TASKS}

_REGISTER_HINT = "register a new one with llmnas_transfer.register_{kind}(name, ...)"


def _check_name(name: str, kind: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UserInputError(f"{kind} name must be a non-empty string, got {name!r}")
    clean = name.strip().lower()
    if any(c in clean for c in ",|\n\t"):
        raise UserInputError(f"{kind} name {name!r} may not contain ',', '|' or whitespace")
    return clean


def register_dataset(
    name: str,
    *,
    modality: str,
    resolution: int,
    num_classes: int,
    channels: int = 3,
    difficulty: float | None = None,
    accuracy_level: float | None = None,
    description: str = "",
    replace: bool = False,
) -> Dataset:
    """Add a dataset to the registry at run time.

    Example
    -------
    >>> ds = register_dataset("esc-50", modality="audio", resolution=64, num_classes=50,
    ...                       replace=True)
    >>> ds.name
    'esc-50'
    >>> unregister_dataset("esc-50")
    """
    key = _check_name(name, "dataset")
    if modality not in MODALITIES:
        raise UserInputError(
            f"modality {modality!r} for dataset {key!r} is not one of {', '.join(MODALITIES)}"
        )
    if int(resolution) < 1 or int(num_classes) < 1 or int(channels) < 1:
        raise UserInputError(
            f"dataset {key!r}: resolution, num_classes and channels must be positive integers"
        )
    if key in _DATASETS and not replace:
        raise UserInputError(f"dataset {key!r} is already registered; pass replace=True")
    if key in BUILTIN_DATASET_NAMES:
        raise UserInputError(f"dataset {key!r} is built in and cannot be replaced")
    ds = Dataset(key, modality, int(resolution), int(num_classes), int(channels),
                 difficulty, accuracy_level, description)
    _DATASETS[key] = ds
    return ds


def register_task(
    name: str,
    *,
    complexity: float | None = None,
    accuracy_offset: float | None = None,
    interaction: dict[str, float] | None = None,
    description: str = "",
    metric: str = "score",
    has_chance: bool = False,
    replace: bool = False,
) -> Task:
    """Add a task to the registry at run time.

    Unknown parameters default to the mean of the built-in non-classification tasks.
    ``has_chance=True`` declares a metric whose chance level is ``1 / num_classes`` of the
    dataset (an accuracy); otherwise the metric's floor is 0.

    Example
    -------
    >>> t = register_task("captioning", complexity=1.2, replace=True)
    >>> t.complexity
    1.2
    >>> unregister_task("captioning")
    """
    key = _check_name(name, "task")
    if key in BUILTIN_TASK_NAMES:
        raise UserInputError(f"task {key!r} is built in and cannot be replaced")
    if key in _TASKS and not replace:
        raise UserInputError(f"task {key!r} is already registered; pass replace=True")
    inter = dict(interaction or {})
    bad = set(inter) - set(MODALITIES)
    if bad:
        raise UserInputError(f"task {key!r}: unknown modalities in interaction: {sorted(bad)}")
    t = Task(key, complexity, accuracy_offset, inter, description, str(metric),
             bool(has_chance))
    _TASKS[key] = t
    return t


def _unregister(table: dict, builtins, name: str, kind: str) -> None:
    key = _check_name(name, kind)
    if key in builtins:
        raise UserInputError(f"{kind} {key!r} is built in and cannot be removed")
    table.pop(key, None)


def _lookup(table: dict, name: str, kind: str):
    key = _check_name(name, kind)
    if key not in table:
        close = closest_name(key, list(table))
        hint = f"did you mean {close!r}? " if close else ""
        raise UnknownSettingError(
            f"unknown {kind} {name!r}; {hint}known {kind}s: {', '.join(table)}; "
            + _REGISTER_HINT.format(kind=kind)
        )
    return table[key]


def unregister_dataset(name: str) -> None:
    """Remove a user-registered dataset (built-ins cannot be removed).

    Example
    -------
    >>> _ = register_dataset("tmp-set", modality="image", resolution=8, num_classes=2)
    >>> unregister_dataset("tmp-set")
    >>> "tmp-set" in dataset_names()
    False
    """
    _unregister(_DATASETS, BUILTIN_DATASET_NAMES, name, "dataset")


def unregister_task(name: str) -> None:
    """Remove a user-registered task (built-ins cannot be removed).

    Example
    -------
    >>> _ = register_task("tmp-task")
    >>> unregister_task("tmp-task")
    >>> "tmp-task" in task_names()
    False
    """
    _unregister(_TASKS, BUILTIN_TASK_NAMES, name, "task")


def dataset_names() -> tuple[str, ...]:
    """Names of all registered datasets, built-ins first.

    Example
    -------
    >>> dataset_names()[0]
    'cifar-10'
    """
    return tuple(_DATASETS)


def task_names() -> tuple[str, ...]:
    """Names of all registered tasks, built-ins first.

    Example
    -------
    >>> task_names()[0]
    'classification'
    """
    return tuple(_TASKS)


def get_dataset(name: str) -> Dataset:
    """Look up a dataset by (case-insensitive) name.

    Example
    -------
    >>> get_dataset("CIFAR-100").num_classes
    100
    """
    return _lookup(_DATASETS, name, "dataset")


def get_task(name: str) -> Task:
    """Look up a task by (case-insensitive) name.

    Example
    -------
    >>> get_task("detection").name
    'detection'
    """
    return _lookup(_TASKS, name, "task")


def resolve(
    datasets: str | list[str] | tuple[str, ...] | None,
    tasks: str | list[str] | tuple[str, ...] | None,
) -> tuple[tuple[Dataset, ...], tuple[Task, ...]]:
    """Resolve name lists (``None`` means the built-ins) to registry entries.

    Example
    -------
    >>> ds, ts = resolve(["cifar-10"], None)
    >>> [t.name for t in ts]
    ['classification', 'segmentation', 'detection', 'generation']
    """
    if datasets is None:
        datasets = BUILTIN_DATASET_NAMES
    if tasks is None:
        tasks = BUILTIN_TASK_NAMES
    if isinstance(datasets, str):
        datasets = [s for s in datasets.split(",") if s.strip()]
    if isinstance(tasks, str):
        tasks = [s for s in tasks.split(",") if s.strip()]
    ds = tuple(get_dataset(n) for n in datasets)
    ts = tuple(get_task(n) for n in tasks)
    if not ds or not ts:
        raise UserInputError("at least one dataset and one task are needed")
    for kind, items in (("dataset", ds), ("task", ts)):
        names = [x.name for x in items]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise UserInputError(f"duplicate {kind} names: {', '.join(sorted(dup))}")
    return ds, ts


def chance_level(dataset: Dataset, task: Task) -> float:
    """Floor of the first-epoch score of a setting: ``1 / num_classes`` or 0.

    A classification accuracy cannot be expected below guessing; metrics without a
    chance level (IoU, mAP, BLEU: ``task.has_chance`` false) have a floor of 0.

    Example
    -------
    >>> chance_level(get_dataset("cifar-100"), get_task("classification"))
    0.01
    >>> chance_level(get_dataset("cifar-100"), get_task("segmentation"))
    0.0
    """
    return dataset.chance if task.has_chance else 0.0


def setting_id(dataset: str, task: str) -> int:
    """Stable 31-bit identifier of a (dataset, task) setting, used to derive its stream.

    It depends only on the two names, so adding settings never moves existing streams.

    Example
    -------
    >>> setting_id("cifar-10", "classification") == setting_id("cifar-10", "classification")
    True
    """
    return zlib.crc32(f"{dataset}|{task}".encode()) & 0x7FFFFFFF
