"""Pretraining for model=transfer (course 3 §4.2), a step of the experiment before its model is built.

`model.pretrain_classes=[...]` with `model.backbone={...}` first trains the backbone on those classes of the
same dataset, once: the trained run is kept in a folder named after its settings and reused. The transfer
builder then receives that run as its `source`, as if the user had given model.source=<run dir>: a model
builder never trains.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from dlrun.components.losses import LOSSES
from dlrun.components.optim import OPTIMIZERS, Schedule
from dlrun.data.prepare import Prepare
from dlrun.engine.options import TrainerOptions, use_channels_last
from dlrun.engine.trainer import Trainer, TrainingOutputs, TrainingParts
from dlrun.errors import ConfigError
from dlrun.models import MODELS
from dlrun.run.run_directory import RunDirectory

PRETRAIN_KEYS = ("pretrain_classes", "backbone", "pretrain_epochs", "pretrain_lr", "pretrain_dir")


def pretrained_source(model_cfg: dict[str, Any], cfg: dict[str, Any], run_dir: Path,
                      device: torch.device) -> dict[str, Any]:
    """The model config to build: for a transfer model that pretrains, its backbone trained first and given as
    `source`; any other config as it is."""
    if model_cfg.get("name") != "transfer" or not model_cfg.get("pretrain_classes") or \
            not model_cfg.get("pretrained", True):
        return model_cfg
    if model_cfg.get("source") or model_cfg.get("arch"):
        return model_cfg  # the builder refuses more than one backbone, naming them
    if not model_cfg.get("backbone"):
        raise ConfigError("'model.pretrain_classes' needs model.backbone, the model config to pretrain, e.g. "
                          "{name: cnn, channels: [16, 32]}.", key="model.backbone")
    epochs = model_cfg.get("pretrain_epochs", 20)
    if epochs < 1:
        raise ConfigError(f"'model.pretrain_epochs={epochs}' must be at least 1.", key="model.pretrain_epochs")
    # Beside the run: in a sweep, its jobs share the sweep's folder and pretrain once.
    folder = Path(model_cfg.get("pretrain_dir") or Path(run_dir).parent / "pretrained").expanduser()
    source = pretrain(dict(model_cfg["backbone"]), list(model_cfg["pretrain_classes"]), epochs,
                      model_cfg.get("pretrain_lr", 0.001), cfg, folder, device)
    return {**{k: v for k, v in model_cfg.items() if k not in PRETRAIN_KEYS}, "source": source}


def pretrain(backbone: dict[str, Any], classes: list[int], epochs: int, lr: float, cfg: dict[str, Any],
             folder: Path, device: torch.device) -> str:
    """Train `backbone` on `classes` of the run's dataset once; the run directory (kept, reused by its settings)."""
    from dlrun.run.experiment import build_data

    seed = cfg["seed"]
    data = build_data({**cfg["dataset"], "classes": classes, "train_fraction": 1.0}, seed, cfg.get("task"))
    key = json.dumps({"backbone": backbone, "classes": classes, "epochs": epochs, "lr": lr, "seed": seed,
                      "data": data.info.name, "train": len(data.splits.x_train)}, sort_keys=True)
    run_dir = folder / f"{data.info.name}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    if (run_dir / "checkpoints" / "best.pt").is_file():
        return str(run_dir)
    # Written beside its final place, then renamed: a run stopped half-way leaves nothing that looks finished.
    partial = RunDirectory(run_dir.with_name(f"{run_dir.name}.partial{os.getpid()}"))
    shutil.rmtree(partial.path, ignore_errors=True)
    _train_backbone(backbone, data, epochs, lr, cfg, partial, device)
    partial.record_config(OmegaConf.create({"model": backbone, "pretrain": json.loads(key)}), [])
    try:
        partial.path.rename(run_dir)
    except OSError:  # another job of the sweep finished the same pretraining first: use its run
        shutil.rmtree(partial.path, ignore_errors=True)
    return str(run_dir)


def pretraining_options(trainer_cfg: dict[str, Any], epochs: int, device: torch.device, net: torch.nn.Module
                        ) -> TrainerOptions:
    """The pretraining's trainer options: the run's precision, determinism and memory layout, on the run's device.

    channels_last is decided here for the backbone (a bool: the string "auto" is true, and would turn every batch
    NHWC whatever the model)."""
    kept = {k: trainer_cfg[k] for k in ("precision", "deterministic", "channels_last", "eval_batch_size")
            if k in trainer_cfg}
    opts = TrainerOptions(epochs=epochs, progress=False, monitor="val/accuracy", **kept)
    opts.channels_last = use_channels_last(opts.channels_last, device, net)
    return opts


def _train_backbone(backbone: dict[str, Any], data: Any, epochs: int, lr: float, cfg: dict[str, Any],
                    run_dir: RunDirectory, device: torch.device) -> None:
    """Adam on cross-entropy, the best validation accuracy kept, on the run's device."""
    from dlrun.tasks import task_class

    seed = cfg["seed"]
    torch.manual_seed(seed)
    net = MODELS.build(backbone, key="model.backbone", info=data.info, out_features=data.info.num_classes).to(device)
    opts = pretraining_options(cfg.get("trainer") or {}, epochs, device, net)
    if opts.channels_last:
        net.to(memory_format=torch.channels_last)
    loss = LOSSES.build({"name": "cross_entropy"}, info=data.info)
    optimizer = OPTIMIZERS.build({"name": "adam", "lr": lr}, params=net.parameters())
    parts = TrainingParts(net, task_class("classification")(loss, data.info), optimizer, Schedule(None),
                          data.splits.to(device), data.info, opts, device, Prepare(data.info, None, device))
    Trainer(parts, TrainingOutputs(run_dir), generator=torch.Generator().manual_seed(seed)).fit()
