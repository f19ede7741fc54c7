"""Sweeps on Hydra's plugins: jobs in parallel (joblib), an Optuna search; a missing plugin names its pip command."""

from __future__ import annotations

import csv
import json

import pytest

from omegaconf import OmegaConf

from dlrun.run import preflight
from dlrun.cli import SweepDirectory
from dlrun.errors import ConfigError

TINY = ("dataset=digits", "model.hidden=[8]", "trainer.progress=false", "trainer.device=cpu", "logger=none")


def _sweep_dir(cwd):
    (summary,) = (cwd / "outputs" / "multirun").rglob("summary.csv")
    return summary.parent, list(csv.DictReader(summary.open()))


def test_joblib_runs_the_jobs_side_by_side_and_the_summary_covers_them(dl_run, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = dl_run("-m", "hydra/launcher=joblib", "optimizer=adam,sgd", "optimizer.lr=0.1,0.01", "trainer.epochs=2",
                    *TINY)
    assert result.code == 0, result.output[-3000:]
    sweep, rows = _sweep_dir(tmp_path)
    assert sorted(" ".join(sorted(r["job"].split()[:2])) for r in rows) == [
        "optimizer.lr=0.01 optimizer=adam", "optimizer.lr=0.01 optimizer=sgd", "optimizer.lr=0.1 optimizer=adam",
        "optimizer.lr=0.1 optimizer=sgd"]
    assert all(r["status"] == "completed" for r in rows)
    # Each worker's share of the cores (joblib's OMP_NUM_THREADS: all cores over n_jobs=-1 workers), not the cores
    # the load average saw free when the jobs started.
    assert result.output.count("(1 CPU thread)") == 4 and "CPU threads)" not in result.output, result.output
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert len(jobs) == 4  # one sweep directory for all: the worker processes agree on it
    # Each job's own options and values, though a worker's later jobs share its first one's composition of the
    # YAML files (run/sweep_compose.py): its recorded config, and what it ran with.
    ran = set()
    for job in jobs:
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert config.optimizer.name == OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.runtime.choices.optimizer
        assert {f"optimizer={config.optimizer.name}", f"optimizer.lr={config.optimizer.lr:g}"} <= set(
            json.loads((job / "metrics.json").read_text())["overrides"])
        ran.add((config.optimizer.name, config.optimizer.lr))
    assert ran == {("adam", 0.1), ("adam", 0.01), ("sgd", 0.1), ("sgd", 0.01)}
    # In parallel: some job started (Hydra wrote its config) before another one finished.
    spans = [((job / ".hydra" / "config.yaml").stat().st_mtime, (job / "metrics.json").stat().st_mtime)
             for job in jobs]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])
    assert "Best: val/loss" in result.output and "Train it again:\n  dl-run optimizer" in result.output


def test_an_optuna_search_records_a_diverging_trial_as_failed_and_prints_the_best(dl_run, tmp_path):
    pytest.importorskip("optuna")  # dl-run's own sweeper (tests/test_optuna_sweeper.py) runs it
    # Two learning rates instead of the preset's space: one makes the loss NaN at once. The random sampler's
    # seed (0, from the preset) draws both among three trials.
    result = dl_run("-m", "hparams_search=optuna", "hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=3",
                    "hydra.sweeper.params=null", "optimizer=sgd", "optimizer.lr=choice(0.05,1e30)", "trainer.epochs=2",
                    *TINY)
    assert result.code == 0, result.output[-3000:]  # a search that found a best trial succeeded
    sweep, rows = _sweep_dir(tmp_path)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"completed", "failed"}
    failed = [r for r in rows if r["status"] == "failed"]
    assert all("optimizer.lr=1e+30" in r["job"] and "loss became nan" in r["error"].lower() for r in failed)
    # Optuna's own record: the best value is the monitored metric of the completed trial.
    completed = min((r for r in rows if r["status"] == "completed"), key=lambda r: float(r["val/loss"]))
    results = (sweep / "optimization_results.yaml").read_text()
    assert f"best_value: {float(completed['val/loss'])}"[:20] in results
    assert "Train it again:\n  dl-run optimizer.lr=0.05" in result.output
    best_line = result.output.split("Train it again:\n  dl-run ")[1].splitlines()[0]
    assert "hparams_search" not in best_line  # the command trains that trial, it does not search again


def test_a_launcher_that_is_not_installed_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(preflight.PLUGINS, ("hydra/launcher", "joblib"),
                        ("hydra_plugins.not_installed_launcher", "hydra-joblib-launcher", "sweep"))
    with pytest.raises(ConfigError, match=r"pip install hydra-joblib-launcher .*pip install -e \"\.\[sweep\]\"") as err:
        preflight.check(["-m", "hydra/launcher=joblib", "optimizer.lr=0.1,0.01"])
    assert err.value.key == "hydra/launcher"


def test_a_search_whose_direction_contradicts_the_monitor_stops_before_any_trial(capsys):
    config = OmegaConf.create({"trainer": {"monitor": "val/accuracy"}, "sweep": {"resume": False}, "hydra": {"sweep": {"dir": "outputs/x"}, "sweeper": {
        "_target_": "hydra_plugins.dlrun_optuna_sweeper.sweeper.OptunaSweeper", "direction": "minimize"}}})
    with pytest.raises(SystemExit) as stopped:
        SweepDirectory().on_multirun_start(config)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "hydra.sweeper.direction=minimize' but trainer.monitor=val/accuracy" in err
    assert "set hydra.sweeper.direction=maximize" in err
