"""dl-run's sweeper configs win over hydra-optuna-sweeper's, where that old plugin is installed too.

Hydra validates a YAML config against a stored (ConfigStore) config of the same name, and refuses one whose stored
twin has a defaults list: hydra-optuna-sweeper stores hydra/sweeper/optuna (with a defaults list) and its samplers,
for optuna < 3. Hydra calls search-path plugins after it has imported every plugin and before it composes a config,
so here those stored configs are set aside, whatever order the plugins were imported in, and dl-run's own
configs/hydra/sweeper/*.yaml are what `hydra/sweeper=optuna` and `hydra/sweeper/sampler=...` load.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin

OLD_PLUGIN_PROVIDER = "optuna_sweeper"  # the provider name hydra-optuna-sweeper stores its configs under


class DlrunOptunaConfigsFirst(SearchPathPlugin):
    """Sets aside hydra-optuna-sweeper's stored sweeper and sampler configs; the search path is left as it is."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        sweeper_group = ConfigStore.instance().repo.get("hydra", {}).get("sweeper", {})
        for group in (sweeper_group, sweeper_group.get("sampler", {})):
            for name in [name for name, node in group.items()
                         if getattr(node, "provider", None) == OLD_PLUGIN_PROVIDER]:
                del group[name]
