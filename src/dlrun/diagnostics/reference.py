"""Closed-form least squares (course 1 §5.1): the exact answer gradient descent should approach."""

from __future__ import annotations

import torch

from dlrun.data.base import DataInfo, Splits
from dlrun.tasks.regression import regression_metrics
from dlrun.models.linear import PolynomialFeatures


def least_squares(data: Splits, info: DataInfo, degree: int = 1,
                  basis: str = "monomial") -> dict[str, dict[str, float]]:
    """Fit [features, 1]·θ = y exactly on the training split; metrics on every split."""
    features = PolynomialFeatures(degree, basis)

    def design(x: torch.Tensor) -> torch.Tensor:
        f = features(x.double().cpu())
        return torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], dim=1)

    theta = torch.linalg.lstsq(design(data.x_train), data.y_train.double().cpu(), driver="gelsd").solution
    results = {}
    for split in ("train", "val", "test"):
        x, y = data.split(split)
        results[split] = regression_metrics((design(x) @ theta).float(), y.cpu(), info.target_mean, info.target_std)
    results["weights"] = {"W": theta[:-1].T.tolist(), "b": theta[-1].tolist()}
    return results
