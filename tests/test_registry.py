"""The Registry type: names lead to builders; unknown names and bad arguments get clear errors."""

import pytest

from dlrun.errors import ConfigError
from dlrun.registry import Registry, check_arguments

REG = Registry("widget")


@REG.register("round_widget")
def build_round(size: int = 3, ratio: float = 0.5, tags: list[str] | None = None, mode: str = "a") -> dict:
    return {"size": size, "ratio": ratio, "tags": tags, "mode": mode}


def test_build_by_name_passes_flat_arguments():
    assert REG.build({"name": "round_widget", "size": 7, "ratio": 2}) == {"size": 7, "ratio": 2.0, "tags": None,
                                                                          "mode": "a"}


def test_unknown_name_lists_valid_names_and_closest():
    with pytest.raises(ConfigError) as err:
        REG.build({"name": "round_widgte"})
    assert "round_widget" in str(err.value) and "Did you mean 'round_widget'" in str(err.value)


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError) as err:
        REG.build({"name": "round_widget", "sise": 4})
    message = str(err.value)
    assert "widget.sise" in message and "Did you mean 'size'" in message


@pytest.mark.parametrize("key,value", [("size", "big"), ("size", 2.5), ("ratio", "x"), ("tags", [1, 2]),
                                       ("size", True)])
def test_wrong_type_is_refused(key, value):
    with pytest.raises(ConfigError) as err:
        REG.build({"name": "round_widget", key: value})
    assert f"widget.{key}" in str(err.value) and repr(value) in str(err.value)


def test_register_twice_is_a_programming_error():
    with pytest.raises(ValueError):
        REG.register("round_widget")(build_round)


def test_target_imports_user_code():
    out = REG.build({"_target_": "test_registry.build_round", "size": 1})
    assert out["size"] == 1


def test_missing_target_module_is_a_clear_error():
    with pytest.raises(ConfigError) as err:
        REG.build({"_target_": "no_such_module.build"})
    assert "no_such_module.build" in str(err.value)


def test_extra_values_reach_only_builders_that_declare_them():
    def builder(size: int = 1, info=None):
        return info

    assert check_arguments(builder, {"size": 2}, "w", {"info": "I", "params": "P"}) == {"size": 2, "info": "I"}
