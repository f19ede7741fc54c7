"""Tabular datasets: scikit-learn's bundled ones (no download) and the user's own CSV file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from dlrun.data.base import Dataset, split_arrays
from dlrun.data.registry import DATASETS
from dlrun.errors import ConfigError


def _sklearn(loader_name: str, task: str, name: str, seed: int, val_fraction: float, test_fraction: float,
             standardize: bool, standardize_target: bool = False) -> Dataset:
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, loader_name)()
    class_names = [str(c) for c in bunch.target_names] if task == "classification" else None
    return split_arrays(bunch.data, bunch.target, task=task, val_fraction=val_fraction,
                        test_fraction=test_fraction, seed=seed, standardize=standardize,
                        standardize_target=standardize_target, name=name, class_names=class_names,
                        feature_names=[str(f) for f in bunch.feature_names])


@DATASETS.register("iris")
def build_iris(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2,
               standardize: bool = True) -> Dataset:
    """Fisher's iris: 150 flowers, 4 measurements, 3 species."""
    return _sklearn("load_iris", "classification", "iris", seed, val_fraction, test_fraction, standardize)


@DATASETS.register("wine")
def build_wine(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2,
               standardize: bool = True) -> Dataset:
    """Wine recognition: 178 wines, 13 chemical measurements, 3 cultivars."""
    return _sklearn("load_wine", "classification", "wine", seed, val_fraction, test_fraction, standardize)


@DATASETS.register("breast_cancer")
def build_breast_cancer(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2,
                        standardize: bool = True) -> Dataset:
    """Wisconsin breast cancer: 569 samples, 30 features, malignant or benign (binary)."""
    return _sklearn("load_breast_cancer", "classification", "breast_cancer", seed, val_fraction, test_fraction,
                    standardize)


@DATASETS.register("diabetes")
def build_diabetes(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2,
                   standardize: bool = True, standardize_target: bool = True) -> Dataset:
    """Diabetes progression: 442 patients, 10 features, a disease-progression score (regression)."""
    return _sklearn("load_diabetes", "regression", "diabetes", seed, val_fraction, test_fraction, standardize,
                    standardize_target)


@DATASETS.register("digits")
def build_digits(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2,
                 standardize: bool = False) -> Dataset:
    """scikit-learn's 1,797 handwritten digits, 8x8 grey images, 10 classes; shipped with the install."""
    import sklearn.datasets

    bunch = sklearn.datasets.load_digits()
    pixels = bunch.data / 16.0  # pixel values are 0..16: scale to 0..1
    return split_arrays(pixels, bunch.target, task="classification", val_fraction=val_fraction,
                        test_fraction=test_fraction, seed=seed, standardize=standardize, name="digits",
                        class_names=[str(c) for c in bunch.target_names], input_shape=(1, 8, 8))


def read_csv(path: str | None, dataset: str,
             example_target: str = "price") -> tuple[Path, list[str], list[list[str]]]:
    """The file's path, header and rows (as text), refusing a missing file, no data or ragged rows."""
    if path is None:
        raise ConfigError(f"'dataset={dataset}' needs 'dataset.path=<file.csv>' and 'dataset.target=<column>', "
                          f"e.g. dl-run dataset={dataset} dataset.path=data.csv dataset.target={example_target}.",
                          key="dataset.path")
    file = Path(path).expanduser()
    if file.is_dir():
        raise ConfigError(f"'dataset.path={path}' is a directory, not a CSV file ({file.resolve()}).",
                          key="dataset.path")
    if not file.is_file():
        raise ConfigError(f"'dataset.path={path}': no such file (looked in {file.resolve()}).", key="dataset.path")
    try:
        with file.open(newline="") as handle:
            rows = [row for row in csv.reader(handle) if row]
    except OSError as err:
        raise ConfigError(f"Cannot read 'dataset.path={path}': {err.strerror}.", key="dataset.path") from None
    except UnicodeDecodeError:
        raise ConfigError(f"'dataset.path={path}' is not a text CSV file.", key="dataset.path") from None
    if len(rows) < 2:
        raise ConfigError(f"'dataset.path={path}' has no data rows: a CSV needs a header line and at least one row.",
                          key="dataset.path")
    header = [h.strip() for h in rows[0]]
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ConfigError(f"{path}, line {number}: {len(row)} cells where the header has {len(header)}.",
                              key="dataset.path")
    return file, header, rows[1:]


def check_column(name: str | None, header: list[str], key: str, path: str) -> str:
    """A column name the CSV really has."""
    if name is None:
        raise ConfigError(f"'{key}' is not set: name the column to predict, one of {', '.join(header)}.", key=key)
    if name not in header:
        raise ConfigError(f"'{key}={name}' is not a column of {path}; columns: {', '.join(header)}.", key=key)
    return name


def _looks_like_classes(values: list[str]) -> bool:
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return True  # text labels
    return all(n.is_integer() for n in numbers) and len(set(numbers)) <= max(2, min(20, len(numbers) // 5))


@DATASETS.register("csv")
def build_csv(
    path: str | None = None,
    target: str | None = None,
    features: list[str] | None = None,
    task: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    standardize: bool = True,
    standardize_target: bool = True,
) -> Dataset:
    """The user's CSV file: a header line, numeric feature columns, one target column."""
    file, header, rows = read_csv(path, "csv")
    target = check_column(target, header, "dataset.target", path)
    features = list(features) if features is not None else [h for h in header if h != target]
    unknown = [f for f in features if f not in header]
    if unknown:
        raise ConfigError(f"'dataset.features' names column(s) {', '.join(unknown)} that {path} does not have; "
                          f"columns: {', '.join(header)}.", key="dataset.features")
    if not features:
        raise ConfigError(f"'dataset.features' is empty: {path} has no column besides the target.",
                          key="dataset.features")
    columns = {h: [row[i].strip() for row in rows] for i, h in enumerate(header)}
    x = np.empty((len(rows), len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        for i, cell in enumerate(columns[name]):
            try:
                x[i, j] = float(cell)
            except ValueError:
                raise ConfigError(f"{path}, line {i + 2}, column '{name}': '{cell}' is not a number; feature "
                                  f"columns must be numeric (leave it out with dataset.features=[...]).",
                                  key="dataset.features") from None
    labels = columns[target]
    if task is None:
        task = "classification" if _looks_like_classes(labels) else "regression"
    if task not in ("classification", "regression"):
        raise ConfigError(f"'dataset.task={task}' must be classification or regression.", key="dataset.task")
    class_names = None
    if task == "classification":
        class_names = sorted(set(labels), key=lambda v: (_as_number(v) is None, _as_number(v), v))
        y = np.array([class_names.index(v) for v in labels])
    else:
        try:
            y = np.array([float(v) for v in labels], dtype=np.float32)
        except ValueError as err:
            raise ConfigError(f"'dataset.target={target}' holds non-numeric values ({err}); use "
                              f"dataset.task=classification for labels.", key="dataset.target") from None
    return split_arrays(x, y, task=task, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                        standardize=standardize, standardize_target=standardize_target, name=file.stem,
                        class_names=class_names, feature_names=features)


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None
