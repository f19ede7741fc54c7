"""A run directory: the one object that knows its layout and the one place that writes a run's files.

    <run dir>/
      .hydra/config.yaml, overrides.yaml   the composed config and the command's overrides (Hydra writes them
                                           for a new run; record_config for a resumed one)
      checkpoints/last.pt, best.pt         written atomically; previous.pt is the last.pt before the newest
      tb/                                  TensorBoard events (dlrun.logger)
      metrics.json                         what the training measured (modes write their own files beside it)
      curves.png, grad_cam.png, ...        figures
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlrun.engine import checkpoint
from dlrun.errors import ConfigError


class RunDirectory:
    """One run's folder: where each of its files is, and how each is written."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.checkpoint_dir = self.path / "checkpoints"
        self.hydra_dir = self.path / ".hydra"
        self.metrics_path = self.path / "metrics.json"

    def __str__(self) -> str:
        return str(self.path)

    # ---- checkpoints ----------------------------------------------------------------------------------------------

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / checkpoint.LAST

    def has_checkpoint(self) -> bool:
        """Whether there is a last.pt or previous.pt to resume from."""
        return checkpoint.exists(self.checkpoint_dir)

    def best_checkpoint(self) -> Path:
        """The checkpoint a trained run is scored and used with: best.pt, else last.pt, else previous.pt."""
        path = checkpoint.best_in(self.checkpoint_dir)
        if path is not None:
            return path
        raise ConfigError(f"No checkpoint in {self.checkpoint_dir}: expected {checkpoint.BEST} or "
                          f"{checkpoint.LAST}. Give a run directory that dl-run printed at the end of a run.",
                          key="resume")

    def load_best(self) -> tuple[dict[str, Any], Path]:
        """The best checkpoint's content and its path."""
        path = self.best_checkpoint()
        return checkpoint.load(path), path

    def load_latest(self) -> tuple[dict[str, Any], Path, list[str]]:
        """The newest loadable checkpoint (last.pt, else previous.pt), with what was wrong with the others."""
        return checkpoint.load_latest(self.checkpoint_dir)

    def save_checkpoints(self, last: dict[str, Any], best: dict[str, Any] | None) -> None:
        """best.pt (when given), then last.pt (the one before it kept as previous.pt); a state that is both is
        serialised once and written twice."""
        data = checkpoint.serialize(last, self.last_checkpoint) if best is last else last
        if best is not None:
            checkpoint.save(self.checkpoint_dir / checkpoint.BEST, data if best is last else best)
        checkpoint.save(self.last_checkpoint, data, keep_previous=True)

    def set_aside_last(self) -> None:
        """Move an unreadable last.pt out of the way (kept as last.pt.corrupt), so it is never rotated in."""
        if self.last_checkpoint.exists():
            checkpoint.set_aside(self.last_checkpoint)

    def remove_temporary(self) -> list[Path]:
        """Delete half-written checkpoints a killed run left behind; return what was removed."""
        return checkpoint.remove_temporary(self.checkpoint_dir)

    # ---- results and configs --------------------------------------------------------------------------------------

    def write_json(self, name: str, content: dict[str, Any]) -> Path:
        """A JSON file of results in the run directory (metrics.json, eval_<dataset>.json, failed.json)."""
        path = self.path / name
        path.write_text(json.dumps(content, indent=2))
        return path

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        return self.write_json(self.metrics_path.name, metrics)

    def file(self, name: str) -> Path:
        """Where a file of the run (a figure, an export) goes."""
        return self.path / name

    def record_config(self, cfg_node: DictConfig, overrides: list[str]) -> None:
        """Write .hydra/config.yaml and overrides.yaml, as Hydra writes them for a new run (for a resumed run, or a
        run dl-run makes itself: a transfer backbone's pretraining)."""
        self.hydra_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg_node, self.hydra_dir / "config.yaml")
        (self.hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))

    def remove_unfinished(self) -> None:
        """After bad input, leave no run directory that looks like a run: remove one holding only Hydra's files."""
        if not self.path.is_dir():
            return
        leftovers = [p for p in self.path.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
        if not leftovers:
            shutil.rmtree(self.path, ignore_errors=True)
