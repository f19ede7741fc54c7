"""Modes that use a trained run: eval (score it again), predict (new inputs -> a CSV), export (ONNX, TorchScript).

Each takes `resume=<run dir>`: cli.py turns that into the run's own overrides, so the Experiment is rebuilt
exactly as it was trained (same data split, same normalisation, same model), and the best checkpoint is loaded
into it. Nothing the run wrote before is changed; each mode adds its own file.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dlrun.engine import checkpoint
from dlrun.views import console
from dlrun.data.prepare import Prepare
from dlrun.errors import ConfigError

if TYPE_CHECKING:
    from dlrun.run.experiment import Experiment

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".pt")


def load_trained(exp: Experiment, cfg: dict[str, Any], run_dir: Path) -> Path:
    """Load the run's best checkpoint (else last.pt) into the rebuilt model; refuse a mode without a run."""
    mode = cfg["mode"]
    if not cfg.get("resume"):
        raise ConfigError(f"'mode={mode}' works on a trained run: give it with resume=<run dir>, e.g. "
                          f"dl-run mode={mode} resume=outputs/2026-01-01/12-00-00_1234.", key="resume")
    checkpoint_dir = run_dir / "checkpoints"
    path = checkpoint_dir / (checkpoint.BEST if (checkpoint_dir / checkpoint.BEST).exists() else checkpoint.LAST)
    if not path.exists():
        path = checkpoint_dir / checkpoint.PREVIOUS
    saved = checkpoint.load(path)
    try:
        exp.model.load_state_dict(saved["model"])
    except RuntimeError as err:  # the overrides given now build a different model than the one trained
        first = str(err).strip().splitlines()
        raise ConfigError(f"The checkpoint {path} does not fit the model built from this run's config and the "
                          f"overrides given now (dataset '{exp.info.name}', input shape "
                          f"{tuple(exp.info.input_shape)}): {' '.join(first[:2])}. Use a dataset with the same "
                          f"inputs and classes as the one the run was trained on.", key="dataset") from None
    exp.model.eval()
    rescaled = on_training_scale(exp, saved.get("scaling"))
    if rescaled:
        console.console.print(f"Dataset {exp.info.name}: {' and '.join(rescaled)} standardised with the training "
                              f"split's statistics of {run_dir.name}, as the model was trained, not with its own.")
    return path


def on_training_scale(exp: Experiment, saved: dict[str, Any] | None) -> list[str]:
    """Put the rebuilt data on the scale the model was trained on; return what was changed.

    The run's own dataset is rebuilt with the same split and statistics, so nothing changes. Another dataset
    (mode=eval dataset.path=other.csv) was standardised with its own training split's mean and std: those are
    undone and the trained run's applied (course 2 §3.3: new data gets the training statistics). Sequence
    datasets keep their own (their windows are cut from one standardised series); checkpoints written before
    dl-run saved the statistics have none to apply.
    """
    info = exp.info
    if not saved or info.sequence is not None:
        return []
    changed, splits = [], {}
    for what, prefix, side in (("inputs", "feature", "x"), ("targets", "target", "y")):
        old = (saved.get(f"{prefix}_mean"), saved.get(f"{prefix}_std"))
        now = (getattr(info, f"{prefix}_mean"), getattr(info, f"{prefix}_std"))
        if old[0] is None or now[0] is None or (torch.equal(old[0], now[0]) and torch.equal(old[1], now[1])):
            continue
        for split in ("train", "val", "test"):
            t = getattr(exp.splits, f"{side}_{split}")
            mean_now, std_now, mean_old, std_old = (v.to(t).reshape(1, *t.shape[1:]) for v in (*now, *old))
            splits[f"{side}_{split}"] = (t * std_now + mean_now - mean_old) / std_old
        info = replace(info, **{f"{prefix}_mean": old[0], f"{prefix}_std": old[1]})
        changed.append(what)
    pixels = (saved.get("pixel_mean"), saved.get("pixel_std"))
    if pixels[0] is not None and info.pixel_mean is not None and pixels != (info.pixel_mean, info.pixel_std):
        info = replace(info, pixel_mean=tuple(pixels[0]), pixel_std=tuple(pixels[1]))
        exp.prepare = Prepare(info, None, exp.device)  # pixels are standardised per batch, as drawn
        changed.append("pixels")
    if changed:
        exp.info, exp.splits = info, replace(exp.splits, **splits)
    return changed


def run_eval(exp: Experiment, cfg: dict[str, Any], run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """mode=eval resume=<run dir>: score the trained model on every split (of its dataset, or another one)."""
    path = load_trained(exp, cfg, run_dir)
    with torch.no_grad():
        results = {split: exp.task.evaluate(exp.model, *exp.splits.split(split), exp.info,  # the run's task scores it
                                            exp.opts.eval_batch_size, exp.prepare) for split in ("train", "val", "test")}
    console.results_table(results, title=f"{run_dir.name} ({path.name}) on dataset {exp.info.name}")
    out = run_dir / f"eval_{exp.info.name}.json"
    metrics = {"status": "completed", "mode": "eval", "dataset": exp.info.name, "checkpoint": str(path),
               "test": results["test"], "evaluation": results, "overrides": overrides}
    out.write_text(json.dumps(metrics, indent=2))
    console.console.print(f"Written: {out}", soft_wrap=True)
    return metrics


# ---- predict ---------------------------------------------------------------------------------------------------

def _bad_input(path: str, why: str) -> ConfigError:
    return ConfigError(f"'predict.input={path}': {why}", key="predict.input")


def read_table(path: Path, info: Any) -> tuple[torch.Tensor, list[str]]:
    """A CSV's feature columns (by the training names), as raw values; row labels 'row 2', 'row 3', ..."""
    if len(info.input_shape) != 1:
        raise _bad_input(str(path), f"a CSV gives one row of numbers per sample, but this run's model takes "
                                    f"inputs of shape {tuple(info.input_shape)}: give a folder of images or a "
                                    f".npy/.pt array instead.")
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise _bad_input(str(path), "the file is empty.")
    header = [h.strip() for h in rows[0]]
    names = info.feature_names
    if names is not None:
        missing = [n for n in names if n not in header]
        if missing:
            raise _bad_input(str(path), f"the header lacks the feature column(s) {', '.join(missing)}; the run was "
                                        f"trained on the columns {', '.join(names)} (other columns are ignored).")
        columns = [header.index(n) for n in names]
        body, first_line = rows[1:], 2
    else:  # a dataset without column names: the file's columns are the features, a header line is optional
        has_header = not all(_is_number(c) for c in rows[0])
        body, first_line = (rows[1:], 2) if has_header else (rows, 1)
        width = {len(r) for r in body}
        if width != {info.input_dim}:
            raise _bad_input(str(path), f"rows have {', '.join(map(str, sorted(width)))} column(s); the run's model "
                                        f"takes {info.input_dim} feature(s) per row.")
        columns = list(range(info.input_dim))
    if not body:
        raise _bad_input(str(path), "no data rows after the header line.")
    x = torch.empty(len(body), len(columns))
    for i, row in enumerate(body):
        for j, c in enumerate(columns):
            cell = row[c].strip() if c < len(row) else ""
            if not _is_number(cell):
                raise _bad_input(str(path), f"line {i + first_line}, column '{header[c] if names else c + 1}': "
                                            f"'{cell}' is not a number.")
            x[i, j] = float(cell)
    if info.feature_mean is not None:  # the training split's standardisation (course 2 §3.3)
        x = (x - info.feature_mean) / info.feature_std
    return x, [f"row {i + first_line}" for i in range(len(body))]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_images(folder: Path, info: Any) -> tuple[torch.Tensor, list[str]]:
    """Every image under a folder, resized to the run's input size, as the training data holds them."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as F

    if len(info.input_shape) != 3:
        raise _bad_input(str(folder), f"a folder of images, but this run's model takes inputs of shape "
                                      f"{tuple(info.input_shape)}: give a CSV or a .npy/.pt array instead.")
    channels, height, width = info.input_shape
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise _bad_input(str(folder), f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder.")
    images = []
    for file in files:
        try:
            image = Image.open(file)
            image.load()
        except (OSError, UnidentifiedImageError) as err:
            raise _bad_input(str(folder), f"cannot read the image {file}: {err}") from None
        bands = len(image.getbands())
        if bands != channels:
            raise _bad_input(str(folder), f"{file.name} has {bands} channel(s) ({image.mode}); the run was trained "
                                          f"on {channels}-channel images ({'grey' if channels == 1 else 'colour'}). "
                                          f"Convert the images to {channels} channel(s).")
        # Resized as dataset=image_folder resizes its images, so the model sees what it saw in training.
        images.append(F.pil_to_tensor(F.resize(image, [height, width])))
    x = torch.stack(images)
    if info.pixel_mean is None:  # a float image dataset (digits): pixels in 0..1
        x = x.float() / 255.0
    return x, [str(f.relative_to(folder)) for f in files]


def read_array(path: Path, info: Any) -> tuple[torch.Tensor, list[str]]:
    """A .npy or .pt array of inputs in the dataset's raw units: (N, *input shape), or one input."""
    import numpy as np

    try:
        data = torch.as_tensor(np.load(path)) if path.suffix == ".npy" else torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input to fix
        raise _bad_input(str(path), f"cannot read it as a {path.suffix} array: {err}") from None
    if not isinstance(data, torch.Tensor):
        raise _bad_input(str(path), f"holds a {type(data).__name__}, not one tensor.")
    shape = tuple(info.input_shape)
    if tuple(data.shape) == shape:
        data = data.unsqueeze(0)
    if tuple(data.shape[1:]) != shape:
        raise _bad_input(str(path), f"an array of shape {tuple(data.shape)}; the run's model takes (N, "
                                    f"{', '.join(map(str, shape))}), or one input of shape {shape}.")
    if info.pixel_mean is None or data.dtype != torch.uint8:
        data = data.float()
    if info.feature_mean is not None:
        data = (data - info.feature_mean) / info.feature_std
    return data, [str(i) for i in range(len(data))]


def read_inputs(path_text: str | None, info: Any) -> tuple[torch.Tensor, list[str], str]:
    """The inputs named by predict.input, ready for Prepare, with a label per sample and the label's column name."""
    if not path_text:
        raise ConfigError("'mode=predict' needs 'predict.input=<file or folder>': a CSV (tabular runs), a folder of "
                          "images (image runs), or a .npy/.pt array.", key="predict.input")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise _bad_input(path_text, f"no such file or folder (looked in {path.resolve()}).")
    if path.is_dir():
        return (*read_images(path, info), "file")
    if path.suffix.lower() == ".csv":
        return (*read_table(path, info), "row")
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return (*read_array(path, info), "index")
    raise _bad_input(path_text, f"unknown format '{path.suffix or '(no suffix)'}'; valid: a .csv file, a folder of "
                                f"images ({', '.join(IMAGE_SUFFIXES)}), or a {' or '.join(ARRAY_SUFFIXES)} array.")


def probabilities(loss: Any, output: torch.Tensor) -> torch.Tensor:
    """Class probabilities (N, C) from the model's output, whatever output layer its loss asked for."""
    if loss.binary:
        p = output.squeeze(1) if loss.output_activation == "sigmoid" else torch.sigmoid(output.squeeze(1))
        return torch.stack([1 - p, p], dim=1)
    if loss.output_activation == "log_softmax":
        return output.exp()
    return torch.softmax(output, dim=1)


def run_predict(exp: Experiment, cfg: dict[str, Any], run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """mode=predict resume=<run dir> predict.input=<file>: the trained model's predictions, as a CSV."""
    options = cfg.get("predict") or {}
    info = exp.info
    if info.task not in ("classification", "regression"):
        raise ConfigError(f"'mode=predict' writes one class or value per input; this run's task is {info.task}. "
                          f"Its decoded examples are in TensorBoard's Text tab.", key="mode")
    x, labels, label_column = read_inputs(options.get("input"), info)
    path = load_trained(exp, cfg, run_dir)
    with torch.no_grad():
        output = torch.cat([exp.model(exp.prepare(b.to(exp.device))).float().cpu()
                            for b in x.split(exp.opts.eval_batch_size)])
    if info.task == "classification":
        names = info.class_names or [str(i) for i in range(info.num_classes)]
        probs = probabilities(exp.loss, output)
        predicted = probs.argmax(dim=1)
        header = [label_column, "predicted", *(f"p_{n}" for n in names)]
        rows = [[label, names[k], *(f"{p:.6g}" for p in row)]
                for label, k, row in zip(labels, predicted.tolist(), probs.tolist())]
    else:
        values = output.reshape(len(x), -1)
        if info.target_mean is not None:  # back to the target's own units
            values = values * info.target_std + info.target_mean
        target = (cfg.get("dataset") or {}).get("target")
        columns = ([f"predicted_{target}"] if isinstance(target, str) and values.shape[1] == 1
                   else [f"predicted_{i}" for i in range(values.shape[1])] if values.shape[1] > 1 else ["predicted"])
        header = [label_column, *columns]
        rows = [[label, *(f"{v:.6g}" for v in row)] for label, row in zip(labels, values.tolist())]
    source = Path(options["input"]).expanduser()
    out = Path(options.get("output") or source.parent / f"{source.stem if source.is_file() else source.name}"
                                                        f".predictions.csv").expanduser()
    if out.resolve() == source.resolve():
        raise ConfigError(f"'predict.output={out}' is the input file itself: give another path.", key="predict.output")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    console.console.print(f"{len(rows)} prediction(s) of {run_dir.name} ({path.name}): {out}", soft_wrap=True)
    return {"status": "completed", "mode": "predict", "checkpoint": str(path), "output": str(out), "rows": len(rows)}


# ---- export ----------------------------------------------------------------------------------------------------

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


def run_export(exp: Experiment, cfg: dict[str, Any], run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """mode=export resume=<run dir>: write the trained model as ONNX or TorchScript, checked on a test batch."""
    options = cfg.get("export") or {}
    fmt = options.get("format")
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"'export.format={fmt}' is not a format dl-run exports; valid: "
                          f"{', '.join(EXPORT_FORMATS)}.", key="export.format")
    path = load_trained(exp, cfg, run_dir)
    model = exp.model.cpu().eval()
    # The exported model takes what the model sees: inputs after the run's own preparation (images scaled and
    # standardised per channel, tabular features standardised), as mode=predict prepares them.
    example = exp.prepare(exp.splits.x_test[:8]).float().cpu()
    with torch.no_grad():
        expected = model(example).float()
    out = Path(options.get("output") or run_dir / EXPORT_FORMATS[fmt]).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    exporter = export_onnx if fmt == "onnx" else export_torchscript
    got, runner = exporter(model, example, out)
    difference = (got.float() - expected).abs().max().item()
    tolerance = float(options.get("tolerance", 1e-4))
    matches = bool(torch.allclose(got.float(), expected, atol=tolerance, rtol=1e-3))
    message = (f"Exported {path.name} of {run_dir.name} to {out} ({fmt}); run with {runner} on {len(example)} test "
               f"inputs, its outputs differ from PyTorch's by at most {difference:.2g}")
    if not matches:
        out.unlink(missing_ok=True)
        raise ConfigError(f"{message}, more than export.tolerance={tolerance}: the exported model is not faithful "
                          f"and was removed.", key="export.format")
    console.console.print(f"{message} (tolerance {tolerance:g}).", soft_wrap=True)
    metrics = {"status": "completed", "mode": "export", "format": fmt, "checkpoint": str(path), "output": str(out),
               "runner": runner, "max_abs_difference": difference, "input_shape": list(example.shape[1:])}
    return metrics


MODES = {"eval": run_eval, "predict": run_predict, "export": run_export}
