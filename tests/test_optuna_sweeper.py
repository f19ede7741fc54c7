"""dl-run's own Optuna sweeper (hydra_plugins.dlrun_optuna_sweeper, Optuna >= 4): a hopeless trial is pruned at the
end of an epoch, in the sweeper's process and in a joblib worker, and recorded as pruned; the study lives in the
sweep folder, so `dl-run resume=<sweep dir>` finishes a trial that a stop cut short, with its values and number;
a pruner that does not exist is refused before anything is written; ours runs where hydra-optuna-sweeper is
installed too. Every search here is the real `dl-run` script."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import DL_RUN, user_env

optuna = pytest.importorskip("optuna")

TINY = ("dataset=digits", "dataset.train_fraction=0.2", "model.hidden=[8]", "trainer.progress=false",
        "trainer.device=cpu", "trainer.threads=1", "logger=none")
# Two learning rates instead of the preset's space. The random sampler's seed 10 gives trial 0 lr=0.05 (it learns)
# and trial 1 lr=1e-7 (it does not): with one finished trial and no warm-up, the median pruner stops trial 1 at the
# end of its first epoch.
SEARCH = ("-m", "hparams_search=optuna", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=10",
          "hydra.sweeper.params=null", "optimizer.lr=choice(0.05,1e-7)", "hydra.sweeper.n_trials=2",
          "hydra.sweeper.pruner=median", "hydra.sweeper.pruning.n_startup_trials=1",
          "hydra.sweeper.pruning.n_warmup_steps=0", "trainer.epochs=2", *TINY)
OURS = "hydra_plugins.dlrun_optuna_sweeper.sweeper.OptunaSweeper"


def run(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The dl-run script itself, as a subprocess."""
    return subprocess.run([DL_RUN, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout,
                          env=user_env())


def study_of(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="dl-run", storage=f"sqlite:///{sweep / 'optuna.db'}")


def summary_rows(sweep: Path) -> dict[str, dict]:
    """summary.csv's rows by the trial folder's name."""
    return {Path(r["run_dir"]).name: r for r in csv.DictReader((sweep / "summary.csv").open())}


@pytest.fixture(scope="module")
def searched(tmp_path_factory, fork_server) -> Path:
    """The two-trial search, run once in the sweeper's own process (Hydra's basic launcher)."""
    workdir = tmp_path_factory.mktemp("optuna")
    done = fork_server.run([*SEARCH, "hydra.sweep.dir=search"], workdir, user_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir / "search"


def check_pruned_search(sweep: Path) -> None:
    """Trial 0 ran its 2 epochs; trial 1 was stopped by the pruner after its first, in Optuna's record and in
    dl-run's (metrics.json, summary.csv, optimization_results.yaml)."""
    study = study_of(sweep)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    assert [t.params["optimizer.lr"] for t in study.trials] == [0.05, 1e-7]
    assert sorted(study.trials[0].intermediate_values) == [1, 2]  # epochs are the pruner's steps
    assert sorted(study.trials[1].intermediate_values) == [1]
    pruned = json.loads((sweep / "trial_1" / "metrics.json").read_text())
    assert pruned["pruned_at_epoch"] == 1 and pruned["epochs_run"] == 1 and pruned["stopped_early"]
    assert study.trials[1].intermediate_values[1] == pytest.approx(pruned["history"][0]["val/loss"])
    kept = json.loads((sweep / "trial_0" / "metrics.json").read_text())
    assert kept["pruned_at_epoch"] is None and kept["epochs_run"] == 2
    assert study.trials[0].value == pytest.approx(kept["best"]["value"])
    rows = summary_rows(sweep)
    assert (rows["trial_0"]["status"], rows["trial_0"]["epochs"]) == ("completed", "2")
    assert (rows["trial_1"]["status"], rows["trial_1"]["epochs"]) == ("pruned", "1")
    results = (sweep / "optimization_results.yaml").read_text()
    assert "complete: 1" in results and "pruned: 1" in results and "best_trial: 0" in results


def test_a_hopeless_trial_is_pruned_after_its_first_epoch_and_recorded_as_pruned(searched):
    check_pruned_search(searched)
    # The sweeper that ran is dl-run's (hydra-optuna-sweeper, if installed too, could not prune or store here).
    assert f"_target_: {OURS}" in (searched / "multirun.yaml").read_text()


@pytest.mark.slow  # the same job-side code as in-process (it opens the study from its storage there too)
def test_a_trial_in_a_joblib_worker_reports_to_the_study_and_is_pruned_there(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    done = run(tmp_path, *SEARCH, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=search")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Joblib.Parallel" in done.stdout + done.stderr  # the trials ran in the launcher's worker processes
    check_pruned_search(tmp_path / "search")


def test_our_sweeper_is_the_one_composed_where_hydra_optuna_sweeper_is_installed_too():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # the old plugin stores configs of the same names
    from hydra import compose, initialize_config_module
    from hydra.core.config_store import ConfigStore

    with initialize_config_module(config_module="dlrun.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hparams_search=optuna", "hydra/sweeper/sampler=random"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == OURS
    assert cfg.hydra.sweeper.pruner == "median" and cfg.hydra.sweeper.sampler._target_ == "optuna.samplers.RandomSampler"
    assert "optuna.yaml" not in ConfigStore.instance().repo["hydra"]["sweeper"]  # the old one's was set aside


def test_resume_finishes_a_trial_cut_short_with_its_values_and_number_and_repeats_none(searched, tmp_path, dl_run):
    sweep = tmp_path / "search"
    subprocess.run(["cp", "-a", str(searched), str(sweep)], check=True)
    before = {name: (sweep / name / "metrics.json").read_bytes() for name in ("trial_0", "trial_1")}
    # A trial the sweeper had asked for and given its values when the sweep was killed: RUNNING in the study.
    study = study_of(sweep)
    cut_short = study.ask()
    from hydra_plugins.dlrun_optuna_sweeper._search_space import search_space

    space, _ = search_space(["optimizer.lr=choice(0.05,1e-7)"])
    cut_short._suggest("optimizer.lr", space["optimizer.lr"])
    lr = cut_short.params["optimizer.lr"]
    done = dl_run(f"resume={sweep}")
    assert done.code == 0, done.output[-3000:]
    study = study_of(sweep)
    assert [t.number for t in study.trials] == [0, 1, 2]  # n_trials counts them all: no new one
    assert study.trials[2].state.name in ("COMPLETE", "PRUNED") and study.trials[2].params == {"optimizer.lr": lr}
    assert f"optimizer.lr={lr}" in (sweep / "trial_2" / ".hydra" / "overrides.yaml").read_text()
    assert {name: (sweep / name / "metrics.json").read_bytes() for name in before} == before  # not run again
    assert set(summary_rows(sweep)) == {"trial_0", "trial_1", "trial_2"}


def test_an_unknown_pruner_is_refused_naming_the_valid_ones_and_nothing_is_written(tmp_path, dl_run):
    done = dl_run("-m", "hparams_search=optuna", "hydra.sweeper.pruner=medain", "hydra.sweep.dir=search", *TINY)
    assert done.code == 2, done.output
    assert "hydra.sweeper.pruner=medain" in done.stderr and "median, hyperband, none" in done.stderr
    assert "Did you mean 'median'?" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_search_of_12_trials_killed_while_trial_5_trains_ends_with_trials_0_to_11_none_repeated(tmp_path):
    args = ("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=12", "hydra/sweeper/sampler=random",
            "hydra.sweeper.sampler.seed=3", "trainer.epochs=3", *TINY, "hydra.sweep.dir=search")
    sweep = tmp_path / "search"
    proc = subprocess.Popen([DL_RUN, *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=user_env(), start_new_session=True)
    deadline = time.monotonic() + 600
    while not (sweep / "trial_5" / "checkpoints" / "last.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    study = study_of(sweep)
    cut_short = [t for t in study.trials if t.state.name == "RUNNING"]
    assert [t.number for t in cut_short] == [5]
    done = run(tmp_path, f"resume={sweep}", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study = study_of(sweep)
    assert [t.number for t in study.trials] == list(range(12))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 12  # no values drawn twice
    for trial in cut_short:  # same values, same number, resumed from its checkpoint
        assert study.trials[trial.number].params == trial.params
    assert "Resuming from epoch" in done.stdout
    assert len(summary_rows(sweep)) == 12


def test_a_range_given_on_the_command_line_passes_the_check_before_hydra():
    from dlrun.run import preflight

    # An interval is a search's continuous range: the check before Hydra once failed on it ("Can only enumerate").
    preflight.check(["-m", "hydra/sweeper=optuna", "optimizer.lr=tag(log,interval(1e-4,1e-1))", "model.dropout=interval(0,0.5)"])


def test_each_pruner_name_builds_its_pruner_and_an_unknown_one_names_the_key():
    from dlrun.errors import ConfigError
    from hydra_plugins.dlrun_optuna_sweeper.pruning import build_pruner

    median = build_pruner("median", {"n_startup_trials": 3, "n_warmup_steps": 2})
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert isinstance(build_pruner("hyperband", {"min_resource": 2}), optuna.pruners.HyperbandPruner)
    assert isinstance(build_pruner("none", None), optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match=r"hydra.sweeper.pruner=hyperbnd.*Did you mean 'hyperband'") as err:
        build_pruner("hyperbnd", None)
    assert err.value.key == "hydra.sweeper.pruner"


def test_a_resumed_search_whose_space_changed_is_refused_listing_the_change():
    from dlrun.errors import ConfigError
    from hydra_plugins.dlrun_optuna_sweeper._search import refuse_changed_space
    from hydra_plugins.dlrun_optuna_sweeper._search_space import search_space

    # The preset's file edited between the stop and the resume: the command line is the same, the space is not.
    before, _ = search_space(["optimizer.lr=tag(log,interval(1e-4,1e-1))", "trainer.batch_size=choice(32,64)"])
    study = optuna.create_study()
    trial = study.ask()
    for name, dist in before.items():
        trial._suggest(name, dist)
    refuse_changed_space(study, before)  # the same space: resumed
    after, _ = search_space(["optimizer.lr=tag(log,interval(1e-3,1e-1))", "trainer.batch_size=choice(32,64)"])
    with pytest.raises(ConfigError, match=r"optimizer.lr: FloatDistribution\(.*low=0.0001.*-> FloatDistribution\(.*low=0.001") as err:
        refuse_changed_space(study, after)
    assert "trainer.batch_size" not in str(err.value) and err.value.key == "hydra.sweeper.params"
