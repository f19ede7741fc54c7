"""Loss functions of course 2 §4.1, each checked against the dataset's task before training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.registry import Registry

LOSSES = Registry("loss")


@dataclass
class Loss:
    """A loss module plus what it asks of the model's output and the targets."""

    module: nn.Module
    name: str
    out_features: int  # how many outputs the model must produce
    output_activation: str | None = None  # appended to the model: sigmoid for bce, log_softmax for nll
    binary: bool = False  # one output scored against a 0/1 target
    class_dim: int = 1  # the output's class axis: 1 for (batch, classes), -1 for (batch, steps, tokens)
    chance: Callable[[torch.Tensor], float] | None = None  # the loss of a model that learned nothing, if not the usual
    # loss.check=false: a regression loss on class indices, scored as numbers; the predicted class is the rounded output
    classes_as_values: int | None = None  # the number of classes then
    warning: str | None = None  # loss.check=false: why this loss does not fit the task (printed, kept in metrics.json)

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary or self.classes_as_values:
            target = target.to(output.dtype).unsqueeze(1)
        if isinstance(self.module, nn.BCELoss):
            # CUDA's autocast refuses binary_cross_entropy on probabilities, whatever their dtype (its log is unsafe
            # in half precision): it is computed in float32 outside autocast, as torch's autocast docs advise.
            with torch.autocast(output.device.type, enabled=False):
                return self.module(output.float(), target.float())
        if self.class_dim == 1 and output.dim() > 2 and isinstance(self.module, (nn.CrossEntropyLoss, nn.NLLLoss)):
            return self.module(*per_pixel_rows(output, target))
        return self.module(output, target)

    def to(self, device: torch.device) -> "Loss":
        """The loss with its module's buffers (msle's target statistics) on the device it scores on."""
        self.module.to(device)
        return self

    def predict_classes(self, output: torch.Tensor) -> torch.Tensor:
        """Class indices from the model's output."""
        if self.binary:
            threshold = 0.5 if self.output_activation == "sigmoid" else 0.0
            return (output.squeeze(1) > threshold).long()
        if self.classes_as_values:  # the nearest class index to the regressed number
            return output.squeeze(1).round().clamp(0, self.classes_as_values - 1).long()
        return output.argmax(dim=self.class_dim)


def per_pixel_rows(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, *positions) scores and (N, *positions) classes -> one row per position: (N * positions, C), (N * ...).

    The same mean loss; but a 1-D cross-entropy, which CUDA computes deterministically, where (N, C, H, W) would
    call nll_loss2d, which torch.use_deterministic_algorithms refuses on CUDA (its forward adds with atomics).
    """
    return output.movedim(1, -1).reshape(-1, output.shape[1]), target.reshape(-1)


# course 2 §4.1: "the best architecture + the best optimizer + the wrong loss = FAIL"; the opt-in lets it be watched.
_OPT_IN = " To train with it anyway and watch it fail (course 2 §4.1), add loss.check=false."


def _cannot_run(message: str, check: bool, why: str) -> ConfigError:
    """A pairing that cannot even train: with loss.check=false, the refusal says why the opt-in does not help."""
    if not check:
        message += f" loss.check=false cannot make it train: {why}"
    return ConfigError(message, key="loss")


def _regression(name: str, info: DataInfo, check: bool = True) -> str | None:
    """None where a regression loss fits the task; with loss.check=false on class indices, the warning."""
    if info.task in ("regression", "reconstruction"):  # an autoencoder regresses its input
        return None
    if info.task == "seq2seq":
        _refuse_seq2seq(name, info, check)
    if info.task == "detection":
        raise _cannot_run(f"'loss={name}' is a regression loss, but dataset '{info.name}' is detection: use "
                          f"loss=yolo (or auto), which scores boxes, objectness and classes.", check,
                          "its targets are boxes, which a regression loss cannot read.")
    message = (f"'loss={name}' is a regression loss, but dataset '{info.name}' is {info.task} with "
               f"{info.num_classes} classes. Use loss=cross_entropy (or nll; bce/bce_with_logits for two classes).")
    if info.task != "classification":
        raise _cannot_run(message, check, "the model gives one score per class and pixel, not one number.")
    if check:
        raise ConfigError(message + _OPT_IN, key="loss")
    return (f"loss.check=false: 'loss={name}' is a regression loss, but dataset '{info.name}' is classification "
            f"with {info.num_classes} classes. The model gives one number, scored against the class index as if "
            f"classes were ordered values; its predicted class is the nearest index. Expect it to fail "
            f"(course 2 §4.1); loss=cross_entropy is the loss for this task.")


def _regression_loss(module: nn.Module, name: str, info: DataInfo, check: bool) -> Loss:
    """The regression loss for the task, or (loss.check=false, a classification task) scoring class indices as
    numbers."""
    warning = _regression(name, info, check)
    if warning is None:
        return Loss(module, name, info.target_dim)

    def chance(targets: torch.Tensor) -> float:  # the best constant: the mean class index
        values = targets.float().unsqueeze(1)
        return float(module(values.mean().expand_as(values), values))
    return Loss(module, name, 1, classes_as_values=info.num_classes, warning=warning, chance=chance)


def _refuse_seq2seq(name: str, info: DataInfo, check: bool = True) -> None:
    raise _cannot_run(f"'loss={name}' does not score sequences of tokens, and dataset '{info.name}' is seq2seq: use "
                      f"loss=cross_entropy (or auto), one class per token.", check,
                      "the model gives one score per token and step.")


def _classification(name: str, info: DataInfo, binary: bool, check: bool = True) -> None:
    if info.task == "seq2seq" and (binary or name == "nll"):
        _refuse_seq2seq(name, info, check)
    if info.task == "detection":
        raise _cannot_run(f"'loss={name}' scores one class per sample, but dataset '{info.name}' is detection "
                          f"(boxes): use loss=yolo (or auto).", check, "its targets are boxes, not classes.")
    if info.task not in ("classification", "seq2seq", "segmentation"):
        raise _cannot_run(
            f"'loss={name}' is a classification loss, but dataset '{info.name}' is {info.task} "
            f"(real-valued targets). Use loss=mse, mae, huber or msle.", check,
            "it needs class indices (or 0/1 labels) as targets, and these are real numbers.")
    if binary and info.num_classes != 2:
        raise _cannot_run(
            f"'loss={name}' scores one yes/no output, but dataset '{info.name}' has {info.num_classes} classes. "
            f"Use loss=cross_entropy (or nll) for more than two classes.", check,
            "it needs 0/1 targets, and class indices above 1 are not probabilities.")


class MSLELoss(nn.Module):
    """Mean squared logarithmic error: (log(1+y) - log(1+ŷ))² (course 2 §4.1).

    It is taken in the target's original units: when the dataset standardised the target for
    training, prediction and target are scaled back first (a log of standardised values means nothing).
    """

    def __init__(self, mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", mean if mean is not None else torch.zeros(1))
        self.register_buffer("std", std if std is not None else torch.ones(1))

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output, target = output * self.std + self.mean, target * self.std + self.mean
        # Clamp the prediction: log1p is undefined below -1 and the loss assumes non-negative values.
        return nn.functional.mse_loss(torch.log1p(output.clamp_min(0)), torch.log1p(target))


class TokenCrossEntropy(nn.Module):
    """Cross-entropy over every target token, padding ignored: outputs (batch, steps, tokens)."""

    def __init__(self, pad_token: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.pad_token = pad_token
        self.label_smoothing = label_smoothing

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() != 3 or output.shape[:2] != target.shape:
            raise ValueError(f"token outputs must be (batch, steps, tokens) for targets {tuple(target.shape)}, "
                             f"got {tuple(output.shape)}")
        # Flattened to one row per token: (batch, tokens, steps) would use nll_loss2d, which CUDA cannot do
        # deterministically (see per_pixel_rows); the mean over the non-padding tokens is the same.
        return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1),
                                           ignore_index=self.pad_token, label_smoothing=self.label_smoothing)


@LOSSES.register("mse")
def build_mse(info: DataInfo, check: bool = True) -> Loss:
    return _regression_loss(nn.MSELoss(), "mse", info, check)


@LOSSES.register("mae")
def build_mae(info: DataInfo, check: bool = True) -> Loss:
    return _regression_loss(nn.L1Loss(), "mae", info, check)


@LOSSES.register("huber")
def build_huber(info: DataInfo, delta: float = 1.0, check: bool = True) -> Loss:
    if delta <= 0:
        raise ConfigError(f"'loss.delta={delta}' must be positive.", key="loss.delta")
    return _regression_loss(nn.HuberLoss(delta=delta), "huber", info, check)


@LOSSES.register("msle")
def build_msle(info: DataInfo, train_targets: torch.Tensor | None = None, check: bool = True) -> Loss:
    _regression("msle", info, check)
    module = MSLELoss(info.target_mean, info.target_std)
    if train_targets is not None:
        original = train_targets.cpu() * module.std + module.mean
        if bool((original < 0).any()):
            raise ConfigError(
                f"'loss=msle' needs non-negative targets (it takes their logarithm), but dataset '{info.name}' has "
                f"negative ones (min {float(original.min()):.3g}). Use loss=mse, mae or huber.", key="loss",
            )
    return _regression_loss(module, "msle", info, check)


@LOSSES.register("bce")
def build_bce(info: DataInfo, check: bool = True) -> Loss:
    """Binary cross-entropy on probabilities: the model ends with a sigmoid."""
    _classification("bce", info, binary=True, check=check)
    return Loss(nn.BCELoss(), "bce", 1, output_activation="sigmoid", binary=True)


@LOSSES.register("bce_with_logits")
def build_bce_with_logits(info: DataInfo, check: bool = True) -> Loss:
    """Binary cross-entropy on raw scores: the sigmoid is folded into the loss, numerically safer."""
    _classification("bce_with_logits", info, binary=True, check=check)
    return Loss(nn.BCEWithLogitsLoss(), "bce_with_logits", 1, binary=True)


@LOSSES.register("cross_entropy")
def build_cross_entropy(info: DataInfo, label_smoothing: float = 0.0, check: bool = True) -> Loss:
    """Softmax + negative log-likelihood on class indices (the one-hot target is implicit)."""
    _classification("cross_entropy", info, binary=False, check=check)
    if info.task == "seq2seq":
        return Loss(TokenCrossEntropy(info.sequence.pad_token, label_smoothing), "cross_entropy",
                    info.sequence.vocab_size, class_dim=-1)
    return Loss(nn.CrossEntropyLoss(label_smoothing=label_smoothing), "cross_entropy", info.num_classes)


@LOSSES.register("nll")
def build_nll(info: DataInfo, check: bool = True) -> Loss:
    """Negative log-likelihood: the model ends with log-softmax."""
    _classification("nll", info, binary=False, check=check)
    return Loss(nn.NLLLoss(), "nll", info.num_classes, output_activation="log_softmax")


@LOSSES.register("yolo")
def build_yolo(info: DataInfo, lambda_coord: float = 5.0, lambda_noobj: float = 0.5, check: bool = True) -> Loss:
    """YOLO's detection loss: box (with sqrt of width and height), objectness and class terms (course 3 §5.1)."""
    if info.task != "detection":
        raise _cannot_run(f"'loss=yolo' scores boxes, but dataset '{info.name}' is {info.task}: use it with "
                          f"task=detection on a dataset with boxes (dataset=shapes).", check,
                          "it reads boxes from the targets, and these have none.")
    for key, value in (("lambda_coord", lambda_coord), ("lambda_noobj", lambda_noobj)):
        if value < 0:
            raise ConfigError(f"'loss.{key}={value}' must be 0 or more.", key=f"loss.{key}")
    from dlrun.tasks.detection import YoloLoss  # the detection task's output format; imported when used

    module = YoloLoss(lambda_coord, lambda_noobj)
    out_features = 5 + info.num_classes  # per grid cell: objectness, x, y, sqrt(w), sqrt(h), one score per class

    def chance(targets: torch.Tensor) -> float:
        # A model that learned nothing outputs zeros: objectness 0.5 everywhere, boxes centred, classes uniform
        # (on the grid of the last output scored; the runner scores a first batch before asking).
        grid = module.grid or 4
        return float(module(torch.zeros(len(targets), out_features, grid, grid), targets))
    return Loss(module, "yolo", out_features, chance=chance)


@LOSSES.register("auto")
def build_auto(info: DataInfo, train_targets: torch.Tensor | None = None) -> Loss:
    """The task's usual loss: cross-entropy for classification, seq2seq and segmentation (per pixel), YOLO's
    for detection, MSE for regression."""
    from dlrun.tasks import TASKS  # each task names its usual loss

    return LOSSES.build({"name": TASKS.get(info.task, "task").default_loss}, info=info, train_targets=train_targets)


def output_layer(name: str | None) -> nn.Module | None:
    """The layer a loss expects at the end of the model, if any."""
    return {"sigmoid": nn.Sigmoid(), "log_softmax": nn.LogSoftmax(dim=1), None: None}[name]
