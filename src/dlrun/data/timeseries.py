"""Forecasting datasets: a series cut into windows of past values and the next `horizon` values (course 3 §5.3).

The series is split in time order before any window is cut: train is the oldest stretch, then
validation, then test, and every window lies inside one stretch, so nothing from the future of a
split reaches an earlier one. Standardisation is fitted on the training stretch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch

from dlrun.data.base import DataInfo, Dataset, SequenceInfo, Splits, check_fractions
from dlrun.data.registry import DATASETS
from dlrun.data.tabular import (MISSING, TARGET_LIMIT, Table, _as_number, check_column, lines_text, read_csv,
                                read_numbers, refuse_or_drop_missing)
from dlrun.errors import ConfigError


def window_starts(n: int, input_length: int, horizon: int, stride: int) -> np.ndarray:
    """First step of every window (input_length inputs, then horizon targets) that fits in n steps."""
    return np.arange(0, n - input_length - horizon + 1, stride)


def make_windows(series: np.ndarray, target: int, input_length: int, horizon: int,
                 stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (windows, input_length, features) and targets (windows, horizon) of feature `target`."""
    starts = window_starts(len(series), input_length, horizon, stride)
    x = series[starts[:, None] + np.arange(input_length)]
    y = series[starts[:, None] + input_length + np.arange(horizon), target]
    return x, y


def time_split(n: int, val_fraction: float, test_fraction: float) -> tuple[slice, slice, slice]:
    """Consecutive stretches of n steps: the oldest for training, then validation, then test."""
    check_fractions(val_fraction, test_fraction)
    n_test = max(1, int(round(n * test_fraction)))
    n_val = max(1, int(round(n * val_fraction)))
    n_train = n - n_val - n_test
    return slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n)


def check_window(n: int, input_length: int, horizon: int, stride: int, period: int | None, name: str) -> None:
    """Refuse windows that cannot be cut from a series of n steps."""
    for key, value in (("input_length", input_length), ("horizon", horizon), ("stride", stride)):
        if value < 1:
            raise ConfigError(f"'dataset.{key}={value}' must be a positive integer"
                              + (" (the number of future steps to predict)." if key == "horizon" else "."),
                              key=f"dataset.{key}")
    if input_length + horizon > n:
        raise ConfigError(f"'dataset.input_length={input_length}' plus 'dataset.horizon={horizon}' make a window of "
                          f"{input_length + horizon} steps, longer than the {n} steps of series '{name}'. Shorten "
                          f"the window.", key="dataset.input_length")
    if period is not None and not 1 <= period <= input_length:
        raise ConfigError(f"'dataset.period={period}' must be between 1 and 'dataset.input_length={input_length}': "
                          f"the seasonal-naive forecast repeats the last period of the window (or set it to null).",
                          key="dataset.period")


@dataclass(frozen=True)
class Windows:
    """How a series is cut into samples: input_length steps in, the next horizon steps to forecast, a window
    every stride steps; period (if any) is the season of the seasonal-naive forecast."""

    input_length: int
    horizon: int
    stride: int = 1
    period: int | None = None


def forecasting_dataset(series: np.ndarray, *, target: int, windows: Windows, val_fraction: float,
                        test_fraction: float, standardize: bool, name: str, feature_names: list[str]) -> Dataset:
    """Split a (steps, features) series in time order, standardise on train, cut each split into windows."""
    input_length, horizon, stride, period = windows.input_length, windows.horizon, windows.stride, windows.period
    series = np.asarray(series, dtype=np.float64).reshape(len(series), -1)  # statistics without 32-bit overflow
    check_window(len(series), input_length, horizon, stride, period, name)
    parts = time_split(len(series), val_fraction, test_fraction)
    window = input_length + horizon
    for split, part in zip(("training", "validation", "test"), parts):
        steps = part.stop - part.start
        if steps < window:
            raise ConfigError(
                f"The {split} stretch of series '{name}' has {steps} steps, fewer than one window of "
                f"'dataset.input_length={input_length}' + 'dataset.horizon={horizon}' = {window}. Shorten the window "
                f"or give that split a larger fraction (dataset.val_fraction, dataset.test_fraction).",
                key="dataset.input_length")
    mean = np.zeros(series.shape[1])
    std = np.ones(series.shape[1])
    if standardize:
        # Fitted on the training stretch only, so no statistic of the future leaks in (course 2 §3.3).
        mean, std = series[parts[0]].mean(axis=0), series[parts[0]].std(axis=0)
        std[std < 1e-8] = 1.0
    scaled = ((series - mean) / std).astype(np.float32)
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    tensors = []
    for part in parts:
        x, y = make_windows(scaled[part], target, input_length, horizon, stride)
        tensors += [torch.as_tensor(x), torch.as_tensor(y)]
    info = DataInfo(
        input_shape=(input_length, series.shape[1]), task="regression", target_dim=horizon, name=name,
        feature_names=feature_names,
        target_mean=torch.full((horizon,), float(mean[target])) if standardize else None,
        target_std=torch.full((horizon,), float(std[target])) if standardize else None,
        sequence=SequenceInfo(length=input_length, features=series.shape[1], horizon=horizon, target_feature=target,
                              period=period, time_ordered=True),
    )
    info.extras.update(split_steps=[[p.start, p.stop] for p in parts])
    return Dataset(Splits(*tensors), info)


def _list_of_positive(key: str, values: list[float]) -> None:
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"'{key}={list(values)}' must list positive numbers, e.g. [50, 17].", key=key)


@DATASETS.register("sine")
def build_sine(  # noqa: PLR0913 - a registered builder: its parameters are the config's keys
    seed: int = 0,
    length: int = 2000,
    periods: list[float] = (50.0, 17.0),
    amplitudes: list[float] = (1.0, 0.5),
    noise: float = 0.1,
    input_length: int = 48,
    horizon: int = 8,
    stride: int = 1,
    period: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    standardize: bool = True,
) -> Dataset:
    """A sum of sine waves (frequency 1/period each, random phases) plus Gaussian noise."""
    _list_of_positive("dataset.periods", periods)
    if len(amplitudes) != len(periods):
        raise ConfigError(f"'dataset.amplitudes={list(amplitudes)}' needs one amplitude per period "
                          f"({len(periods)}: {list(periods)}).", key="dataset.amplitudes")
    if length < 2:
        raise ConfigError(f"'dataset.length={length}' must be at least 2 steps.", key="dataset.length")
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    phases = rng.uniform(0, 2 * math.pi, size=len(periods))
    series = sum(a * np.sin(2 * math.pi * t / p + phase) for a, p, phase in zip(amplitudes, periods, phases))
    series = series + noise * rng.standard_normal(length)
    return forecasting_dataset(series[:, None], target=0, windows=Windows(input_length, horizon, stride, period),
                               val_fraction=val_fraction, test_fraction=test_fraction, standardize=standardize,
                               name="sine", feature_names=["value"])


@DATASETS.register("ar")
def build_ar(  # noqa: PLR0913 - a registered builder: its parameters are the config's keys
    seed: int = 0,
    length: int = 2000,
    coefficients: list[float] = (0.6, -0.2, 0.3),
    noise: float = 1.0,
    input_length: int = 24,
    horizon: int = 1,
    stride: int = 1,
    period: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    standardize: bool = True,
) -> Dataset:
    """An auto-regressive process x_t = a_1 x_(t-1) + ... + a_p x_(t-p) + noise."""
    coefficients = list(coefficients)
    if not coefficients:
        raise ConfigError("'dataset.coefficients=[]' must list at least one coefficient a_1, e.g. [0.6, -0.2].",
                          key="dataset.coefficients")
    # Stationary only if every root of z^p - a_1 z^(p-1) - ... - a_p lies inside the unit circle;
    # otherwise the series grows without bound.
    roots = np.roots([1.0, *(-a for a in coefficients)])
    if np.abs(roots).max() >= 1.0:
        raise ConfigError(f"'dataset.coefficients={coefficients}' make a process that grows without bound (a root "
                          f"of modulus {np.abs(roots).max():.3g} >= 1); choose smaller coefficients, e.g. "
                          f"[0.6, -0.2, 0.3].", key="dataset.coefficients")
    if length < 2:
        raise ConfigError(f"'dataset.length={length}' must be at least 2 steps.", key="dataset.length")
    rng = np.random.default_rng(seed)
    burn_in = 200  # let the process forget its zero start
    p = len(coefficients)
    a = np.asarray(coefficients[::-1])
    series = np.zeros(length + burn_in + p)
    shocks = noise * rng.standard_normal(len(series))
    for t in range(p, len(series)):
        series[t] = a @ series[t - p:t] + shocks[t]
    return forecasting_dataset(series[-length:, None], target=0, windows=Windows(input_length, horizon, stride, period),
                               val_fraction=val_fraction, test_fraction=test_fraction, standardize=standardize,
                               name="ar", feature_names=["value"])


def _parse_time(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return datetime.fromisoformat(cell).timestamp()


def _time_stamps(table: Table, time: str) -> tuple[np.ndarray, bool]:
    """The time column as numbers (seconds for dates), NaN where missing, and whether it holds dates."""
    stamps = np.empty(len(table.rows))
    dates = False
    for i, cell in enumerate(table.column(time)):
        if cell.lower() in MISSING:
            stamps[i] = math.nan
            continue
        try:
            stamps[i] = _parse_time(cell)
        except (ValueError, OverflowError, OSError):
            raise ConfigError(f"{table.path}, line {table.lines[i]}, column '{time}' (dataset.time={time}): '{cell}' "
                              f"is neither a number nor an ISO date (2024-01-31 or 2024-01-31T12:00).",
                              key="dataset.time") from None
        dates = dates or _as_number(cell) is None
    return stamps, dates


def _duration(step: float, dates: bool) -> str:
    """A time step in words: seconds as days, hours, minutes or seconds for dates; the number otherwise."""
    if not dates:
        return f"{step:g}"
    for unit, seconds in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if abs(step) >= seconds or unit == "second":
            value = step / seconds
            return f"{value:g} {unit}{'' if value == 1 else 's'}"
    return f"{step:g} seconds"


def _check_spacing(table: Table, time: str, stamps: np.ndarray, dates: bool) -> list[str]:
    """Refuse repeated time stamps; a warning when the steps are not evenly spaced (gaps, or missing steps)."""
    cells = table.column(time)
    steps = np.diff(stamps)
    repeated = np.flatnonzero(steps == 0)
    if len(repeated):
        pairs = ", ".join(f"lines {table.lines[i]} and {table.lines[i + 1]} ('{cells[i]}')" for i in repeated[:5])
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise ConfigError(f"{table.path}: the time column '{time}' repeats a time stamp: {pairs}{more}. Each row "
                          f"must be another step of the series: remove or merge the repeated rows.",
                          key="dataset.time")
    if len(steps) < 2:
        return []
    usual = float(np.median(steps))
    odd = np.flatnonzero((steps > 1.5 * usual) | (steps < usual / 1.5))
    if not len(odd):
        return []
    shown = "; ".join(f"{_duration(steps[i], dates)} between line {table.lines[i]} ('{cells[i]}') and line "
                      f"{table.lines[i + 1]} ('{cells[i + 1]}')" for i in odd[:3])
    more = f", and {len(odd) - 3} more" if len(odd) > 3 else ""
    return [f"{table.path}: the time column '{time}' is not evenly spaced: the usual step is "
            f"{_duration(usual, dates)}, but {len(odd)} of {len(steps)} steps differ: {shown}{more}. The model reads "
            f"each window as consecutive, evenly spaced steps; fill in the missing steps if that matters."]


@DATASETS.register("csv_timeseries")
def build_csv_timeseries(  # noqa: PLR0913 - a registered builder: its parameters are the config's keys
    path: str | None = None,
    target: str | None = None,
    features: list[str] | None = None,
    time: str | None = None,
    input_length: int = 24,
    horizon: int = 1,
    stride: int = 1,
    period: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    standardize: bool = True,
    drop_missing: bool = False,
) -> Dataset:
    """The user's CSV: one row per time step (ordered by the `time` column, or as the rows come)."""
    table = read_csv(path, "csv_timeseries", example_target="sales")
    header = table.header
    target = check_column(target, header, "dataset.target", path)
    stamps, dates = None, False
    if time is not None:
        time = check_column(time, header, "dataset.time", path)
        stamps, dates = _time_stamps(table, time)
        order = np.argsort(stamps, kind="stable")  # a missing time stamp sorts last
        table.keep(order)
        stamps = stamps[order]
    if features is None:
        features = [h for h in header if h != time]
    else:
        features = [str(f) for f in features]
        unknown = [f for f in features if f not in header]
        if unknown:
            raise ConfigError(f"'dataset.features' names column(s) {', '.join(unknown)} that {path} does not have; "
                              f"columns: {', '.join(header)}.", key="dataset.features")
        if target not in features:
            features.append(target)  # the forecast series is always an input too (the past of what is predicted)
    values, missing = read_numbers(table, features, "dataset.features", role="value")
    if stamps is not None and np.isnan(stamps).any():
        missing[time] = np.flatnonzero(np.isnan(stamps)).tolist()
    keep = refuse_or_drop_missing(table, missing, drop_missing, inside_only=True)
    values = values[keep]
    big = np.flatnonzero(np.abs(values[:, features.index(target)]) > TARGET_LIMIT)
    if len(big):
        raise ConfigError(f"{path}, {lines_text([table.lines[i] for i in big])}, column '{target}': values beyond "
                          f"±1e15: squared errors of such targets overflow the 32-bit metrics. Rescale the column "
                          f"(e.g. in millions).", key="dataset.target")
    warnings = list(table.warnings)
    if stamps is not None:
        warnings += _check_spacing(table, time, stamps[keep], dates)
    data = forecasting_dataset(values, target=features.index(target),
                               windows=Windows(input_length, horizon, stride, period), val_fraction=val_fraction,
                               test_fraction=test_fraction, standardize=standardize, name=table.file.stem,
                               feature_names=features)
    data.warnings.extend(warnings)
    return data


@DATASETS.register("sunspots")
def build_sunspots(
    input_length: int = 22,
    horizon: int = 1,
    stride: int = 1,
    period: int | None = 11,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    standardize: bool = True,
) -> Dataset:
    """Yearly mean sunspot numbers 1700-2008 (309 years), bundled with statsmodels: the extra [timeseries]."""
    try:
        from statsmodels.datasets import sunspots
    except ImportError:
        raise ConfigError("'dataset=sunspots' reads the series bundled with statsmodels, which is not installed: "
                          "pip install 'dl-run[timeseries]' (or pip install statsmodels).", key="dataset") from None
    values = sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float32)
    return forecasting_dataset(values[:, None], target=0, windows=Windows(input_length, horizon, stride, period),
                               val_fraction=val_fraction, test_fraction=test_fraction, standardize=standardize,
                               name="sunspots", feature_names=["sunspots"])
