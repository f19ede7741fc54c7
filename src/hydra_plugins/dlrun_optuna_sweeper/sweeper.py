"""The Hydra sweeper class that configs/hydra/sweeper/optuna.yaml names; the search itself is in _search.py."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """dl-run's Optuna sweeper: hydra.sweeper.params in Hydra's sweep syntax, a sampler, a pruner, a study stored
    in the sweep folder. Light to import: Hydra imports this module at every start of dl-run."""

    def __init__(self, sampler: Any, **settings: Any) -> None:
        from hydra_plugins.dlrun_optuna_sweeper._search import OptunaSearch  # Optuna, only for a search

        self.search = OptunaSearch(sampler, **settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        """Run the study (see _search.OptunaSearch.sweep)."""
        self.search.sweep(arguments)
