"""Sequences (course 3 §5.3): windows and time-ordered splits, the naive baselines, sequence datasets."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest
import torch

from image_fixtures import write_mnist
from dlrun.data import DATASETS
from dlrun.data.timeseries import make_windows, window_starts
from dlrun.errors import ConfigError
from dlrun.metrics import forecast_baselines


def test_windows_match_a_hand_computed_example():
    series = 10 * np.arange(10, dtype=np.float32)[:, None]  # the value at step t is 10t
    assert window_starts(10, input_length=3, horizon=2, stride=2).tolist() == [0, 2, 4]
    x, y = make_windows(series, 0, input_length=3, horizon=2, stride=2)
    assert x[:, :, 0].tolist() == [[0, 10, 20], [20, 30, 40], [40, 50, 60]]
    assert y.tolist() == [[30, 40], [50, 60], [70, 80]]
    assert window_starts(10, input_length=3, horizon=2, stride=1).tolist() == [0, 1, 2, 3, 4, 5]  # 10 - 5 + 1


def _clock_csv(tmp_path, steps: int = 200):
    """A CSV whose value is its own step number, with the rows shuffled and a date column giving the order."""
    start = date(2024, 1, 1)
    rows = [f"{start + timedelta(days=int(i))},{i},{i % 3}" for i in np.random.default_rng(1).permutation(steps)]
    path = tmp_path / "clock.csv"
    path.write_text("day,step,other\n" + "\n".join(rows) + "\n")
    return path


def test_time_ordered_splits_do_not_overlap_and_standardise_on_the_training_stretch(tmp_path):
    path = _clock_csv(tmp_path)
    common = {"name": "csv_timeseries", "path": str(path), "target": "step", "time": "day", "features": ["step"],
              "input_length": 5, "horizon": 2}
    data = DATASETS.build({**common, "standardize": False})
    used = []
    for split in ("train", "val", "test"):
        x, y = data.splits.split(split)
        assert torch.all(x[:, 1:, 0] - x[:, :-1, 0] == 1)  # each window is consecutive steps, in time order
        assert torch.all(y[:, 0] == x[:, -1, 0] + 1)  # and its targets are the steps right after it
        used.append((float(min(x.min(), y.min())), float(max(x.max(), y.max()))))
    (_, train_end), (val_start, val_end), (test_start, _) = used
    assert train_end < val_start and val_end < test_start  # no step reaches an earlier split
    assert len(data.splits.x_train) == 140 - 7 + 1  # 70% of 200 steps, minus a window of 7, plus 1

    scaled = DATASETS.build({**common, "standardize": True})
    assert float(scaled.info.target_mean[0]) == pytest.approx(np.mean(np.arange(140)))  # steps 0..139 only
    assert float(scaled.info.target_std[0]) == pytest.approx(np.std(np.arange(140)), rel=1e-5)


def test_naive_baselines_follow_their_definitions():
    # A pure wave of period 20: the value one period back is exact; the last value is not.
    data = DATASETS.build({"name": "sine", "periods": [20], "amplitudes": [2.0], "noise": 0.0, "period": 20,
                           "input_length": 24, "horizon": 5})
    x, y, info = data.splits.x_test, data.splits.y_test, data.info
    metrics = forecast_baselines(x, y, info)
    assert metrics["seasonal_naive_rmse"] < 1e-4 and metrics["seasonal_naive_mae"] < 1e-4
    # Recompute the last-value forecast by hand, in the original units.
    unscale = lambda t: t * info.target_std[0] + info.target_mean[0]  # noqa: E731
    errors = unscale(y) - unscale(x[:, -1, 0]).unsqueeze(1)
    assert metrics["naive_rmse"] == pytest.approx(errors.pow(2).mean().sqrt().item(), rel=1e-5)
    assert metrics["naive_mae"] == pytest.approx(errors.abs().mean().item(), rel=1e-5)
    assert metrics["naive_rmse"] > 0.3


def test_csv_timeseries_problems_name_the_line_and_column(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("day,sales\n" + "".join(f"{i},{'' if i == 7 else i}\n" for i in range(60)))
    with pytest.raises(ConfigError, match="line 9, column 'sales' is empty"):
        DATASETS.build({"name": "csv_timeseries", "path": str(path), "target": "sales", "time": "day"})
    path.write_text("day,sales\n" + "".join(f"2024-01-{i % 28 + 1:02d},{i}\n" for i in range(60)))
    with pytest.raises(ConfigError, match="dataset.time=day"):
        DATASETS.build({"name": "csv_timeseries", "path": str(path), "target": "sales"})


def test_mnist_rows_reads_torchvision_files_and_names_the_root_when_they_are_missing(tmp_path):
    write_mnist(tmp_path / "data", n_train=40, n_test=10)
    data = DATASETS.build({"name": "mnist_rows", "root": str(tmp_path / "data"), "val_fraction": 0.25,
                           "download": False})
    assert data.splits.x_train.shape == (30, 28, 28) and data.splits.x_val.shape == (10, 28, 28)
    assert data.splits.x_test.shape == (10, 28, 28) and float(data.splits.x_train.max()) == 1.0
    assert data.info.sequence.length == 28 and data.info.num_classes == 10
    with pytest.raises(ConfigError, match="nowhere/MNIST/raw") as err:
        DATASETS.build({"name": "mnist_rows", "root": str(tmp_path / "nowhere"), "download": False})
    assert err.value.key == "dataset.root"


def test_sunspots_ship_with_statsmodels():
    pytest.importorskip("statsmodels")
    data = DATASETS.build({"name": "sunspots"})
    assert data.info.sequence.period == 11 and data.info.sequence.time_ordered
    windows = sum(len(data.splits.split(s)[0]) for s in ("train", "val", "test"))
    assert windows == 309 - 3 * (22 + 1 - 1)  # 309 years; each split loses one window length minus one
