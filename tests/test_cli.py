"""End to end through `dl-run` in fresh processes (conftest.dl_run), on tiny settings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import TINY
from dlrun.diagnostics.curves import CASES


def read_events(tb_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events


def test_default_run_reaches_95_percent_and_prints_the_tensorboard_command(dl_run):
    result = dl_run(script=True)  # the README's command, through the installed script itself
    assert result.code == 0, result.output
    metrics = result.metrics()
    assert metrics["test"]["accuracy"] >= 0.95
    assert metrics["dataset"] == "digits" and metrics["status"] == "completed"
    assert metrics["verdict"]["case"] == "healthy" and "curves: healthy" in result.stdout
    assert f"tensorboard --logdir {result.run_dirs()[0]}" in result.stdout
    assert "Total" in result.stdout and "17,226 parameters" in result.stdout  # the model summary


def test_run_writes_events_hparams_checkpoints_and_metrics(dl_run):
    result = dl_run(*TINY, "optimizer.lr=0.01", "logger.log_every_n_steps=5")
    assert result.code == 0, result.output
    (run_dir,) = result.run_dirs()
    metrics = result.metrics()
    history = metrics["history"]
    assert metrics["epochs_run"] == 3 and len(history) == 3
    assert history[-1]["train/loss"] < history[0]["train/loss"]  # the loss falls
    assert "optimizer.lr=0.01" in metrics["overrides"]
    assert set(metrics["evaluation"]) == {"train", "val", "test"}
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"  # readable without TensorBoard

    events = read_events(run_dir / "tb")
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "val/accuracy", "lr", "hparam/test/accuracy"} <= tags
    assert [e.step for e in events.Scalars("val/loss")] == [h["step"] for h in history]
    assert len(events.Scalars("train/loss_step")) == metrics["steps"] // 5
    test_acc = events.Scalars("hparam/test/accuracy")[-1].value
    assert test_acc == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)

    hparams = {}
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            hparams = dict(data.session_start_info.hparams)
    assert hparams["optimizer.lr"].number_value == pytest.approx(0.01)
    assert hparams["model.name"].string_value == "mlp"
    assert any(tag.startswith("diagnosis/verdict") for tag in events.Tags()["tensors"])  # the Text tab
    assert "test/confusion_matrix" in events.Tags()["images"]
    assert any(tag.startswith("data/first_batch") for tag in events.Tags()["tensors"])
    per_class = metrics["test_per_class_accuracy"]
    assert set(per_class) == {str(d) for d in range(10)} and "test_per_class_accuracy/7" in tags


def test_resume_continues_from_the_saved_step(dl_run):
    first = dl_run(*TINY, "trainer.epochs=2")
    assert first.code == 0, first.output
    (run_dir,) = first.run_dirs()
    steps_per_epoch = first.metrics()["steps"] // 2
    second = dl_run(f"resume={run_dir}", "trainer.epochs=4")
    assert second.code == 0, second.output
    assert "Resuming from epoch 2" in second.stdout
    assert second.run_dirs() == [run_dir]  # the same run directory, continued
    metrics = second.metrics()
    assert metrics["epochs_run"] == 4 and metrics["steps"] == 4 * steps_per_epoch
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]
    steps = [e.step for e in read_events(run_dir / "tb").Scalars("val/loss")]
    assert steps == sorted(set(steps)) and len(steps) == 4  # no duplicated or missing epochs in TensorBoard


def test_multirun_makes_one_directory_per_job_named_by_overrides(dl_run):
    result = dl_run("-m", "optimizer=sgd,adam", "optimizer.lr=0.1,0.01", *TINY)
    assert result.code == 0, result.output
    dirs = result.run_dirs()
    assert len(dirs) == 4
    names = sorted(d.name for d in dirs)
    assert any("optimizer=adam" in n and "optimizer.lr=0.01" in n for n in names)
    assert len({d.parent for d in dirs}) == 1  # one sweep directory holds them all
    for d in dirs:
        assert read_events(d / "tb").Tags()["scalars"]
    assert "sweep: 4 finished job(s), best first" in result.stdout
    assert f"tensorboard --logdir {dirs[0].parent}" in result.stdout
    sweep_dir = dirs[0].parent
    with (sweep_dir / "summary.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and all(row["status"] == "completed" for row in table)
    values = [float(row["val/loss"]) for row in table]
    assert values == sorted(values)  # sorted by the monitored metric, best first
    assert {row["verdict"] for row in table} <= set(CASES) | {"too few epochs"}
    assert (sweep_dir / "summary.md").read_text().count("| optimizer=") == 4
    assert (sweep_dir / "val_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failed_job_is_recorded_and_the_others_finish(dl_run):
    result = dl_run("-m", "optimizer.lr=0.01,-1", *TINY)
    assert result.code != 0
    assert len(result.run_dirs()) == 1
    with (result.run_dirs()[0].parent / "summary.csv").open() as handle:
        table = {row["job"].split()[0]: row for row in csv.DictReader(handle)}
    assert table["optimizer.lr=0.01"]["status"] == "completed"
    assert table["optimizer.lr=-1"]["status"] == "failed" and "positive" in table["optimizer.lr=-1"]["error"]


def test_init_zeros_stays_at_chance_while_he_learns(dl_run):
    result = dl_run("-m", "init=zeros,he_normal", "model=mlp", "dataset=digits", "trainer.epochs=10",
                    "trainer.progress=false")
    assert result.code == 0, result.output
    metrics = {d.name.split("init=")[1].split(",")[0]: json.loads((d / "metrics.json").read_text())
               for d in result.run_dirs()}
    accuracy = {init: m["test"]["accuracy"] for init, m in metrics.items()}
    assert accuracy["zeros"] < 0.2
    assert metrics["zeros"]["verdict"]["case"] == "underfitting"
    assert accuracy["he_normal"] > 0.9


def test_polynomial_capacity_train_error_falls_test_error_rises(dl_run):
    rmse = {}
    for degree in (1, 15):
        result = dl_run("dataset=polynomial", "model=polynomial", f"model.degree={degree}")
        assert result.code == 0, result.output
        metrics = result.metrics()
        rmse[degree] = (metrics["evaluation"]["train"]["rmse"], metrics["test"]["rmse"])
        if degree == 15:
            assert metrics["verdict"]["case"] == "overfitting" and "curves: overfitting" in result.stdout
            assert metrics["verdict"]["numbers"]["val_rise"] > 1
        assert "closed-form least squares" in result.stdout
        for d in result.run_dirs():
            (d / "metrics.json").rename(d / f"metrics-{degree}.json")  # one metrics.json at a time
    assert rmse[15][0] < rmse[1][0] * 0.5  # higher capacity fits the training points better
    assert rmse[15][1] > rmse[1][1]  # and generalises worse: overfitting (course 1 §6)


def test_regression_with_huber_reports_original_units(dl_run):
    result = dl_run("dataset=diabetes", "model=linear", "loss=huber", "trainer.progress=false")
    assert result.code == 0, result.output
    metrics = result.metrics()
    assert metrics["task"] == "regression"
    assert 20 < metrics["test"]["mae"] < 80  # progression scores run 25..346: MAE is in those units
    assert metrics["test"]["r2"] > 0.3
    assert metrics["least_squares"]["test"]["r2"] > 0.3
    (run_dir,) = result.run_dirs()
    assert "test/predicted_vs_true" in read_events(run_dir / "tb").Tags()["images"]


def test_help_lists_groups_options_and_examples(dl_run):
    result = dl_run("--help")
    assert result.code == 0
    for line in ("dataset: adding, ar, breast_cancer, cifar10, csv, csv_timeseries, diabetes, digits",
                 "lenet5, linear, lstm, mlp", "dl-run -m init=zeros,xavier_uniform,he_normal",
                 "tensorboard --logdir outputs"):
        assert line in result.stdout


def test_cfg_job_prints_the_composed_config_without_running(dl_run, tmp_path):
    result = dl_run("--cfg", "job", "optimizer=sgd")
    assert result.code == 0
    assert "name: sgd" in result.stdout and "epochs: 50" in result.stdout
    assert not (tmp_path / "outputs").exists()


def test_user_config_dir_and_target_build_the_users_model(dl_run, tmp_path):
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "def build_tiny(info, out_features: int, width: int = 4) -> nn.Module:\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(info.input_dim, width), nn.Tanh(),\n"
        "                         nn.Linear(width, out_features))\n"
    )
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "tiny.yaml").write_text(
        "# dl-run --config-dir mine model=tiny\n_target_: my_models.build_tiny\nwidth: 5\n")
    result = dl_run("--config-dir", "mine", "model=tiny", "dataset=iris", "trainer.epochs=2", "trainer.progress=false")
    assert result.code == 0, result.output
    assert result.metrics()["parameters"] == 4 * 5 + 5 + 5 * 3 + 3


def test_runs_from_any_directory(dl_run, tmp_path):
    elsewhere = tmp_path / "some" / "where"
    elsewhere.mkdir(parents=True)
    result = dl_run(*TINY, "trainer.epochs=1", cwd=elsewhere, script=True)
    assert result.code == 0, result.output
    assert result.run_dirs()[0].is_relative_to(elsewhere / "outputs")


def test_list_shows_every_option_of_every_group(dl_run):
    from dlrun.run.preflight import config_options

    result = dl_run("--list")
    assert result.code == 0
    for group, options in config_options().items():
        assert group in result.stdout
        for option in options:
            assert option in result.stdout, f"{group}={option} missing from --list"
    assert "Two interleaving half-circles" in result.stdout  # the YAML's own description
