"""In dl-run (and only there), `hydra/sweeper=basic` is dl-run's configs/hydra/sweeper/basic.yaml.

Hydra stores its own `hydra/sweeper/basic` (a typed config) and would merge a YAML file of the same name onto it,
with a deprecation warning. Where the search path holds dl-run's configs, the stored twin is set aside, so the YAML,
which names dl-run's subclass of the basic sweeper, is read alone. Any other Hydra app in the same environment
keeps Hydra's own.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin

DLRUN_CONFIGS = "pkg://dlrun.configs"


class DlrunBasicSweeperConfigFirst(SearchPathPlugin):
    """Sets aside Hydra's stored hydra/sweeper/basic when dl-run's configs are on the search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(element.path == DLRUN_CONFIGS for element in search_path.get_path()):
            return
        sweepers = ConfigStore.instance().repo.get("hydra", {}).get("sweeper", {})
        stored = sweepers.get("basic.yaml")
        if stored is not None and getattr(stored, "provider", None) == "hydra":
            del sweepers["basic.yaml"]
