"""A sweep's jobs share the composition of their config files (issue #21).

For every job of a sweep Hydra composes the config anew (ConfigLoaderImpl.load_sweep_config). It builds the
defaults list of train.yaml and the chosen options, then loads and merges each file: 0.2-0.3 CPU s a job on this
project's 2-core machine, a quarter of a tiny job. Jobs that choose the same options (every job of
`optimizer.lr=0.1,0.01`) get the same defaults list and the same merged files; only the values set on the command
line differ, and Hydra applies those after the merge. So, within a sweep job's compose only, the defaults list and
the merged config are kept per choice of options: the overrides that Hydra itself takes as naming an option
(its `Overrides` sorts them from the values), the config name and the config search path. Each job gets a deep copy
of the merged config; Hydra then applies the job's values and fills its `hydra` node as before.

Files edited while a sweep runs: its jobs keep the config as the sweep's first job with those options (in a joblib
worker, that worker's first) read it.
"""

from __future__ import annotations

import copy
from typing import Any

from hydra._internal import config_loader_impl
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.defaults_list import DefaultsList, Overrides
from omegaconf import DictConfig

_hydra_defaults_list = config_loader_impl.create_defaults_list
_hydra_merge = ConfigLoaderImpl._compose_config_from_defaults_list
_hydra_load_sweep_config = ConfigLoaderImpl.load_sweep_config


class SharedComposition:
    """The defaults lists and merged configs of a process's sweep jobs, per choice of options."""

    def __init__(self) -> None:
        self.defaults_lists: dict[tuple, DefaultsList] = {}
        self.merged: dict[int, DictConfig] = {}  # id() of a kept defaults list's `defaults` -> its merged config
        self.in_sweep_job = False

    def defaults_list(self, repo: Any, config_name: str | None, overrides_list: list, prepend_hydra: bool,
                      skip_missing: bool) -> DefaultsList:
        if not self.in_sweep_job:
            return _hydra_defaults_list(repo, config_name, overrides_list, prepend_hydra, skip_missing)
        overrides = Overrides(repo=repo, overrides_list=overrides_list)  # Hydra's own: options apart from values
        values = {id(override) for override in overrides.config_overrides}
        sources = tuple((type(s).__name__, s.provider, s.path) for s in repo.get_sources())
        key = (config_name, prepend_hydra, skip_missing, sources,
               tuple(o.input_line for o in overrides_list if id(o) not in values))
        kept = self.defaults_lists.get(key)
        if kept is None:
            kept = self.defaults_lists[key] = _hydra_defaults_list(repo, config_name, overrides_list, prepend_hydra,
                                                                   skip_missing)
            return kept
        return DefaultsList(defaults=kept.defaults, defaults_tree=kept.defaults_tree,
                            config_overrides=overrides.config_overrides, overrides=kept.overrides)

    def merge(self, loader: ConfigLoaderImpl, defaults: list, repo: Any) -> DictConfig:
        merged = self.merged.get(id(defaults))
        if merged is not None:
            return copy.deepcopy(merged)
        cfg = _hydra_merge(loader, defaults, repo)
        if any(kept.defaults is defaults for kept in self.defaults_lists.values()):
            self.merged[id(defaults)] = copy.deepcopy(cfg)  # Hydra goes on to change `cfg` itself
        return cfg

    def load_sweep_config(self, loader: ConfigLoaderImpl, master_config: DictConfig,
                          sweep_overrides: list[str]) -> DictConfig:
        self.in_sweep_job = True
        try:
            return _hydra_load_sweep_config(loader, master_config, sweep_overrides)
        finally:
            self.in_sweep_job = False


SHARED = SharedComposition()


def install() -> None:
    """From now on in this process, a sweep job's compose shares what an earlier job of its options composed."""
    config_loader_impl.create_defaults_list = SHARED.defaults_list
    ConfigLoaderImpl._compose_config_from_defaults_list = (
        lambda loader, defaults, repo: SHARED.merge(loader, defaults, repo))
    ConfigLoaderImpl.load_sweep_config = (
        lambda loader, master_config, sweep_overrides: SHARED.load_sweep_config(loader, master_config,
                                                                                 sweep_overrides))
