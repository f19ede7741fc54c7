"""Sequence datasets: classify a whole sequence, or map a sequence of tokens to another (course 3 §5.3-5.4)."""

from __future__ import annotations

import string

import numpy as np
import torch

from dlrun.data.base import DataInfo, Dataset, SequenceInfo, Splits, split_arrays, split_indices
from dlrun.data.registry import DATASETS
from dlrun.errors import ConfigError

PATTERNS = ("none", "sine", "square", "sawtooth")


def _pattern(kind: str, width: int) -> np.ndarray:
    phase = np.arange(width) / width
    return {
        "none": np.zeros(width),
        "sine": np.sin(2 * np.pi * 2 * phase),  # two full waves
        "square": np.where(phase % 0.5 < 0.25, 1.0, -1.0),
        "sawtooth": 2 * ((2 * phase) % 1.0) - 1,
    }[kind]


@DATASETS.register("patterns")
def build_patterns(
    seed: int = 0,
    n_samples: int = 2000,
    length: int = 64,
    pattern_length: int = 16,
    noise: float = 0.4,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> Dataset:
    """Noisy sequences, each hiding one short pattern at a random place: which pattern is it?"""
    if not 1 <= pattern_length <= length:
        raise ConfigError(f"'dataset.pattern_length={pattern_length}' must be between 1 and "
                          f"'dataset.length={length}'.", key="dataset.pattern_length")
    if n_samples < len(PATTERNS):
        raise ConfigError(f"'dataset.n_samples={n_samples}' must be at least {len(PATTERNS)}, one per pattern.",
                          key="dataset.n_samples")
    rng = np.random.default_rng(seed)
    labels = np.arange(n_samples) % len(PATTERNS)
    x = noise * rng.standard_normal((n_samples, length))
    starts = rng.integers(0, length - pattern_length + 1, size=n_samples)
    shapes = np.stack([_pattern(kind, pattern_length) for kind in PATTERNS])
    x[np.arange(n_samples)[:, None], starts[:, None] + np.arange(pattern_length)] += shapes[labels]
    data = split_arrays(x, labels, task="classification", val_fraction=val_fraction, test_fraction=test_fraction,
                        seed=seed, standardize=False, name="patterns", class_names=list(PATTERNS),
                        input_shape=(length, 1))
    data.info.sequence = SequenceInfo(length=length, features=1)
    return data


@DATASETS.register("first_symbol")
def build_first_symbol(
    seed: int = 0,
    n_samples: int = 2000,
    length: int = 50,
    symbols: int = 4,
    noise: float = 1.0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> Dataset:
    """The class is the symbol shown, one-hot, at the first step; every later step is noise that says nothing of
    it, so the answer lies `length` - 1 steps behind the last state (course 3 §5.3: long sequences)."""
    if length < 1:
        raise ConfigError(f"'dataset.length={length}' must be at least 1 step.", key="dataset.length")
    if symbols < 2:
        raise ConfigError(f"'dataset.symbols={symbols}' must be at least 2, one class each.", key="dataset.symbols")
    if n_samples < symbols:
        raise ConfigError(f"'dataset.n_samples={n_samples}' must be at least 'dataset.symbols={symbols}', one per "
                          f"class.", key="dataset.n_samples")
    rng = np.random.default_rng(seed)
    labels = np.arange(n_samples) % symbols
    # Noise of mean 0 independent of the class: only the first step holds it (counting symbols would not).
    x = (noise * rng.standard_normal((n_samples, length, symbols))).astype(np.float32)
    x[:, 0] = np.eye(symbols, dtype=np.float32)[labels]
    data = split_arrays(x, labels, task="classification", val_fraction=val_fraction, test_fraction=test_fraction,
                        seed=seed, standardize=False, name="first_symbol",
                        class_names=[f"first={c}" for c in range(symbols)], input_shape=(length, symbols))
    data.info.sequence = SequenceInfo(length=length, features=symbols)
    return data


@DATASETS.register("adding")
def build_adding(
    seed: int = 0,
    n_samples: int = 2000,
    length: int = 100,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> Dataset:
    """The adding problem (Hochreiter & Schmidhuber 1997): each step holds a random value in [0, 1) and a marker
    0 or 1; the target is the sum of the two marked values, one in each half of the sequence, so the first lies
    at least `length` / 2 steps behind the last state (course 3 §5.3: long sequences). Predicting the mean, 1,
    scores an MSE of 1/6 (RMSE 0.41) and R² 0: a network that has not learnt to reach back stays there."""
    if length < 2:
        raise ConfigError(f"'dataset.length={length}' must be at least 2 steps, one per marked value.",
                          key="dataset.length")
    if n_samples < 1:
        raise ConfigError(f"'dataset.n_samples={n_samples}' must be at least 1.", key="dataset.n_samples")
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, (n_samples, length))
    markers = np.zeros((n_samples, length))
    rows = np.arange(n_samples)
    markers[rows, rng.integers(0, length // 2, n_samples)] = 1.0
    markers[rows, rng.integers(length // 2, length, n_samples)] = 1.0
    x = np.stack([values, markers], axis=-1).astype(np.float32)
    target = (values * markers).sum(axis=1)
    data = split_arrays(x, target, task="regression", val_fraction=val_fraction, test_fraction=test_fraction,
                        seed=seed, standardize=False, name="adding", feature_names=["value", "marker"],
                        input_shape=(length, 2))
    data.info.sequence = SequenceInfo(length=length, features=2)
    return data


@DATASETS.register("digits_rows")
def build_digits_rows(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 digits read row by row: 8 steps of 8 pixels (the classic recurrent-network demo)."""
    from dlrun.data.tabular import digits_arrays

    pixels, labels = digits_arrays()
    data = split_arrays(pixels / 16.0, labels, task="classification", val_fraction=val_fraction,
                        test_fraction=test_fraction, seed=seed, standardize=False, name="digits_rows",
                        class_names=[str(c) for c in range(10)], input_shape=(8, 8))
    data.info.sequence = SequenceInfo(length=8, features=8)
    return data


@DATASETS.register("mnist_rows")
def build_mnist_rows(seed: int = 0, root: str = "data", download: bool = True, val_fraction: float = 0.1) -> Dataset:
    """MNIST read row by row: 28 steps of 28 pixels (0..1); the same files, split and errors as dataset=mnist."""
    from dlrun.data.images import _torchvision_dataset  # one loader for both views of MNIST

    images = _torchvision_dataset("MNIST", "mnist_rows", "MNIST", root, download, seed, val_fraction)
    rows = [t.squeeze(1).float().div_(255.0) if t.dtype == torch.uint8 else t for t in images.splits.tensors()]
    info = DataInfo(input_shape=(28, 28), task="classification", num_classes=10, name="mnist_rows",
                    class_names=images.info.class_names, sequence=SequenceInfo(length=28, features=28))
    return Dataset(Splits(*rows), info)


OPERATIONS = {
    "copy": lambda seq: seq,
    "reverse": lambda seq: seq[::-1],
    "sort": sorted,
}
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2: padding, start, end


def _token_names(symbols: int) -> list[str]:
    letters = string.ascii_lowercase
    return SPECIAL_TOKENS + [letters[i] if symbols <= len(letters) else f"t{i}" for i in range(symbols)]


@DATASETS.register("toy_seq2seq")
def build_toy_seq2seq(
    seed: int = 0,
    operation: str = "reverse",
    n_samples: int = 6000,
    symbols: int = 10,
    min_length: int = 3,
    max_length: int = 8,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> Dataset:
    """Random token sequences and their copy, reverse or sorted version, ended by an end token (course 3 §5.4)."""
    if operation not in OPERATIONS:
        raise ConfigError(f"'dataset.operation={operation}' must be one of {', '.join(OPERATIONS)}.",
                          key="dataset.operation")
    if symbols < 2:
        raise ConfigError(f"'dataset.symbols={symbols}' must be at least 2.", key="dataset.symbols")
    if not 1 <= min_length <= max_length:
        raise ConfigError(f"'dataset.min_length={min_length}' and 'dataset.max_length={max_length}' must satisfy "
                          f"1 <= min_length <= max_length.", key="dataset.min_length")
    distinct = sum(symbols ** n for n in range(min_length, max_length + 1))
    if n_samples > distinct:
        raise ConfigError(f"'dataset.n_samples={n_samples}' is more than the {distinct} distinct sequences of "
                          f"{min_length} to {max_length} of {symbols} symbols; lower it or lengthen the sequences.",
                          key="dataset.n_samples")
    pad, start, end = 0, 1, 2
    first = len(SPECIAL_TOKENS)
    rng = np.random.default_rng(seed)
    sources: dict[tuple[int, ...], None] = {}  # distinct sequences, so no test sequence is also a training one
    while len(sources) < n_samples:
        n = int(rng.integers(min_length, max_length + 1))
        sources.setdefault(tuple(int(t) for t in rng.integers(first, first + symbols, size=n)), None)
    target_length = max_length + 1  # room for the end token
    source = np.full((n_samples, max_length), pad, dtype=np.int64)
    target = np.full((n_samples, target_length), pad, dtype=np.int64)
    for i, seq in enumerate(sources):
        source[i, :len(seq)] = seq
        out = list(OPERATIONS[operation](list(seq))) + [end]
        target[i, :len(out)] = out
    # Teacher forcing: the decoder reads the target shifted right behind the start token.
    decoder_input = np.concatenate([np.full((n_samples, 1), start), target[:, :-1]], axis=1)
    x = torch.as_tensor(np.concatenate([source, decoder_input], axis=1))
    y = torch.as_tensor(target)
    idx_train, idx_val, idx_test = (torch.as_tensor(i) for i in
                                    split_indices(n_samples, val_fraction, test_fraction, seed, "toy_seq2seq"))
    splits = Splits(x[idx_train], y[idx_train], x[idx_val], y[idx_val], x[idx_test], y[idx_test])
    names = _token_names(symbols)
    info = DataInfo(
        input_shape=(x.shape[1],), task="seq2seq", name="toy_seq2seq", extras={"operation": operation},
        sequence=SequenceInfo(length=max_length, vocab_size=len(names), source_length=max_length,
                              target_length=target_length, pad_token=pad, start_token=start, end_token=end,
                              token_names=names),
    )
    return Dataset(splits, info)
