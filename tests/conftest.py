"""Shared fixtures: compose the real configs (shrunk for speed) and run the real `dl-run` script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

DL_RUN = str(Path(sys.executable).with_name("dl-run"))


def compose_config(*overrides: str) -> dict:
    """The config exactly as `dl-run <overrides>` would compose it, as plain data."""
    with initialize_config_module(config_module="dlrun.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


class Result:
    def __init__(self, proc: subprocess.CompletedProcess, cwd: Path) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.output = proc.stdout + proc.stderr
        self.cwd = cwd

    def run_dirs(self) -> list[Path]:
        """Every run directory under outputs/ that holds a metrics.json."""
        return sorted(p.parent for p in (self.cwd / "outputs").rglob("metrics.json"))

    def metrics(self) -> dict:
        (run_dir,) = self.run_dirs()
        return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture
def dl_run(tmp_path: Path):
    """Run `dl-run ARGS` as a subprocess in a fresh directory, as a user would."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 300) -> Result:
        cwd = cwd or tmp_path
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        proc = subprocess.run([DL_RUN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
        return Result(proc, cwd)

    return run


# Settings that keep an end-to-end run to a second or two.
TINY = ("trainer.epochs=3", "model.hidden=[32]", "trainer.progress=false")
