"""Sequences (course 3 §5.3-5.4): windows and time-ordered splits, the naive baselines, every sequence model on
every sequence task, greedy decoding, and what a run shows in TensorBoard."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from conftest import compose_config
from image_fixtures import write_mnist
from series_fixtures import write_series_csv
from dlrun.data import DATASETS
from dlrun.data.timeseries import make_windows, window_starts
from dlrun.models.decoding import greedy_decode, to_text
from dlrun.errors import ConfigError
from dlrun.components.init import INITS, apply_init
from dlrun.tasks.regression import forecast_baselines
from dlrun.models import MODELS
from dlrun.run.training import run

SEQUENCE_MODELS = ["rnn", "lstm", "gru", "tcn", "transformer"]
SMALL = {  # narrow versions of each model, so that a few steps take little time
    "rnn": ["model.hidden=16"], "lstm": ["model.hidden=16"], "gru": ["model.hidden=16"],
    "tcn": ["model.channels=8", "model.levels=3"],
    "transformer": ["model.width=16", "model.heads=2", "model.feedforward=32", "model.layers=1"],
}
TASKS = {  # small versions of one dataset per task: about 9 batches an epoch
    "forecasting": ["dataset=sine", "dataset.length=400", "dataset.input_length=16"],
    "classification": ["dataset=digits_rows", "trainer.batch_size=128"],
    "seq2seq": ["dataset=toy_seq2seq", "dataset.n_samples=400", "dataset.max_length=5", "dataset.operation=copy"],
}


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
    with pytest.raises(ConfigError, match="1 row with a missing or non-finite value .*column 'sales' line 9"):
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


@pytest.fixture
def one_thread():
    """Models this small train faster on one thread than paying for thread synchronisation at every tiny op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("model", SEQUENCE_MODELS)
@pytest.mark.parametrize("task", TASKS)
def test_every_sequence_model_learns_every_task(tmp_path, model, task, one_thread):
    overrides = [*TASKS[task], f"model={model}", *SMALL[model], "trainer.epochs=3", "optimizer.lr=0.01",
                 "logger=none", "trainer.progress=false", "trainer.device=cpu"]
    out = run(OmegaConf.create(compose_config(*overrides)), tmp_path, overrides)
    losses = [h["train/loss"] for h in out["history"]]
    assert losses[-1] < losses[0] * 0.9, losses
    assert out["task"] == ("seq2seq" if task == "seq2seq" else "classification" if task == "classification"
                           else "regression")


def test_tcn_sees_only_the_past():
    data = DATASETS.build({"name": "sine", "length": 300, "input_length": 16, "horizon": 1})
    tcn = MODELS.build({"name": "tcn", "levels": 2}, info=data.info, out_features=1).eval()
    x = data.splits.x_train[:3].transpose(1, 2)  # (batch, features, steps)
    changed = x.clone()
    changed[:, :, 10:] += 1.0
    with torch.no_grad():
        a, b = tcn.blocks(x), tcn.blocks(changed)
    assert torch.equal(a[:, :, :10], b[:, :, :10]) and not torch.equal(a[:, :, 10:], b[:, :, 10:])


def test_init_schemes_reach_recurrent_weights():
    lstm = nn.LSTM(3, 16, num_layers=2)
    assert apply_init(lstm, INITS.build({"name": "orthogonal"}), 0.0) == 1
    w = lstm.weight_hh_l1  # (4 gates * 16, 16): orthonormal columns
    assert torch.allclose(w.T @ w, torch.eye(16), atol=1e-5)
    assert all(torch.count_nonzero(b) == 0 for name, b in lstm.named_parameters() if name.startswith("bias"))


@pytest.mark.parametrize("model", SEQUENCE_MODELS)
def test_seq2seq_decoders_are_causal(model):
    """Greedy decoding relies on it: the output at step t ignores decoder inputs after t."""
    data = DATASETS.build({"name": "toy_seq2seq", "n_samples": 50})
    net = MODELS.build({"name": model}, info=data.info, out_features=data.info.sequence.vocab_size).eval()
    x = data.splits.x_train[:4]
    t = 3
    changed = x.clone()
    changed[:, data.info.sequence.source_length + t + 1:] = 4  # every decoder input after step t
    with torch.no_grad():
        assert torch.allclose(net(x)[:, :t + 1], net(changed)[:, :t + 1], atol=1e-5)
        assert not torch.allclose(net(x)[:, t + 1:], net(changed)[:, t + 1:], atol=1e-5)


class ScriptedCopier(nn.Module):
    """Copies the source, then predicts the end token, then 'a' forever; counts its forward passes."""

    def __init__(self, seq) -> None:
        super().__init__()
        self.seq, self.calls = seq, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        seq = self.seq
        source = x[:, :seq.source_length]
        wanted = torch.full((len(x), seq.target_length), 3)  # 3 = 'a', the first symbol
        wanted[:, :seq.source_length] = torch.where(source == seq.pad_token, 3, source)
        lengths = (source != seq.pad_token).sum(dim=1)
        wanted[torch.arange(len(x)), lengths] = seq.end_token
        return nn.functional.one_hot(wanted, seq.vocab_size).float()


def test_greedy_decoding_stops_at_the_end_token():
    seq = DATASETS.build({"name": "toy_seq2seq", "n_samples": 50, "max_length": 8}).info.sequence
    source = torch.zeros(2, seq.source_length, dtype=torch.long)
    source[0, :2] = torch.tensor([5, 6])
    source[1, :3] = torch.tensor([7, 8, 9])
    model = ScriptedCopier(seq)
    decoded, steps = greedy_decode(model, source, seq)
    assert decoded[0].tolist() == [5, 6, seq.end_token] + [seq.pad_token] * (seq.target_length - 3)
    assert decoded[1].tolist() == [7, 8, 9, seq.end_token] + [seq.pad_token] * (seq.target_length - 4)
    assert steps == model.calls == 4  # stopped once both had ended, not after target_length = 9 steps
    assert to_text(decoded[0], seq) == "c d </s>"


def _events(run_dir):
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def test_forecasting_a_user_csv_shows_both_errors_and_a_figure_per_epoch(dl_run, tmp_path):
    write_series_csv(tmp_path / "series.csv")
    result = dl_run("dataset=csv_timeseries", "dataset.path=series.csv", "dataset.target=y", "dataset.period=25",
                    "dataset.input_length=30", "model=gru", "trainer.epochs=2", "trainer.progress=false")
    assert result.code == 0, result.output
    metrics = result.metrics()
    assert {"rmse", "mae", "naive_rmse", "naive_mae", "seasonal_naive_rmse"} <= set(metrics["test"])
    assert "naive_rmse" in result.stdout and metrics["dataset"] == "series"
    events = _events(result.run_dirs()[0])
    assert len(events.Images("val/forecasts")) == 2  # one figure per epoch
    assert {"val/rmse", "val/naive_rmse", "val/seasonal_naive_rmse"} <= set(events.Tags()["scalars"])


def test_seq2seq_run_reports_exact_sequences_and_logs_decoded_examples(dl_run):
    result = dl_run("dataset=toy_seq2seq", "dataset.n_samples=400", "trainer.epochs=2", "trainer.progress=false")
    assert result.code == 0, result.output
    metrics = result.metrics()
    assert metrics["task"] == "seq2seq"
    assert 0.0 <= metrics["test"]["sequence_accuracy"] <= metrics["test"]["token_accuracy"] <= 1.0
    events = _events(result.run_dirs()[0])
    texts = events.Tensors("val/decoded/text_summary")
    assert len(texts) == 2
    table = texts[-1].tensor_proto.string_val[0].decode()
    assert "| source | decoded | expected | exact |" in table and "</s>" in table


@pytest.mark.slow
def test_acceptance_lstm_beats_the_naive_forecast_and_the_transformer_preset_reverses(dl_run):
    sine = dl_run("dataset=sine", "model=lstm", "trainer.progress=false", timeout=1800)
    assert sine.code == 0, sine.output
    test = sine.metrics()["test"]
    assert test["rmse"] < test["naive_rmse"] * 0.5
    for d in sine.run_dirs():
        (d / "metrics.json").rename(d / "metrics-sine.json")
    preset = dl_run("experiment=seq2seq_transformer", "trainer.progress=false", timeout=1800)
    assert preset.code == 0, preset.output
    assert preset.metrics()["test"]["sequence_accuracy"] >= 0.95
    assert not math.isnan(preset.metrics()["test"]["loss"])
