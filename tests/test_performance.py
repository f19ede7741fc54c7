"""What the performance work changed that a user could notice: reused datasets, histograms, the benchmark's CLI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlrun.data import reuse
from dlrun.logger import TensorBoardLogger
from dlrun.run.experiment import build_data, seed_everything

REPO = Path(__file__).resolve().parents[1]


def test_the_next_sweep_job_reuses_the_dataset_and_draws_the_same_random_numbers_after_it():
    cache = reuse.DatasetCache()  # as the CLI keeps one for a multirun
    cfg = {"name": "moons", "n_samples": 200}
    seed_everything(3, False)
    first = build_data(cfg, 3, cache=cache)
    after_build = torch.rand(3)
    seed_everything(3, False)
    again = build_data(dict(cfg), 3, cache=cache)
    assert again is first and torch.equal(torch.rand(3), after_build)
    other = build_data(cfg, 4, cache=cache)
    assert other is not first and not torch.equal(other.splits.x_train, first.splits.x_train)


def test_histograms_reach_tensorboard_with_their_counts_and_range(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    values = torch.cat([torch.zeros(30), torch.ones(10)])
    logger.histogram("weights", values, 5)
    logger.histogram("nan", torch.tensor([float("nan"), 1.0]), 5)  # skipped, no crash
    logger.histogram("constant", torch.full((7,), -2.5), 5)  # one value: one bin holds it all
    logger.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    events.Reload()
    assert sorted(events.Tags()["histograms"]) == ["constant", "weights"]
    (h,) = events.Histograms("weights")
    assert h.step == 5 and h.histogram_value.num == 40 and h.histogram_value.sum == 10
    assert (h.histogram_value.min, h.histogram_value.max) == (0.0, 1.0)
    assert h.histogram_value.bucket[0] == 30 and h.histogram_value.bucket[-1] == 10
    (c,) = events.Histograms("constant")
    assert c.histogram_value.min == -2.5 and c.histogram_value.num == 7 and sum(c.histogram_value.bucket) == 7


def test_the_benchmark_explains_itself_and_refuses_an_unknown_group(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    for argv, code in ((["--help"], 0), (["--only", "speed"], 2)):
        monkeypatch.setattr(sys, "argv", ["benchmark.py", *argv])
        with pytest.raises(SystemExit) as exit_:
            benchmark.main()
        assert exit_.value.code == code
    out, err = capsys.readouterr()
    assert "Lightning" in out and "--mnist-root" in out and "unknown group(s) speed" in err


def test_dl_run_help_does_not_import_torch_or_other_heavy_libraries(tmp_path):
    """`dl-run --help` answers in well under a second: torch alone takes over one to import (issue #9)."""
    heavy = ("torch", "tensorboard", "torchvision", "matplotlib", "sklearn")
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: print('imported:', [m for m in {heavy!r} if m in sys.modules], file=sys.stderr))\n"
            "from dlrun.cli import main\n"
            "sys.argv = ['dl-run', '--help']\n"
            "main()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "dl-run" in out.stdout
    assert "imported: []" in out.stderr, out.stderr[-2000:]


def test_a_run_without_images_does_not_import_torchvision(tmp_path):
    """torchvision's import (with the torch._dynamo it pulls in) is ~1 s of start-up only image runs need."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('torchvision imported:', 'torchvision' in sys.modules, file=sys.stderr))\n"
            "from dlrun.cli import main\n"
            "sys.argv = ['dl-run', 'trainer.max_steps=2', 'logger=none', 'trainer.progress=false', 'hydra.run.dir=run']\n"
            "main()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert "torchvision imported: False" in out.stderr, out.stderr[-2000:]
