"""Sequence models side by side: test scores and training seconds, means over seeds (issue #20's figures).

    python scripts/compare_sequence_models.py                      # patterns and digits_rows: cnn, lstm, gru, tcn
    python scripts/compare_sequence_models.py --datasets sine --models cnn tcn --extra dataset.input_length=50 \
        dataset.period=50                                         # forecasting: beside the naive forecasts
    python scripts/compare_sequence_models.py --epochs 50 --seeds 0 --out /tmp/compare

Each dataset is one `dl-run -m` sweep over seeds x models (one job after another, the models taking turns, 1 CPU
thread each, so that the seconds compare), with every model's and dataset's YAML defaults and the same epochs (20:
the trainer's 50 would take the 24 runs of the first command about an hour on a busy 2-core machine). Printed per
dataset: one row per model, the mean (and spread) over the seeds of the test accuracy (classification) or RMSE in
the series' units (forecasting, beside the naive and seasonal-naive forecasts of the same windows), and of
`train_seconds` from metrics.json (the training loop's clock: steps and validation, not start-up).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BASELINES = ("naive_rmse", "seasonal_naive_rmse")


def _sweep(command: list[str], dataset: str, models: list[str], seeds: list[int], epochs: int, extra: list[str],
           folder: Path) -> list[dict]:
    """One dl-run sweep; the metrics.json of each of its jobs."""
    # seed before model: the models take turns, so that a machine busier at some moment slows them alike
    args = [*command, "-m", f"dataset={dataset}", f"seed={','.join(map(str, seeds))}", f"model={','.join(models)}",
            f"trainer.epochs={epochs}", "trainer.threads=1", "trainer.device=cpu", "trainer.progress=false",
            f"hydra.sweep.dir={folder}", *extra]
    print("$", shlex.join(args), flush=True)
    done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the sweep failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*/metrics.json"))]


def _model(metrics: dict) -> str:
    return next(o.split("=", 1)[1] for o in metrics["overrides"] if o.startswith("model="))


def _mean(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.3f}{spread}"


def table(runs: list[dict], models: list[str]) -> str:
    """A markdown table of means over the seeds, one row per model."""
    classification = runs[0]["task"] == "classification"
    score = "accuracy" if classification else "rmse"
    baselines = [] if classification else [b for b in BASELINES if b in runs[0]["test"]]
    lines = [f"| model | seeds | test {score} | {' | '.join(f'test {b}' for b in baselines)}"
             f"{' | ' if baselines else ''}train seconds |"]
    lines.append("|" + "---|" * (4 + len(baselines)))
    for model in models:
        mine = [r for r in runs if _model(r) == model]
        cells = [model, str(len(mine)), _mean([r["test"][score] for r in mine]),
                 *(_mean([r["test"][b] for r in mine]) for b in baselines), _mean([r["train_seconds"] for r in mine])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["patterns", "digits_rows"])
    parser.add_argument("--models", nargs="+", default=["cnn", "lstm", "gru", "tcn"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="the same for every model")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run, e.g. dataset.period=11")
    parser.add_argument("--out", type=Path, default=None, help="a new folder for the sweeps (default: a temporary one)")
    parser.add_argument("--dl-run", default="dl-run", help="the command that runs dl-run")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="compare_sequence_models_"))
    for dataset in args.datasets:
        runs = _sweep(shlex.split(args.dl_run), dataset, args.models, args.seeds, args.epochs, args.extra,
                      out / dataset)
        seeds = " ".join(map(str, args.seeds))
        print(f"\n{dataset}, {args.epochs} epochs, seeds {seeds}:\n{table(runs, args.models)}\n", flush=True)


if __name__ == "__main__":
    main()
