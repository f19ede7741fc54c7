"""dl-run's performance budget (issues #3 and #9): one table of dl-run against a baseline measured in the same run.

    python scripts/benchmark.py                          # every row, on the CPU; MNIST from the repository's data/
    python scripts/benchmark.py --only overhead,startup  # some groups (see --help for their names)
    python scripts/benchmark.py --smoke                  # tiny settings, one round: a check that it runs, not a measure
    python scripts/benchmark.py --device cuda --speedrun # on a GPU, plus experiment=mnist_speedrun to 99%

Groups and rows. Each variant runs `--repeats` rounds, back to back with its baseline in each round (taking turns
going first); a row's ratio is the MEDIAN of the per-round ratios (pairing cancels the slow swings of a shared
machine's load, the median drops the rounds a neighbour's burst hit); its seconds are the medians.
  overhead   dl-run's training, as `dl-run` runs it (the real run(): TensorBoard logging, progress bar drawn into
             a terminal, a checkpoint every epoch, the default diagnostics: gradient norms and histograms every 100
             steps), timed around the whole fit() call (steps, validation, checkpoints), against a bare loop
             (randperm, x[idx] of pre-standardised float tensors, forward, loss, backward, Adam step, and the
             validation loss and accuracy after each epoch) over the same tensors:
             MNIST MLP 784-256-128-10, Adam, batch 64, one epoch (<= 1.15x); the default experiment (digits MLP,
             50 epochs of batch 32) (<= 1.25x); MNIST CNN conv3x3(32) conv3x3(64) maxpool FC128, one epoch (<= 1.05x)
  framework  the same MNIST MLP and CNN through PyTorch Lightning (Trainer with its TensorBoardLogger, progress bar
             and checkpoints; DataLoaders over torchvision's MNIST with ToTensor + Normalize, as PyTorch's MNIST
             example writes it) against dl-run's fit(): Lightning at least 4x (MLP) and 1.2x (CNN) longer; and
             the plain torchvision + DataLoader loop against dl-run, training steps only on both sides (issue #3:
             at least 4x longer for the MLP). Lightning needs the [bench] extra (pip install -e ".[bench]");
             without it its rows are skipped with a message.
  whole      whole commands from the shell (issue #21): `dl-run` against the minimal hand-written scripts
             scripts/minimal_mnist_mlp.py and scripts/minimal_digits_mlp.py (read the data, train, validate each
             epoch, score the test split): the MNIST MLP's epoch as the issue types it, and the default experiment
             (each <= 1.10x); everything dl-run does around the training counts (imports, Hydra, checks, scoring
             every split, figures, checkpoints, TensorBoard); `trainer.profile=true` shows where it goes
  startup    `dl-run --help` against `python -c "import torch"` (<= 1.5x), and the seconds from the command to the
             first optimiser step of the default experiment against a bare script doing the same (reported)
  logging    steps of the MNIST MLP (half an epoch) with logger=none against TensorBoard logging of the loss every
             10 steps (<= 1.03x), and against the default logger, which adds gradient diagnostics (reported);
             logger=[tensorboard,mlflow] against logger=tensorboard (<= 1.05x; needs the [mlflow] extra)
  memory     peak resident memory of `dl-run` (the default experiment; MNIST MLP one epoch) against the bare loop,
             each in its own process (<= 1.3x)
  sweep      `dl-run -m` with 14 and 2 tiny jobs: the cost of each extra job, (T14 - T2) / 12, against the
             in-process run() of one job (its config composed by Hydra's compose API, as a script would), with
             the basic launcher and with joblib's 2 workers (each <= 1.15x: a job costs little beyond its own run,
             its config and its .hydra/ record); 12 extra jobs, not 6, so that a second of noise in one sweep
             moves the ratio by less than 0.1; every job and run() with half of --threads, as joblib's 2 workers
             each take
  streaming  image_folder of PNGs the benchmark writes: an epoch streamed from disk by 2 DataLoader workers
             against the same epoch held in memory (reported)
Precision: every side computes in --precision (default: dl-run's own auto, 32 on a CPU, bf16 or fp16 on a GPU):
dl-run as trainer.precision, the bare and DataLoader loops under the same autocast (and fp16 gradient scaler),
Lightning with its matching precision ("bf16-mixed", "16-mixed", "32-true").
Clocks: on a CPU, ratios are judged on CPU seconds (this process's, or a child's from wait4), which a machine
shared with other work disturbs far less than wall seconds; both are printed and written to the JSON. On a GPU,
wall seconds. Every in-process variant runs under the same settings dl-run makes (torch's thread count, glibc
keeping freed memory): the comparison is of the loops and data paths, not
of those settings. What dl-run does inside its own loop counts for it: fused Adam (one kernel for every
parameter), for CNNs on a CPU NHWC memory layout (trainer.channels_last=auto), and on a CPU where torch's MKL
runs its slow path (non-Intel x86) fully connected layers through oneDNN (trainer.onednn_linear=auto); the
baselines are written as their authors' examples write them (torch.optim.Adam's defaults, NCHW, nn.Linear).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from rich.console import Console

from dlrun.views import console
from dlrun.diagnostics.gradients import GradientMonitor
from dlrun.loggers import build_logger
from dlrun.models import MODELS
from dlrun.run.experiment import Experiment
from dlrun.engine.options import autocast_for, auto_gpu_precision, resolve_threads
from dlrun.engine.trainer import Trainer, TrainingOutputs
from dlrun.run.run_directory import RunDirectory
from dlrun.run.training import run

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("overhead", "framework", "whole", "startup", "logging", "memory", "sweep", "streaming")
MNIST_MODELS = {
    "mlp": ["model=mlp", "model.hidden=[256,128]"],
    "cnn": ["model=cnn", "model.channels=[[32,64]]", "model.padding=0", "model.hidden=[128]"],
}
DEFAULT_REPEATS = {"mlp": 5, "cnn": 2, "digits": 7, "logging": 9, "startup": 5, "sweep": 3, "streaming": 3,
                   "whole": 5}


# ---- clocks ---------------------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Stopwatch:
    """Wall and CPU seconds of a stretch of work (CPU: this process, all its threads)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> "Stopwatch":
        sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds = (time.perf_counter() - self.wall, time.process_time() - self.cpu)


def child(command: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run a command to its end: wall seconds, its CPU seconds and peak resident memory (wait4), its output."""
    started = time.time()
    peak = cwd / f"peak-{time.monotonic_ns()}"
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "DLRUN_BENCH_PEAK": str(peak), "DLRUN_BENCH_PEAK_HOOK": PEAK_HOOK,
                                 **(env or {})})
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{output[-3000:]}")
    rss_mb = int(peak.read_text()) / 1024 if peak.is_file() else None  # only the benchmark's own scripts write it
    peak.unlink(missing_ok=True)
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": rss_mb, "started": started,
            "output": output}


def rounds(variants: dict[str, Callable[[], tuple[float, float]]], repeats: int, label: str) -> dict:
    """Each variant `repeats` times, back to back in each round, taking turns going first: every (wall, CPU) kept."""
    times: dict[str, dict[str, list[float]]] = {v: {"wall": [], "cpu": []} for v in variants}
    order = list(variants)
    for r in range(repeats):
        for variant in order[r % len(order):] + order[:r % len(order)]:
            wall, cpu = variants[variant]()
            times[variant]["wall"].append(wall)
            times[variant]["cpu"].append(cpu)
        print(f"  {label} round {r + 1}: " + ", ".join(f"{k} {v['wall'][-1]:.2f}s wall/{v['cpu'][-1]:.2f}s CPU"
                                                      for k, v in times.items()), flush=True)
    return times


# ---- building blocks ------------------------------------------------------------------------------------------

def compose_config(*overrides: str) -> dict:
    with initialize_config_module(config_module="dlrun.configs", version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="train", overrides=list(overrides)), resolve=True)


class StepsClock(console.EpochProgress):
    """run()'s progress bar, which also adds up the CPU seconds of the training steps (validation excluded)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps_cpu, self._left, self._started = 0.0, 0, 0.0
        StepsClock.last = self

    def start_epoch(self, epoch: int, epochs: int, batches: int, done: int = 0) -> None:
        super().start_epoch(epoch, epochs, batches, done)
        self._left, self._started = batches - done, time.process_time()

    def advance(self, loss: torch.Tensor, step: int) -> None:
        super().advance(loss, step)
        self._left -= 1
        if self._left == 0:  # the epoch's last step: one clock read per epoch
            self.steps_cpu += time.process_time() - self._started

    def end_epoch(self, epoch: int, metrics, is_best: bool) -> None:
        if self._left > 0:  # stopped by max_steps inside the epoch (--steps): the validation is counted too
            self.steps_cpu += time.process_time() - self._started
        super().end_epoch(epoch, metrics, is_best)


class TimedRun:
    """The real run() of `dl-run`, with its fit() call timed (wall and CPU) and the progress bar drawn.

    The bar is drawn into a terminal-like buffer: run() draws it only on a terminal, and the benchmark's
    output may be a file. Drawing costs the same either way.
    """

    def __init__(self, work: Path) -> None:
        self.work = work
        self.count = 0

    def __call__(self, overrides: list[str]) -> tuple[tuple[float, float], dict]:
        """(wall, CPU) seconds of fit(), and metrics.json's content; self.run_seconds: those of the whole run()."""
        seconds = {}

        fit = Trainer.fit

        def timed_fit(trainer: Trainer):
            with Stopwatch(torch.device("cpu")) as watch:
                state = fit(trainer)
            seconds["fit"] = watch.seconds
            return state

        self.count += 1
        run_dir = self.work / f"run-{self.count}"
        terminal = console.console
        console.console = Console(file=io.StringIO(), force_terminal=True, width=120)
        Trainer.fit, progress = timed_fit, console.EpochProgress
        console.EpochProgress = StepsClock
        try:
            with Stopwatch(torch.device("cpu")) as whole:
                metrics = run(OmegaConf.create(compose_config(*overrides)), run_dir, overrides)
            self.run_seconds = whole.seconds
            self.steps_seconds = (metrics["train_seconds"], StepsClock.last.steps_cpu)  # fit's own wall clock
        finally:
            Trainer.fit, console.console, console.EpochProgress = fit, terminal, progress
        shutil.rmtree(run_dir, ignore_errors=True)
        return seconds["fit"], metrics


def bare_loop(model_cfg: dict, exp: Experiment, data: tuple[torch.Tensor, ...], epochs: int, batch_size: int,
              steps: int | None = None) -> tuple[float, float]:
    """The shortest honest loop over in-memory float tensors, validating after each epoch (loss and accuracy)."""
    x, y, x_val, y_val = data
    torch.manual_seed(0)
    model = MODELS.build(model_cfg, info=exp.info, out_features=exp.info.num_classes).to(exp.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    autocast, scaler = autocast_for(exp.device, exp.opts.precision)  # dl-run's precision: the same arithmetic
    taken = 0
    with Stopwatch(exp.device) as watch:
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(x), device=exp.device).split(batch_size):
                with autocast:
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                optimizer_step(loss, optimizer, scaler)
                taken += 1
                if steps is not None and taken >= steps:
                    break
            model.eval()
            with torch.no_grad(), autocast:
                out = torch.cat([model(xb) for xb in x_val.split(4096)]).float()
                # Read back as a real loop would, to print them: each .item() waits for the device.
                _val_loss = F.cross_entropy(out, y_val).item()
                _val_accuracy = (out.argmax(1) == y_val).float().mean().item()
            if steps is not None and taken >= steps:
                break
    return watch.seconds


def dataloader_loop(model_cfg: dict, exp: Experiment, root: Path, batch_size: int, steps: int | None,
                    n_val: int) -> tuple[float, float]:
    """torchvision's MNIST and a DataLoader, the way PyTorch's own MNIST example trains: its steps' seconds."""
    import torchvision
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    dataset = torchvision.datasets.MNIST(str(root), train=True, download=False, transform=transform)
    train, val = torch.utils.data.random_split(dataset, [len(dataset) - n_val, n_val],
                                               generator=torch.Generator().manual_seed(0))
    extra = {"num_workers": 1, "pin_memory": True} if exp.device.type == "cuda" else {}
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, **extra)
    torch.manual_seed(0)
    model = MODELS.build(model_cfg, info=exp.info, out_features=exp.info.num_classes).to(exp.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    autocast, scaler = autocast_for(exp.device, exp.opts.precision)
    with Stopwatch(exp.device) as watch:
        model.train()
        for step, (xb, yb) in enumerate(loader, start=1):
            xb, yb = xb.to(exp.device), yb.to(exp.device)
            with autocast:
                loss = F.cross_entropy(model(xb), yb)
            optimizer_step(loss, optimizer, scaler)
            if steps is not None and step >= steps:
                break
    return watch.seconds


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """backward and step, through fp16's gradient scaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


# Lightning's name for each trainer.precision: its mixed precision is the same autocast (and fp16 scaler).
LIGHTNING_PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}

# lightning_fabric's import sets this for the whole process. torch.cuda.is_available() then asks NVML on each
# call, and torch.optim calls it every step: every variant run after Lightning in this process stepped slower
# (a tiny MLP 1.41x). It is set only while Lightning itself trains, as its users have it.
LIGHTNING_ENV = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1"}


def import_lightning():
    """Lightning and its TensorBoardLogger, imported without leaving its environment setting behind."""
    with mock.patch.dict(os.environ):  # os.environ as it was before the import, on leaving
        import lightning
        from lightning.pytorch.loggers import TensorBoardLogger
    return lightning, TensorBoardLogger


def lightning_loop(model_cfg: dict, exp: Experiment, root: Path, batch_size: int, steps: int | None, n_val: int,
                   work: Path, threads: int) -> tuple[float, float]:
    """The same training through PyTorch Lightning: its Trainer, TensorBoardLogger, progress bar and checkpoints."""
    L, TensorBoardLogger = import_lightning()
    import torchvision
    from torchvision import transforms

    class Classifier(L.LightningModule):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            out = self.net(x)
            self.log_dict({"val_loss": F.cross_entropy(out, y), "val_acc": (out.argmax(1) == y).float().mean()})

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    dataset = torchvision.datasets.MNIST(str(root), train=True, download=False, transform=transform)
    train, val = torch.utils.data.random_split(dataset, [len(dataset) - n_val, n_val],
                                               generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Classifier(MODELS.build(model_cfg, info=exp.info, out_features=exp.info.num_classes))
    accelerator = "gpu" if exp.device.type == "cuda" else "cpu"
    trainer = L.Trainer(max_epochs=1, accelerator=accelerator, devices=1, default_root_dir=str(work),
                        precision=LIGHTNING_PRECISION[resolved_precision(exp)],
                        logger=TensorBoardLogger(str(work), name="lightning"), enable_model_summary=False,
                        limit_train_batches=steps or 1.0, num_sanity_val_steps=0, log_every_n_steps=10)
    extra = {"num_workers": 1, "pin_memory": True} if exp.device.type == "cuda" else {}
    loaders = (torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, **extra),
               torch.utils.data.DataLoader(val, batch_size=1000, **extra))
    torch.set_num_threads(threads)  # Lightning resets nothing here, but say it: the same threads as dl-run
    with mock.patch.dict(os.environ, LIGHTNING_ENV), Stopwatch(exp.device) as watch:
        trainer.fit(model, *loaders)
    shutil.rmtree(work, ignore_errors=True)
    return watch.seconds


def resolved_precision(exp: Experiment) -> str:
    """The precision an experiment trains in, auto written out."""
    precision = str(exp.opts.precision)
    if precision != "auto":
        return precision
    return auto_gpu_precision() if exp.device.type == "cuda" else "32"


def row(case: str, dlrun: dict, baseline: dict, bound: float | None, kind: str, judge: str, unit: str = "s",
        baseline_name: str = "", note: str = "") -> dict:
    """One line of the table from paired rounds: medians of each side, and the median of the per-round ratios.

    Round r of dl-run ran right next to round r of the baseline, so their ratio cancels the slow swings of a
    shared machine's load; the median of those ratios then drops the rounds a neighbour's burst disturbed.
    kind "max": ratio = dl-run / baseline, at most bound; "min": ratio = baseline / dl-run, at least bound.
    """
    def ratio(clock: str) -> float:
        pairs = list(zip(dlrun[clock], baseline[clock]))
        return statistics.median(b / a if kind == "min" else a / b for a, b in pairs)

    value = ratio(judge)
    return {"case": case, "dl-run": round(statistics.median(dlrun[judge]), 3),
            "baseline": round(statistics.median(baseline[judge]), 3), "baseline_is": baseline_name, "unit": unit,
            "clock": judge, "ratio": round(value, 3), "rounds": len(dlrun[judge]),
            "target": "report" if bound is None else f"{'<=' if kind == 'max' else '>='} {bound}",
            "holds": None if bound is None else (value <= bound if kind == "max" else value >= bound),
            "other_clock": {c: {"dl-run": round(statistics.median(dlrun[c]), 3),
                                "baseline": round(statistics.median(baseline[c]), 3), "ratio": round(ratio(c), 3)}
                            for c in dlrun if c != judge and c in baseline},
            "all_rounds": {"dl-run": dlrun, "baseline": baseline}, "note": note}


# ---- groups -----------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, threads: int, work: Path) -> None:
        self.args, self.threads, self.work = args, threads, work
        self.device = torch.device(args.device)
        self.judge = "cpu" if self.device.type == "cpu" else "wall"
        self.timed_run = TimedRun(work)
        self.rows: list[dict] = []
        self.cache: dict[str, tuple] = {}

    def repeats(self, name: str) -> int:
        return 1 if self.args.smoke else (self.args.repeats or DEFAULT_REPEATS[name])

    def common(self) -> list[str]:
        return [f"trainer.device={self.args.device}", f"trainer.threads={self.threads}",
                f"trainer.precision={self.args.precision}"]

    def mnist(self, model: str) -> list[str]:
        steps = self.args.steps or (20 if self.args.smoke else None)
        return ["dataset=mnist", f"dataset.root={self.args.mnist_root}", "dataset.download=false",
                *MNIST_MODELS[model], "optimizer=adam", "scheduler=none", f"trainer.batch_size={self.args.batch_size}",
                "trainer.epochs=1", *self.common(), *([f"trainer.max_steps={steps}"] if steps else [])]

    def digits(self) -> list[str]:
        return [*self.common(), *(["trainer.epochs=2"] if self.args.smoke else [])]

    def experiment(self, overrides: list[str]) -> tuple[Experiment, dict, tuple[torch.Tensor, ...]]:
        """The built experiment, its model config and its data as pre-standardised float tensors (the bare loop's)."""
        key = " ".join(overrides)
        if key not in self.cache:
            cfg = compose_config(*overrides)
            exp = Experiment(cfg, self.work / "built")
            s = exp.splits
            data = (exp.prepare(s.x_train), s.y_train, exp.prepare(s.x_val), s.y_val)
            self.cache = {key: (exp, cfg["model"], data)}  # one at a time: MNIST as floats is 200 MB
        return self.cache[key]

    def lightning_present(self) -> bool:
        try:
            import_lightning()
        except ImportError:
            return False
        return True

    def overhead(self, name: str, overrides: list[str], epochs: int, batch_size: int, bound: float | None,
                 case: str, frameworks: bool) -> None:
        """dl-run's fit() in rounds with the bare loop (and, for MNIST, Lightning and the DataLoader loop)."""
        exp, model_cfg, data = self.experiment(overrides)
        steps = self.args.steps or (20 if self.args.smoke and name != "digits" else None)
        # Warm-up, not timed: a model's first steps create the process's oneDNN kernels and caches.
        self.timed_run([*overrides, "trainer.max_steps=3"])
        steps_only: dict[str, list[float]] = {"wall": [], "cpu": []}  # dl-run's training steps, per round

        def dlrun() -> tuple[float, float]:
            seconds, _ = self.timed_run(overrides)
            for clock, value in zip(("wall", "cpu"), self.timed_run.steps_seconds):
                steps_only[clock].append(value)
            return seconds

        variants = {"dl-run": dlrun}
        if bound is not None:
            bare_loop(model_cfg, exp, data, 1, batch_size, 3)
            variants["bare loop"] = lambda: bare_loop(model_cfg, exp, data, epochs, batch_size, steps)
        lightning = frameworks and self.lightning_present()
        n_val = len(exp.splits.x_val)
        if frameworks and name == "mlp":
            variants["DataLoader"] = lambda: dataloader_loop(model_cfg, exp, self.args.mnist_root, batch_size,
                                                             steps, n_val)
        if lightning:
            lightning_loop(model_cfg, exp, self.args.mnist_root, batch_size, 3, n_val, self.work / "lightning",
                           self.threads)  # warm-up: imports, kernels
            variants["Lightning"] = lambda: lightning_loop(model_cfg, exp, self.args.mnist_root, batch_size, steps,
                                                           n_val, self.work / "lightning", self.threads)
        times = rounds(variants, self.repeats(name), case.split(":")[0])
        if "bare loop" in times:
            self.rows.append(row(case, times["dl-run"], times["bare loop"], bound, "max", self.judge,
                                 baseline_name="bare loop, same tensors, validating each epoch",
                                 note="whole fit(): steps, validation, checkpoints, logging, progress, diagnostics"))
        if frameworks and lightning:
            self.rows.append(row(f"MNIST {name.upper()}, 1 epoch: Lightning / dl-run", times["dl-run"],
                                 times["Lightning"], 4.0 if name == "mlp" else 1.2, "min", self.judge,
                                 baseline_name="Lightning Trainer + TensorBoardLogger, torchvision MNIST",
                                 note="ratio = Lightning seconds / dl-run seconds"))
        elif frameworks:
            print("  lightning is not installed: its rows are skipped (pip install -e '.[bench]')", flush=True)
            self.rows.append({"case": f"MNIST {name.upper()}, 1 epoch: Lightning / dl-run",
                              "skipped": "lightning not installed (pip install -e '.[bench]')", "holds": None})
        if "DataLoader" in times:
            self.rows.append(row(f"MNIST {name.upper()}, 1 epoch of steps: DataLoader loop / dl-run", steps_only,
                                 times["DataLoader"], 4.0, "min", self.judge,
                                 baseline_name="torchvision MNIST + DataLoader, hand-written loop",
                                 note="training steps only on both sides, as issue #3 states it; ratio = "
                                      "DataLoader-loop seconds / dl-run seconds"))

    def group_overhead(self, frameworks: bool = False, bare: bool = True) -> None:
        """The overhead rows; with frameworks, Lightning and the DataLoader loop run in the same rounds."""
        bs = self.args.batch_size
        self.overhead("mlp", self.mnist("mlp"), 1, bs, 1.15 if bare else None,
                      "MNIST MLP 784-256-128-10, 1 epoch: dl-run / bare loop", frameworks)
        if bare:
            self.overhead("digits", self.digits(), 2 if self.args.smoke else 50, 32, 1.25,
                          "default experiment (digits MLP, 50 epochs): dl-run / bare loop", False)
        if not self.args.skip_cnn:
            self.overhead("cnn", self.mnist("cnn"), 1, bs, 1.05 if bare else None,
                          "MNIST CNN 32-64-FC128, 1 epoch: dl-run / bare loop", frameworks)

    def group_whole(self) -> None:
        """Whole commands from the shell, dl-run's against a minimal hand-written script's (issue #21)."""
        dl_run = shutil.which("dl-run", path=str(Path(sys.executable).parent)) or "dl-run"
        work = self.work / "whole"
        work.mkdir(exist_ok=True)
        threads = str(self.threads)
        epochs = "2" if self.args.smoke else "50"
        cases = [("mlp", "whole process, MNIST MLP 784-256-128-10, 1 epoch: dl-run / minimal script",
                  [dl_run, *self.mnist("mlp")],
                  [sys.executable, str(REPO / "scripts" / "minimal_mnist_mlp.py"), str(self.args.mnist_root), "1",
                   threads]),
                 ("digits", "whole process, default experiment (digits MLP, 50 epochs): dl-run / minimal script",
                  [dl_run, *self.digits()],
                  [sys.executable, str(REPO / "scripts" / "minimal_digits_mlp.py"), epochs, threads])]
        for name, case, dlrun, minimal in cases:
            if name == "mlp" and not (self.args.mnist_root / "MNIST" / "raw").is_dir():
                self.rows.append({"case": case, "skipped": f"no MNIST in {self.args.mnist_root}", "holds": None})
                continue
            child(minimal, work)  # warm-up: the files in the page cache, Python's bytecode compiled
            times = rounds({"dl-run": lambda c=dlrun: _clocks(child(c, work)),
                            "minimal script": lambda c=minimal: _clocks(child(c, work))},
                           self.repeats("whole"), name)
            self.rows.append(row(case, times["dl-run"], times["minimal script"], 1.10, "max", self.judge,
                                 baseline_name=f"scripts/{Path(minimal[1]).name}",
                                 note="whole commands in their own processes, from start to exit"))

    def group_startup(self) -> None:
        exe = Path(sys.executable)
        dl_run = shutil.which("dl-run", path=str(exe.parent)) or "dl-run"
        work = self.work / "startup"
        work.mkdir(exist_ok=True)
        times = rounds({"dl-run --help": lambda: _clocks(child([dl_run, "--help"], work)),
                        "import torch": lambda: _clocks(child([str(exe), "-c", "import torch"], work))},
                       self.repeats("startup"), "start-up")
        self.rows.append(row("start-up: dl-run --help / python -c 'import torch'", times["dl-run --help"],
                             times["import torch"], 1.5, "max", self.judge, baseline_name="python -c 'import torch'"))
        first = self.first_steps(work)
        self.rows.append(row("default experiment: command to first training step", first["dl-run"],
                             first["bare"], None, "max", "wall",
                             baseline_name="bare script: import torch, load digits, build, first step",
                             note="wall seconds; the CPU clock is not split at the first step"))

    def first_steps(self, work: Path) -> dict:
        """Seconds from starting the command to its first optimiser step: dl-run's default experiment, a bare script."""
        seconds: dict[str, dict[str, list[float]]] = {"dl-run": {"wall": []}, "bare": {"wall": []}}
        for r in range(self.repeats("startup")):
            for name, command in (("dl-run", [sys.executable, "-c", FIRST_STEP_DLRUN, *self.digits(),
                                               "trainer.max_steps=1", "logger=none", "trainer.progress=false"]),
                                  ("bare", [sys.executable, "-c", FIRST_STEP_BARE, "1", str(self.threads)])):
                stamp = work / f"first-{name}"
                stamp.unlink(missing_ok=True)
                result = child(command, work, {"DLRUN_BENCH_FIRST_STEP": str(stamp)})
                seconds[name]["wall"].append(float(stamp.read_text()) - result["started"])
            print(f"  first step round {r + 1}: dl-run {seconds['dl-run']['wall'][-1]:.2f}s, "
                  f"bare {seconds['bare']['wall'][-1]:.2f}s", flush=True)
        return seconds

    def group_logging(self) -> None:
        overrides = self.mnist("mlp")
        exp, _, _ = self.experiment(overrides)
        n_steps = len(exp.splits.x_train) // self.args.batch_size
        # Half an epoch per round: more rounds in the same time, and a 3% difference needs many
        steps = min(self.args.steps or n_steps // 2, 20 if self.args.smoke else n_steps)

        # One experiment for every round: its steps cost the same whichever weights it has reached, and building
        # MNIST between the rounds would disturb the very steps being compared.
        e = exp

        def steps_only(logger_cfg: dict) -> tuple[float, float]:
            run_dir = self.work / f"logging-{time.monotonic_ns()}"
            logger = build_logger(logger_cfg, run_dir)
            monitor = (GradientMonitor(e.model, logger, logger.gradients_every_n_steps, logger.histograms)
                       if logger.gradients_every_n_steps else None)
            clock = StepClock(steps)
            e.opts.max_steps = steps
            try:
                outputs = TrainingOutputs(RunDirectory(run_dir), logger, clock, monitor)
                state = Trainer(e.parts, outputs, generator=torch.Generator().manual_seed(0)).fit()
            finally:
                logger.close()
                if monitor is not None:
                    monitor.close()
            shutil.rmtree(run_dir, ignore_errors=True)
            return state.train_seconds, clock.ended - clock.started

        default_logger = compose_config(*overrides)["logger"]
        scalars_only = {**default_logger, "gradients_every_n_steps": 0}
        steps_only(default_logger)  # warm-up
        times = rounds({"logging on": lambda: steps_only(scalars_only),
                        "logging off": lambda: steps_only({"name": "none"}),
                        "logging and diagnostics on": lambda: steps_only(default_logger)},
                       self.repeats("logging"), "logging")
        self.rows.append(row(f"MNIST MLP, {steps} steps: logging on / off", times["logging on"],
                             times["logging off"], 1.03, "max", self.judge, baseline_name="logger=none",
                             note="steps only (fit's clock); on = TensorBoard loss (and lr) every 10 steps, "
                                  "read from the device then only"))
        self.rows.append(row(f"MNIST MLP, {steps} steps: logging + gradient diagnostics on / off",
                             times["logging and diagnostics on"], times["logging off"], None, "max", self.judge,
                             baseline_name="logger=none",
                             note="the default logger: also per-layer gradient norms, histograms and activation "
                                  "statistics every 100 steps (logger.gradients_every_n_steps=0 turns them off)"))
        self.mlflow_rows(default_logger, steps_only, steps)

    def mlflow_rows(self, default_logger: dict, steps_only: Callable[[dict], tuple[float, float]], steps: int) -> None:
        """logger=[tensorboard,mlflow] against logger=tensorboard, both with the default diagnostics (issue #19)."""
        try:
            import mlflow  # noqa: F401
        except ImportError:
            print('  MLflow row skipped: pip install -e ".[mlflow]"', flush=True)
            return
        # A store of its own in the benchmark's folder; made (tables and all) by the warm-up, outside the rounds.
        with_mlflow = {**default_logger, "mlflow": {"tracking_uri": f"sqlite:///{self.work / 'mlflow.db'}",
                                                    "experiment": "benchmark"}}
        steps_only(with_mlflow)
        times = rounds({"tensorboard and mlflow": lambda: steps_only(with_mlflow),
                        "tensorboard": lambda: steps_only(default_logger)}, self.repeats("logging"), "mlflow")
        self.rows.append(row(f"MNIST MLP, {steps} steps: TensorBoard + MLflow / TensorBoard",
                             times["tensorboard and mlflow"], times["tensorboard"], 1.05, "max", self.judge,
                             baseline_name="logger=tensorboard",
            note="steps only (fit's clock), default diagnostics on both; MLflow on a local SQLite store, its values "
                 "sent in one batch at each checkpoint (the run's creation is outside the clock)"))

    def group_memory(self) -> None:
        exe = sys.executable
        work = self.work / "memory"
        work.mkdir(exist_ok=True)
        mnist_steps = ["trainer.max_steps=20"] if self.args.smoke else []
        cases = [("default experiment", [*self.digits()], [str(2 if self.args.smoke else 50), str(self.threads)]),
                 ("MNIST MLP, 1 epoch", [*self.mnist("mlp"), *mnist_steps],
                  ["1", str(self.threads), str(self.args.mnist_root), *(["20"] if self.args.smoke else [])])]
        for case, overrides, bare_args in cases:
            dl = child([exe, "-c", FIRST_STEP_DLRUN, *overrides, "trainer.progress=false"], work)
            bare = child([exe, "-c", FIRST_STEP_BARE, *bare_args], work)
            print(f"  peak memory, {case}: dl-run {dl['rss_mb']:.0f} MB, bare loop {bare['rss_mb']:.0f} MB", flush=True)
            self.rows.append(row(f"peak RSS, {case}: dl-run / bare loop", {"rss": [dl["rss_mb"]]},
                                 {"rss": [bare["rss_mb"]]}, 1.3, "max", "rss", unit="MB",
                                 baseline_name="bare loop in its own process",
                                 note="dl-run = the whole command (test, figures, TensorBoard) in its own process"))

    def group_sweep(self) -> None:
        dl_run = shutil.which("dl-run", path=str(Path(sys.executable).parent)) or "dl-run"
        work = self.work / "sweep"
        work.mkdir(exist_ok=True)
        # joblib runs 2 jobs at once: each gets half the threads (what dl-run's auto takes in each of its workers),
        # and so do the basic launcher's jobs and run(), so that all three compute alike. With all the threads
        # each, two jobs on 2 cores wait on each other's threads: 3.2 CPU s a job instead of 1.1.
        threads = max(1, self.threads // 2)
        tiny = ["trainer.epochs=2", "model.hidden=[16]", "trainer.progress=false",
                *(f"trainer.threads={threads}" if o.startswith("trainer.threads=") else o for o in self.common())]
        print(f"  {threads} torch thread(s) a job", flush=True)
        many = 14
        lrs = [f"{0.001 * (i + 1):g}" for i in range(many)]  # a learning-rate sweep: the jobs share their data

        def sweep(jobs: int, launcher: list[str]) -> tuple[float, float]:
            values = ",".join(lrs[:jobs])
            result = child([dl_run, "-m", *tiny, *launcher, f"optimizer.lr={values}",
                            f"hydra.sweep.dir=sweep-{time.monotonic_ns()}"], work)
            return result["wall"], result["cpu"]

        # One job's own run(), in this warm process: what a job costs when nothing around it is repeated.
        self.timed_run([*tiny, "seed=0"])  # warm-up
        launchers = {"basic": []}
        try:
            import hydra_plugins.hydra_joblib_launcher  # noqa: F401
            # (n_jobs=1 would be no worker at all: joblib then runs the jobs in dl-run's own process)
            launchers["joblib"] = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
        except ImportError:
            print('  joblib row skipped: pip install -e ".[sweep]"', flush=True)
        for name, launcher in launchers.items():
            # Two sweeps, so that what a sweep does once (start-up, workers, the summary table and figure) cancels.
            times = rounds({"2-job sweep": lambda lc=launcher: sweep(2, lc),
                            f"{many}-job sweep": lambda lc=launcher: sweep(many, lc),
                            "run()": lambda: self.timed_run([*tiny, "seed=0"]) and self.timed_run.run_seconds},
                           self.repeats("sweep"), f"sweep, {name} launcher")
            per_job = {k: [(big - two) / (many - 2) for two, big in zip(times["2-job sweep"][k],
                                                                        times[f"{many}-job sweep"][k])]
                       for k in ("wall", "cpu")}
            two, big = ({k: statistics.median(times[v][k]) for k in ("wall", "cpu")}
                        for v in ("2-job sweep", f"{many}-job sweep"))
            self.rows.append(row(f"sweep of {many} tiny jobs, {name} launcher: each extra job / one in-process run()",
                                 per_job, times["run()"], 1.15, "max", self.judge,
                                 baseline_name="run() of one job in this process",
                                 note=f"each extra job = ({many}-job sweep - 2-job sweep) / {many - 2}; whole "
                                      f"commands: 2 jobs {two['wall']:.2f}s, {many} jobs {big['wall']:.2f}s wall "
                                      f"(CPU {two['cpu']:.2f}s, {big['cpu']:.2f}s)"))
        shutil.rmtree(work, ignore_errors=True)

    def group_streaming(self) -> None:
        import numpy as np
        from PIL import Image

        folder = self.work / "png"
        per_class = 50 if self.args.smoke else 1000
        rng = np.random.default_rng(0)
        for c in range(4):
            (folder / str(c)).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 100, size=(32, 32), dtype=np.uint8) + np.uint8(40 * c)
                Image.fromarray(pixels).save(folder / str(c) / f"{i}.png")
        base = ["dataset=image_folder", f"dataset.path={folder}", "dataset.image_size=32", "dataset.channels=1",
                "dataset.workers=2", "model.hidden=[64]", "trainer.epochs=1", "trainer.batch_size=64",
                "logger=none", *self.common()]
        streamed, in_memory = [*base, "dataset.in_memory=false"], [*base, "dataset.in_memory=true"]
        self.timed_run([*streamed, "trainer.max_steps=3"])
        times = rounds({"streamed": lambda: self.timed_run(streamed)[0],
                        "in memory": lambda: self.timed_run(in_memory)[0]}, self.repeats("streaming"), "streaming")
        self.rows.append(row(f"image_folder, {4 * per_class} PNGs 32x32, 1 epoch: streamed / in memory",
                             times["streamed"], times["in memory"], None, "max", "wall",
                             baseline_name="the same folder held in memory",
                             note="wall: the decoding happens in 2 worker processes, outside this one's CPU clock"))

    def speedrun(self) -> None:
        overrides = ["experiment=mnist_speedrun", f"dataset.root={self.args.mnist_root}", "dataset.download=false",
                     *self.common()]
        _, metrics = self.timed_run(overrides)
        accuracy = metrics["test"]["accuracy"]
        self.rows.append({"case": "experiment=mnist_speedrun: seconds of training to 99% test accuracy",
                          "dl-run": metrics["train_seconds"], "baseline": None, "ratio": None, "unit": "s",
                          "target": "test accuracy >= 0.99", "holds": accuracy >= 0.99,
                          "note": f"test accuracy {accuracy:.4f} after {metrics['epochs_run']} epochs"})


class StepClock:
    """Handed to fit() as its progress display: notes the CPU time at the epoch's start and after its last step.

    Only the last step reads the clock: reading the process's CPU clock costs ~50 µs in a VM.
    """

    def __init__(self, last_step: int) -> None:
        self.last = last_step
        self.started = self.ended = 0.0

    def start_epoch(self, epoch: int, epochs: int, batches: int, done: int = 0) -> None:
        self.started = time.process_time()

    def advance(self, loss: torch.Tensor, step: int) -> None:
        if step == self.last:
            self.ended = time.process_time()

    def end_epoch(self, epoch: int, metrics: dict, is_best: bool) -> None:
        pass


def _clocks(result: dict) -> tuple[float, float]:
    return result["wall"], result["cpu"]


# Peak resident memory, as Linux counts it for this process image (VmHWM): ru_maxrss from wait4 would also count
# the benchmark's own memory, which the child shares between fork and exec.
PEAK_HOOK = textwrap.dedent("""
    import atexit
    def _peak():
        path = os.environ.get("DLRUN_BENCH_PEAK")
        if path and os.path.exists("/proc/self/status"):
            kb = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
            open(path, "w").write(kb)
    atexit.register(_peak)
""")

# `dl-run <overrides>` exactly as the console script runs it, writing the wall time of its first optimiser step
# to $DLRUN_BENCH_FIRST_STEP when that is set (torch's global optimizer hook: nothing in dl-run is changed).
FIRST_STEP_DLRUN = textwrap.dedent("""
    import os, sys, time
    exec(os.environ['DLRUN_BENCH_PEAK_HOOK'])
    from torch.optim.optimizer import register_optimizer_step_post_hook
    stamp = os.environ.get("DLRUN_BENCH_FIRST_STEP")
    def first(optimizer, args, kwargs):
        if stamp and not os.path.exists(stamp):
            open(stamp, "w").write(repr(time.time()))
    register_optimizer_step_post_hook(first)
    from dlrun.cli import main
    sys.argv = ["dl-run", *sys.argv[1:]]
    main()
""")

# The bare loop in its own process: argv = epochs, threads, [MNIST root (else the digits), max steps].
FIRST_STEP_BARE = textwrap.dedent("""
    import os, sys, time
    exec(os.environ['DLRUN_BENCH_PEAK_HOOK'])
    import torch
    import torch.nn.functional as F
    epochs, threads = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    stamp = os.environ.get("DLRUN_BENCH_FIRST_STEP")
    if len(sys.argv) > 3:
        import torchvision
        data = torchvision.datasets.MNIST(sys.argv[3], train=True, download=False)
        x, y = data.data.float().div_(255).sub_(0.1307).div_(0.3081).reshape(-1, 784), data.targets
        hidden, batch_size, split = [256, 128], 64, 54000
    else:
        from sklearn.datasets import load_digits
        digits = load_digits()
        x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
        hidden, batch_size, split = [128, 64], 32, 1168  # dl-run's digits: 1168 train, 270 val
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else None
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x_train, y_train = x[order[:split]], y[order[:split]]
    val = order[split:split + (6000 if len(sys.argv) > 3 else 270)]
    x_val, y_val = x[val], y[val]
    sizes = [x.shape[1], *hidden]
    layers = [m for a, b in zip(sizes, sizes[1:]) for m in (torch.nn.Linear(a, b), torch.nn.ReLU())]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    taken = 0
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(batch_size):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            taken += 1
            if stamp and taken == 1:
                open(stamp, "w").write(repr(time.time()))
            if steps and taken >= steps:
                break
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            print(epoch, F.cross_entropy(out, y_val).item(), (out.argmax(1) == y_val).float().mean().item())
""")


def print_table(rows: list[dict]) -> None:
    print(f"\n{'case':<72} {'dl-run':>9} {'baseline':>9} {'ratio':>7}  {'target':<8} holds")
    for r in rows:
        if "skipped" in r:
            print(f"{r['case']:<72} skipped: {r['skipped']}")
            continue
        unit = r.get("unit", "s")
        values = [f"{r[k]:.2f}{'' if unit == 's' else ' ' + unit}" if r[k] is not None else "-"
                  for k in ("dl-run", "baseline")]
        ratio = f"{r['ratio']:.3f}" if r.get("ratio") is not None else "-"
        holds = "-" if r["holds"] is None else ("yes" if r["holds"] else "NO")
        print(f"{r['case']:<72} {values[0]:>9} {values[1]:>9} {ratio:>7}  {r['target']:<8} {holds}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-root", type=Path, default=REPO / "data",
                        help="folder holding MNIST/raw (default: data/ in the repository)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu, as the targets are stated)")
    parser.add_argument("--threads", default="auto", help="CPU threads for every variant (default: dl-run's auto)")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"groups to run (default all: {', '.join(GROUPS)})")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds per group, the variants back to back, taking turns going first (default "
                             f"{', '.join(f'{k} {v}' for k, v in DEFAULT_REPEATS.items())})")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="auto",
                        help="trainer.precision of dl-run and of every baseline alike: 32, bf16, fp16 or auto "
                             "(dl-run's own: 32 on a CPU, bf16 on a GPU that computes it natively, else fp16)")
    parser.add_argument("--steps", type=int, default=None, help="stop the MNIST trainings after this many steps")
    parser.add_argument("--skip-cnn", action="store_true", help="leave out the MNIST CNN rows (minutes on a CPU)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings, one round: checks that every group runs (its numbers mean nothing)")
    parser.add_argument("--speedrun", action="store_true", help="also run experiment=mnist_speedrun (default on GPU)")
    parser.add_argument("--json", type=Path, default=Path("outputs") / "benchmark.json", help="where the table goes")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.mnist_root = args.mnist_root.resolve()
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    needs_mnist = {"overhead", "framework", "logging", "memory"} & set(groups) or args.speedrun
    if needs_mnist and not (args.mnist_root / "MNIST" / "raw").is_dir():
        print(f"No MNIST files in {args.mnist_root / 'MNIST' / 'raw'}: give --mnist-root, the folder holding "
              f"MNIST/raw.", file=sys.stderr)
        return 2
    threads = resolve_threads(int(args.threads) if args.threads != "auto" else "auto", deterministic=False)
    torch.set_num_threads(threads)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    load = os.getloadavg()
    if args.precision == "auto":  # written out, so the table and its JSON say which precision every side ran in
        args.precision = auto_gpu_precision() if args.device.startswith("cuda") else "32"
    print(f"device {args.device} ({device_name}), {os.cpu_count()} cores, load {load[0]:.1f}, {threads} torch "
          f"thread(s), precision {args.precision} for dl-run and baselines, torch {torch.__version__}", flush=True)
    report: dict = {"device": args.device, "device_name": device_name, "precision": args.precision,
                    "cores": os.cpu_count(), "threads": threads,
                    "torch": torch.__version__, "load_at_start": load, "smoke": args.smoke,
                    "statistic": "median of the per-round ratios (variants back to back in each round); "
                                 "medians of seconds",
                    "rows": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, threads, Path(tmp))
        if "overhead" in groups or "framework" in groups:  # one set of rounds: dl-run paired with every baseline
            print("[overhead, framework]", flush=True)
            bench.group_overhead(frameworks="framework" in groups, bare="overhead" in groups)
        for group in GROUPS[2:]:
            if group in groups:
                print(f"[{group}]", flush=True)
                getattr(bench, f"group_{group}")()
        if args.speedrun or args.device.startswith("cuda"):
            bench.speedrun()
    report["rows"] = bench.rows
    report["load_at_end"] = os.getloadavg()
    report["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    print_table(bench.rows)
    print(f"\n{args.device} ({device_name}), {threads} torch thread(s); load {load[0]:.1f} at the start, "
          f"{report['load_at_end'][0]:.1f} at the end; ratio = median of per-round ratios; judged on "
          f"{'CPU' if args.device == 'cpu' else 'wall'} seconds")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"Table written to {args.json}")
    return 1 if any(r["holds"] is False for r in bench.rows) and not args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
