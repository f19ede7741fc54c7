"""mode=eval, mode=predict and mode=export on a trained run, in process (the CLI's resume= is tested in test_cli).

A run is trained once per module on tiny data; each mode then rebuilds it from the same config, as
`dl-run mode=... resume=<run dir>` does, and its files are checked against what the run itself measured.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from dlrun.data.base import split_indices
from dlrun.errors import ConfigError
from dlrun.run.training import run

TINY = ("trainer.progress=false", "model.hidden=[16]", "logger=none", "trainer.threads=1")


def run_in_process(run_dir: Path, *overrides: str) -> dict:
    """What `dl-run <overrides>` does once Hydra has composed the config and picked the run directory."""
    cfg = OmegaConf.create(compose_config(*overrides))
    return run(cfg, run_dir, list(overrides))


def write_table(path: Path, rows: np.ndarray, header: list[str], labels: list | None = None) -> None:
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(header)
        for i, row in enumerate(rows):
            out.writerow([f"{v:.6f}" for v in row] + ([labels[i]] if labels is not None else []))


def read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def houses(tmp_path_factory) -> dict:
    """A regression CSV whose features differ in scale by 1000x, and a run trained on it."""
    root = tmp_path_factory.mktemp("houses")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 3)) * [1.0, 10.0, 1000.0] + [0.0, 50.0, 5000.0]
    y = 3.0 * x[:, 0] + 0.2 * x[:, 1] + 100.0
    data = np.column_stack([x, y])
    write_table(root / "houses.csv", data, ["rooms", "area", "age", "price"])
    args = ("dataset=csv", f"dataset.path={root / 'houses.csv'}", "dataset.target=price", "trainer.epochs=15",
            *TINY)
    run_dir = root / "run"
    metrics = run_in_process(run_dir, *args)
    return {"root": root, "x": x, "y": y, "args": args, "run_dir": run_dir, "metrics": metrics}


def test_predict_on_a_csv_gives_values_in_the_targets_units(houses):
    root, run_dir = houses["root"], houses["run_dir"]
    # The new file has the features in another order, an extra column and no target: columns go by name.
    shuffled = np.column_stack([houses["x"][:, 2], houses["x"][:, 0], np.zeros(len(houses["x"])), houses["x"][:, 1]])
    write_table(root / "new.csv", shuffled, ["age", "rooms", "notes", "area"])
    result = run_in_process(run_dir, *houses["args"], "mode=predict", f"resume={run_dir}",
                            f"predict.input={root / 'new.csv'}")
    out = root / "new.predictions.csv"
    assert result["output"] == str(out)
    rows = read_predictions(out)
    assert list(rows[0]) == ["row", "predicted_price"] and len(rows) == len(houses["x"])
    predicted = np.array([float(r["predicted_price"]) for r in rows])
    # On the rows of the run's own test split, the predictions score exactly what the run reported.
    _, _, test = split_indices(len(predicted), 0.15, 0.15, 0)
    rmse = math.sqrt(np.mean((predicted[test] - houses["y"][test]) ** 2))
    assert rmse == pytest.approx(houses["metrics"]["test"]["rmse"], rel=1e-3)


def test_eval_rescores_the_best_checkpoint_and_keeps_the_runs_records(houses):
    run_dir = houses["run_dir"]
    before = (run_dir / "metrics.json").read_text()
    result = run_in_process(run_dir, *houses["args"], "mode=eval", f"resume={run_dir}")
    assert result["test"] == pytest.approx(houses["metrics"]["test"], rel=1e-5)
    assert json.loads((run_dir / "eval_houses.json").read_text())["test"] == result["test"]
    assert (run_dir / "metrics.json").read_text() == before


def test_eval_on_another_csv_scores_it_on_the_training_scale(houses, capsys):
    """Another file is standardised with the trained run's statistics, not its own (course 2 §3.3)."""
    root, run_dir = houses["root"], houses["run_dir"]
    x, y = houses["x"], houses["y"]
    big = np.argsort(x[:, 0])[-100:]  # the houses with the most rooms: their own mean is far from the run's
    write_table(root / "big.csv", np.column_stack([x[big], y[big]]), ["rooms", "area", "age", "price"])
    # The model's own predictions for those houses, on the training scale (predict uses the run's statistics).
    run_in_process(run_dir, *houses["args"], "mode=predict", f"resume={run_dir}", f"predict.input={root / 'big.csv'}")
    predicted = np.array([float(r["predicted_price"]) for r in read_predictions(root / "big.predictions.csv")])
    result = run_in_process(run_dir, *houses["args"], f"dataset.path={root / 'big.csv'}", "mode=eval",
                            f"resume={run_dir}")
    _, _, test = split_indices(100, 0.15, 0.15, 0, "big")  # the csv dataset's split of the new file
    expected = math.sqrt(np.mean((predicted[test] - y[big][test]) ** 2))
    assert result["test"]["rmse"] == pytest.approx(expected, rel=1e-4)
    assert "inputs and targets standardised with the training split's statistics" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_writes_a_file_that_gives_the_models_outputs(houses, fmt):
    run_dir = houses["run_dir"]
    result = run_in_process(run_dir, *houses["args"], "mode=export", f"export.format={fmt}", f"resume={run_dir}")
    assert result["max_abs_difference"] < 1e-4
    # Run the file here too, on a batch of another size than the export's check used.
    inputs = torch.randn(3, 3)
    from dlrun.run.experiment import Experiment

    exp = Experiment(compose_config(*houses["args"]), run_dir)
    exp.model.load_state_dict(torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"])
    expected = exp.model.eval()(inputs).detach()
    if fmt == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime")
        session = onnxruntime.InferenceSession(result["output"], providers=["CPUExecutionProvider"])
        got = torch.as_tensor(session.run(None, {"input": inputs.numpy()})[0])
    else:
        got = torch.jit.load(result["output"])(inputs)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("model", [("model=cnn", "model.channels=[4,8]", "trainer.channels_last=true"),
                                   ("model.hidden=[1024]", "trainer.onednn_linear=true")], ids=["nhwc", "onednn"])
def test_a_model_trained_with_cpu_speedups_exports(tmp_path, fmt, model):
    """On a CPU dl-run may train CNNs channels-last and fully connected layers through oneDNN (both `auto`);
    the export is the plain model: torch's own convolutions and matrix products."""
    args = ("dataset=digits", *model, "trainer.max_steps=3", *TINY)
    run_in_process(tmp_path, *args)
    result = run_in_process(tmp_path, *args, "mode=export", f"export.format={fmt}", f"resume={tmp_path}")
    assert Path(result["output"]).is_file() and result["max_abs_difference"] < 1e-4


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("digits")
    args = ("dataset=digits", "trainer.epochs=2", *TINY)
    metrics = run_in_process(root / "run", *args)
    return {"root": root, "args": args, "run_dir": root / "run", "metrics": metrics}


def test_predict_on_images_and_arrays_names_classes_with_probabilities(digits_run):
    from PIL import Image

    from dlrun.run.experiment import build_data

    root, run_dir = digits_run["root"], digits_run["run_dir"]
    splits = build_data(compose_config(*digits_run["args"])["dataset"], seed=0).splits  # as the runner builds it
    np.save(root / "test.npy", splits.x_test.numpy())
    common = (*digits_run["args"], "mode=predict", f"resume={run_dir}")
    run_in_process(run_dir, *common, f"predict.input={root / 'test.npy'}", f"predict.output={root / 'a.csv'}")
    rows = read_predictions(root / "a.csv")
    assert list(rows[0])[:2] == ["index", "predicted"] and len(rows) == len(splits.x_test)
    probs = np.array([[float(r[f"p_{c}"]) for c in range(10)] for r in rows])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    accuracy = np.mean([r["predicted"] == str(int(t)) for r, t in zip(rows, splits.y_test)])
    assert accuracy == pytest.approx(digits_run["metrics"]["test"]["accuracy"])
    # The same digits as 8-bit PNG files: nearly all predictions agree (pixels are rounded to 1/255).
    folder = root / "pngs"
    folder.mkdir()
    for i, image in enumerate(splits.x_test[:40]):
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    Image.new("L", (40, 24)).save(folder / "big.png")  # any size: resized to the run's 8x8
    run_in_process(run_dir, *common, f"predict.input={folder}")
    from_images = read_predictions(root / "pngs.predictions.csv")
    assert [r["file"] for r in from_images] == [f"{i:03d}.png" for i in range(40)] + ["big.png"]
    agree = np.mean([a["predicted"] == b["predicted"] for a, b in zip(from_images, rows)])
    assert agree >= 0.95
    Image.new("RGB", (8, 8)).save(folder / "colour.png")
    with pytest.raises(ConfigError, match=r"colour.png has 3 channel\(s\) \(RGB\); the run was trained on 1-channel") as err:
        run_in_process(run_dir, *common, f"predict.input={folder}")
    assert err.value.key == "predict.input"


@pytest.mark.parametrize("name, content, message", [
    ("missing.csv", None, "no such file or folder"),
    ("inputs.json", "[1, 2]", r"unknown format '.json'; valid: a .csv file, a folder of images"),
    ("few.csv", "rooms,area\n1,2\n", "lacks the feature column.s. age; the run was trained on the columns rooms, area"),
    ("text.csv", "rooms,area,age\n1,big,3\n", "line 2, column 'area': 'big' is not a number"),
    ("shape.npy", np.zeros((4, 5), dtype=np.float32), r"an array of shape \(4, 5\); the run's model takes \(N, 3\)"),
])
def test_bad_predict_input_names_the_key_the_value_and_what_is_valid(houses, name, content, message):
    path = houses["root"] / name
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        np.save(path, content)
    with pytest.raises(ConfigError, match=message) as err:
        run_in_process(houses["run_dir"], *houses["args"], "mode=predict", f"resume={houses['run_dir']}",
                       f"predict.input={path}")
    assert err.value.key == "predict.input" and f"predict.input={path}" in str(err.value)


def test_modes_on_a_trained_run_refuse_to_run_without_one(tmp_path):
    with pytest.raises(ConfigError, match="'mode=export' works on a trained run: give it with resume=<run dir>"):
        run_in_process(tmp_path / "run", "mode=export", *TINY)
    with pytest.raises(ConfigError, match="'export.format=tflite' is not a format dl-run exports; valid: onnx, "):
        run_in_process(tmp_path / "run", "mode=export", "export.format=tflite", "resume=x", *TINY)
