"""Tabular datasets: scikit-learn's bundled ones (no download) and the user's own CSV file."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

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


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits: (pixels 0..16, one row of 64 per image; labels 0..9).

    Read from the file scikit-learn ships them in (datasets/data/digits.csv.gz, 64 pixel columns then the label,
    as its load_digits reads it) without importing scikit-learn: its import (with SciPy's) costs ~20 times the
    reading, and the default experiment would pay it every run (issue #21). Where that file is not found (another
    scikit-learn layout), load_digits itself.
    """
    spec = importlib.util.find_spec("sklearn")
    shipped = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if shipped is not None and shipped.is_file():
        table = np.loadtxt(shipped, delimiter=",")
        return table[:, :-1], table[:, -1].astype(np.int64)
    import sklearn.datasets

    bunch = sklearn.datasets.load_digits()
    return bunch.data, bunch.target


@DATASETS.register("digits")
def build_digits(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2,
                 standardize: bool = False) -> Dataset:
    """scikit-learn's 1,797 handwritten digits, 8x8 grey images, 10 classes; shipped with the install."""
    pixels, labels = digits_arrays()
    return split_arrays(pixels / 16.0, labels, task="classification", val_fraction=val_fraction,  # 0..16 to 0..1
                        test_fraction=test_fraction, seed=seed, standardize=standardize, name="digits",
                        class_names=[str(c) for c in range(10)], input_shape=(1, 8, 8))


# ---- the user's CSV file ---------------------------------------------------------------------------------------
# What spreadsheets and pandas write for "no value": such a cell is missing (refused, or its row dropped with
# dataset.drop_missing=true). Compared lower-cased, after stripping spaces. "inf" and "nan" are not values either.
MISSING = frozenset({"", "nan", "-nan", "+nan", "na", "n/a", "#n/a", "#na", "null", "none", "nil", "-", "--", "?",
                     "missing", "nat", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity", "1.#inf",
                     "-1.#inf", "1.#qnan", "-1.#ind", "#div/0!", "#value!", "#num!", "#null!", "#ref!", "#name?"})
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38: the largest value a 32-bit float (what torch trains on) holds
TARGET_LIMIT = 1e15  # regression targets: squared errors of larger values overflow 32-bit metrics
SEPARATORS = (",", ";", "\t")
_EUROPEAN = re.compile(r"[+-]?(\d{1,3}(\.\d{3})+|\d+),\d+([eE][+-]?\d+)?")  # 1.234,5 or 0,25 (decimal comma)
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")  # 1,234,567.89 (a quoted cell of a comma file)


@dataclass
class Table:
    """A CSV file read as text: its header, its data rows, each row's line number in the file, and what a user
    should know about how it was read (an encoding other than UTF-8)."""

    path: str  # as the user gave it (messages name it so)
    file: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]
    separator: str = ","
    warnings: list[str] = field(default_factory=list)

    def column(self, name: str) -> list[str]:
        j = self.header.index(name)
        return [row[j].strip() for row in self.rows]

    def keep(self, rows: np.ndarray) -> None:
        """Keep only the rows at these indices."""
        self.rows = [self.rows[i] for i in rows]
        self.lines = [self.lines[i] for i in rows]


def decode(data: bytes, path: str, key: str) -> tuple[str, str | None]:
    """The text of a CSV file's bytes and, when it was not UTF-8, the encoding used; refuse a binary file."""
    if data.startswith(b"\xef\xbb\xbf"):  # Excel's "CSV UTF-8" starts with a byte-order mark
        data = data[3:]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"'{key}={path}' is not a text CSV file dl-run reads: it is UTF-16 text (Excel's "
                          f"\"Unicode Text\"). Save it as \"CSV UTF-8 (comma delimited)\".", key=key)
    if b"\x00" in data:
        raise ConfigError(f"'{key}={path}' is not a text CSV file: it holds NUL bytes (a binary file, or UTF-16 "
                          f"text). Give a CSV saved as UTF-8 text.", key=key)
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
    try:  # a file saved by Excel on Windows ("CSV (comma delimited)"): Windows-1252, Latin-1's superset
        return data.decode("cp1252"), f"Windows-1252 (Latin-1): line {line} holds bytes that are not UTF-8"
    except UnicodeDecodeError as err:
        raise ConfigError(f"'{key}={path}' is not a text CSV file: line {line} holds bytes that are neither UTF-8 "
                          f"nor Windows-1252 (Latin-1) text (byte 0x{data[err.start]:02x}). Save it as "
                          f"\"CSV UTF-8\".", key=key) from None


def _separator(first_line: str) -> str:
    """The separator that splits the header line into the most columns: ',' unless ';' or a tab does better
    (Excel in a language whose decimal mark is a comma writes ';')."""
    widths = {s: len(next(csv.reader([first_line], delimiter=s))) for s in SEPARATORS}
    return max(SEPARATORS, key=lambda s: (widths[s], s == ","))


def read_table_text(text: str, path: str, key: str) -> tuple[list[str], list[list[str]], list[int], str]:
    """Header, rows, the line numbers of the header and of each row, and the separator of a CSV's text; blank lines
    and trailing empty columns left out."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    separator = _separator(first)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator, skipinitialspace=True)
    rows, lines = [], []
    try:
        for row in reader:
            if any(cell.strip() for cell in row):  # an empty line (or a row of empty cells): not data
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as err:
        raise ConfigError(f"'{key}={path}', line {reader.line_num}: not valid CSV ({err}).", key=key) from None
    if not rows:
        return [], [], [], separator
    header = [h.strip() for h in rows[0]]
    width = len(header)
    while width > 1 and not header[width - 1] and all(not "".join(r[width - 1:]).strip() for r in rows[1:]):
        width -= 1  # a trailing column with neither a name nor values (a spreadsheet's stray cell)
    body = []
    for row, line in zip(rows[1:], lines[1:]):
        if len(row) > width and not "".join(row[width:]).strip():
            row = row[:width]
        if len(row) != width:
            hint = "" if separator != "," else " (quote cells that hold a comma: \"1,5\")"
            raise ConfigError(f"{path}, line {line}: {len(row)} cells where the header has {width}{hint}.",
                              key=key)
        body.append(row)
    return header[:width], body, lines, separator


def read_csv(path: str | None, dataset: str, example_target: str = "price") -> Table:
    """The file as a Table, refusing a missing file, no data, ragged rows, unnamed or repeated column names."""
    key = "dataset.path"
    if path is None:
        raise ConfigError(f"'dataset={dataset}' needs 'dataset.path=<file.csv>' and 'dataset.target=<column>', "
                          f"e.g. dl-run dataset={dataset} dataset.path=data.csv dataset.target={example_target}.",
                          key=key)
    file = Path(path).expanduser()
    if file.is_dir():
        raise ConfigError(f"'dataset.path={path}' is a directory, not a CSV file ({file.resolve()}).", key=key)
    if not file.is_file():
        raise ConfigError(f"'dataset.path={path}': no such file (looked in {file.resolve()}).", key=key)
    try:
        data = file.read_bytes()
    except OSError as err:
        raise ConfigError(f"Cannot read 'dataset.path={path}': {err.strerror}.", key=key) from None
    text, encoding = decode(data, path, key)
    header, rows, lines, separator = read_table_text(text, path, key)
    header_line, lines = (lines[0] if lines else 1), lines[1:]
    if not rows:
        raise ConfigError(f"'dataset.path={path}' has no data rows: a CSV needs a header line and at least one row.",
                          key=key)
    unnamed = [str(j + 1) for j, h in enumerate(header) if not h]
    if unnamed:
        raise ConfigError(f"{path}: column(s) {', '.join(unnamed)} have no name in the header line (line "
                          f"{header_line}); name every column.", key=key)
    repeated = sorted({h for h in header if header.count(h) > 1}, key=header.index)
    if repeated:
        where = "; ".join(f"'{h}' (columns {', '.join(str(j + 1) for j, n in enumerate(header) if n == h)})"
                          for h in repeated)
        raise ConfigError(f"{path}: the header names {where} more than once; give each column its own name.",
                          key=key)
    table = Table(path, file, header, rows, lines, separator)
    if encoding is not None:
        table.warnings.append(f"{path} is not UTF-8: it was read as {encoding}. If names or labels look wrong, "
                              f"save it as \"CSV UTF-8\".")
    return table


def check_column(name: str | None, header: list[str], key: str, path: str) -> str:
    """A column name the CSV really has."""
    if name is None:
        raise ConfigError(f"'{key}' is not set: name the column to predict, one of {', '.join(header)}.", key=key)
    if not isinstance(name, str):
        name = str(name)
    if name not in header:
        raise ConfigError(f"'{key}={name}' is not a column of {path}; columns: {', '.join(header)}.", key=key)
    return name


def parse_number(cell: str, decimal_comma: bool = False, limit: float = math.inf) -> float | None:
    """A cell's number; None for a missing value (MISSING, not finite, or beyond `limit`); ValueError if it is not
    a number."""
    text = cell.strip()
    if text.lower() in MISSING:
        return None
    if decimal_comma and _EUROPEAN.fullmatch(text):
        text = text.replace(".", "").replace(",", ".")
    elif _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    value = float(text)  # ValueError: not a number
    return value if math.isfinite(value) and abs(value) <= limit else None


def lines_text(lines: list[int], most: int = 5) -> str:
    """'line 7', 'lines 3, 8, 9', 'lines 3, 8, 9, 12, 14 and 6 more'."""
    shown = ", ".join(map(str, lines[:most]))
    more = f" and {len(lines) - most} more" if len(lines) > most else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


def read_numbers(table: Table, names: list[str], key: str, *, role: str = "feature") -> tuple[np.ndarray, dict]:
    """The columns `names` as float64 (N, len(names)), NaN where a cell is missing, and {name: [row indices]} of
    the missing ones; refuse text cells and values beyond 32-bit floats."""
    decimal_comma = table.separator != ","
    values = np.empty((len(table.rows), len(names)), dtype=np.float64)
    missing: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        junk: list[int] = []
        for i, cell in enumerate(table.column(name)):
            try:
                value = parse_number(cell, decimal_comma)
            except ValueError:
                junk.append(i)
                continue
            if value is None:
                missing.setdefault(name, []).append(i)
                value = math.nan
            values[i, j] = value
        if junk:
            cell = table.column(name)[junk[0]]
            hint = (" (a thousands separator? write 1234.5)" if "," in cell or "'" in cell else
                    " (leave it out with dataset.features=[...])" if role == "feature" else
                    " (dataset.task=classification reads text labels)" if role == "target" else
                    f" (a time column is named with dataset.time={name}; other columns can be left out with "
                    f"dataset.features=[...])")
            raise ConfigError(f"{table.path}, {lines_text([table.lines[i] for i in junk])}, column '{name}': "
                              f"'{cell}' is not a number{'' if len(junk) == 1 else ' (nor are the others)'}; "
                              f"{role} columns must be numeric{hint}.", key=key)
        big = np.flatnonzero(np.abs(np.nan_to_num(values[:, j])) > FLOAT32_MAX)
        if len(big):
            raise ConfigError(f"{table.path}, {lines_text([table.lines[i] for i in big])}, column '{name}': "
                              f"{table.column(name)[big[0]]} is beyond the largest 32-bit float (3.4e38) that "
                              f"training computes with; rescale the column.", key=key)
    return values, missing


def refuse_or_drop_missing(table: Table, missing: dict[str, list[int]], drop: bool,
                           inside_only: bool = False) -> np.ndarray:
    """Indices of the rows to keep: every row when nothing is missing; refuse missing cells unless `drop`.

    `inside_only` (a time series): only rows at the start or the end may be dropped; a missing step in the
    middle would make a window join two times that are not consecutive."""
    n = len(table.rows)
    if not missing:
        return np.arange(n)
    bad = sorted({i for rows in missing.values() for i in rows})
    where = "; ".join(f"column '{name}' {lines_text([table.lines[i] for i in rows])}"
                      for name, rows in missing.items())
    what = (f"{table.path}: {len(bad)} row{'s' if len(bad) > 1 else ''} with a missing or non-finite value (empty, "
            f"NA, N/A, nan, inf): {where}.")
    if not drop:
        raise ConfigError(f"{what} Fill them in, or set dataset.drop_missing=true to leave those rows out.",
                          key="dataset.path")
    keep = np.setdiff1d(np.arange(n), bad)
    if inside_only and len(keep):
        inner = [i for i in bad if keep[0] < i < keep[-1]]
        if inner:
            raise ConfigError(f"{what} dataset.drop_missing=true leaves out rows at the start or the end of a time "
                              f"series only: without {lines_text([table.lines[i] for i in inner])} the windows "
                              f"would join steps that are not consecutive. Fill those values in (e.g. with the "
                              f"previous value, or by interpolation).", key="dataset.drop_missing")
    if not len(keep):
        raise ConfigError(f"{what} Every row has one: nothing is left to train on.", key="dataset.path")
    table.warnings.append(f"{table.path}: {len(bad)} of {n} rows left out (dataset.drop_missing=true), with a missing "
                          f"or non-finite value in {where}.")
    table.keep(keep)
    return keep


def _number_name(value: float) -> str:
    """A number as a class name: 1.0 as '1', 0.5 as '0.5'."""
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(float(value))


def _class_name(label: str) -> str:
    """A text label as a class name; one that is a number reads as that number ('1.0' and '1' are one class)."""
    value = _as_number(label)
    return label if value is None else _number_name(value)


def _numeric(labels: list[str], decimal_comma: bool) -> bool:
    """Whether every label is a number or missing."""
    for label in labels:
        try:
            parse_number(label, decimal_comma)
        except ValueError:
            return False
    return True


def _looks_like_classes(numbers: np.ndarray) -> bool:
    """A numeric target that holds few whole numbers is read as classes."""
    return bool(np.all(np.mod(numbers, 1) == 0)) and len(set(numbers.tolist())) <= max(2, min(20, len(numbers) // 5))


def split_warnings(data: Dataset, path: str) -> list[str]:
    """What a user should know about the split: a class missing from a split, a split whose target is constant."""
    info, splits, out = data.info, data.splits, []
    names = ("training", "validation", "test")
    if info.task == "classification":
        counts = [torch.bincount(y.cpu(), minlength=info.num_classes) for y in
                  (splits.y_train, splits.y_val, splits.y_test)]
        for k, name in enumerate(info.class_names):
            absent = [split for split, c in zip(names, counts) if c[k] == 0]
            if not absent:
                continue
            total = int(sum(c[k] for c in counts))
            why = (": the model never learns it" if "training" in absent else
                   ": its accuracy there is not measured")
            out.append(f"{path}: class '{name}' ({total} row{'s' if total != 1 else ''}) is not in the "
                       f"{' and '.join(absent)} split{'s' if len(absent) > 1 else ''}{why}. More rows of it, or "
                       f"another dataset.seed or split fractions, would place it in every split.")
    else:
        for name, y in zip(names, (splits.y_train, splits.y_val, splits.y_test)):
            if len(y) > 0 and bool((y == y[:1]).all()):
                out.append(f"{path}: the target is the same in every row of the {name} split ({len(y)} rows): R² "
                           f"is undefined (nan) there.")
    return out


def _features(table: Table, target: str, features: list[str] | None) -> list[str]:
    """The input columns: the ones named (each a column, not the target, once), or every column but the target."""
    path, header = table.path, table.header
    features = [str(f) for f in features] if features is not None else [h for h in header if h != target]
    unknown = [f for f in features if f not in header]
    if unknown:
        raise ConfigError(f"'dataset.features' names column(s) {', '.join(unknown)} that {path} does not have; "
                          f"columns: {', '.join(header)}.", key="dataset.features")
    if target in features:
        raise ConfigError(f"'dataset.features' lists the target column '{target}': the model would be given the "
                          f"answer. Leave it out of dataset.features.", key="dataset.features")
    twice = sorted({f for f in features if features.count(f) > 1})
    if twice:
        raise ConfigError(f"'dataset.features' lists {', '.join(twice)} more than once.", key="dataset.features")
    if not features:
        raise ConfigError(f"'dataset.features' is empty: {path} has no column besides the target.",
                          key="dataset.features")
    return features


def _classes(target: str, names: list[str], path: str) -> tuple[np.ndarray, list[str]]:
    """Class indices and names (numbers in numeric order, then text); refuse a single class."""
    class_names = sorted(set(names), key=lambda v: (_as_number(v) is None, _as_number(v) or 0.0, v))
    if len(class_names) < 2:
        raise ConfigError(f"'dataset.target={target}': every row of {path} has the same class '{class_names[0]}': "
                          f"a classifier needs at least two classes (or give dataset.task=regression for a number "
                          f"to predict).", key="dataset.target")
    index = {name: k for k, name in enumerate(class_names)}
    return np.array([index[v] for v in names]), class_names


def _check_target_values(table: Table, target: str, y: np.ndarray, labels: list[str]) -> None:
    """Refuse regression targets whose errors would overflow the metrics, or that never change."""
    big = np.flatnonzero(np.abs(y) > TARGET_LIMIT)
    if len(big):
        raise ConfigError(f"{table.path}, {lines_text([table.lines[i] for i in big])}, column '{target}': "
                          f"{labels[big[0]]} is beyond ±1e15: squared errors of such targets overflow the 32-bit "
                          f"metrics. Rescale the target (e.g. in millions).", key="dataset.target")
    if np.all(y == y[0]):
        raise ConfigError(f"'dataset.target={target}': every row of {table.path} has the same value {labels[0]}: "
                          f"nothing to learn.", key="dataset.target")


@DATASETS.register("csv")
def build_csv(  # noqa: PLR0913 - a registered builder: its parameters are the config's keys
    path: str | None = None,
    target: str | None = None,
    features: list[str] | None = None,
    task: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    standardize: bool = True,
    standardize_target: bool = True,
    drop_missing: bool = False,
) -> Dataset:
    """The user's CSV file: a header line, numeric feature columns, one target column."""
    table = read_csv(path, "csv")
    target = check_column(target, table.header, "dataset.target", path)
    features = _features(table, target, features)
    if task not in (None, "classification", "regression"):
        raise ConfigError(f"'dataset.task={task}' must be classification or regression.", key="dataset.task")
    x, missing = read_numbers(table, features, "dataset.features")
    labels = table.column(target)
    numeric = task == "regression" or _numeric(labels, table.separator != ",")
    y = np.zeros(len(labels))
    if numeric:
        y, missing_y = read_numbers(table, [target], "dataset.target", role="target")
        missing.update(missing_y)
    else:  # text labels: only the missing markers are missing
        bad = [i for i, v in enumerate(labels) if v.lower() in MISSING]
        missing.update({target: bad} if bad else {})
    keep = refuse_or_drop_missing(table, missing, drop_missing)
    if len(keep) < 3:
        raise ConfigError(f"{path} has {len(keep)} usable data row{'s' if len(keep) != 1 else ''}: too few to split "
                          f"into training, validation and test (at least 3).", key="dataset.path")
    x, y, labels = x[keep], y[keep].reshape(len(keep)), [labels[i] for i in keep]
    if task is None:
        task = "classification" if not numeric or _looks_like_classes(y) else "regression"
    class_names = None
    if task == "classification":
        y, class_names = _classes(target, [_number_name(v) for v in y] if numeric else
                                  [_class_name(v) for v in labels], path)
    else:
        _check_target_values(table, target, y, labels)
    data = split_arrays(x, y, task=task, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                        standardize=standardize, standardize_target=standardize_target, name=table.file.stem,
                        class_names=class_names, feature_names=features)
    data.warnings.extend(table.warnings + split_warnings(data, path))
    return data


def _as_number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
