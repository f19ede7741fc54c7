"""Outliers put in the training targets on purpose, so that a loss's robustness shows on clean data (course 2 §4.1).

`dataset.outliers=0.1` shifts a seeded tenth of the training split's regression targets up by `dataset.outlier_scale`
standard deviations of the training target; validation and test stay clean, so their error says how far the outliers
pulled the fit. Corrupted data is never used without a word: the run prints it and keeps it in metrics.json.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from dlrun.data.base import Dataset, Splits
from dlrun.errors import ConfigError

# Its own stream of the run's seed: the rows picked do not depend on (nor change) any other draw from the seed.
_STREAM = 23


def check_outliers(fraction: object, scale: object) -> None:
    """Refuse a fraction outside [0, 1] or a scale that is not a positive number."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"'dataset.outliers={fraction}' must be a fraction of the training targets from 0 to 1, "
                          f"e.g. dataset.outliers=0.1 corrupts a tenth of them (0, the default, none).",
                          key="dataset.outliers")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ConfigError(f"'dataset.outlier_scale={scale}' must be a positive number: how many standard deviations "
                          f"of the training target an outlier is shifted by, e.g. 10.", key="dataset.outlier_scale")


def add_outliers(data: Dataset, fraction: float, scale: float, seed: int) -> Dataset:
    """The dataset with `fraction` of its training targets shifted up by `scale` of their standard deviation.

    One-sided, like a faulty sensor that reads high: a squared loss follows the shift, an absolute one barely
    (course 2 §4.1); and targets stay non-negative where they were, so loss=msle still applies. A new Dataset: the
    one given (a sweep's cached copy) is left as it was.
    """
    check_outliers(fraction, scale)
    if fraction == 0:
        return data
    info = data.info
    if info.task != "regression":
        raise ConfigError(f"'dataset.outliers={fraction}' shifts regression targets, but dataset '{info.name}' is "
                          f"{info.task}: use a regression dataset (dataset=diabetes, linear, polynomial, ...) or "
                          f"leave dataset.outliers=0.", key="dataset.outliers")
    y = data.splits.y_train
    rows = max(1, round(fraction * len(y)))
    picked = np.sort(np.random.default_rng([seed, _STREAM]).permutation(len(y))[:rows])
    std = y.float().std(dim=0, unbiased=False) if len(y) > 1 else torch.ones(y.shape[1:])
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant target: shifted by `scale` units
    corrupted = y.clone()
    index = torch.from_numpy(picked).to(y.device)
    corrupted[index] = corrupted[index] + (scale * std).to(y.dtype).to(y.device)
    s = data.splits
    splits = Splits(s.x_train, corrupted, s.x_val, s.y_val, s.x_test, s.y_test)
    record = {"rows": rows, "of": len(y), "fraction": fraction, "scale": scale}
    warning = (f"dataset.outliers={fraction}: {rows} of {len(y)} training targets shifted up by {scale:g} standard "
               f"deviations on purpose (validation and test are clean).")
    return replace(data, splits=splits, warnings=[*data.warnings, warning], outliers=record)
