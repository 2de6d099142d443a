"""Parameter PyTrees and the shipped, calibrated defaults.

Two NamedTuples carry everything the dynamics read:

* :class:`DynamicsParams` - global refinement dynamics and emission slopes (scalars).
* :class:`SettingEffects` - per-setting offsets, one entry per (dataset, task) cell.

:class:`ModelDefaults` is the calibrated parameter file (``data/default_params.json``)
turned into an object that builds :class:`SettingEffects` for any list of registered
datasets and tasks, including user-registered ones (through the attribute regression).

Example
-------
>>> from llmnas_transfer.sim.params import load_defaults
>>> d = load_defaults()
>>> eff = d.effects(["cifar-10", "audioset"], ["classification"])
>>> eff.validity_offset.shape
(2,)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.types import Array
from llmnas_transfer.validate import did_you_mean

DEFAULT_PARAMS_FILE = "default_params.json"
#: the shipped parameter sets: name -> file in the package's data folder. ``paper`` (the
#: default) is calibrated on the paper's statements, ``lemur`` on LEMUR's real first-epoch
#: accuracies (``llmnas-transfer calibrate --set NAME`` derives each).
PARAM_SETS: dict[str, str] = {"paper": DEFAULT_PARAMS_FILE, "lemur": "lemur_params.json"}


class DynamicsParams(NamedTuple):
    """Global refinement dynamics (all scalars).

    State: ``s_1 ~ N(0, init_sd^2)``,
    ``s_{t+1} = s_t + kappa_s (mu_s - s_t) + phi_v (v_t - 1/2) + phi_a (a_t - 1/2)
    + state_noise e_t`` with the setting's rate ``kappa_s = sigmoid(logit kappa + r_s)``
    and asymptote ``mu_s`` (:class:`SettingEffects`), and the feedback of the iteration:
    its valid fraction ``v_t`` and the mean chance-normalised accuracy ``a_t`` of its valid
    candidates (``1/2`` when none is valid), with strengths ``phi_v = feedback_validity``
    and ``phi_a = feedback_accuracy``. ``r_s = 0``, ``mu_s = 1`` and ``phi = 0`` give one
    shared drift toward 1.
    Emissions: ``logit P(valid) = validity_intercept + validity_slope s_t - delta``,
    accuracy ``c + (1 - c) sigmoid(alpha + accuracy_slope s_t + accuracy_noise z)`` with
    the setting's chance level ``c``,
    ``logit novelty = nu + novelty_slope s_t + novelty_noise z'``.

    Bursts (all off by default). A trial is healthy or collapsed at each iteration, a
    two-state Markov chain: healthy to collapsed with probability ``collapse_enter``,
    collapsed to healthy with ``collapse_exit``, starting from its stationary
    distribution (:func:`~llmnas_transfer.sim.dynamics.collapse_stationary`). While
    collapsed, ``logit P(valid) = collapse_validity`` whatever the state; the state moves
    on as usual. ``validity_dispersion`` ``rho`` in ``[0, 1)`` is the correlation of the
    candidates of one iteration: the iteration's validity rate is drawn from
    ``Beta(p (1 - rho) / rho, (1 - p) (1 - rho) / rho)`` around the rate ``p`` above, so
    its valid count is beta-binomial (binomial at ``rho = 0``).
    """

    kappa: Array
    state_noise: Array
    init_sd: Array
    validity_intercept: Array
    validity_slope: Array
    accuracy_slope: Array
    accuracy_noise: Array
    novelty_intercept: Array
    novelty_slope: Array
    novelty_noise: Array
    feedback_validity: Array = 0.0
    feedback_accuracy: Array = 0.0
    collapse_enter: Array = 0.0
    collapse_exit: Array = 1.0
    collapse_validity: Array = -4.0
    validity_dispersion: Array = 0.0


#: dynamics fields a parameters file may omit, with the values that switch them off
#: (files written before feedback or bursts existed)
OPTIONAL_DYNAMICS: dict[str, float] = {
    "feedback_validity": 0.0, "feedback_accuracy": 0.0, "collapse_enter": 0.0,
    "collapse_exit": 1.0, "collapse_validity": -4.0, "validity_dispersion": 0.0,
}


class SettingEffects(NamedTuple):
    """Per-setting offsets; each field has a leading ``setting`` axis (or is a scalar).

    ``validity_offset`` is ``delta = D_d + C_k + G_{m(d),k}`` (subtracted from the validity
    logit), ``accuracy_offset`` is ``alpha_d + alpha_k`` (logit of the chance-normalised
    accuracy) and ``novelty_offset`` is ``nu_{m(d)} + nu_k``. ``rate_offset`` ``r_s`` moves
    the refinement rate on the logit scale, ``asymptote`` ``mu_s`` is the level the state
    drifts to, and ``chance`` is the floor of the setting's first-epoch score
    (:func:`~llmnas_transfer.sim.registry.chance_level`).
    """

    validity_offset: Array
    accuracy_offset: Array
    novelty_offset: Array
    rate_offset: Array = 0.0
    asymptote: Array = 1.0
    chance: Array = 0.0


def dynamics_from_dict(d: dict[str, float]) -> DynamicsParams:
    """Build :class:`DynamicsParams` (float32 scalars) from a plain mapping.

    Example
    -------
    >>> p = dynamics_from_dict(load_defaults().dynamics)
    >>> p.kappa.dtype
    dtype('float32')
    """
    d = {**OPTIONAL_DYNAMICS, **d}
    missing = [f for f in DynamicsParams._fields if f not in d]
    if missing:
        raise UserInputError(f"dynamics parameters missing: {', '.join(missing)}")
    return DynamicsParams(**{f: jnp.asarray(d[f], jnp.float32) for f in DynamicsParams._fields})


def dynamics_to_dict(p: DynamicsParams) -> dict[str, float]:
    """Plain-float mapping of :class:`DynamicsParams`.

    Example
    -------
    >>> sorted(dynamics_to_dict(load_defaults().dynamics_params()))[0]
    'accuracy_noise'
    """
    return {f: float(getattr(p, f)) for f in DynamicsParams._fields}


FEATURE_NAMES: tuple[str, ...] = ("audio", "text", "log2_image_resolution", "log10_classes")

#: tables of the per-setting trend: logit-rate and log-asymptote effects of datasets, of
#: tasks and of single dataset x task cells (keyed ``"dataset:task"``, see
#: :func:`setting_key`); absent names get 0: the pooled mean, i.e. the shared trend
TREND_TABLES: tuple[str, ...] = ("rate_dataset", "rate_task", "rate_setting",
                                 "asymptote_dataset", "asymptote_task", "asymptote_setting")


#: fields a parameters file may leave out (``provenance``, the trend tables, the cells'
#: own validity offsets); the others are required
OPTIONAL_FIELDS: tuple[str, ...] = ("provenance", "trend", "validity_setting")


def setting_key(dataset: str, task: str) -> str:
    """The key of one dataset x task cell in the ``*_setting`` trend tables.

    Example
    -------
    >>> setting_key("svhn", "segmentation")
    'svhn:segmentation'
    """
    return f"{dataset}:{task}"


@dataclass(frozen=True)
class ModelDefaults:
    """Calibrated default parameters, keyed by dataset and task names.

    ``difficulty_coef`` and ``accuracy_coef`` are the attribute regressions (over
    :data:`FEATURE_NAMES`) used for datasets without a fitted residual. Built-in datasets
    carry fitted residuals on top of the regression. ``trend`` holds the
    :data:`TREND_TABLES`: the rate of setting ``(d, k)`` is
    ``sigmoid(logit kappa + rate_dataset[d] + rate_task[k] + rate_setting[d:k])`` and its
    asymptote ``exp(asymptote_dataset[d] + asymptote_task[k] + asymptote_setting[d:k])``;
    missing entries are 0. ``validity_setting`` adds a cell's own validity offset (keyed
    ``"dataset:task"``; missing cells 0) to ``D_d + C_k + G_{m(d),k}``.
    """

    dynamics: dict[str, float]
    difficulty_coef: dict[str, float]
    difficulty_residual: dict[str, float]
    accuracy_intercept: float
    accuracy_coef: dict[str, float]
    accuracy_residual: dict[str, float]
    task_complexity: dict[str, float]
    task_accuracy_offset: dict[str, float]
    interaction: dict[str, dict[str, float]]
    novelty_modality: dict[str, float]
    novelty_task: dict[str, float]
    validity_setting: dict[str, float] = field(default_factory=dict)
    trend: dict[str, dict[str, float]] = field(
        default_factory=lambda: {k: {} for k in TREND_TABLES})
    provenance: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- pieces
    def dynamics_params(self) -> DynamicsParams:
        """The global dynamics as a PyTree of float32 scalars.

        Example
        -------
        >>> load_defaults().dynamics_params().kappa.shape
        ()
        """
        return dynamics_from_dict(self.dynamics)

    def dataset_difficulty(self, ds: registry.Dataset) -> float:
        """``D_d``: fitted for built-ins, attribute regression for others.

        Example
        -------
        >>> isinstance(load_defaults().dataset_difficulty(registry.get_dataset("svhn")), float)
        True
        """
        if ds.difficulty is not None:
            return float(ds.difficulty)
        x = ds.features()
        base = sum(self.difficulty_coef[n] * v for n, v in zip(FEATURE_NAMES, x, strict=True))
        return base + self.difficulty_residual.get(ds.name, 0.0)

    def dataset_accuracy(self, ds: registry.Dataset) -> float:
        """``alpha_d`` (logit scale): fitted for built-ins, regression for others.

        Example
        -------
        >>> isinstance(load_defaults().dataset_accuracy(registry.get_dataset("svhn")), float)
        True
        """
        if ds.accuracy_level is not None:
            return float(ds.accuracy_level)
        x = ds.features()
        base = self.accuracy_intercept + sum(
            self.accuracy_coef[n] * v for n, v in zip(FEATURE_NAMES, x, strict=True)
        )
        return base + self.accuracy_residual.get(ds.name, 0.0)

    def _task_value(self, table: dict[str, float], task: registry.Task, override) -> float:
        if override is not None:
            return float(override)
        if task.name in table:
            return table[task.name]
        others = [v for k, v in table.items() if k != "classification"]
        return float(np.mean(others)) if others else 0.0

    def task_complexity_of(self, task: registry.Task) -> float:
        """``C_k``; unknown tasks get the mean of built-in non-classification tasks.

        Example
        -------
        >>> d = load_defaults()
        >>> d.task_complexity_of(registry.get_task("detection")) == d.task_complexity["detection"]
        True
        """
        return self._task_value(self.task_complexity, task, task.complexity)

    def task_accuracy_of(self, task: registry.Task) -> float:
        """``alpha_k``; unknown tasks get the mean of built-in non-classification tasks.

        Example
        -------
        >>> isinstance(load_defaults().task_accuracy_of(registry.get_task("generation")), float)
        True
        """
        return self._task_value(self.task_accuracy_offset, task, task.accuracy_offset)

    def interaction_of(self, ds: registry.Dataset, task: registry.Task) -> float:
        """``G_{m(d),k}``: zero for images and for classification.

        Example
        -------
        >>> load_defaults().interaction_of(registry.get_dataset("svhn"),
        ...                                registry.get_task("detection"))
        0.0
        """
        if ds.modality in task.interaction:
            return float(task.interaction[ds.modality])
        row = self.interaction.get(ds.modality, {})
        if task.name in row:
            return row[task.name]
        if ds.modality == "image" or task.name == "classification":
            return 0.0
        others = [v for k, v in row.items() if k != "classification"]
        return float(np.mean(others)) if others else 0.0

    # ---------------------------------------------------------------- grid
    def effects(
        self,
        datasets: list[str] | tuple[str, ...] | None = None,
        tasks: list[str] | tuple[str, ...] | None = None,
    ) -> SettingEffects:
        """:class:`SettingEffects` for the dataset x task grid, dataset-major order.

        Example
        -------
        >>> e = load_defaults().effects(["cifar-10"], ["classification", "generation"])
        >>> bool(e.validity_offset[1] > e.validity_offset[0])
        True
        """
        ds_list, task_list = registry.resolve(datasets, tasks)
        v, a, n, r, mu, c = [], [], [], [], [], []
        tr = {k: self.trend.get(k, {}) for k in TREND_TABLES}
        for ds in ds_list:
            for t in task_list:
                cell = setting_key(ds.name, t.name)
                v.append(
                    self.dataset_difficulty(ds) + self.task_complexity_of(t)
                    + self.interaction_of(ds, t) + self.validity_setting.get(cell, 0.0)
                )
                a.append(self.dataset_accuracy(ds) + self.task_accuracy_of(t))
                n.append(
                    self.novelty_modality.get(ds.modality, 0.0)
                    + self._task_value(self.novelty_task, t, None)
                )
                r.append(tr["rate_dataset"].get(ds.name, 0.0) + tr["rate_task"].get(t.name, 0.0)
                         + tr["rate_setting"].get(cell, 0.0))
                mu.append(float(np.exp(tr["asymptote_dataset"].get(ds.name, 0.0)
                                       + tr["asymptote_task"].get(t.name, 0.0)
                                       + tr["asymptote_setting"].get(cell, 0.0))))
                c.append(registry.chance_level(ds, t))
        f32 = jnp.float32
        return SettingEffects(*(jnp.asarray(x, f32) for x in (v, a, n, r, mu, c)))

    # ---------------------------------------------------------------- io
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable mapping (the format of ``default_params.json``).

        Example
        -------
        >>> "dynamics" in load_defaults().to_dict()
        True
        """
        return {
            "dynamics": self.dynamics,
            "difficulty_coef": self.difficulty_coef,
            "difficulty_residual": self.difficulty_residual,
            "accuracy_intercept": self.accuracy_intercept,
            "accuracy_coef": self.accuracy_coef,
            "accuracy_residual": self.accuracy_residual,
            "task_complexity": self.task_complexity,
            "task_accuracy_offset": self.task_accuracy_offset,
            "interaction": self.interaction,
            "novelty_modality": self.novelty_modality,
            "novelty_task": self.novelty_task,
            "validity_setting": self.validity_setting,
            "trend": self.trend,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelDefaults:
        """Inverse of :meth:`to_dict`.

        Example
        -------
        >>> d = load_defaults()
        >>> ModelDefaults.from_dict(d.to_dict()) == d
        True
        """
        trend = {k: dict(d.get("trend", {}).get(k, {})) for k in TREND_TABLES}
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__
                          if k not in OPTIONAL_FIELDS},
                       validity_setting=dict(d.get("validity_setting", {})),
                       trend=trend, provenance=d.get("provenance", {}))
        except KeyError as exc:
            raise UserInputError(f"parameter file lacks the field {exc.args[0]!r}") from None

    def to_json(self) -> str:
        """The parameters file's text: :meth:`to_dict` as indented, key-sorted JSON.

        The simulator writes no files; callers save it with
        :func:`llmnas_transfer.io.atomic.atomic_write_text`.

        Example
        -------
        >>> d = load_defaults()
        >>> ModelDefaults.from_dict(json.loads(d.to_json())) == d
        True
        """
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


def _check_shape(d, src: str) -> None:
    """Raise :class:`UserInputError` naming ``src`` unless ``d`` is shaped like a
    parameters file: an object whose fields hold numbers, or objects of numbers."""
    if not isinstance(d, dict):
        raise UserInputError(
            f"{src}: not a parameters file (expected a JSON object, got {type(d).__name__})")

    def is_num(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for k in ModelDefaults.__dataclass_fields__:
        if k == "provenance":
            if not isinstance(d.get(k, {}), dict):
                raise UserInputError(f"{src}: field 'provenance' must be a JSON object")
            continue
        if k == "trend":  # optional: files without it have the shared trend
            v = d.get(k, {})
            if not (isinstance(v, dict) and set(v) <= set(TREND_TABLES) and all(
                    isinstance(row, dict) and all(is_num(x) for x in row.values())
                    for row in v.values())):
                raise UserInputError(
                    f"{src}: field 'trend' must map {', '.join(TREND_TABLES)} to JSON "
                    "objects of numbers")
            continue
        if k in OPTIONAL_FIELDS and k not in d:  # files without it have no cell levels
            continue
        if k not in d:
            raise UserInputError(f"{src}: not a parameters file (it lacks the field {k!r})")
        v = d[k]
        if k == "accuracy_intercept":
            ok = is_num(v)
        elif k == "interaction":
            ok = isinstance(v, dict) and all(
                isinstance(row, dict) and all(is_num(x) for x in row.values())
                for row in v.values())
        else:
            ok = isinstance(v, dict) and all(is_num(x) for x in v.values())
        if not ok:
            want = "a number" if k == "accuracy_intercept" else "a JSON object of numbers"
            raise UserInputError(f"{src}: field {k!r} must be {want}")
    missing = [f for f in DynamicsParams._fields
               if f not in d["dynamics"] and f not in OPTIONAL_DYNAMICS]
    if missing:
        raise UserInputError(f"{src}: field 'dynamics' lacks {', '.join(missing)}")


def load_defaults(path: str | Path | None = None) -> ModelDefaults:
    """Load the shipped calibrated defaults, or a parameters file written by ``calibrate``.

    A file that cannot be read, is not UTF-8 JSON or is not shaped like a parameters file
    raises :class:`~llmnas_transfer.errors.UserInputError` naming the file.

    Example
    -------
    >>> load_defaults().dynamics["kappa"] > 0
    True
    """
    if path is None:
        src = "<package>/" + DEFAULT_PARAMS_FILE
        data = resources.files("llmnas_transfer.data").joinpath(DEFAULT_PARAMS_FILE).read_bytes()
    else:
        src = str(path)
        try:
            data = Path(path).expanduser().read_bytes()
        except FileNotFoundError:
            raise UserInputError(f"{src}: parameters file not found") from None
        except IsADirectoryError:
            raise UserInputError(f"{src}: is a folder, not a parameters file") from None
        except OSError as exc:
            raise UserInputError(
                f"{src}: cannot read the parameters file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserInputError(
            f"{src}: not a parameters file (not UTF-8 text; expected the JSON written by "
            "'calibrate')") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{src}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise UserInputError(f"{src}: not valid JSON (too deeply nested)") from None
    _check_shape(d, src)
    return ModelDefaults.from_dict(d)


def load_param_set(name: str) -> ModelDefaults:
    """Load a shipped parameter set by name (:data:`PARAM_SETS`: ``paper`` or ``lemur``).

    Example
    -------
    >>> load_param_set("lemur").provenance["target_set"]
    'lemur'
    """
    if name not in PARAM_SETS:
        raise UserInputError(f"unknown parameter set {name!r}{did_you_mean(name, PARAM_SETS)}; "
                             f"valid values: {', '.join(PARAM_SETS)}")
    data = resources.files("llmnas_transfer.data").joinpath(PARAM_SETS[name])
    with resources.as_file(data) as path:
        return load_defaults(path)
