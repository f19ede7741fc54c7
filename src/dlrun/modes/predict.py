"""mode=predict: a trained run's predictions for new inputs (a CSV, a folder of images, an array), as a CSV."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dlrun.errors import ConfigError
from dlrun.modes.trained import load_trained
from dlrun.run.run_directory import write_whole
from dlrun.views import class_names, console

if TYPE_CHECKING:
    from dlrun.run.experiment import Experiment

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".pt")


def _bad_input(path: str, why: str) -> ConfigError:
    return ConfigError(f"'predict.input={path}': {why}", key="predict.input")


def read_table(path: Path, info: Any) -> tuple[torch.Tensor, list[str]]:
    """A CSV's feature columns (by the training names), as raw values; row labels 'row 2', 'row 3', ..."""
    if len(info.input_shape) != 1:
        raise _bad_input(str(path), f"a CSV gives one row of numbers per sample, but this run's model takes "
                                    f"inputs of shape {tuple(info.input_shape)}: give a folder of images or a "
                                    f".npy/.pt array instead.")
    from dlrun.data.tabular import FLOAT32_MAX, decode, lines_text, parse_number, read_table_text

    # Read as dataset=csv reads: a spreadsheet's byte-order mark, encoding, ';' separator and decimal commas.
    header, body_rows, all_lines, separator = read_table_text(decode(path.read_bytes(), str(path), "predict.input")[0],
                                                              str(path), "predict.input")
    rows = [header, *body_rows] if header else []
    if not rows:
        raise _bad_input(str(path), "the file is empty.")
    names = info.feature_names
    if names is not None:
        missing = [n for n in names if n not in header]
        if missing:
            raise _bad_input(str(path), f"the header lacks the feature column(s) {', '.join(missing)}; the run was "
                                        f"trained on the columns {', '.join(names)} (other columns are ignored).")
        columns = [header.index(n) for n in names]
        body, lines = rows[1:], all_lines[1:]
    else:  # a dataset without column names: the file's columns are the features, a header line is optional
        has_header = not all(_is_number(c) for c in rows[0])
        body, lines = (rows[1:], all_lines[1:]) if has_header else (rows, all_lines)
        width = {len(r) for r in body}
        if width != {info.input_dim}:
            raise _bad_input(str(path), f"rows have {', '.join(map(str, sorted(width)))} column(s); the run's model "
                                        f"takes {info.input_dim} feature(s) per row.")
        columns = list(range(info.input_dim))
    if not body:
        raise _bad_input(str(path), "no data rows after the header line.")
    x = torch.empty(len(body), len(columns))
    missing: dict[str, list[int]] = {}
    for i, row in enumerate(body):
        for j, c in enumerate(columns):
            try:
                value = parse_number(row[c], separator != ",", limit=FLOAT32_MAX)
            except ValueError:
                raise _bad_input(str(path), f"line {lines[i]}, column '{header[c] if names else c + 1}': "
                                            f"'{row[c].strip()}' is not a number.") from None
            if value is None:
                missing.setdefault(header[c] if names else str(c + 1), []).append(lines[i])
            x[i, j] = math.nan if value is None else value
    if missing:  # a NaN input gives a NaN prediction: refused, not written
        where = "; ".join(f"column '{name}' {lines_text(found)}" for name, found in missing.items())
        raise _bad_input(str(path), f"missing or non-finite values (empty, NA, nan, inf, beyond 3.4e38): {where}. "
                                    f"Fill them in or leave those rows out: a prediction needs every feature.")
    if info.feature_mean is not None:  # the training split's standardisation (course 2 §3.3)
        x = (x - info.feature_mean) / info.feature_std
    return x, [f"row {line}" for line in lines]


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


def _output(exp: Experiment, options: dict[str, Any]) -> Path:
    """predict.output, or <input name>.predictions.csv beside the input: never the input, the run's records, or an
    existing file unless overwrite=true."""
    source = Path(options["input"]).expanduser()
    default = source.parent / f"{source.stem if source.is_file() else source.name}.predictions.csv"
    return exp.directory.output(options.get("output") or default, "predict.output", bool(exp.cfg.get("overwrite")),
                                inputs=[source])


def run_predict(exp: Experiment, overrides: list[str]) -> dict[str, Any]:
    """mode=predict resume=<run dir> predict.input=<file>: the trained model's predictions, as a CSV."""
    cfg = exp.cfg
    options = cfg.get("predict") or {}
    info = exp.info
    if info.task not in ("classification", "regression"):
        raise ConfigError(f"'mode=predict' writes one class or value per input; this run's task is {info.task}. "
                          f"Its decoded examples are in TensorBoard's Text tab.", key="mode")
    x, labels, label_column = read_inputs(options.get("input"), info)
    out = _output(exp, options)  # checked before anything is computed or written
    path = load_trained(exp)
    with torch.no_grad():
        output = torch.cat([exp.model(exp.prepare(b.to(exp.device))).float().cpu()
                            for b in x.split(exp.opts.eval_batch_size)])
    if info.task == "classification":
        names = class_names(info)
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
    text = io.StringIO(newline="")
    csv.writer(text).writerows([header, *rows])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_whole(out, text.getvalue())
    console.console.print(f"{len(rows)} prediction(s) of {exp.run_dir.name} ({path.name}): {out}", soft_wrap=True)
    return {"status": "completed", "mode": "predict", "checkpoint": str(path), "output": str(out), "rows": len(rows)}
