"""Hydra's basic sweeper (every combination of the values given), checking one job of each kind before launching.

Hydra's BasicSweeper composes every job's config before launching any, to catch a config that cannot be composed
(an unknown option, a missing key) before the first job runs; the launcher then composes each job again. On a
2-core machine a compose costs about as much as a tiny job trains, so a sweep paid it twice per job (issue #21).
Whether a job composes depends on which keys it sets and which option of each config group it picks, not on the
values of plain keys (nothing is resolved while composing, and dl-run's groups are not typed): jobs that differ only
in such values compose alike. So one job of each kind is composed to check the batch; the launcher still composes
every job, and any failure is the same error, raised before the first job, as Hydra's.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser


class DlrunBasicSweeper(BasicSweeper):
    """BasicSweeper whose check before launching composes one job of each kind (see the module's text)."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        kinds: dict[tuple, Sequence[str]] = {}
        parser = OverridesParser.create()  # one grammar for the batch, not one a job
        groups: dict[str, bool] = {}  # key -> whether it names a config group: one lookup a key, not a job
        for overrides in batch:
            kinds.setdefault(self._kind(parser, groups, overrides), overrides)
        super().validate_batch_is_legal(list(kinds.values()))

    def _kind(self, parser: OverridesParser, groups: dict[str, bool], overrides: Sequence[str]) -> tuple:
        """What decides whether a job composes: each key with how it is set, and the option of each config group
        or Hydra setting (Hydra's own config is typed); for a plain key only whether its value is a list, a dict or
        a single value."""
        loader = self.hydra_context.config_loader
        kind = []
        for override in parser.parse_overrides(list(overrides)):
            key = override.key_or_group
            if key not in groups:
                groups[key] = "/" in key or "@" in key or bool(loader.get_group_options(key))
            if groups[key] or key.startswith("hydra.") or key == "hydra":
                kind.append((override.input_line,))
            else:
                value = override.value()
                shape = type(value).__name__ if isinstance(value, (list, dict)) else "value"
                kind.append((key, override.type.name, shape))
        return tuple(kind)
