"""1-D CNNs on time series (issue #20): model=cnn and model=resnet over steps x features, the output-length formula
in 1-D (course 3 §2.1), what is refused, Grad-CAM over time, and a 1-D CNN run resumed, exported and used to predict."""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from conftest import compose_config
from dlrun.data.base import DataInfo, SequenceInfo
from dlrun.diagnostics.cnn import feature_maps_grid, filters_grid, grad_cam, last_conv
from dlrun.diagnostics.summary import summarize
from dlrun.errors import ConfigError
from dlrun.models import MODELS
from dlrun.models.cnn import FeaturesAsChannels
from dlrun.models.geometry import conv_output_size, predicted_size
from dlrun.run.training import run


def series_info(steps: int, features: int = 1, task: str = "classification") -> DataInfo:
    return DataInfo(input_shape=(steps, features), task=task, num_classes=4, name="series",
                    sequence=SequenceInfo(length=steps, features=features))


QUICK = ("trainer.progress=false", "trainer.device=cpu", "trainer.threads=1")
PATTERNS = ("dataset=patterns", "dataset.n_samples=240", "dataset.length=32", "dataset.pattern_length=8")


# ---- the output-length formula in 1-D (course 3 §2.1) ------------------------------------------------------------

def test_1d_output_lengths_equal_the_formula_over_a_grid_of_kernel_stride_padding_dilation():
    checked = 0
    for length, kernel, stride, padding, dilation in itertools.product((6, 13), (1, 2, 3, 5), (1, 2, 3), (0, 1, 2),
                                                                       (1, 2, 3)):
        expected = conv_output_size(length, kernel, stride, padding, dilation)
        if padding > kernel // 2 or expected < 1:  # torch refuses these (pooling) or they are empty
            continue
        x = torch.zeros(2, 3, length)
        layers = [nn.Conv1d(3, 2, kernel, stride, padding, dilation), nn.MaxPool1d(kernel, stride, padding, dilation),
                  nn.AvgPool1d(kernel, stride, padding) if dilation == 1 else None]
        for layer in filter(None, layers):
            (out,), text = predicted_size(layer, length)
            assert layer(x).shape[2] == out == expected and text.endswith(f"= {out}"), (layer, length)
            checked += 1
    assert checked > 200


def test_a_1d_cnns_summary_matches_the_formula_or_the_geometry_is_refused_naming_the_layer():
    """model=cnn over 13 steps for every geometry of the grid: built, each conv and pool row's formula gives the
    measured length; refused, the error names the layer where the formula reaches nothing."""
    built = refused = 0
    for kernel, stride, padding, dilation in itertools.product((1, 2, 3, 5), (1, 2, 3), (0, 1, 2), (1, 2, 3)):
        keys = {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": dilation,
                "channels": [4, 4], "hidden": [8]}
        try:
            net = MODELS.build({"name": "cnn", **keys}, info=series_info(13, 2), out_features=4)
        except ConfigError as err:
            layer = re.search(r"layer (features\.stage\d\.\w+)", str(err)).group(1)
            assert "13-step" in str(err) or layer != "features.stage1.conv1"
            assert re.search(r"L_out = ⌊.*⌋ = (0|-\d+)", str(err)), str(err)
            refused += 1
            continue
        rows, _, _ = summarize(net, torch.zeros(2, 13, 2))
        covered = [r for r in rows if r.formula]
        assert [r.kind for r in covered] == ["Conv1d", "MaxPool1d"] * 2
        assert all(r.formula_matches and r.formula.endswith(f"= {r.output_shape[1]}") for r in covered)
        built += 1
    assert built > 50 and refused > 10


@pytest.mark.parametrize("keys,words", [
    ({"channels": [8, 8, 8, 8]}, ["features.stage4.pool", "1-step input", "L_out = ⌊(1 - 1 + 2·0 - 1·(2 - 1)) / 2 + 1⌋ = 0",
                                  "8 steps of 8 features"]),
    ({"kernel_size": 5, "padding": 0, "dilation": 2}, ["features.stage1.conv1", "8-step input", "dilation 2"]),
])
def test_a_geometry_that_shrinks_the_sequence_to_nothing_is_refused_before_training(keys, words):
    with pytest.raises(ConfigError) as err:
        MODELS.build({"name": "cnn", **keys}, info=series_info(8, 8), out_features=10)
    for word in words:
        assert word in str(err.value)


def test_every_cnn_key_keeps_its_meaning_in_1d():
    net = MODELS.build({"name": "cnn", "channels": [[8, 16]], "padding": 0, "hidden": [32], "batch_norm": True,
                        "dropout": 0.5, "dropout2d": 0.1, "pool": "avg", "activation": "maxout"},
                       info=series_info(20, 3), out_features=4)
    kinds = [type(m).__name__ for m in net.modules() if not list(m.children())]
    assert kinds == ["FeaturesAsChannels", "Conv1d", "BatchNorm1d", "Maxout", "Conv1d", "BatchNorm1d", "Maxout",
                     "AvgPool1d", "Dropout1d", "Flatten", "Linear", "BatchNorm1d", "Maxout", "Dropout", "Linear"]
    first = net.features.stage1.conv1
    assert first.in_channels == 3 and first.out_channels == 8 * 2  # features are channels; maxout's 2 pieces
    assert net.head.fc1.in_features == 16 * 8  # 20 -> 18 -> 16 -> avg pool 8 steps
    gap = MODELS.build({"name": "cnn", "global_pool": True, "hidden": []}, info=series_info(20, 3), out_features=4)
    assert isinstance(gap.head.global_pool, nn.AdaptiveAvgPool1d) and gap(torch.zeros(5, 20, 3)).shape == (5, 4)
    resnet = MODELS.build({"name": "resnet", "widths": [8, 16], "blocks_per_stage": 1}, info=series_info(20, 3),
                          out_features=4)
    assert {type(m).__name__ for m in resnet.modules()} >= {"Conv1d", "BatchNorm1d", "AdaptiveAvgPool1d"}
    assert not any(isinstance(m, nn.Conv2d) for m in resnet.modules()) and resnet(torch.zeros(5, 20, 3)).shape == (5, 4)


def test_a_users_own_series_of_steps_x_features_is_read_in_1d():
    """A user's dataset that gives (steps, features) inputs, whether or not it describes them as a sequence."""
    own = DataInfo(input_shape=(30, 5), task="classification", num_classes=3, name="my_sensors")
    net = MODELS.build({"name": "cnn", "channels": [4]}, info=own, out_features=3)
    assert net.features.stage1.conv1.in_channels == 5 and net(torch.randn(2, 30, 5)).shape == (2, 3)


def test_inputs_a_cnn_cannot_read_are_refused_naming_what_fits():
    tokens = DataInfo(input_shape=(12,), task="seq2seq", name="toy_seq2seq",
                      sequence=SequenceInfo(length=8, vocab_size=13, source_length=8, target_length=4))
    for model in ("cnn", "resnet"):
        with pytest.raises(ConfigError, match=r"Use a sequence model: model=rnn, model=lstm, model=gru, model=tcn or "
                                              r"model=transformer") as err:
            MODELS.build({"name": model}, info=tokens, out_features=13)
        assert err.value.key == "model" and "toy_seq2seq" in str(err.value)
    with pytest.raises(ConfigError, match=r"Use model=mlp for it, or an image dataset \(digits, .*\) or a sequence "
                                          r"dataset \(patterns, digits_rows, .*csv_timeseries\)"):
        MODELS.build({"name": "cnn"}, info=DataInfo(input_shape=(4,), task="classification", num_classes=3,
                                                    name="iris"), out_features=3)


# ---- Grad-CAM over time (course 3 §5.1) --------------------------------------------------------------------------

def step_detector() -> nn.Module:
    """A fixed 1-D CNN whose class-1 score is the sum of the series' first 8 of 16 steps."""
    conv = nn.Conv1d(1, 1, 1, bias=False)
    nn.init.ones_(conv.weight)
    head = nn.Linear(16, 2, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[1, :8] = 1.0
    return nn.Sequential(FeaturesAsChannels(), conv, nn.ReLU(), nn.Flatten(), head)


def test_grad_cam_over_time_lights_up_when_the_evidence_is():
    model = step_detector()
    x = 0.05 * torch.rand(3, 16, 1)
    x[:, 2:6] += 1.0  # a bump inside the steps that class 1 looks at
    cam = grad_cam(model, x, torch.tensor([1, 1, 1]))
    assert cam.shape == (3, 16) and cam.min() >= 0 and cam.max() <= 1.0 + 1e-6
    assert cam[:, 2:6].mean() > 0.8 and cam[:, 8:].mean() < 0.1
    assert filters_grid(model).shape[0] == 3 and feature_maps_grid(model, x).shape == (1, 1, 16)
    tcn = MODELS.build({"name": "tcn", "channels": 4, "levels": 2}, info=series_info(16), out_features=4)
    assert last_conv(tcn) is None  # causal convolutions read time as it comes: no Grad-CAM for a TCN


# ---- runs ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [("model=cnn",), ("model=resnet", "model.widths=[8,16]", "model.blocks_per_stage=1")],
                         ids=["cnn", "resnet"])
@pytest.mark.parametrize("data", [PATTERNS, ("dataset=sine", "dataset.length=400", "dataset.input_length=16")],
                         ids=["classification", "forecasting"])
def test_a_1d_cnn_learns_to_classify_and_to_forecast(tmp_path, model, data):
    overrides = [*data, *model, "trainer.epochs=3", "optimizer.lr=0.003", "logger=none", *QUICK]
    out = run(OmegaConf.create(compose_config(*overrides)), tmp_path, overrides)
    losses = [h["train/loss"] for h in out["history"]]
    assert losses[-1] < losses[0] * 0.9, losses
    if "dataset=sine" in data and "model=cnn" in model:  # resnet's global pooling forgets when: it needs longer
        assert out["test"]["rmse"] < out["test"]["naive_rmse"]


def test_channels_last_leaves_a_1d_cnn_as_it_is(tmp_path):
    """NHWC is a layout of 4-D tensors: for a 1-D CNN trainer.channels_last=true changes nothing."""
    losses = []
    for setting in ("true", "false"):
        overrides = [*PATTERNS, "model=cnn", "trainer.max_steps=4", "logger=none", f"trainer.channels_last={setting}",
                     *QUICK]
        out = run(OmegaConf.create(compose_config(*overrides)), tmp_path / setting, overrides)
        losses.append(out["test"]["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


@pytest.fixture(scope="module")
def patterns_cnn(tmp_path_factory) -> dict:
    """A 1-D CNN trained on small patterns, with its TensorBoard views."""
    root = tmp_path_factory.mktemp("patterns_cnn")
    overrides = [*PATTERNS, "model=cnn", "model.channels=[8,16]", "model.hidden=[16]", "trainer.epochs=2",
                 "logger.gradients_every_n_steps=0", *QUICK]
    metrics = run(OmegaConf.create(compose_config(*overrides)), root / "run", overrides)
    return {"root": root, "run_dir": root / "run", "overrides": overrides, "metrics": metrics}


def _mode(patterns_cnn: dict, *overrides: str) -> dict:
    args = [*patterns_cnn["overrides"], *overrides, f"resume={patterns_cnn['run_dir']}"]
    return run(OmegaConf.create(compose_config(*args)), patterns_cnn["run_dir"], args)


def test_a_1d_cnn_run_logs_grad_cam_over_time_filters_and_feature_maps(patterns_cnn):
    events = EventAccumulator(str(patterns_cnn["run_dir"] / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"cnn/grad_cam", "cnn/first_layer_filters", "cnn/first_layer_feature_maps"} <= set(events.Tags()["images"])
    result = _mode(patterns_cnn, "mode=gradcam")
    assert Path(result["figure"]).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_1d_cnn_exports_a_file_that_gives_its_outputs(patterns_cnn, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    result = _mode(patterns_cnn, "mode=export", f"export.format={fmt}", "overwrite=true")
    assert Path(result["output"]).is_file() and result["max_abs_difference"] < 1e-4


def test_a_1d_cnn_predicts_from_an_array_of_series(patterns_cnn):
    from dlrun.run.experiment import build_data

    data = build_data(compose_config(*patterns_cnn["overrides"])["dataset"], seed=0)  # as the run built it
    splits, classes = data.splits, data.info.class_names
    np.save(patterns_cnn["root"] / "test.npy", splits.x_test.numpy())
    output = patterns_cnn["root"] / "predicted.csv"
    _mode(patterns_cnn, "mode=predict", f"predict.input={patterns_cnn['root'] / 'test.npy'}",
          f"predict.output={output}")
    with output.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    accuracy = np.mean([r["predicted"] == classes[int(t)] for r, t in zip(rows, splits.y_test)])
    assert len(rows) == len(splits.x_test)
    assert accuracy == pytest.approx(patterns_cnn["metrics"]["test"]["accuracy"])


def test_dl_run_resumes_a_1d_cnn_and_refuses_one_on_tokens(dl_run):
    first = dl_run(*PATTERNS, "model=cnn", "trainer.epochs=1", "logger=none", *QUICK)
    assert first.code == 0, first.output
    assert "L_out = ⌊(L_in - 1 + 2·padding -" in first.output and "MaxPool1d" in first.output  # the model table
    (run_dir,) = first.run_dirs()
    second = dl_run(f"resume={run_dir}", "trainer.epochs=2")
    assert second.code == 0, second.output
    metrics = second.metrics()
    assert metrics["epochs_run"] == 2 and [h["epoch"] for h in metrics["history"]] == [1, 2]
    refused = dl_run("dataset=toy_seq2seq", "model=cnn", *QUICK)
    assert refused.code == 2 and "model=rnn, model=lstm, model=gru, model=tcn or model=transformer" in refused.output
    assert len(list((refused.cwd / "outputs").rglob("metrics.json"))) == 1  # only the first run's


def test_mode_gradcam_on_a_tcn_says_which_models_it_draws(tmp_path):
    overrides = [*PATTERNS, "model=tcn", "model.channels=4", "model.levels=2", "trainer.max_steps=1", "logger=none",
                 *QUICK]
    run(OmegaConf.create(compose_config(*overrides)), tmp_path, overrides)
    args = [*overrides, "mode=gradcam", f"resume={tmp_path}"]
    with pytest.raises(ConfigError, match=r"e\.g\. model=cnn or model=resnet, on images or series") as err:
        run(OmegaConf.create(compose_config(*args)), tmp_path, args)
    assert err.value.key == "mode" and not (tmp_path / "grad_cam.png").exists()
