"""Modes: what `dl-run mode=<name>` runs instead of training, in one table.

Each takes the built Experiment and the command's overrides and returns what it reports. lr_find works on a
new run; gradcam, eval, predict and export on a trained one (resume=<run dir>), whose best checkpoint they load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlrun.modes.evaluation import run_eval
from dlrun.modes.export import run_export
from dlrun.modes.gradcam import run_gradcam
from dlrun.modes.lr_find import run_lr_find
from dlrun.modes.predict import run_predict

# mode=<name> -> what runs it; None is training (dlrun.run.training).
MODES: dict[str, Callable[..., dict[str, Any]] | None] = {
    "train": None, "lr_find": run_lr_find, "gradcam": run_gradcam, "eval": run_eval, "predict": run_predict,
    "export": run_export,
}
