"""Modes: what `dl-run mode=<name>` runs instead of training, in one table.

Each takes the built Experiment and the command's overrides and returns what it reports. lr_find, backprop and
loss_surface work on a new run (backprop also on a trained one); gradcam, eval, predict and export on a trained one
(resume=<run dir>), whose best checkpoint they load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlrun.modes.backprop import run_backprop
from dlrun.modes.evaluation import run_eval
from dlrun.modes.export import run_export
from dlrun.modes.gradcam import run_gradcam
from dlrun.modes.loss_surface import run_loss_surface
from dlrun.modes.lr_find import run_lr_find
from dlrun.modes.predict import run_predict

# mode=<name> -> what runs it; None is training (dlrun.run.training).
MODES: dict[str, Callable[..., dict[str, Any]] | None] = {
    "train": None, "lr_find": run_lr_find, "gradcam": run_gradcam, "eval": run_eval, "predict": run_predict,
    "export": run_export, "backprop": run_backprop, "loss_surface": run_loss_surface,
}
