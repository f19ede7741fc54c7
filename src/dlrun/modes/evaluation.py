"""mode=eval: score a trained run again, on its own dataset or another one with the same inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlrun.modes.trained import load_trained, refuse_without_run
from dlrun.views import console

if TYPE_CHECKING:
    from dlrun.run.experiment import Experiment


def run_eval(exp: Experiment, overrides: list[str]) -> dict[str, Any]:
    """mode=eval resume=<run dir>: score the trained model on every split (of its dataset, or another one)."""
    refuse_without_run(exp)
    out = exp.directory.output(exp.directory.file(f"eval_{exp.info.name}.json"), "overwrite",
                               bool(exp.cfg.get("overwrite")))  # before scoring: an earlier result is kept
    path = load_trained(exp)
    results = exp.score_every_split()  # the run's task scores it
    console.results_table(results, title=f"{exp.run_dir.name} ({path.name}) on dataset {exp.info.name}")
    metrics = {"status": "completed", "mode": "eval", "dataset": exp.info.name, "checkpoint": str(path),
               "test": results["test"], "evaluation": results, "overrides": overrides,
               "data_warnings": exp.data.warnings}
    exp.directory.write_json(out.name, metrics)
    console.console.print(f"Written: {out}", soft_wrap=True)
    return metrics
