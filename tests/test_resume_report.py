"""A run killed and resumed reports what the run that never stopped reports: metrics.json is the same but for
the clocks (the initial loss measured at the start, the gradient flow measured over every step, the overrides),
and its last checkpoint holds the same tensors.

Every run is the real `dl-run` script as a subprocess, slowed down and counted by tests/test_resume.py's user
augmentation so that a SIGKILL can be aimed at a random step.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import DL_RUN
from dlrun.engine import checkpoint
from test_resume import ARGS, EPOCHS, STEPS_PER_EPOCH, Segment, scalars, write_slow_augmentation

# Gradient flow measured every other step: the median ratio and its warning cover the whole run.
REPORT_ARGS = (*ARGS, "logger.gradients_every_n_steps=2")
CHECKPOINT_EVERY = int(next(a.split("=")[1] for a in ARGS if a.startswith("trainer.checkpoint_every_n_steps=")))
CLOCKS = ("wall_seconds", "train_seconds")  # the only keys of metrics.json a resume may change


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The user's slow augmentation, and the run that was never interrupted (in baseline/)."""
    root = write_slow_augmentation(tmp_path_factory.mktemp("resume-report"))
    done = subprocess.run([DL_RUN, *REPORT_ARGS, "hydra.run.dir=baseline"], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def without_clocks(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in CLOCKS}


def assert_same_tensors(ours: Any, theirs: Any, where: str) -> None:
    """Every tensor torch.equal (same dtype, shape and bits), every other value ==, through dicts and lists."""
    if isinstance(ours, torch.Tensor):
        assert isinstance(theirs, torch.Tensor) and ours.dtype == theirs.dtype and torch.equal(ours, theirs), where
    elif isinstance(ours, dict):
        assert isinstance(theirs, dict) and ours.keys() == theirs.keys(), where
        for key in ours:
            assert_same_tensors(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(ours, (list, tuple)):
        assert isinstance(theirs, (list, tuple)) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same_tensors(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"


# Five kills take seven dl-run processes (about a minute on an idle 2-core machine, several on a busy one): that
# variant is kept out of the default suite, which kills twice.
@pytest.mark.parametrize("kills", [2, pytest.param(5, marks=pytest.mark.slow)])
def test_sigkills_and_resumes_report_what_the_uninterrupted_run_reports(workdir, kills):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    run_dir, baseline = workdir / f"killed-{kills}", workdir / "baseline"
    # After the first checkpoint, and far enough from the end that each kill lands before the run ends.
    targets = sorted(rng.sample(range(CHECKPOINT_EVERY + 1, EPOCHS * STEPS_PER_EPOCH - 8), kills))
    args = [*REPORT_ARGS, f"hydra.run.dir={run_dir}"]
    resumed_at = []
    for target in targets:
        segment = Segment(workdir, args)
        resumed_at.append(segment.start_step())
        segment.wait_for_step(target)
        time.sleep(rng.uniform(0, 0.03))  # anywhere inside the step: forward, backward, gradient flow, checkpoint
        assert segment.stop(signal.SIGKILL) == -signal.SIGKILL, f"seed {seed}, kill at step {target}"
        args = ["--config-dir", "conf", f"resume={run_dir}"]  # the folder that names the user's code, trusted again
    final = Segment(workdir, args)
    assert final.proc.wait(timeout=120) == 0, final.output()
    assert len(resumed_at) == kills and all(step > 0 for step in resumed_at[1:]), f"seed {seed}: {resumed_at}"

    metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, baseline))
    # What is measured before the first step, and over every logged step, is there to compare.
    assert expected["initial_loss"]["value"] is not None and expected["gradient_flow"]["first_over_last_median"]
    assert without_clocks(metrics) == without_clocks(expected), (
        f"seed {seed}, targets {targets}: " + ", ".join(
            f"{k}: {metrics.get(k)!r} != {expected.get(k)!r}" for k in sorted(set(metrics) | set(expected))
            if k not in CLOCKS and metrics.get(k) != expected.get(k)))

    ours, theirs = (checkpoint.load(d / "checkpoints" / "last.pt") for d in (run_dir, baseline))
    for key in ("model", "optimizer"):
        assert_same_tensors(ours[key], theirs[key], key)
    # TensorBoard: each gradient-flow and loss step once, as the run that never stopped logged it.
    for tag in ("gradient_norm/first_over_last", "train/loss_step", "val/loss"):
        assert scalars(run_dir, tag) == scalars(baseline, tag), tag
