"""Hydra's sweep syntax as Optuna distributions: interval -> float or int, tag(log, ...) -> log scale,
choice/range -> categorical or int; a plain value is a fixed override given to every trial."""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


def distribution(override: Override) -> BaseDistribution:
    """The distribution an override's sweep describes (choice, range or interval)."""
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        # Encoded as Hydra writes them back on a command line: "[64,64]" stays one list value.
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            # range(a, b, s) excludes b, as Python's range does; Optuna's high is included.
            return FloatDistribution(value.start, value.stop - value.step, step=value.step)
        return IntDistribution(int(value.start), int(value.stop) - int(value.step), step=int(value.step))
    assert isinstance(value, IntervalSweep)
    log = "log" in value.tags
    if isinstance(value.start, int) and isinstance(value.end, int):
        return IntDistribution(value.start, value.end, log=log)
    return FloatDistribution(float(value.start), float(value.end), log=log)


def search_space(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
    """The distributions to sample, and the fixed overrides every trial gets, from `key=value` arguments."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(override)
            fixed.pop(key, None)
        else:
            fixed[key] = override.get_value_element_as_str()
            space.pop(key, None)  # a value on the command line fixes a key the preset searched
    return space, fixed
