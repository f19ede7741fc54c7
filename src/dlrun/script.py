"""The `dl-run` console script: the collector paused before anything is imported (see startup_collector)."""

from dlrun import startup_collector

startup_collector.pause()

from dlrun.cli import console_main  # noqa: E402  (after the pause: the imports it saves are these)

__all__ = ["console_main"]
