"""Moved to dlrun.components.losses; this name stays importable for user code (docs/extending.md)."""

import sys

from dlrun.components import losses

sys.modules[__name__] = losses
