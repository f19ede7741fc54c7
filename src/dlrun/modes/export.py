"""mode=export: a trained run as ONNX or TorchScript, run back and compared with PyTorch on test inputs."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dlrun.errors import ConfigError
from dlrun.modes.trained import load_trained, refuse_without_run
from dlrun.run.run_directory import partial_path
from dlrun.views import console

if TYPE_CHECKING:
    from dlrun.run.experiment import Experiment

EXPORT_FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}


def export_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path) -> tuple[torch.Tensor, str]:
    """Write an ONNX file with a free batch size; return its outputs on the example and what ran it."""
    try:
        import onnx  # noqa: F401 - torch.onnx's exporter needs it (and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"'export.format=onnx' needs the onnx packages ({err.name} is missing): "
                          f"pip install -e \".[export]\".", key="export.format") from None
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # their INFO lines would bury the one that matters
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(model, (example,), str(out), input_names=["input"], output_names=["output"],
                      dynamic_shapes=({0: batch},), external_data=False, dynamo=True, verbose=False)
    try:
        import onnxruntime
    except ImportError:  # onnxruntime is optional: onnx's own (slow, exact) reference evaluator runs it instead
        from onnx.reference import ReferenceEvaluator

        (result,) = ReferenceEvaluator(str(out)).run(None, {"input": example.numpy()})
        return torch.as_tensor(result), "onnx.reference (pip install onnxruntime for the real runtime)"
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {"input": example.numpy()})
    return torch.as_tensor(result), f"onnxruntime {onnxruntime.__version__}"


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, out: Path) -> tuple[torch.Tensor, str]:
    """Trace the model to TorchScript, save it, load it back and run it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit announces its deprecation in favour of torch.export
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(out))
        loaded = torch.jit.load(str(out), map_location="cpu")
        with torch.no_grad():
            return loaded(example), "torch.jit.load"


def _checked_options(exp: Experiment, options: dict[str, Any]) -> tuple[str, float, Path]:
    """export.format, export.tolerance and where the file goes (export.output, or model.onnx /
    model.torchscript.pt in the run), each refused with a sentence."""
    fmt = options.get("format")
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"'export.format={fmt}' is not a format dl-run exports; valid: "
                          f"{', '.join(EXPORT_FORMATS)}.", key="export.format")
    tolerance = options.get("tolerance", 1e-4)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ConfigError(f"'export.tolerance={tolerance}' must be a number, zero or positive and finite: the largest "
                          f"difference allowed between the exported model's outputs and PyTorch's, e.g. 1e-4.",
                          key="export.tolerance")
    given = options.get("output")
    out = exp.directory.output(given or exp.directory.file(EXPORT_FORMATS[fmt]),
                               "export.output" if given else "overwrite", bool(exp.cfg.get("overwrite")))
    return fmt, float(tolerance), out


def run_export(exp: Experiment, overrides: list[str]) -> dict[str, Any]:
    """mode=export resume=<run dir>: write the trained model as ONNX or TorchScript, checked on a test batch."""
    refuse_without_run(exp)
    options = exp.cfg.get("export") or {}
    fmt, tolerance, out = _checked_options(exp, options)  # every option, before anything is loaded or written
    path = load_trained(exp)
    model = exp.model.cpu().eval()
    # The exported model takes what the model sees: inputs after the run's own preparation (images scaled and
    # standardised per channel, tabular features standardised), as mode=predict prepares them.
    example = exp.prepare(exp.splits.x_test[:8]).float().cpu()
    with torch.no_grad():
        expected = model(example).float()
    out.parent.mkdir(parents=True, exist_ok=True)
    exporter = export_onnx if fmt == "onnx" else export_torchscript
    partial = partial_path(out)  # written beside its place and renamed once checked: a failed export replaces nothing
    try:
        got, runner = exporter(model, example, partial)
        difference = (got.float() - expected).abs().max().item()
        matches = bool(torch.allclose(got.float(), expected, atol=tolerance, rtol=1e-3))
        message = (f"Exported {path.name} of {exp.run_dir.name} to {out} ({fmt}); run with {runner} on "
                   f"{len(example)} test inputs, its outputs differ from PyTorch's by at most {difference:.2g}")
        if not matches:
            raise ConfigError(f"{message}, more than export.tolerance={tolerance}: the exported model is not "
                              f"faithful and was not kept.", key="export.tolerance")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    console.console.print(f"{message} (tolerance {tolerance:g}).", soft_wrap=True)
    metrics = {"status": "completed", "mode": "export", "format": fmt, "checkpoint": str(path), "output": str(out),
               "runner": runner, "max_abs_difference": difference, "input_shape": list(example.shape[1:])}
    return metrics
