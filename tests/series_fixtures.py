"""A small time series the tests write themselves, as a user's CSV file."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_series_csv(path: Path, steps: int = 400) -> Path:
    """A CSV with columns a, b and y, one row per time step; y is a noisy wave, a and b follow it."""
    t = np.arange(steps)
    y = np.sin(2 * np.pi * t / 25) + 0.1 * np.random.default_rng(0).standard_normal(steps)
    rows = ["a,b,y"] + [f"{i % 7},{np.cos(2 * np.pi * i / 25):.4f},{v:.4f}" for i, v in zip(t, y)]
    path.write_text("\n".join(rows) + "\n")
    return path
