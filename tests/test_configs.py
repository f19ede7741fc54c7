"""Walk the configs tree: every option of every group composes and builds (no hand-kept list)."""

from __future__ import annotations

import inspect
from importlib import resources
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import compose_config
from dlrun.data import DATASETS
from dlrun.errors import ConfigError
from dlrun.run.experiment import Experiment
from dlrun.tasks import TASKS
from image_fixtures import write_cifar10, write_image_folder, write_mnist
from series_fixtures import write_series_csv

CONFIGS = resources.files("dlrun.configs")
GROUPS = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
OPTIONS = [(g, f.name[:-5]) for g in GROUPS if g not in ("hydra",) for f in sorted((CONFIGS / g).iterdir(),
                                                                                   key=lambda f: f.name)
           if f.name.endswith(".yaml")]
# Companions tried in turn until the option fits: a binary loss needs two classes, mse a regression target,
# a recurrent model a sequence, a transfer model a backbone (the transfer preset's), a U-Net masks and a
# detector boxes (the tasks' presets, on a few scenes); an autoencoder or a GAN a task that uses the inputs alone.
COMPANION_DATASETS = ("digits", "moons", "diabetes", "sine")
COMPANIONS = ([[f"dataset={d}"] for d in COMPANION_DATASETS] + [["dataset=digits", f"task={t}"] for t in TASKS.names() if not TASKS.get(t).takes_labels]
              + [["experiment=transfer_digits"], ["experiment=segmentation", "dataset.n_samples=40"],
                 ["experiment=detection", "dataset.n_samples=40"]])


def test_every_group_has_options_and_every_yaml_starts_with_a_command():
    assert {"dataset", "model", "loss", "optimizer", "scheduler", "init", "augmentation", "trainer", "logger",
            "experiment", "hydra"} <= set(GROUPS)
    for group in GROUPS:
        for f in (CONFIGS / group).iterdir():
            if f.name.endswith(".yaml"):
                text = f.read_text()
                assert text.startswith("#"), f"{group}/{f.name} must start with a comment"
                assert "dl-run" in text.split("\n\n")[0] or "dl-run" in text[:600], f"{group}/{f.name} needs a command"


# Datasets that read files get tiny ones written for the test: nothing is downloaded.
FILE_FIXTURES = {
    "csv": lambda tmp: [f"dataset.path={_csv(tmp)}", "dataset.target=y"],
    "csv_timeseries": lambda tmp: [f"dataset.path={write_series_csv(tmp / 'series.csv')}", "dataset.target=y"],
    "mnist_rows": lambda tmp: [f"dataset.root={write_mnist(tmp / 'data')}", "dataset.download=false"],
    "mnist": lambda tmp: [f"dataset.root={write_mnist(tmp / 'data')}", "dataset.download=false"],
    "fashion_mnist": lambda tmp: [f"dataset.root={write_mnist(tmp / 'data', 'FashionMNIST')}",
                                  "dataset.download=false"],
    "cifar10": lambda tmp: [f"dataset.root={write_cifar10(tmp / 'data')}", "dataset.download=false"],
    "image_folder": lambda tmp: [f"dataset.path={write_image_folder(tmp / 'images')}", "dataset.workers=0",
                                 "dataset.image_size=16"],
}


def _file_fixture(dataset: str, tmp_path: Path) -> list[str]:
    if dataset in FILE_FIXTURES:
        return FILE_FIXTURES[dataset](tmp_path)
    reads_files = {"root", "path"} & set(inspect.signature(DATASETS.get(dataset)).parameters)
    assert not reads_files, f"dataset={dataset} reads files: add a tiny fixture for it to FILE_FIXTURES"
    return []


@pytest.fixture(autouse=True)
def _fixture_cifar_files_pass_the_checksum(monkeypatch):
    # torchvision checks CIFAR-10's files against the real ones' md5 sums; the tiny fixture cannot match them.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())


def _build(tmp_path: Path, *overrides: str) -> Experiment:
    cfg = compose_config(*overrides, "trainer.device=cpu")
    extra = _file_fixture(cfg["dataset"]["name"], tmp_path)
    return Experiment(compose_config(*overrides, *extra, "trainer.device=cpu") if extra else cfg, tmp_path)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_builds(group, option, tmp_path):
    if group in ("experiment", "dataset"):
        exp = _build(tmp_path, f"{group}={option}")
    else:
        errors = []
        for companion in COMPANIONS:
            try:
                exp = _build(tmp_path, f"{group}={option}", *companion)
                break
            except ConfigError as err:
                errors.append(str(err))
        else:
            pytest.fail(f"{group}={option} fits none of {COMPANIONS}: {errors}")
    # One real training step through the built pieces, each of the task's optimizers in turn.
    x, y = exp.prepare(exp.splits.x_train[:8], train=True), exp.splits.y_train[:8]
    for update in exp.task.updates(exp.model, exp.optimizer):
        loss = update.loss(exp.model, x, y)
        update.optimizer.zero_grad()
        loss.backward()
        update.optimizer.step()
    exp.schedule.step("step")
    exp.schedule.step("epoch", 1.0)
    assert torch.isfinite(loss)


def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "data.csv"
    rows = ["a,b,y"] + [f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    return path
