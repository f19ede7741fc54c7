"""The search: asks Optuna for trials, launches them as Hydra jobs (job number = trial number, so a trial's folder is
the same when its sweep is resumed), and tells Optuna how each ended: complete, pruned or failed. A module whose name
starts with '_': Hydra's plugin scan, at every start of dl-run, skips it, so Optuna is imported only for a search."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial, TrialState

from dlrun.errors import ConfigError
from hydra_plugins.dlrun_optuna_sweeper.pruning import PRUNED_AT_EPOCH, build_pruner, check_pruner_name, storage_url
from hydra_plugins.dlrun_optuna_sweeper._search_space import search_space

log = logging.getLogger(__name__)


@dataclass
class SearchSettings:
    """hydra.sweeper's keys but the sampler (configs/hydra/sweeper/optuna.yaml says what each means)."""

    direction: str = "minimize"
    storage: str | None = None  # None: SQLite in the sweep folder
    study_name: str | None = "dl-run"
    n_trials: int = 20
    n_jobs: int = 1
    max_failure_rate: float = 0.0
    params: Any = None
    pruner: str = "none"
    pruning: Any = None


class OptunaSearch(Sweeper):
    """Hydra sweeper over an Optuna study: hydra.sweeper.params in Hydra's sweep syntax, a sampler, a pruner."""

    def __init__(self, sampler: Any, **settings: Any) -> None:
        self.sampler = sampler  # instantiated by Hydra from hydra/sweeper/sampler (grid: a partial, given the space)
        self.settings = SearchSettings(**settings)
        check_pruner_name(self.settings.pruner)
        if self.settings.direction not in ("minimize", "maximize"):
            raise ConfigError(f"hydra.sweeper.direction={self.settings.direction}: a dl-run trial returns one "
                              f"value, so the direction is minimize or maximize.", key="hydra.sweeper.direction")
        if not 0.0 <= self.settings.max_failure_rate <= 1.0:
            raise ConfigError(f"hydra.sweeper.max_failure_rate={self.settings.max_failure_rate}: a share of "
                              f"trials, from 0.0 to 1.0.", key="hydra.sweeper.max_failure_rate")
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        """Run the study to n_trials trials in all; a resumed sweep first finishes the trials its stop cut short."""
        settings, config = self.settings, self.config
        params = [f"{key}={value}" for key, value in (settings.params or {}).items()]
        space, fixed = search_space(params + list(arguments))
        sampler, n_trials = self._sampler(space)
        sweep_dir = config.hydra.sweep.dir
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial's end is logged here, once
        study = optuna.create_study(study_name=settings.study_name or "dl-run",
                                    storage=storage_url(settings.storage, sweep_dir), sampler=sampler,
                                    pruner=build_pruner(settings.pruner, settings.pruning),
                                    direction=settings.direction, load_if_exists=True)
        unfinished = self._resume(study, space) if OmegaConf.select(config, "sweep.resume", default=False) else []
        for start in range(0, len(unfinished), settings.n_jobs):
            self._run_batch(study, unfinished[start:start + settings.n_jobs], space, fixed)
        while len(study.trials) < n_trials:
            batch = min(n_trials - len(study.trials), settings.n_jobs)
            self._run_batch(study, [study.ask() for _ in range(batch)], space, fixed)
        save_results(study, Path(sweep_dir))

    def _resume(self, study: optuna.Study, space: dict[str, BaseDistribution]) -> list[Trial]:
        """The trials a stop cut short (left RUNNING), to run again with their values; a seeded sampler moves on."""
        refuse_changed_space(study, space)
        unfinished = [Trial(study, t._trial_id) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        node = self.config.hydra.sweeper.get("sampler")
        if node is not None and node.get("seed") is not None and not node.get("_partial_"):
            from hydra.utils import instantiate

            # Started again with its seed, it would draw the first trials' values again: the seed moves on by the
            # number of trials the study holds, so a resumed search is as repeatable as one that never stopped.
            study.sampler = instantiate(node, seed=int(node.seed) + len(study.trials))
        log.info(f"Resuming study {study.study_name}: {len(study.trials)} trials so far, {len(unfinished)} to finish")
        return unfinished

    def _sampler(self, space: dict[str, BaseDistribution]) -> tuple[optuna.samplers.BaseSampler, int]:
        """The sampler, and the number of trials (a grid has at most as many trials as points)."""
        sampler, n_trials = self.sampler, self.settings.n_trials
        if isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler:
            grid = {name: grid_points(name, dist) for name, dist in space.items()}
            sampler = sampler(grid)
            n_trials = min(n_trials, math.prod(len(points) for points in grid.values()))
        return sampler, n_trials

    def _run_batch(self, study: optuna.Study, trials: list[Trial], space: dict[str, BaseDistribution],
                   fixed: dict[str, Any]) -> None:
        """Launch the trials (side by side with a parallel launcher) and tell the study how each ended."""
        overrides = [trial_overrides(trial, space, fixed) for trial in trials]
        returns: list[JobReturn] = []
        for start, count in consecutive_runs([trial.number for trial in trials]):
            # The job's number is the trial's: trial_<n> is the same folder when the sweep is resumed.
            returns += self.launcher.launch(overrides[start:start + count], initial_job_idx=trials[start].number)
        failures = sum(not tell(study, trial, job) for trial, job in zip(trials, returns))
        if failures / len(returns) > self.settings.max_failure_rate:
            for job in returns:
                _ = job.return_value  # raises the first failed job's own error, if one raised
            raise RuntimeError(f"{failures} of {len(returns)} trials failed, more than hydra.sweeper.max_failure_rate="
                               f"{self.settings.max_failure_rate} allows: the search stops (the failed trials' errors "
                               f"are above; max_failure_rate=1.0 records them and goes on).")


def trial_overrides(trial: Trial, space: dict[str, BaseDistribution], fixed: dict[str, Any]) -> tuple[str, ...]:
    """The trial's values as overrides (a trial resumed from its storage keeps the values it had), then the fixed
    ones."""
    values = {name: trial._suggest(name, dist) for name, dist in space.items()}
    return tuple(f"{name}={value}" for name, value in {**values, **fixed}.items())


def tell(study: optuna.Study, trial: Trial, job: JobReturn) -> bool:
    """Record how a trial's job ended: its value, pruned (at the epoch its job set), or failed; False if failed."""
    try:
        value = float(job.return_value)  # a job that raised raises here; dl-run returns None for a failed run
    except Exception as err:  # noqa: BLE001 - a failed trial is recorded and the study goes on
        log.warning(f"Trial {trial.number} failed: {err if str(err) else type(err).__name__}")
        study.tell(trial, state=TrialState.FAIL)
        return False
    pruned_at = study._storage.get_trial(trial._trial_id).user_attrs.get(PRUNED_AT_EPOCH)
    if pruned_at is not None:
        log.info(f"Trial {trial.number} pruned at epoch {pruned_at}")
        study.tell(trial, state=TrialState.PRUNED)
        return True
    if not math.isfinite(value):
        study.tell(trial, state=TrialState.FAIL)
        return False
    study.tell(trial, value)
    log.info(f"Trial {trial.number}: {value:.6g}")
    return True


def consecutive_runs(numbers: Sequence[int]) -> list[tuple[int, int]]:
    """(index, length) of each run of consecutive numbers: one launch each, so job numbers follow trial numbers."""
    runs: list[tuple[int, int]] = []
    for i, number in enumerate(numbers):
        if runs and numbers[i - 1] == number - 1:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def grid_points(name: str, dist: BaseDistribution) -> list[Any]:
    """The points of a discrete distribution, for hydra/sweeper/sampler=grid."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, (IntDistribution, FloatDistribution)) and dist.step is not None and not dist.log:
        count = int(round((dist.high - dist.low) / dist.step)) + 1
        return [dist.low + i * dist.step for i in range(count)]
    raise ConfigError(f"hydra.sweeper.params.{name}: the grid sampler takes choice(...) or range(...), not an "
                      f"interval.", key=f"hydra.sweeper.params.{name}")


def refuse_changed_space(study: optuna.Study, space: dict[str, BaseDistribution]) -> None:
    """A resumed search samples the space its trials were sampled from: a changed one is refused, listing it."""
    earlier: dict[str, BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        earlier.update(trial.distributions)
    if not earlier:
        return
    changed = [f"{name}: {earlier.get(name)} -> {space.get(name)}" for name in sorted(set(earlier) | set(space))
               if earlier.get(name) != space.get(name)]
    if changed:
        raise ConfigError("The search space differs from the one the stopped sweep sampled: " + "; ".join(changed)
                          + ". Resume with the same hydra.sweeper.params, or start a new sweep.",
                          key="hydra.sweeper.params")


def save_results(study: optuna.Study, sweep_dir: Path) -> None:
    """optimization_results.yaml beside the trials: how many ended each way, and the best trial."""
    counts = {state.name.lower(): sum(t.state == state for t in study.trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "trials": len(study.trials),
                               **counts}
    if counts["complete"]:
        trial = study.best_trial
        results.update(best_trial=trial.number, best_params=trial.params, best_value=trial.value)
    best = f"; best: trial {results['best_trial']}, value {results['best_value']:.6g}" if counts["complete"] else ""
    log.info(f"Study {study.study_name}: {len(study.trials)} trials, {counts['complete']} complete, "
             f"{counts['pruned']} pruned, {counts['fail']} failed{best}")
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
