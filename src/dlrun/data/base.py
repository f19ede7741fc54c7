"""What every dataset builder returns: splits held as tensors, and a DataInfo that sizes the model."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from dlrun.errors import ConfigError


@dataclass
class SequenceInfo:
    """What a sequence model needs beyond the input shape: steps, features, and the forecast or the tokens.

    Forecasting is regression whose inputs are windows of `length` steps and whose targets are the next
    `horizon` values of feature `target_feature`. Sequence to sequence (task seq2seq) holds tokens: each
    input row is the source (`source_length` tokens) followed by the decoder's input, the target shifted
    right behind the start token (teacher forcing in one tensor, so one training loop serves every task).
    """

    length: int  # input steps (seq2seq: source steps)
    features: int = 1  # values per step (token inputs: 1 token id per step)
    horizon: int | None = None  # forecasting: steps predicted after each window
    target_feature: int = 0  # forecasting: the input feature that is the forecast series (naive baselines)
    period: int | None = None  # forecasting: season length for the seasonal-naive baseline
    time_ordered: bool = False  # splits are consecutive stretches of time, train first
    vocab_size: int | None = None  # token inputs: number of token ids, the special ones included
    source_length: int | None = None  # seq2seq: the first source_length input columns are the source
    target_length: int | None = None  # seq2seq: the most output tokens, the end token included
    pad_token: int = 0
    start_token: int = 1
    end_token: int = 2
    token_names: list[str] | None = None

    @property
    def forecasting(self) -> bool:
        return self.horizon is not None

    @property
    def tokens(self) -> bool:
        return self.vocab_size is not None


# The statistics a dataset was standardised with, kept in checkpoints (DataInfo.scaling).
SCALING = ("feature_mean", "feature_std", "target_mean", "target_std", "pixel_mean", "pixel_std")


@dataclass
class DataInfo:
    """What the model, loss and metrics need to know about a dataset."""

    input_shape: tuple[int, ...]
    task: str
    num_classes: int | None = None  # classification only
    target_dim: int = 1  # regression only: number of outputs
    class_names: list[str] | None = None
    # Regression targets may be standardised for training; metrics are reported in original units.
    target_mean: torch.Tensor | None = None
    target_std: torch.Tensor | None = None
    feature_names: list[str] | None = None
    # Tabular inputs standardised for training: the training split's per-feature mean and std, so new
    # inputs (mode=predict) get the same scaling.
    feature_mean: torch.Tensor | None = None
    feature_std: torch.Tensor | None = None
    # uint8 images (the fast path): per-channel mean and std of the 0..1 pixels over the training split;
    # batches are scaled and standardised on the training device as they are drawn (dlrun.data.prepare).
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None
    name: str = ""
    extras: dict = field(default_factory=dict)
    sequence: SequenceInfo | None = None  # set by sequence datasets: inputs are (steps, features) or tokens

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_shape))

    def scaling(self) -> dict[str, Any]:
        """The statistics this data was standardised with (course 2 §3.3), as a checkpoint keeps them: another
        dataset scored by the trained model must be put on the same scale (dlrun.modes); with the feature and class
        names, so that another file's columns and classes are matched by name, not by position."""
        kept = {k: getattr(self, k) for k in SCALING + ("feature_names", "class_names") if getattr(self, k) is not None}
        return {k: list(v) if k.endswith("_names") else v for k, v in kept.items()}


@dataclass
class Splits:
    """Train/validation/test tensors: inputs x and targets y (class indices, or floats for regression)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: torch.device) -> "Splits":
        return Splits(*(t.to(device) for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


@dataclass
class Dataset:
    """A built dataset: its splits, what it is, and what a user should know about it (skipped files, gaps, a class
    missing from a split): each warning is printed when a run starts and kept in its metrics.json."""

    splits: Splits
    info: DataInfo
    warnings: list[str] = field(default_factory=list)
    outliers: dict | None = None  # training targets corrupted on purpose (dataset.outliers): rows, of, fraction, scale


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Refuse split fractions that leave nothing to train on."""
    for key, value in (("dataset.val_fraction", val_fraction), ("dataset.test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ConfigError(f"'{key}={value}' must be between 0 and 1 (exclusive), e.g. 0.15.", key=key)
    if val_fraction + test_fraction >= 0.9:
        raise ConfigError(
            f"'dataset.val_fraction={val_fraction}' plus 'dataset.test_fraction={test_fraction}' leave under 10% "
            f"for training; keep their sum below 0.9.", key="dataset.val_fraction"
        )


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int,
                  name: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded shuffle of n sample indices into train, validation and test."""
    check_fractions(val_fraction, test_fraction)
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    n_val = max(1, int(round(n * val_fraction)))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ConfigError(f"Dataset '{name}' has {n} samples: too few to split into train/val/test.", key="dataset")
    return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]


def _standardised(values: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Values standardised with the mean and std of the training rows only, so nothing leaks from validation or
    test (course 2 §3.3); computed in float64, so that large values (1e30) do not overflow a 32-bit sum or square;
    the statistics kept as float32."""
    values = np.asarray(values, dtype=np.float64)
    mean, std = values[train].mean(axis=0), values[train].std(axis=0)
    std[std < 1e-8] = 1.0
    return (values - mean) / std, torch.as_tensor(mean.astype(np.float32)), torch.as_tensor(std.astype(np.float32))


def split_arrays(
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    standardize: bool,
    standardize_target: bool = False,
    input_shape: tuple[int, ...] | None = None,
    **described: Any,
) -> Dataset:
    """Seeded shuffle into train/val/test; statistics fitted on the training split only (course 2 §3.3).

    `described`: what DataInfo shows of the data, each optional: name (str), class_names and feature_names
    (lists of str)."""
    unknown = sorted(set(described) - {"name", "class_names", "feature_names"})
    if unknown:
        raise TypeError(f"split_arrays() got unexpected keyword argument(s) {', '.join(unknown)}")
    name, class_names = described.get("name", ""), described.get("class_names")
    n = len(x)
    idx_train, idx_val, idx_test = split_indices(n, val_fraction, test_fraction, seed, name)
    info_kwargs: dict = {}
    if standardize:
        x, mean, std = _standardised(x, idx_train)
        info_kwargs.update(feature_mean=mean, feature_std=std)
    x = x.astype(np.float32)
    if task == "classification":
        y_t = torch.as_tensor(y, dtype=torch.long)
        num_classes = int(y_t.max().item()) + 1
        info_kwargs.update(num_classes=num_classes, class_names=class_names or [str(i) for i in range(num_classes)])
    else:
        y = np.asarray(y, dtype=np.float64).reshape(n, -1)
        if standardize_target:
            y, t_mean, t_std = _standardised(y, idx_train)
            info_kwargs.update(target_mean=t_mean, target_std=t_std)
        y = y.astype(np.float32)
        y_t = torch.as_tensor(y)
        info_kwargs.update(target_dim=y.shape[1])
    x_t = torch.as_tensor(x)
    if input_shape is not None:
        x_t = x_t.reshape(n, *input_shape)
    splits = Splits(
        x_t[idx_train], y_t[idx_train], x_t[idx_val], y_t[idx_val], x_t[idx_test], y_t[idx_test]
    )
    info = DataInfo(
        input_shape=tuple(x_t.shape[1:]), task=task, name=name, feature_names=described.get("feature_names"),
        **info_kwargs
    )
    return Dataset(splits, info)


def keep_subset(data: Dataset, classes: list[int] | None, train_fraction: float, seed: int) -> Dataset:
    """Keep only `classes` (relabelled 0..k-1 in the order given) in every split, and a seeded, per-class
    `train_fraction` of the training split: the small-data setting of transfer learning (course 3 §4.2)."""
    splits, info = data.splits, data.info
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) or \
            not 0.0 < train_fraction <= 1.0:
        raise ConfigError(f"'dataset.train_fraction={train_fraction}' must be in (0, 1], e.g. 0.05 keeps 5% of the "
                          f"training samples.", key="dataset.train_fraction")
    if classes is None and train_fraction == 1.0:
        return data  # all of it: the very dataset (a sweep's next job may reuse it)
    if classes is not None:
        if info.task != "classification":
            raise ConfigError(f"'dataset.classes={classes}' keeps some classes of a classification dataset, but "
                              f"dataset '{info.name}' is {info.task}. Leave dataset.classes=null.",
                              key="dataset.classes")
        valid = range(info.num_classes)
        if not isinstance(classes, (list, tuple)) or len(classes) < 2 or len(set(classes)) != len(classes) or \
                any(isinstance(c, bool) or c not in valid for c in classes):
            raise ConfigError(f"'dataset.classes={classes}' must list at least two different class indices of "
                              f"dataset '{info.name}', from 0 to {info.num_classes - 1} "
                              f"({', '.join(info.class_names or [])}).", key="dataset.classes")
        lookup = torch.full((info.num_classes,), -1, dtype=torch.long)
        lookup[torch.tensor(classes)] = torch.arange(len(classes))
        kept = []
        for x, y in ((splits.x_train, splits.y_train), (splits.x_val, splits.y_val), (splits.x_test, splits.y_test)):
            new = lookup[y.cpu()]
            keep = new >= 0
            kept += [x[keep.to(x.device)], new[keep].to(y.device)]
        splits = Splits(*kept)
        names = [info.class_names[c] for c in classes] if info.class_names else [str(c) for c in classes]
        info = replace(info, num_classes=len(classes), class_names=names)
    if train_fraction < 1.0:
        rng = np.random.default_rng(seed)
        y = splits.y_train.cpu()
        # Per class, so that every class keeps at least one sample: a small fraction of a rare class is not none.
        groups = [np.flatnonzero(y.numpy() == c) for c in range(info.num_classes)] if info.task == "classification" \
            else [np.arange(len(y))]
        picked = np.sort(np.concatenate([rng.permutation(g)[:max(1, round(len(g) * train_fraction))]
                                         for g in groups if len(g)]))
        index = torch.from_numpy(picked).to(splits.x_train.device)
        splits = Splits(splits.x_train[index], splits.y_train[index.to(splits.y_train.device)], splits.x_val,
                        splits.y_val, splits.x_test, splits.y_test)
    if info.pixel_mean is not None and (classes is not None or train_fraction < 1.0):
        from dlrun.data.images import pixel_stats  # the training split changed: so do its pixel statistics

        mean, std = pixel_stats(splits.x_train)
        info = replace(info, pixel_mean=mean, pixel_std=std)
    return Dataset(splits, info, data.warnings)
