"""mode=gradcam: Grad-CAM of a trained CNN classifier over its test panel, as a PNG in the run (course 3 §5.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlrun.errors import ConfigError
from dlrun.logger import NullLogger
from dlrun.modes.trained import load_trained, refuse_without_run
from dlrun.views import console, figures
from dlrun.views.cnn import PANEL, gradcam_panel, has_gradcam

if TYPE_CHECKING:
    from dlrun.run.experiment import Experiment


def run_gradcam(exp: Experiment, overrides: list[str]) -> dict[str, Any]:
    """mode=gradcam resume=<run dir> [logger.gradcam_layer=<conv name>]: the Grad-CAM figure of the best checkpoint,
    into the same run."""
    refuse_without_run(exp)
    inputs = exp.view_inputs(NullLogger())
    if exp.info.task != "classification" or not has_gradcam(inputs):
        raise ConfigError(f"'mode=gradcam' needs a CNN classifier with one score per class (e.g. model=cnn or "
                          f"model=resnet, on images or series; a TCN's causal convolutions are not read as a map); "
                          f"the run at {exp.run_dir} trains model={exp.cfg['model'].get('name')} on {exp.info.task}.",
                          key="mode")
    out = exp.directory.output(exp.directory.file("grad_cam.png"), "overwrite", bool(exp.cfg.get("overwrite")))
    path = load_trained(exp)
    figure, _, _ = gradcam_panel(inputs)
    png = figures.save(figure, out)
    layer = inputs.gradcam_layer or "the last convolution"  # logger.gradcam_layer=<name> reads another
    console.console.print(f"Grad-CAM of {path.name} at {layer} over {PANEL} test images: {png}", soft_wrap=True)
    return {"status": "completed", "mode": "gradcam", "checkpoint": str(path), "figure": str(png)}
