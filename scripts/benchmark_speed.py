"""The speed switches against the default, on one model: trainer.precision, trainer.compile, trainer.channels_last,
trainer.onednn_linear.

    python scripts/benchmark_speed.py --device cuda --root /path/to/data          # experiment=mnist_cnn on a GPU
    python scripts/benchmark_speed.py --device cpu --dataset digits --variants 32 bf16   # a quick look on a CPU
    python scripts/benchmark_speed.py --device cpu --root data --variants torch_linear \
        --extra model=mlp model.hidden=[256,128] trainer.batch_size=64 scheduler=none   # the CPU switches, an MLP

Each variant builds the same experiment (same seed, same weights), trains one warm-up epoch (torch.compile
compiles here; cuDNN picks its kernels) and then --epochs timed epochs, on fit's own clock (the steps, not
validation or checkpoints). Printed: seconds per timed epoch, the speedup over `32` (the baseline, measured in
the same process), the warm-up epoch's seconds (what compiling costs), and the test accuracy after training.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from dlrun.logger import NullLogger
from dlrun.run.experiment import Experiment
from dlrun.engine.trainer import Trainer, TrainingOutputs
from dlrun.run.run_directory import RunDirectory
from dlrun.tasks import evaluate

VARIANTS = {  # name: trainer overrides
    "32": ["trainer.precision=32"],
    "bf16": ["trainer.precision=bf16"],
    "bf16+compile": ["trainer.precision=bf16", "trainer.compile=true"],
    "bf16+compile+channels_last": ["trainer.precision=bf16", "trainer.compile=true", "trainer.channels_last=true"],
    # The CPU defaults turned off one at a time: `32` has them on where `auto` picks them.
    "nchw": ["trainer.precision=32", "trainer.channels_last=false"],
    "torch_linear": ["trainer.precision=32", "trainer.onednn_linear=false"],
}


def measure(overrides: list[str], epochs: int) -> dict[str, float]:
    """Warm-up epoch, then `epochs` timed ones; seconds and test accuracy."""
    with initialize_config_module(config_module="dlrun.configs", version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(cfg, Path(tmp))
        generator = torch.Generator().manual_seed(cfg["seed"])
        outputs = TrainingOutputs(RunDirectory(tmp), NullLogger())
        exp.opts.epochs = 1
        started = time.perf_counter()
        state = Trainer(exp.parts, outputs, generator=generator).fit()
        warmup = time.perf_counter() - started
        before = state.train_seconds
        exp.opts.epochs = 1 + epochs
        state = Trainer(exp.parts, outputs, state, generator).fit()
        test = evaluate(exp.model, exp.loss, exp.splits.x_test, exp.splits.y_test, exp.info,
                        exp.opts.eval_batch_size, exp.prepare)
    return {"epoch_seconds": (state.train_seconds - before) / epochs, "warmup_seconds": warmup,
            "test_accuracy": test.get("accuracy", float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--root", default="data", help="dataset.root: where MNIST is (or is downloaded to)")
    parser.add_argument("--dataset", default=None, help="another dataset than the experiment's MNIST, e.g. digits")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up one")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("--experiment", default="mnist_cnn", help="the preset; none = the default experiment")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every variant, e.g. model=mlp")
    args = parser.parse_args()
    # trainer.epochs: the schedule (onecycle) is built for the warm-up epoch plus the timed ones.
    preset = [] if args.experiment == "none" else [f"experiment={args.experiment}"]
    base = [*preset, f"trainer.device={args.device}", "trainer.progress=false", "logger=none",
            f"trainer.epochs={1 + args.epochs}"]
    base += [f"dataset={args.dataset}"] if args.dataset else [f"dataset.root={args.root}"]
    base += args.extra
    variants = ["32", *[v for v in args.variants if v != "32"]]  # the baseline always runs, first
    results = {name: measure(base + VARIANTS[name], args.epochs) for name in variants}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    dataset = f" dataset={args.dataset}" if args.dataset else ""
    print(f"experiment={args.experiment}{dataset} {' '.join(args.extra)} on {device}, "
          f"torch {torch.__version__}, {args.epochs} timed epoch(s) after one warm-up epoch")
    print(f"{'variant':<28} {'s/epoch':>9} {'speedup':>8} {'warm-up s':>10} {'test acc':>9}")
    baseline = results["32"]["epoch_seconds"]
    for name, r in results.items():
        print(f"{name:<28} {r['epoch_seconds']:>9.3f} {baseline / r['epoch_seconds']:>7.2f}x "
              f"{r['warmup_seconds']:>10.2f} {r['test_accuracy']:>9.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "results": results}, indent=2))


if __name__ == "__main__":
    main()
