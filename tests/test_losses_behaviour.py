"""How losses behave (course 2 §4.1): outliers put in the training targets on purpose, the loss family on them,
BCE against BCE-with-logits on saturated outputs, and a wrong loss trained on purpose (loss.check=false)."""

from __future__ import annotations

import statistics

import pytest
import torch

from dlrun.components.losses import LOSSES
from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.run.experiment import build_data
from test_presets import jobs_over, sweep_params

SLOW_SEEDS = (0, 1, 2)  # the slow suite's directions: means over 3 seeds, as `seed=0,1,2` reports them
FAST = ("trainer.epochs=1", "trainer.threads=1", "trainer.progress=false", "logger=none")


def linear(**keys: float) -> dict:
    return {"name": "linear", "n_samples": 200, **keys}


def test_outliers_shift_the_asked_fraction_of_training_targets_and_leave_validation_and_test_clean():
    clean = build_data(linear(), seed=3).splits
    data = build_data(linear(outliers=0.1, outlier_scale=10.0), seed=3)
    corrupted = data.splits
    changed = (corrupted.y_train != clean.y_train).any(dim=1)
    assert int(changed.sum()) == round(0.1 * len(clean.y_train)) == data.outliers["rows"]
    shift = (corrupted.y_train - clean.y_train)[changed]
    assert torch.allclose(shift, 10.0 * clean.y_train.std(dim=0, unbiased=False).expand_as(shift))
    for split in ("val", "test"):
        assert torch.equal(corrupted.split(split)[1], clean.split(split)[1])
    assert torch.equal(corrupted.x_train, clean.x_train)
    assert any("on purpose" in w and "dataset.outliers=0.1" in w for w in data.warnings)
    again = build_data(linear(outliers=0.1, outlier_scale=10.0), seed=3).splits
    assert torch.equal(again.y_train, corrupted.y_train)  # seeded: the same rows each time


@pytest.mark.parametrize("keys", [{"outliers": -0.1}, {"outliers": 1.5}, {"outliers": "many"},
                                  {"outliers": 0.1, "outlier_scale": 0.0}])
def test_bad_outlier_settings_are_refused_naming_the_key(keys):
    with pytest.raises(ConfigError) as err:
        build_data(linear(**keys), seed=0)
    key = "dataset.outlier_scale" if "outlier_scale" in keys else "dataset.outliers"
    assert err.value.key == key and key in str(err.value)


def test_outliers_on_a_classification_dataset_are_refused():
    with pytest.raises(ConfigError, match="regression") as err:
        build_data({"name": "spirals", "n_samples": 100, "outliers": 0.1}, seed=0)
    assert err.value.key == "dataset.outliers"


def test_a_run_on_corrupted_targets_says_so_and_records_how_many_rows(dl_run):
    result = dl_run("dataset=linear", "model=linear", "dataset.outliers=0.2", *FAST)
    assert result.code == 0, result.output
    assert "training targets shifted up by 10 standard deviations on purpose" in result.output
    metrics = result.metrics()
    assert metrics["training_outliers"]["rows"] == 28 and metrics["training_outliers"]["of"] == 140
    assert any("on purpose" in w for w in metrics["data_warnings"])


def iris_info() -> DataInfo:
    return DataInfo(input_shape=(4,), task="classification", num_classes=3, name="iris")


def test_a_wrong_loss_is_refused_naming_the_opt_in():
    # The refusal is a ConfigError: exit code 2 and this one line at the command line (tests/test_bad_input.py).
    with pytest.raises(ConfigError, match="'loss=mse' is a regression loss") as err:
        LOSSES.build({"name": "mse"}, info=iris_info())
    assert err.value.key == "loss" and "loss.check=false" in str(err.value)


def test_a_wrong_loss_trains_with_loss_check_false_and_the_warning_is_kept(dl_run):
    result = dl_run("dataset=iris", "loss=mse", "loss.check=false", *FAST)
    assert result.code == 0, result.output
    assert "Warning: loss.check=false: 'loss=mse' is a regression loss" in result.output
    metrics = result.metrics()
    assert "loss.check=false" in metrics["loss_warning"]
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0  # scored as a classifier: the nearest class index


@pytest.mark.parametrize("loss, info, why", [
    ("cross_entropy", DataInfo(input_shape=(10,), task="regression", name="diabetes"), "real numbers"),
    ("bce", DataInfo(input_shape=(64,), task="classification", num_classes=10, name="digits"), "not probabilities"),
])
def test_a_pairing_that_cannot_train_says_loss_check_false_cannot_help(loss, info, why):
    with pytest.raises(ConfigError, match="loss.check=false cannot make it train") as err:
        LOSSES.build({"name": loss, "check": False}, info=info)
    assert why in str(err.value)


def test_the_loss_presets_sweep_the_losses_they_compare():
    assert sweep_params("loss_outliers")["loss"] == ["mse", "mae", "huber", "msle"]
    assert sweep_params("bce_stability")["loss"] == ["bce", "bce_with_logits"]


@pytest.mark.slow
def test_mae_and_huber_beat_mse_on_clean_test_data_after_training_on_outliers(tmp_path):
    rmse = {loss: statistics.fmean(m["test"]["rmse"] for m in jobs_over(SLOW_SEEDS, tmp_path, "loss_outliers", loss=loss))
            for loss in ("mse", "mae", "huber", "msle")}
    print("loss_outliers test RMSE, mean over seeds 0-2:", {k: round(v, 2) for k, v in rmse.items()})
    assert rmse["mae"] < rmse["mse"] and rmse["huber"] < rmse["mse"]
    assert rmse["msle"] < rmse["mse"]  # the log shrinks the (upward) outliers' pull, without removing it


@pytest.mark.slow
def test_bce_with_logits_keeps_training_where_saturated_sigmoid_outputs_stall_bce(tmp_path):
    accuracy = {loss: statistics.fmean(m["test"]["accuracy"] for m in jobs_over(SLOW_SEEDS, tmp_path, "bce_stability",
                                                                                 loss=loss))
                for loss in ("bce", "bce_with_logits")}
    print("bce_stability test accuracy, mean over seeds 0-2:", {k: round(v, 3) for k, v in accuracy.items()})
    assert accuracy["bce_with_logits"] > accuracy["bce"] + 0.1
