"""The loggers a run writes to, built from the `logger` config node: the keys every backend shares, and one sub-node per
backend (`logger.tensorboard`, `logger.mlflow`, `logger.csv`); several backends at once are one `Loggers` object.

    logger:                       # logger=[tensorboard,mlflow]
      log_every_n_steps: 10       # shared: the same meaning in every backend
      tensorboard: {subdir: tb}   # each backend's own keys under its name
      mlflow: {tracking_uri: null, experiment: null}
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from dlrun.errors import ConfigError
from dlrun.loggers import csv as _csv  # noqa: F401  (registers logger csv)
from dlrun.loggers import mlflow as _mlflow  # noqa: F401  (registers logger mlflow)
from dlrun.logger import LOGGERS, Logger, NullLogger
from dlrun.registry import check_arguments

# What dl-run itself may hand a backend's builder, each to those that declare it (never a config key): the run
# directory, a resumed run's first step, what the backends kept in its checkpoint, the run's params and tags, the
# task's main metric and the run's overrides (TensorBoard's HParams order).
BUILD_EXTRAS = ("run_dir", "purge_step", "resume_state", "run_info", "main_metric", "overrides")


def shared_keys(log_every_n_steps: int = 10, gradients_every_n_steps: int = 100, histograms: bool = True,
                figures: bool = True, gradcam_every_n_epochs: int = 0, gradcam_layer: str | int | None = None,
                feature_map_layer: str | int | None = None) -> dict[str, Any]:
    """The logger keys every backend shares, checked: they mean the same whichever backends log."""
    for key, value, least, meaning in (("log_every_n_steps", log_every_n_steps, 1, "at least 1"),
                                       ("gradients_every_n_steps", gradients_every_n_steps, 0, "0 (off) or positive"),
                                       ("gradcam_every_n_epochs", gradcam_every_n_epochs, 0,
                                        "0 (only at the end) or positive")):
        if value < least:
            raise ConfigError(f"'logger.{key}={value}' must be {meaning}.", key=f"logger.{key}")
    return {"log_every_n_steps": log_every_n_steps, "gradients_every_n_steps": gradients_every_n_steps,
            "histograms": histograms, "figures": figures, "gradcam_every_n_epochs": gradcam_every_n_epochs,
            # the CNN views' layers, by name: checked against the model by the Experiment, read by the views
            # (an unnamed nn.Sequential's layers are called 0, 1, ...: the command line reads those as numbers)
            "gradcam_layer": _name(gradcam_layer), "feature_map_layer": _name(feature_map_layer)}


def _name(layer: str | int | None) -> str | None:
    return None if layer is None else str(layer)


def split_config(logger_cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the shared keys, checked; {backend: its own keys}) of a logger node. A node written before backends had their
    own keys (`name: tensorboard` beside `subdir`, as old runs recorded it) reads as the same single backend."""
    cfg = dict(logger_cfg or {})
    if "name" in cfg:  # the one-backend layout: {name: tensorboard, subdir: tb, log_every_n_steps: 10, ...}
        name = cfg.pop("name")
        own = {k: cfg.pop(k) for k in list(cfg) if k not in inspect.signature(shared_keys).parameters}
        cfg.update({} if name == "none" else {name: own})
    backends = {k: dict(v or {}) for k, v in cfg.items() if isinstance(v, dict) or (k in LOGGERS and v is None)}
    for name in backends:
        cfg.pop(name)
        LOGGERS.get(name, f"logger.{name}")  # an unknown backend: the valid ones and the closest
    backends.pop("none", None)
    return shared_keys(**check_arguments(shared_keys, cfg, "logger")), backends


def check_logger(logger_cfg: dict[str, Any], run_dir: Path) -> None:
    """Every backend's keys, its package and its store, before anything is trained or written (a ConfigError if not)."""
    shared, backends = split_config(logger_cfg)
    for name, own in backends.items():
        builder = LOGGERS.get(name, f"logger.{name}")
        check_arguments(builder, own, f"logger.{name}", {k: None for k in (*BUILD_EXTRAS, *shared)})
        check = getattr(builder, "check", None)  # a backend that needs a package or a server says so now
        if check is not None:
            check(run_dir=run_dir, **own)


def build_logger(logger_cfg: dict[str, Any], run_dir: Path, purge_step: int | None = None,
                 only: tuple[str, ...] | None = None, **extras: Any) -> Logger:
    """The run's logger: one backend, several as one `Loggers`, or a NullLogger when none is picked.

    purge_step: a resumed run's first step (values from there on are logged again); only: these backends at most
    (mode=lr_find logs to TensorBoard alone); extras (BUILD_EXTRAS: resume_state, what the backends kept in the
    checkpoint; run_info, {"params", "tags"} of the run; ...) go to the builders that declare them."""
    shared, backends = split_config(logger_cfg)
    extras = {"run_dir": Path(run_dir), "purge_step": purge_step, **extras, **shared}
    built: list[Logger] = []
    try:
        for name, own in backends.items():
            if only is None or name in only:
                built.append(LOGGERS.get(name, f"logger.{name}")(**check_arguments(
                    LOGGERS.get(name), own, f"logger.{name}", extras)))
    except BaseException:
        for logger in built:  # a later backend failed: the ones already open are closed, not left half-written
            logger.close()
        raise
    if not built:
        return NullLogger()
    # the group takes the keys about logging; the views' layer names reach the views through the Experiment
    group_keys = {k: v for k, v in shared.items() if k in inspect.signature(Loggers).parameters}
    return built[0] if len(built) == 1 else Loggers(built, **group_keys)


def close_logger(logger: Logger, status: str = "FINISHED") -> None:
    """Close a logger, telling the backends that record it how the run ended (FINISHED, FAILED or KILLED)."""
    end = getattr(logger, "end", None)
    if end is not None:
        end(status)
    else:
        logger.close()


def checkpoint_state(logger: Logger) -> dict[str, Any]:
    """What the logger's backends keep in a checkpoint to continue on resume (e.g. {"mlflow": {"run_id": ...}})."""
    state = getattr(logger, "checkpoint_state", None)
    return state() if state is not None else {}


class Loggers:
    """Several backends as one Logger: each call goes to each; the shared keys are the group's."""

    def __init__(self, backends: list[Logger], log_every_n_steps: int = 10, gradients_every_n_steps: int = 100,
                 histograms: bool = True, figures: bool = True, gradcam_every_n_epochs: int = 0) -> None:
        self.backends = backends
        # The files of the first backend that writes any (views that draw skip their work when no backend keeps it).
        self.log_dir = next((b.log_dir for b in backends if b.log_dir is not None), None)
        self.log_every_n_steps = log_every_n_steps
        self.gradients_every_n_steps = gradients_every_n_steps
        self.histograms = histograms and any(b.histograms for b in backends)
        self.figures = figures and any(b.figures for b in backends)
        self.gradcam_every_n_epochs = gradcam_every_n_epochs

    def scalars(self, values: dict[str, float], step: int) -> None:
        for backend in self.backends:
            backend.scalars(values, step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        for backend in self.backends:
            backend.text(tag, markdown, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        for backend in self.backends:
            if backend.histograms:
                backend.histogram(tag, values, step)

    def figure(self, tag: str, figure: Any, step: int, close: bool = True) -> None:
        """Each backend draws the same figure; it is closed once, after the last."""
        for backend in self.backends:
            if backend.figures:
                backend.figure(tag, figure, step, close=False)
        if close:
            import matplotlib.pyplot as plt

            plt.close(figure)

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        for backend in self.backends:
            backend.images(tag, images, step)

    def hparams(self, params: dict[str, object], metrics: dict[str, float], step: int) -> None:
        for backend in self.backends:
            backend.hparams(params, metrics, step)

    def flush(self) -> None:
        for backend in self.backends:
            backend.flush()

    def checkpoint_state(self) -> dict[str, Any]:
        """Every backend's state for a checkpoint, merged."""
        return {k: v for backend in self.backends for k, v in checkpoint_state(backend).items()}

    def end(self, status: str = "FINISHED") -> None:
        """Close every backend, even when one fails to: the others still get their last values out."""
        failure: BaseException | None = None
        for backend in self.backends:
            try:
                close_logger(backend, status)
            except Exception as err:  # noqa: BLE001 - re-raised once every backend had its turn
                failure = failure or err
        if failure is not None:
            raise failure

    def close(self) -> None:
        self.end("FINISHED")
