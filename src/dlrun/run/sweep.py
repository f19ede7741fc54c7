"""A sweep's bookkeeping, and after it one row per job, sorted by the monitored metric, as CSV, Markdown and a
figure."""

from __future__ import annotations

import csv
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from dlrun.views import console

if TYPE_CHECKING:  # kept light: the CLI makes a SweepJobs before it knows whether anything trains
    from dlrun.data.reuse import DatasetCache

# Overrides that change how a run looks, not what it computes: left out of the names of sweep rows.
QUIET_KEYS = {"trainer.progress", "trainer.device", "resume", "sweep.resume", "sweep.retry_failed"}


@dataclass
class JobResult:
    """What one job of a sweep ended with."""

    name: str  # its overrides
    run_dir: str
    metrics: dict | None = None  # metrics.json of a completed job
    error: str | None = None  # why a failed job failed

    @property
    def status(self) -> str:
        if self.metrics is None:
            return "failed"
        return "pruned" if self.metrics.get("pruned_at_epoch") else "completed"  # a search's pruner stopped it


def _sort_key(job: JobResult) -> tuple:
    from dlrun.tasks import monitor_mode

    if job.metrics is None:
        return (1, 0.0)
    best = job.metrics["best"]
    value = best["value"] if best["value"] is not None and math.isfinite(best["value"]) else math.inf
    return (0, value if monitor_mode(best["monitor"]) == "min" else -value)


def rows(jobs: list[JobResult]) -> list[dict[str, object]]:
    """One flat row per job, best first; failed jobs last, with their error."""
    out = []
    for job in sorted(jobs, key=_sort_key):
        row: dict[str, object] = {"job": job.name, "status": job.status}
        if job.metrics is not None:
            m = job.metrics
            row.update({"epochs": m["epochs_run"], "best_epoch": m["best"]["epoch"],
                        m["best"]["monitor"]: m["best"]["value"],
                        "train/loss": m["evaluation"]["train"]["loss"],
                        **{f"test/{k}": v for k, v in m["test"].items()},
                        "verdict": m.get("verdict", {}).get("case", "")})
        else:
            row["error"] = job.error
        row["run_dir"] = job.run_dir
        out.append(row)
    return out


def read_jobs(sweep_dir: Path, quiet_keys: set[str]) -> tuple[list[JobResult], list[str]]:
    """The jobs of a sweep that ran in other processes (joblib, submitit), from their directories; and the
    names of those that crashed (rather than failed on their input or a NaN loss)."""
    import yaml

    jobs, crashed = [], []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        run_dir = overrides_file.parent.parent
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        name = " ".join(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in quiet_keys) or "(defaults)"
        metrics, failed = run_dir / "metrics.json", run_dir / "failed.json"
        record = json.loads(metrics.read_text()) if metrics.is_file() else None
        if record is not None and record.get("status") == "completed":
            jobs.append(JobResult(name, str(run_dir), metrics=record))
        elif failed.is_file():  # bad input or a NaN loss (cli.py)
            jobs.append(JobResult(name, str(run_dir), error=json.loads(failed.read_text())["error"]))
        else:  # a crash (metrics.json with its traceback), or a job killed before it could say
            crashed.append(name)
            jobs.append(JobResult(name, str(run_dir), error=(record or {}).get("error")
                                  or f"no result: see {run_dir / 'dl-run.log'} and the job's output"))
    return jobs, crashed


def best_command(jobs: list[JobResult], quiet_keys: set[str]) -> str | None:
    """The best completed job as a line to print: its monitored value, and the `dl-run` command that repeats it."""
    done = [job for job in jobs if job.metrics is not None]
    if not done:
        return None
    job = min(done, key=_sort_key)
    best = job.metrics["best"]
    # Without the search itself (hparams_search=...): the command trains that one trial again.
    overrides = [o for o in job.metrics.get("overrides", job.name.split())
                 if o.split("=", 1)[0].lstrip("+~") not in quiet_keys | {"hparams_search"}]
    value = f"{best['value']:.4g}" if isinstance(best["value"], float) else best["value"]
    return (f"Best: {best['monitor']} {value} at epoch {best['epoch']} ({job.run_dir}). Train it again:\n"
            f"  dl-run {' '.join(shlex.quote(o) for o in overrides)}")


def _write_csv(path: Path, table: list[dict[str, object]]) -> Path:
    columns = list(dict.fromkeys(key for row in table for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
    return path


def _markdown(table: list[dict[str, object]], leave_out: tuple[str, ...] = ("run_dir",)) -> list[str]:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    columns = [c for c in dict.fromkeys(key for row in table for key in row) if c not in leave_out]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in table]


def by_setting(jobs: list[JobResult]) -> list[dict[str, object]]:
    """The jobs that differ only in their seed, one row each: mean, `<metric> std` and n, best mean first."""
    from dlrun.run import seeds
    from dlrun.tasks import monitor_mode

    done = [job for job in jobs if job.metrics is not None]
    monitor = done[0].metrics["best"]["monitor"] if done else "val/loss"
    return seeds.setting_rows(rows(jobs), monitor, monitor_mode(monitor) == "min")


def write(sweep_dir: Path, jobs: list[JobResult]) -> list[Path]:
    """summary.csv (a row per job), summary.md and val_curves.png in the sweep directory; when the jobs differ in
    their seed, summary_by_setting.csv too, and the figure draws each setting's mean with a ±1 std band."""
    from dlrun.run import seeds
    from dlrun.views import figures

    table = rows(jobs)
    paths = [_write_csv(sweep_dir / "summary.csv", table)]
    text = f"# Sweep {sweep_dir.name}\n\n"
    grouped = seeds.varies_in_seed(jobs)
    if grouped:
        settings = by_setting(jobs)
        paths.append(_write_csv(sweep_dir / "summary_by_setting.csv", settings))
        text += ("One row per setting: the mean, sample standard deviation (std) and number (n) of its seeds, best "
                 "mean first.\n\n" + "\n".join(_markdown(settings)) + "\n\nEvery job:\n\n")
    text += "Sorted by the monitored metric, best first.\n\n" + "\n".join(_markdown(table)) + "\n"
    paths.insert(1, sweep_dir / "summary.md")
    paths[1].write_text(text)

    curves = {job.name: [(h["epoch"], h["val/loss"]) for h in job.metrics["history"]]
              for job in jobs if job.metrics is not None}
    if curves:
        # Lines named by what differs between the jobs: what they share (experiment=...) is in the table's title.
        common = set.intersection(*(set(name.split()) for name in curves))
        if grouped:
            drawn = {_label(name, common): points for name, points in seeds.mean_curves(curves).items()}
            title = "validation loss per epoch: mean ± 1 std over seeds"
        else:
            drawn = {_label(name, common): [(x, y, 0.0) for x, y in points] for name, points in curves.items()}
            title = "validation loss per epoch"
        title += f"\n(all with {' '.join(sorted(common))})" if common and len(curves) > 1 else ""
        paths.append(figures.save(figures.sweep_curves_figure(drawn, "validation loss", title),
                                  sweep_dir / "val_curves.png"))
    return paths


def _label(name: str, common: set[str]) -> str:
    return " ".join(_short(o) for o in name.split() if o not in common) or name


class SweepJobs:
    """What each job of one `dl-run -m` ended with, and the dataset its jobs share; a multirun keeps going past a
    bad job and reports every job at the end. One per invocation of dl-run: the CLI makes it and hands it on."""

    def __init__(self) -> None:
        self.jobs: list[JobResult] = []
        self.crashed: list[str] = []  # jobs that failed on something other than the user's input
        self.sweep_dir: Path | None = None
        self.search = False  # a search (Optuna) rather than a grid: failed trials are part of it
        self._datasets: DatasetCache | None = None

    @property
    def datasets(self) -> DatasetCache:
        """The dataset cache of this sweep's jobs: the next job with the same dataset settings takes this one's."""
        if self._datasets is None:
            from dlrun.data.reuse import DatasetCache

            self._datasets = DatasetCache()
        return self._datasets

    def record(self, job: JobResult, crashed: bool = False) -> None:
        self.jobs.append(job)
        if crashed:
            self.crashed.append(job.name)

    def read_back(self, sweep_dir: Path) -> None:
        """The jobs ran in other processes (joblib, submitit): their results, from the sweep directory."""
        jobs, crashed = read_jobs(sweep_dir, QUIET_KEYS)
        self.jobs.extend(jobs)
        self.crashed.extend(crashed)
        self.sweep_dir = sweep_dir

    def _add_earlier_trials(self) -> None:
        """A resumed search launches only the trials it has not finished: the others are read from their folders."""
        ran = {Path(job.run_dir).resolve() for job in self.jobs}
        earlier, _ = read_jobs(self.sweep_dir, QUIET_KEYS)
        self.jobs += [job for job in earlier if Path(job.run_dir).resolve() not in ran]

    def exit_code(self) -> int:
        """0, or 1 if a job crashed, else 2 if one failed on its input; a search that found a best trial is 0."""
        if self.search and any(job.status == "completed" for job in self.jobs):
            return 0  # its failed trials are in the table
        if self.crashed:
            return 1
        return 2 if any(job.status == "failed" for job in self.jobs) else 0

    def report(self) -> None:
        """The sweep table in the terminal, and summary.csv, summary.md and val_curves.png beside the jobs."""
        from dlrun.run import seeds

        if self.search and self.sweep_dir is not None and self.sweep_dir.is_dir():
            self._add_earlier_trials()
        jobs, sweep_dir = self.jobs, self.sweep_dir
        failed = sum(job.status == "failed" for job in jobs)
        # Name each row by what differs between the jobs; what they share goes in the title.
        common = set.intersection(*(set(job.name.split()) for job in jobs)) if jobs else set()
        shared = f" (all with {' '.join(sorted(common))})" if common and len(jobs) > 1 else ""
        if seeds.varies_in_seed(jobs):
            shown = _setting_rows(by_setting(jobs), common)
            console.results_table(shown, title=f"sweep: {len(shown)} setting(s), mean ± std over n seeds, best mean "
                                  f"first{shared}; every job in summary.csv")
        else:
            console.results_table(_shown_rows(jobs, common), title=f"sweep: {len(jobs) - failed} finished job(s)"
                                  + (f", {failed} failed" if failed else "") + ", best first" + shared)
        for job in jobs:
            if job.status == "failed":
                console.console.print(f"failed: {job.name}: {job.error}", soft_wrap=True)
        best = best_command(jobs, QUIET_KEYS)
        if best is not None:
            console.console.print(best, soft_wrap=True)
        if sweep_dir.is_dir():
            paths = write(sweep_dir, jobs)
            console.console.print("Summary: " + ", ".join(str(p) for p in paths), soft_wrap=True)
            if (sweep_dir / "mlflow_sweep.json").is_file():  # its jobs logged to MLflow: the parent run ends
                from dlrun.loggers.mlflow import finish_sweep

                finish_sweep(sweep_dir, paths, failed=bool(self.crashed))
        console.console.print(f"Compare the runs:  tensorboard --logdir {sweep_dir.resolve()}", soft_wrap=True)


def _shown_rows(jobs: list[JobResult], common: set[str]) -> dict[str, dict]:
    """The terminal's rows: the essentials (summary.csv has every column), named by what differs."""
    shown: dict[str, dict] = {}
    for row in rows(jobs):
        label = " ".join(_short(o) for o in str(row["job"]).split() if o not in common) or str(row["job"])
        if label in shown:  # a search may try the same values twice: each trial keeps its row
            label = f"{label} ({Path(str(row['run_dir'])).name})"
        shown[label] = {k: v for k, v in row.items()
                        if k not in ("job", "run_dir", "error", "epochs", "best_epoch", "train/loss")}
    return shown


def _setting_rows(settings: list[dict[str, object]], common: set[str]) -> dict[str, dict]:
    """The terminal's rows of a sweep over seeds: each metric as mean ± std, and n."""
    shown: dict[str, dict] = {}
    for row in settings:
        label = _label(str(row["setting"]), common)
        cells: dict[str, object] = {"n": row["n"]}
        if row["failed"]:
            cells["failed"] = row["failed"]
        for column, value in row.items():
            if column in ("setting", "n", "failed", "epochs", "best_epoch", "train/loss") or column.endswith(" std"):
                continue
            std = row.get(f"{column} std")
            cells[column] = f"{value:.4g} ± {std:.2g}" if isinstance(std, float) else f"{value:.4g}"
        shown[label] = cells
    return shown


def _short(override: str) -> str:
    """`optimizer.lr=0.004500455147931924` as `optimizer.lr=0.0045`, for the table (the command keeps every digit)."""
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}={number:.4g}" if len(value) > 8 and "." in value else override
