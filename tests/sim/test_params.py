import json

import numpy as np
import pytest

from llmnas_transfer.errors import UserInputError
from llmnas_transfer.sim import registry
from llmnas_transfer.sim.params import DynamicsParams, ModelDefaults, load_defaults


def test_shipped_defaults_load_and_build_effects():
    d = load_defaults()
    p = d.dynamics_params()
    assert isinstance(p, DynamicsParams)
    assert 0 < float(p.kappa) < 1 and float(p.validity_slope) > 0
    e = d.effects()
    assert e.validity_offset.shape == (32,)
    assert np.all(np.isfinite(np.asarray(e.validity_offset)))


def test_trend_tables_add_dataset_task_and_cell_effects():
    import dataclasses

    d = load_defaults()
    tr = {"rate_dataset": {"svhn": -0.5}, "rate_task": {"segmentation": 0.2},
          "rate_setting": {"svhn:segmentation": -1.0},
          "asymptote_dataset": {}, "asymptote_task": {"segmentation": 0.1},
          "asymptote_setting": {"cifar-10:segmentation": -0.4}}
    e = dataclasses.replace(d, trend=tr).effects(["cifar-10", "svhn"],
                                                 ["classification", "segmentation"])
    # dataset-major order: (cifar-10, cls), (cifar-10, seg), (svhn, cls), (svhn, seg)
    np.testing.assert_allclose(np.asarray(e.rate_offset), [0.0, 0.2, -0.5, -1.3], atol=1e-6)
    np.testing.assert_allclose(np.asarray(e.asymptote),
                               np.exp([0.0, -0.3, 0.0, 0.1]), rtol=1e-6)


def test_roundtrip(tmp_path):
    d = load_defaults()
    (tmp_path / "p.json").write_text(d.to_json())
    d2 = load_defaults(tmp_path / "p.json")
    assert d2.to_dict() == json.loads(json.dumps(d.to_dict()))


def test_bad_parameter_files(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_defaults(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserInputError, match="line 1"):
        load_defaults(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text("{}")
    with pytest.raises(UserInputError, match="lacks"):
        load_defaults(tmp_path / "partial.json")


def test_user_dataset_uses_attribute_regression_and_overrides():
    d = load_defaults()
    registry.register_dataset("tiny-audio", modality="audio", resolution=64, num_classes=527,
                              replace=True)
    registry.register_dataset("fixed", modality="image", resolution=32, num_classes=10,
                              difficulty=1.25, accuracy_level=-0.5, replace=True)
    registry.register_task("captioning", replace=True)
    try:
        audio = registry.get_dataset("audioset")
        tiny = registry.get_dataset("tiny-audio")
        # same attributes as AudioSet: regression part equal, residual dropped
        diff = d.dataset_difficulty(audio) - d.dataset_difficulty(tiny)
        assert diff == pytest.approx(d.difficulty_residual["audioset"], abs=1e-9)
        assert d.dataset_difficulty(registry.get_dataset("fixed")) == 1.25
        cap = d.task_complexity_of(registry.get_task("captioning"))
        others = [d.task_complexity[t] for t in ("segmentation", "detection", "generation")]
        assert cap == pytest.approx(np.mean(others))
        e = d.effects(["tiny-audio", "fixed"], ["classification", "captioning"])
        assert e.validity_offset.shape == (4,)
    finally:
        registry.unregister_dataset("tiny-audio")
        registry.unregister_dataset("fixed")
        registry.unregister_task("captioning")


def test_model_defaults_is_plain_data():
    d = load_defaults()
    assert ModelDefaults.from_dict(d.to_dict()) == d


@pytest.mark.parametrize("content, match", [
    (bytes(range(256)), "not UTF-8"),
    (b"", "not valid JSON"),
    (b"{oops", "line 1: not valid JSON"),
    (b"[1, 2, 3]", "expected a JSON object, got list"),
    (b'{"dynamics": {}}', "lacks the field 'difficulty_coef'"),
])
def test_load_defaults_bad_files_name_the_file(content, match, tmp_path):
    p = tmp_path / "params.json"
    p.write_bytes(content)
    with pytest.raises(UserInputError, match=match) as exc:
        load_defaults(p)
    assert str(p) in str(exc.value)


def test_load_defaults_wrong_shapes(tmp_path):
    good = load_defaults().to_dict()
    cases = [({**good, "dynamics": [1, 2]}, "field 'dynamics' must be"),
             ({**good, "accuracy_intercept": "x"}, "must be a number"),
             ({**good, "interaction": {"audio": 1.0}}, "field 'interaction' must be"),
             ({**good, "dynamics": {"kappa": 0.1}}, "field 'dynamics' lacks")]
    for d, match in cases:
        p = tmp_path / "p.json"
        p.write_text(json.dumps(d))
        with pytest.raises(UserInputError, match=match):
            load_defaults(p)
    for bad in (tmp_path, tmp_path / "missing.json"):
        with pytest.raises(UserInputError, match=str(bad)):
            load_defaults(bad)


def test_both_shipped_parameter_sets_load_by_name():
    from llmnas_transfer.sim.params import PARAM_SETS, load_param_set

    assert set(PARAM_SETS) == {"paper", "lemur"}
    assert load_param_set("paper") == load_defaults()
    lemur = load_param_set("lemur")
    assert lemur.provenance["target_set"] == "lemur"
    assert lemur.accuracy_residual != load_defaults().accuracy_residual
    with pytest.raises(UserInputError, match="did you mean 'lemur'"):
        load_param_set("lemr")
    with pytest.raises(UserInputError, match="valid values: paper, lemur"):
        load_param_set("nothing-like-it")


@pytest.mark.parametrize("name", ["paper", "lemur"])
def test_no_expected_accuracy_below_chance(name):
    """Every built-in setting of both shipped sets, every iteration: the expected
    first-epoch accuracy is at least the setting's chance level."""
    from llmnas_transfer.sim.expectation import expected
    from llmnas_transfer.sim.params import load_param_set

    d = load_param_set(name)
    e = d.effects()
    ev = expected(d.dynamics_params(), e, 10)
    chance = np.asarray(e.chance)[:, None]
    acc = np.asarray(ev.accuracy)
    assert np.all(acc >= chance)
    assert np.all(np.asarray(ev.accuracy_norm) >= 0)
    i = registry.BUILTIN_DATASET_NAMES.index("nlp-sst2") * len(registry.BUILTIN_TASK_NAMES)
    assert acc[i, -1] > 0.5  # a 2-class task is never simulated below guessing
