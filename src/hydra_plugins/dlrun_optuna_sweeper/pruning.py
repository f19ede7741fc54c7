"""Pruning: a trial reports its monitored validation value at the end of each epoch and stops there when the
pruner gives up on it. The sweeper builds the pruner for its study; each trial's job (in the sweeper's process or a
joblib worker) opens the study from its storage and reports to its own trial, found by its job number."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlrun.errors import ConfigError
from dlrun.registry import closest

if TYPE_CHECKING:
    import optuna
    from omegaconf import DictConfig

# hydra.sweeper.pruner: name -> what it does (docs and the error for a name that does not exist).
PRUNER_NAMES = ("median", "hyperband", "none")
# The user attribute a trial's job sets when its pruner stopped it: the sweeper then records the trial as pruned.
PRUNED_AT_EPOCH = "dlrun_pruned_at_epoch"
DEFAULT_STORAGE_FILE = "optuna.db"


def check_pruner_name(name: object) -> str:
    """The pruner's name, or ConfigError naming the valid ones."""
    if name in PRUNER_NAMES:
        return str(name)
    guess = closest(str(name), list(PRUNER_NAMES))
    raise ConfigError(f"Unknown pruner 'hydra.sweeper.pruner={name}'. Valid pruners: {', '.join(PRUNER_NAMES)} "
                      f"(median: stop a trial whose value is worse than the median of earlier trials at the same "
                      f"epoch; hyperband: successive halving over epochs; none: every trial runs all its epochs)."
                      + (f" Did you mean '{guess}'?" if guess else ""), key="hydra.sweeper.pruner")


def build_pruner(name: str, options: dict[str, Any] | None) -> optuna.pruners.BasePruner:
    """The Optuna pruner `name` (median, hyperband, none) with its hydra.sweeper.pruning options."""
    import optuna

    options = dict(options or {})
    name = check_pruner_name(name)
    if name == "median":  # no decision before n_warmup_steps epochs: early curves cross (a high lr starts fast)
        return optuna.pruners.MedianPruner(n_startup_trials=int(options.get("n_startup_trials", 5)),
                                           n_warmup_steps=int(options.get("n_warmup_steps", 0)),
                                           interval_steps=int(options.get("interval_steps", 1)))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=int(options.get("min_resource", 1)),
                                              max_resource=options.get("max_resource", "auto"),
                                              reduction_factor=int(options.get("reduction_factor", 3)))
    return optuna.pruners.NopPruner()


def storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """The study's storage: the one given, else SQLite inside the sweep folder, so resuming the sweep continues it."""
    if storage:
        return str(storage)
    return f"sqlite:///{(Path(sweep_dir) / DEFAULT_STORAGE_FILE).resolve()}"


class TrialPruning:
    """Told each epoch's monitored validation value: reports it to the trial and answers True (stop) when the
    pruner gives up on it; `pruned_at` is then that epoch."""

    def __init__(self, trial: optuna.trial.Trial) -> None:
        self.trial = trial
        self.pruned_at: int | None = None

    def __call__(self, epoch: int, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False  # a NaN loss stops the run on its own; the trial is recorded as failed
        self.trial.report(value, epoch)
        if not self.trial.should_prune():
            return False
        self.trial.set_user_attr(PRUNED_AT_EPOCH, epoch)
        self.pruned_at = epoch
        return True


def job_pruning(hydra_cfg: DictConfig) -> TrialPruning | None:
    """This job's pruning, when its sweep is a search with a pruner; the job's number is its trial's number."""
    sweeper = hydra_cfg.sweeper
    if sweeper.get("pruner", "none") == "none":
        return None
    import optuna

    study = optuna.load_study(study_name=sweeper.get("study_name") or "dl-run",
                              storage=storage_url(sweeper.get("storage"), hydra_cfg.sweep.dir),
                              sampler=optuna.samplers.RandomSampler(),  # never asked: the sweeper samples
                              pruner=build_pruner(sweeper.pruner, sweeper.get("pruning")))
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, hydra_cfg.job.num)
    return TrialPruning(optuna.trial.Trial(study, trial_id))
