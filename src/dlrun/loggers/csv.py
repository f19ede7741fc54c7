"""logger=csv: the run's scalars as plain CSV files in its run directory, for pandas or a spreadsheet.

metrics.csv holds one row per epoch (the values the loop logs at each epoch's end), one column per scalar;
metrics_steps.csv the values logged every few steps (training loss, gradient diagnostics), one row per step.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from dlrun.errors import ConfigError
from dlrun.logger import LOGGERS


class CsvTable:
    """Rows keyed by step, written whole (a new column can appear at any row) and atomically at each flush."""

    def __init__(self, path: Path, first_columns: tuple[str, ...], purge_step: int | None) -> None:
        self.path = path
        self.columns: list[str] = list(first_columns)
        self.rows: list[dict[str, Any]] = []
        self.changed = False
        if purge_step is not None and path.is_file():  # a resumed run: the rows before its first new step stay
            with open(path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                self.columns = list(dict.fromkeys([*self.columns, *(reader.fieldnames or [])]))
                self.rows = [row for row in reader if int(float(row["step"])) < purge_step]
            self.changed = True

    def add(self, values: dict[str, float], step: int) -> None:
        """Values logged at one step join that step's row (several calls can log at the same step)."""
        if not self.rows or int(float(self.rows[-1]["step"])) != step:
            self.rows.append({"step": step})
        self.rows[-1].update(values)
        self.columns.extend(k for k in values if k not in self.columns)
        self.changed = True

    def write(self) -> None:
        if not self.changed or not self.rows:
            return
        partial = self.path.with_name(self.path.name + ".partial")
        with open(partial, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, self.columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(partial, self.path)  # a reader (or a kill) never sees half a file
        self.changed = False


class CsvLogger:
    """Scalars only: epoch values to one CSV, step values to another; figures, text and histograms are skipped."""

    histograms = False
    figures = False  # nothing to draw for: views skip their figures when CSV is the only backend

    def __init__(self, run_dir: Path, file: str, steps_file: str, purge_step: int | None = None,
                 log_every_n_steps: int = 10, gradients_every_n_steps: int = 100,
                 gradcam_every_n_epochs: int = 0) -> None:
        self.log_dir = Path(run_dir)
        self.log_every_n_steps = log_every_n_steps
        self.gradients_every_n_steps = gradients_every_n_steps
        self.gradcam_every_n_epochs = gradcam_every_n_epochs
        self.epochs = CsvTable(self.log_dir / file, ("epoch", "step"), purge_step)
        self.steps = CsvTable(self.log_dir / steps_file, ("step",), purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        # The loop's end-of-epoch values carry "epoch"; everything else was logged between epochs.
        (self.epochs if "epoch" in values else self.steps).add(values, step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        pass

    def histogram(self, tag: str, values: Any, step: int) -> None:
        pass

    def figure(self, tag: str, figure: Any, step: int, close: bool = True) -> None:
        if close:
            import matplotlib.pyplot as plt

            plt.close(figure)

    def images(self, tag: str, images: Any, step: int) -> None:
        pass

    def hparams(self, params: dict[str, object], metrics: dict[str, float], step: int) -> None:
        pass  # the final scores are in metrics.json; the settings in .hydra/config.yaml

    def flush(self) -> None:
        """Both files brought up to date (called before each checkpoint, so a resume finds them matching it)."""
        self.epochs.write()
        self.steps.write()

    def close(self) -> None:
        self.flush()


def check_csv(run_dir: Path | None = None, file: str = "metrics.csv", steps_file: str = "metrics_steps.csv") -> None:
    """The two file names: plain .csv names in the run directory, not the same one (a ConfigError if not)."""
    for key, name in (("file", file), ("steps_file", steps_file)):
        if not name.endswith(".csv") or Path(name).name != name or name.startswith("."):
            raise ConfigError(f"'logger.csv.{key}={name}' must be a file name ending in .csv, written in the run "
                              f"directory (no folder), e.g. metrics.csv.", key=f"logger.csv.{key}")
    if file == steps_file:
        raise ConfigError(f"'logger.csv.file' and 'logger.csv.steps_file' are both {file}: give them different "
                          f"names.", key="logger.csv.steps_file")


@LOGGERS.register("csv")
def build_csv(run_dir: Path, purge_step: int | None = None, file: str = "metrics.csv",
              steps_file: str = "metrics_steps.csv", log_every_n_steps: int = 10, gradients_every_n_steps: int = 100,
              gradcam_every_n_epochs: int = 0) -> CsvLogger:
    """metrics.csv (one row per epoch) and metrics_steps.csv (one row per logged step) in the run directory."""
    check_csv(run_dir, file, steps_file)
    return CsvLogger(run_dir, file, steps_file, purge_step, log_every_n_steps, gradients_every_n_steps,
                     gradcam_every_n_epochs)


build_csv.check = check_csv  # called by dlrun.loggers.check_logger before training
