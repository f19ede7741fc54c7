"""Where a run's curves go: the Logger protocol, TensorBoard's implementation and the one that logs nothing.

Another tracking backend is one class that implements Logger, registered in LOGGERS under its name; dlrun.loggers
builds the backends a config picks (MLflow and CSV live there too), one or several at once.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from dlrun.registry import Registry

LOGGERS = Registry("logger")


@runtime_checkable
class Logger(Protocol):
    """What the loop, the views and the run call on a tracking backend; every key means the same in each backend."""

    log_dir: Path | None  # where its files go (None: it writes none, and the views that draw skip their work)
    log_every_n_steps: int  # step scalars every N steps (0: epoch scalars only)
    gradients_every_n_steps: int  # gradient-flow diagnostics every N steps (0: off)
    histograms: bool  # with the diagnostics, per-layer histograms
    figures: bool  # matplotlib figures and image grids
    gradcam_every_n_epochs: int  # CNN views during training every N epochs (0: at the end only)

    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def text(self, tag: str, markdown: str, step: int) -> None: ...

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None: ...

    def figure(self, tag: str, figure: Any, step: int, close: bool = True) -> None: ...

    def images(self, tag: str, images: torch.Tensor, step: int) -> None: ...

    def hparams(self, params: dict[str, object], metrics: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


# TensorBoard's Time Series tab groups cards by the tag's first part and sorts them by tag, capitals before
# lowercase: these two tags open the page, above every diagnostic group. The training and validation values of
# one tag are written by two sub-runs (<log dir>/train, <log dir>/val), so they share one card, as Keras does:
# the gap between the two curves is what course 2 §4.2 reads for overfitting.
LOSS_CARD = "Loss"
METRIC_GROUP = "Metric"  # the main metric's card: Metric/accuracy, Metric/rmse, ...


def headline_cards(main_metric: str | None) -> dict[str, tuple[str, str]]:
    """The epoch scalars that also go on the first cards: {logged tag: (sub-run, card's tag)}."""
    cards = {"train/loss_epoch": ("train", LOSS_CARD), "val/loss": ("val", LOSS_CARD)}
    if main_metric and main_metric != "loss":
        for split in ("train", "val"):  # train/<metric> exists where a task logs it during training (a GAN's g_loss)
            cards[f"{split}/{main_metric}"] = (split, f"{METRIC_GROUP}/{main_metric}")
    return cards


class TensorBoardLogger:
    """Writes event files under the run directory; one folder per run, so sweeps compare side by side."""

    def __init__(self, log_dir: Path, log_every_n_steps: int = 10, purge_step: int | None = None,
                 gradients_every_n_steps: int = 0, histograms: bool = True, figures: bool = True,
                 gradcam_every_n_epochs: int = 0, main_metric: str | None = None,
                 overrides: tuple[str, ...] = ()) -> None:
        self.log_dir = Path(log_dir)
        self.gradcam_every_n_epochs = gradcam_every_n_epochs
        self.log_every_n_steps = log_every_n_steps
        self.gradients_every_n_steps = gradients_every_n_steps
        self.histograms = histograms
        self.figures = figures
        self.main_metric = main_metric
        self.overrides = tuple(overrides)  # the command's overrides: their keys lead the HParams table
        from torch.utils.tensorboard import SummaryWriter  # imported when a run logs: logger=none runs skip it

        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        self._purge_step = purge_step  # a resumed run's sub-runs drop their values from this step on, as the main one
        self._headline = headline_cards(main_metric)
        self._subruns: dict[str, Any] = {}  # "train"/"val" -> its SummaryWriter, made at its first value
        self._pending: list[tuple[dict[str, float], int, float]] = []
        self._written = time.monotonic()

    def scalars(self, values: dict[str, float], step: int) -> None:
        # Handed to TensorBoard's writer thread in bursts: one value every few steps wakes that thread each
        # time, and on a busy CPU the switches cost more than the values (7% of a small MLP's step).
        self._pending.append((values, step, time.time()))
        if len(self._pending) >= 64 or time.monotonic() - self._written > 2.0:
            self._write_pending()

    def _write_pending(self) -> None:
        for values, step, walltime in self._pending:
            for tag, value in values.items():
                # Every tag stays where it was (scripts and older runs read train/loss_epoch, val/loss); the
                # headline ones are also written to their sub-run's card.
                self.writer.add_scalar(tag, value, step, walltime=walltime)
                if tag in self._headline:
                    subrun, card = self._headline[tag]
                    self._subrun(subrun).add_scalar(card, value, step, walltime=walltime)
        self._pending.clear()
        self._written = time.monotonic()

    def _subrun(self, name: str) -> Any:
        if name not in self._subruns:
            from torch.utils.tensorboard import SummaryWriter

            self._subruns[name] = SummaryWriter(str(self.log_dir / name), purge_step=self._purge_step)
        return self._subruns[name]

    def text(self, tag: str, markdown: str, step: int) -> None:
        """A note in the Text tab (markdown)."""
        self.writer.add_text(tag, markdown, step)

    def histogram(self, tag: str, values, step: int, bins: int = 64) -> None:
        """A tensor's distribution in the Histograms tab (non-finite values: nothing, the loss check stops the run)."""
        # torch.histc and TensorBoard's raw form: add_histogram's NumPy binning takes ~10 ms for a layer of
        # 200k weights, a tenth of an MNIST MLP's epoch at the default of gradients every 100 steps; histc
        # counts the same bins as torch.histogram in half its time (0.7 ms against 1.3 ms there).
        v = values.detach().flatten().float().cpu()
        if v.numel() == 0:
            return
        low, high = (t.item() for t in torch.aminmax(v))
        if not (math.isfinite(low) and math.isfinite(high)):
            return
        if high <= low:  # one value: a bin just wide enough to hold it
            high = low + max(abs(low) * 1e-6, 1e-12)
        counts = torch.histc(v, bins=bins, min=low, max=high)
        edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
        self.writer.add_histogram_raw(tag, low, high, v.numel(), v.sum(dtype=torch.float64).item(),
                                      torch.dot(v, v).item(), edges[1:].tolist(), counts.tolist(), step)

    def figure(self, tag: str, figure, step: int, close: bool = True) -> None:
        """A matplotlib figure in the Images tab; close=False keeps it open for the caller to save."""
        self.writer.add_figure(tag, figure, step, close=close)

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        """A batch of images (N, C, H, W), pixels in 0..1, as one grid in the Images tab."""
        self.writer.add_images(tag, images.detach().float().clamp(0, 1).cpu(), step)

    def hparams(self, params: dict[str, object], metrics: dict[str, float], step: int) -> None:
        """The HParams tab: this run's settings beside its final metrics (same run, no sub-folder); the keys the
        command overrode lead, the main metric's columns come first, booleans and None show as such."""
        file_writer = self.writer._get_file_writer()
        for summary in hparams_summaries(params, metrics, overridden_keys(self.overrides, params),
                                         self.main_metric):
            file_writer.add_summary(summary)
        self.scalars(metrics, step)  # the HParams tab reads metric values from scalars of the same tag

    def flush(self) -> None:
        """Put every event logged so far on disk (called before each checkpoint)."""
        self._write_pending()
        for writer in (self.writer, *self._subruns.values()):
            writer.flush()

    def close(self) -> None:
        self._write_pending()
        for writer in (self.writer, *self._subruns.values()):
            writer.flush()
            writer.close()


def overridden_keys(overrides: tuple[str, ...], params: dict[str, object]) -> set[str]:
    """The HParams keys a command's overrides set: `optimizer.lr=0.1` sets optimizer.lr, `optimizer=sgd` the
    group's choice, optimizer.name."""
    keys = set()
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        keys.update(k for k in (key, f"{key}.name") if k in params)
    return keys


def metric_rank(tag: str, main_metric: str | None) -> tuple[bool, int]:
    """Where a final metric's column goes: the main metric's first, each part validation, test, training, other."""
    parts = tag.split("/")
    split_rank = next((i for i, split in enumerate(("val", "test", "train")) if split in parts[:-1]), 3)
    return parts[-1] != main_metric, split_rank


def hparams_summaries(params: dict[str, object], metrics: dict[str, float], overridden: set[str],
                      main_metric: str | None) -> list[Any]:
    """The three summaries of TensorBoard's HParams plugin (experiment, session start, session end).

    The plugin lists the hyperparameters that differ first, each part by name: the overridden keys are marked so
    (and only those are ticked for the table). Metrics keep the order given here (metric_rank). torch's own helper
    writes booleans as 0.0/1.0 (bool is an int), so the protocol buffers are built here."""
    from google.protobuf import struct_pb2
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    infos, start = [], plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in params.items():
        value = "None" if value is None else value if isinstance(value, (bool, int, float, str)) else str(value)
        if isinstance(value, bool):  # before int: a bool is an int
            start.hparams[key].CopyFrom(struct_pb2.Value(bool_value=value))
            kind = api_pb2.DATA_TYPE_BOOL
        elif isinstance(value, (int, float)):
            start.hparams[key].CopyFrom(struct_pb2.Value(number_value=value))
            kind = api_pb2.DATA_TYPE_FLOAT64
        else:
            start.hparams[key].CopyFrom(struct_pb2.Value(string_value=value))
            kind = api_pb2.DATA_TYPE_STRING
        infos.append(api_pb2.HParamInfo(name=key, type=kind, differs=key in overridden))
    ordered = sorted(metrics, key=lambda tag: metric_rank(tag, main_metric))
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=[
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in ordered])
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    contents = ((metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
                (metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
                (metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)))
    summaries = []
    for tag, content in contents:
        content.version = metadata.PLUGIN_DATA_VERSION
        plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
        summaries.append(Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))]))
    return summaries


class NullLogger:
    """Logs nothing: for quick runs where no event file is wanted."""

    log_every_n_steps = 0
    gradients_every_n_steps = 0
    histograms = False
    figures = False
    gradcam_every_n_epochs = 0
    log_dir = None

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def images(self, tag: str, images: object, step: int) -> None:
        pass

    def hparams(self, params: dict[str, object], metrics: dict[str, float], step: int) -> None:
        pass

    def text(self, tag: str, markdown: str, step: int) -> None:
        pass

    def histogram(self, tag: str, values, step: int) -> None:
        pass

    def figure(self, tag: str, figure, step: int, close: bool = True) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@LOGGERS.register("tensorboard")
def build_tensorboard(run_dir: Path, purge_step: int | None = None, subdir: str = "tb",
                      log_every_n_steps: int = 10, gradients_every_n_steps: int = 100,
                      histograms: bool = True, figures: bool = True,
                      gradcam_every_n_epochs: int = 0, main_metric: str | None = None,
                      overrides: tuple[str, ...] = ()) -> TensorBoardLogger:
    """Event files in <run dir>/<subdir> (logger.tensorboard.subdir); the other keys are the ones every backend
    shares (checked by dlrun.loggers.shared_keys): training loss every log_every_n_steps steps, per-layer gradient
    norms and activation statistics every gradients_every_n_steps steps (0 = off), CNN views (Grad-CAM, filters,
    feature maps) at the end and also every gradcam_every_n_epochs epochs (0 = only at the end). main_metric and
    overrides, passed by the run (the task's main metric, the command's overrides), order the first cards and the
    HParams columns."""
    return TensorBoardLogger(Path(run_dir) / subdir, log_every_n_steps, purge_step, gradients_every_n_steps,
                             histograms, figures, gradcam_every_n_epochs, main_metric, tuple(overrides))


@LOGGERS.register("none")
def build_none(run_dir: Path, purge_step: int | None = None) -> NullLogger:
    """No logging at all (logger=none)."""
    return NullLogger()
