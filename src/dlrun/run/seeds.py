"""A sweep whose jobs differ in `seed` (dl-run -m init=zeros,he_normal seed=0,1,2): the jobs that differ only in
their seed are one setting, reported as the mean, the sample standard deviation and the number of its seeds."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dlrun.run.sweep import JobResult


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def setting(name: str) -> str:
    """A job's name (its overrides) without its seed: the setting it is one seed of."""
    return " ".join(o for o in name.split() if _key(o) != "seed") or "(defaults)"


def varies_in_seed(jobs: list[JobResult]) -> bool:
    """Whether the jobs ran with more than one seed (then the sweep is reported per setting)."""
    seeds = {o for job in jobs for o in job.name.split() if _key(o) == "seed"}
    return len(seeds) > 1


def spread(values: list[float]) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation (n - 1 in the denominator; None for one value) and n of finite values."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return math.nan, None, 0
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else None, len(finite)


def setting_rows(job_rows: list[dict[str, object]], monitor: str, lower_is_better: bool) -> list[dict[str, object]]:
    """One row per setting (from the per-job rows of sweep.rows): n, failed, and for every numeric column its mean and
    `<column> std`, sorted by the mean of the monitored metric, best first."""
    groups: dict[str, list[dict[str, object]]] = {}
    for row in job_rows:
        groups.setdefault(setting(str(row["job"])), []).append(row)
    out = []
    for name, members in groups.items():
        done = [r for r in members if r["status"] == "completed"]
        row: dict[str, object] = {"setting": name, "n": len(done), "failed": len(members) - len(done)}
        columns = dict.fromkeys(k for r in done for k, v in r.items() if isinstance(v, (int, float))
                                and not isinstance(v, bool))
        for column in columns:
            mean, std, _ = spread([r.get(column) for r in done])
            row[column], row[f"{column} std"] = mean, std
        out.append(row)

    def rank(row: dict[str, object]) -> tuple[int, float]:
        value = row.get(monitor)
        if not isinstance(value, float) or not math.isfinite(value):
            return (1, 0.0)
        return (0, value if lower_is_better else -value)

    return sorted(out, key=rank)


def mean_curves(curves: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float, float]]]:
    """Per setting, each epoch's mean value over its seeds and their standard deviation (0 for one seed):
    `curves` maps job names to (epoch, value) points."""
    by_setting: dict[str, dict[int, list[float]]] = {}
    for name, points in curves.items():
        epochs = by_setting.setdefault(setting(name), {})
        for epoch, value in points:
            epochs.setdefault(epoch, []).append(value)
    out = {}
    for name, epochs in by_setting.items():
        points = []
        for epoch in sorted(epochs):
            mean, std, n = spread(epochs[epoch])
            if n:
                points.append((epoch, mean, std or 0.0))
        out[name] = points
    return out
