"""Nothing lost: a run killed, terminated or interrupted at random moments and resumed ends bitwise identical
to one that never stopped, with TensorBoard curves that have no duplicated and no missing steps.

Every run here is the real `dl-run` script as a subprocess. The user's own augmentation (a `_target_` in
a --config-dir, as a user would write one) sleeps a little per step and counts the steps it saw, so a
signal can be aimed at a random step and the run lasts long enough to be hit there.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import DL_RUN
from dlrun.engine import checkpoint

STEPS_PER_EPOCH, EPOCHS, LOG_EVERY = 13, 5, 3  # digits: 1,168 training images in batches of 96
# Dropout draws from torch's RNG every step and the scheduler changes the rate every step: a resume that
# missed either state would not end bitwise identical.
ARGS = ("--config-dir", "conf", "augmentation=slow", "dataset=digits", "model.hidden=[8]", "model.dropout=0.2",
        "scheduler=warmup_cosine", "trainer.early_stopping_patience=3", f"trainer.epochs={EPOCHS}",
        "trainer.batch_size=96", "trainer.deterministic=true", "trainer.device=cpu",
        "trainer.checkpoint_every_n_steps=4", f"logger.log_every_n_steps={LOG_EVERY}")

SLOW_STEPS = '''import os, time


def build(seconds: float = 0.02):
    """Train on the data as it is, slowly, writing how many batches it has seen."""
    seen = [0]

    def slow(x):
        seen[0] += 1
        with open(os.environ.get("STEP_LOG", os.devnull), "w") as handle:
            handle.write(f"{seen[0]} {os.getpid()}")
        time.sleep(seconds)
        return x
    return slow
'''


def write_slow_augmentation(root: Path) -> Path:
    """The user's slow augmentation in `root` (conf/ for --config-dir, slow_steps.py beside it); `root`."""
    (root / "slow_steps.py").write_text(SLOW_STEPS)
    (root / "conf" / "augmentation").mkdir(parents=True)
    (root / "conf" / "augmentation" / "slow.yaml").write_text(
        "# dl-run --config-dir conf augmentation=slow\n_target_: slow_steps.build\nseconds: 0.02\n")
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory holding the user's slow augmentation, and the run that was never interrupted."""
    root = write_slow_augmentation(tmp_path_factory.mktemp("resume"))
    done = subprocess.run([DL_RUN, *ARGS, "hydra.run.dir=baseline", "trainer.progress=false"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


class Segment:
    """One `dl-run` process of a run that will be stopped and resumed."""

    def __init__(self, workdir: Path, args: list[str], pause_writes: bool = False) -> None:
        self.log = workdir / f"segment-{time.monotonic_ns()}.txt"
        self.steps = workdir / "steps.txt"
        self.steps.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        env["STEP_LOG"] = str(self.steps)
        self.pauses = pause_writes
        if pause_writes:
            env[checkpoint.PAUSE_ENV] = "3"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([DL_RUN, *args], cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                         env=env)

    def output(self) -> str:
        # Read while dl-run writes: the last character may be cut half-way (the rich table's box lines are UTF-8).
        return self.log.read_bytes().decode("utf-8", errors="replace")

    def wait_until(self, condition, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"dl-run ended before {what}:\n{self.output()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.output()}"
            time.sleep(0.005)

    def start_step(self) -> int:
        """The step this process resumed from (0 for a fresh run), once it has started training."""
        self.wait_until(lambda: self.steps.exists(), "the first training step")
        resumed = re.search(r"Resuming from epoch \d+, step (\d+)", self.output())
        return int(resumed.group(1)) if resumed else 0

    def steps_seen(self) -> tuple[int, int]:
        """Steps this process has taken, and the pid of the process that trains."""
        seen = self.steps.read_text().split()  # may be caught half-written: then nothing yet
        return (int(seen[0]), int(seen[1])) if len(seen) == 2 else (0, 0)

    def wait_for_step(self, step: int) -> None:
        first = self.start_step()
        self.wait_until(lambda: first + self.steps_seen()[0] >= step, f"step {step}")

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=60)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def scalars(run_dir: Path, tag: str, folder: str = "tb") -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / folder), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def assert_same_as_uninterrupted(workdir: Path, run_dir: Path) -> None:
    baseline = workdir / "baseline"
    ours, theirs = final_weights(run_dir), final_weights(baseline)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "final weights differ from the uninterrupted run"
    metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, baseline))
    for key in ("history", "evaluation", "best", "steps", "epochs_run"):
        assert metrics[key] == expected[key], key
    # TensorBoard: every step once, none missing, the same values as the run that never stopped.
    for tag in ("train/loss_step", "val/loss", "lr"):
        assert scalars(run_dir, tag) == scalars(baseline, tag), tag
    assert [s for s, _ in scalars(run_dir, "train/loss_step")] == list(range(LOG_EVERY, EPOCHS * STEPS_PER_EPOCH + 1,
                                                                             LOG_EVERY))
    assert [s for s, _ in scalars(run_dir, "val/loss")] == [STEPS_PER_EPOCH * e for e in range(1, EPOCHS + 1)]
    for subrun in ("tb/train", "tb/val"):  # the Loss card's two curves (#19): purged on resume like the rest
        assert scalars(run_dir, "Loss", subrun) == scalars(baseline, "Loss", subrun), subrun
        assert [s for s, _ in scalars(run_dir, "Loss", subrun)] == [STEPS_PER_EPOCH * e for e in range(1, EPOCHS + 1)]


def test_killed_at_random_moments_and_resumed_ends_bitwise_identical(workdir):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    run_dir = workdir / "killed"
    # Five SIGKILLs (one inside a checkpoint write), a SIGTERM, and a double Ctrl-C inside a checkpoint write.
    plan = ["kill", "kill", "kill-in-write", "term", "kill", "int-int", "kill"]
    # From step 5 on: the first checkpoint (step 4) exists, so there is something to resume.
    targets = sorted(rng.sample(range(5, EPOCHS * STEPS_PER_EPOCH - 8), len(plan)))
    args = [*ARGS, f"hydra.run.dir={run_dir}"]
    resumed_at, left_a_partial_write = [], False
    for how, target in zip(plan, targets):
        context = f"(seed {seed}, {how} at step {target})"
        segment = Segment(workdir, args, pause_writes=how.endswith("in-write") or how == "int-int")
        resumed_at.append(segment.start_step())
        if left_a_partial_write:  # the half-written file of the last interruption is cleaned up on start
            assert "Removed .last.pt.tmp" in segment.output(), segment.output()
            assert not (run_dir / "checkpoints" / ".last.pt.tmp").exists()
        if segment.pauses:  # every write is slowed down in this one: interrupt the first
            target = resumed_at[-1] + 1
        segment.wait_for_step(target)
        time.sleep(rng.uniform(0, 0.03))  # anywhere inside the step: forward, backward, update, logging
        tmp = run_dir / "checkpoints" / ".last.pt.tmp"
        if how == "kill":
            assert segment.stop(signal.SIGKILL) == -signal.SIGKILL, context
        elif how == "kill-in-write":
            segment.wait_until(tmp.exists, "a checkpoint write")
            assert segment.stop(signal.SIGKILL) == -signal.SIGKILL, context
            assert tmp.exists(), f"the kill missed the write {context}"
        elif how == "term":
            assert segment.stop(signal.SIGTERM) == 143, segment.output()
            assert f"Resume with:  dl-run resume={run_dir}" in segment.output(), segment.output()
        else:  # the first Ctrl-C starts the checkpoint; the second, inside its write, exits at once
            segment.proc.send_signal(signal.SIGINT)
            # Two signals before Python's handler runs would count as one: wait until it has seen the first.
            segment.wait_until(lambda seg=segment: "SIGINT: finishing this step" in seg.output(), "the first Ctrl-C")
            segment.wait_until(tmp.exists, "the checkpoint write after Ctrl-C")
            started = time.monotonic()
            assert segment.stop(signal.SIGINT) == 130, segment.output()
            assert time.monotonic() - started < 2, "the second Ctrl-C waited for the write"
            assert "exiting now" in segment.output()
        checkpoint.load_latest(run_dir / "checkpoints")  # a loadable checkpoint survives every interruption
        left_a_partial_write = how in ("kill-in-write", "int-int")
        # The run's --config-dir names code (the slow augmentation): dl-run takes it from the run folder only
        # when the user gives it again (#17), as the printed resume command does.
        args = [f"resume={run_dir}", "--config-dir", str(workdir / "conf")]

    final = Segment(workdir, args)
    assert final.proc.wait(timeout=120) == 0, final.output()
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    assert_same_as_uninterrupted(workdir, run_dir)
    assert any(step % STEPS_PER_EPOCH for step in resumed_at[1:]), f"no resume was mid-epoch {resumed_at}"


def test_ctrl_c_in_epoch_3_then_the_printed_command_finishes_the_same_run(workdir):
    run_dir = workdir / "ctrl-c"
    segment = Segment(workdir, [*ARGS, f"hydra.run.dir={run_dir}"])
    segment.wait_until(lambda: "epoch   2 " in segment.output(), "the end of epoch 2")
    time.sleep(random.uniform(0, 0.1))
    assert segment.stop(signal.SIGINT) == 130, segment.output()
    output = segment.output()
    assert re.search(r"Stopped by SIGINT (in|at the end of) epoch 3", output), output
    assert "Traceback" not in output
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    command = re.search(r"Resume with:  (dl-run .*)", output).group(1)
    argv = shlex.split(command)
    assert argv == ["dl-run", f"resume={run_dir}", "--config-dir", str(workdir / "conf")]

    resumed = subprocess.run([DL_RUN, *argv[1:]], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming from epoch 2" in resumed.stdout
    assert_same_as_uninterrupted(workdir, run_dir)


def test_a_preempted_submitit_job_checkpoints_requeues_and_resumes_in_its_run_directory(workdir):
    """submitit's local executor stands in for SLURM: its pre-emption signal, requeue and restart are the same."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = workdir / "preempted"
    segment = Segment(workdir, ["-m", *ARGS, "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"])
    segment.wait_for_step(random.randrange(5, EPOCHS * STEPS_PER_EPOCH - 8))
    os.kill(segment.steps_seen()[1], signal.SIGUSR2)  # to the job's own process, as SLURM signals it
    assert segment.proc.wait(timeout=300) == 0, segment.output()
    (job_dir,) = [d for d in sweep.iterdir() if d.is_dir() and not d.name.startswith(".")]
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in logs, logs  # submitit requeued it, after our checkpoint
    assert re.search(r"Stopped by SIGUSR2 (in|at the end of) epoch", logs), logs
    assert "Requeued: resuming from epoch" in logs, logs
    assert_same_as_uninterrupted(workdir, job_dir)
