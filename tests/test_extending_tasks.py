"""Adding a task is one module: this file defines one, registers it, and trains it end to end through the real
run() without touching any other module of dl-run (docs/extending.md, "Your own task")."""

from __future__ import annotations

import json
import math

import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_config
from dlrun.components.losses import Loss
from dlrun.data.base import DataInfo
from dlrun.run.training import run
from dlrun.tasks import TASKS, Task, monitor_mode
from dlrun.views import EpochView, ViewInputs


def above_median_view(inputs: ViewInputs) -> EpochView | None:
    """After each validation: the share of validation samples predicted above the median, as a note."""
    x = inputs.splits.x_val

    def view(model: nn.Module, step: int) -> None:
        with torch.no_grad():
            share = model(inputs.prepare(x)).argmax(1).float().mean().item()
        inputs.logger.text("val/predicted_above", f"{share:.3f}", step)
    return view


@TASKS.register("above_median")
class AboveMedian(Task):
    """A regression dataset read as a yes/no question: is the target above the training median (0 once the
    target is standardised)?"""

    name = "above_median"
    metric_names = ("hit_rate",)
    main_metric = "hit_rate"
    higher_is_better = frozenset({"hit_rate"})
    epoch_views = (above_median_view,)

    @classmethod
    def info_for(cls, info: DataInfo) -> DataInfo:
        from dataclasses import replace

        return replace(info, task=cls.name, num_classes=2, class_names=["below", "above"])

    @classmethod
    def build_loss(cls, loss_cfg: dict, info: DataInfo, train_targets: torch.Tensor) -> Loss:
        return Loss(nn.CrossEntropyLoss(), "cross_entropy", 2)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(model(x).float(), self._labels(y))

    def evaluate(self, model, x, y, info, batch_size, prepare=None, all_ranks=False) -> dict[str, float]:
        with torch.no_grad():
            model.eval()
            output = torch.cat([model(prepare(xb) if prepare else xb) for xb in x.split(batch_size)]).float()
            model.train()
        labels = self._labels(y)
        return {"loss": self.loss_fn(output, labels).item(),
                "hit_rate": (output.argmax(1) == labels).float().mean().item()}

    def startup_check(self, model, x, y, y_train, info):
        return math.log(2), self.evaluate(model, x, y, info, len(x))["loss"], None

    @staticmethod
    def _labels(y: torch.Tensor) -> torch.Tensor:
        return (y.reshape(len(y)) > 0).long()


def test_a_task_defined_in_one_module_trains_end_to_end_through_the_real_run(tmp_path):
    overrides = ["dataset=diabetes", "task=above_median", "trainer.epochs=15", "trainer.monitor=val/hit_rate"]
    cfg = OmegaConf.create(compose_config("trainer.progress=false", "trainer.device=cpu", *overrides))
    metrics = run(cfg, tmp_path, overrides)
    assert metrics["task"] == "above_median"
    assert metrics["best"]["monitor"] == "val/hit_rate" and monitor_mode("val/hit_rate") == "max"
    assert metrics["test"]["hit_rate"] > 0.65  # diabetes progression above its median: well above chance (0.5)
    assert metrics["history"][-1]["train/loss"] < metrics["history"][0]["train/loss"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"] == metrics["test"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert "val/predicted_above/text_summary" in events.Tags()["tensors"]  # its own view, logged after each validation
    assert "val/hit_rate" in events.Tags()["scalars"]
