"""Hydra's run mode without the extra compose it costs (issue #21).

Before running, Hydra composes the whole config once only to read `hydra.mode` (Hydra.get_mode), then composes it
again to run: 0.3 CPU s of every command on this project's 2-core machine. Among the shipped configs only the
experiment and hparams_search presets set the mode (tests/test_whole_process.py checks that no other YAML has a
hydra node or a global package); the user's own config folder or a hydra.* override may set it too. Without any
of them the composed mode is unset, and Hydra's answer is None without composing: Hydra then adds hydra.mode=RUN
(or MULTIRUN under -m) itself, exactly as when its compose finds the mode unset.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hydra._internal.hydra import Hydra

from dlrun.run.arguments import override_key

MODE_SETTING_GROUPS = ("experiment", "hparams_search")
CONFIG_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def mode_is_unset(args: list[str]) -> bool:
    """Whether no argument can set hydra.mode: no preset that sets it, no config folder, no hydra override."""
    for arg in args:
        key = override_key(arg)
        if arg.split("=", 1)[0] in CONFIG_FLAGS or key in MODE_SETTING_GROUPS or key.startswith("hydra"):
            return False
    return True


@contextmanager
def known_mode(args: list[str]) -> Iterator[None]:
    """Within: Hydra takes the mode as unset without composing, where mode_is_unset(args)."""
    if not mode_is_unset(args):
        yield
        return
    composing = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        yield
    finally:
        Hydra.get_mode = composing
