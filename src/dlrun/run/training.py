"""Training one experiment, as named steps: start or resume, announce, train, score the best checkpoint, report."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dlrun.data.reuse import DatasetCache
from dlrun.diagnostics.curves import Verdict
from dlrun.diagnostics.gradients import GradientMonitor
from dlrun.diagnostics.startup import batch_summary
from dlrun.diagnostics.timing import CLOCK, phase
from dlrun.engine import distributed
from dlrun.engine.resume import TrainState, restore
from dlrun.engine.signals import Interrupted, StopOnSignal
from dlrun.engine.trainer import Trainer, TrainingOutputs
from dlrun.errors import ConfigError
from dlrun.logger import Logger, NullLogger
from dlrun.loggers import build_logger, checkpoint_state, close_logger
from dlrun.run.experiment import Experiment, hparams_of
from dlrun.views import all_of, console


def run(cfg_node: DictConfig, run_dir: Path, overrides: list[str],
        datasets: DatasetCache | None = None) -> dict[str, Any]:
    """Train (or resume) one experiment, or run its mode; return what metrics.json holds."""
    from dlrun.modes import MODES

    cfg = OmegaConf.to_container(cfg_node, resolve=True)
    started = time.perf_counter()
    with phase("build the experiment"):
        exp = Experiment(cfg, run_dir, datasets)
    mode = MODES[cfg["mode"]]
    if mode is not None:
        return mode(exp, overrides)
    training = TrainingRun(exp, cfg_node, overrides, started)
    with phase("start: config tree, model table, start-up check"):
        training.start_or_resume()
        training.announce()
    with training.logging():  # open until the report is written: MLflow takes metrics.json and curves.png
        with phase("train"):
            training.train()
        if not distributed.is_main():
            return {"status": "completed", "mode": "train", "rank": distributed.rank()}  # rank 0 scores and reports
        with phase("score the best checkpoint, test views"):
            training.score_best()
        with phase("report: results, curves.png, metrics.json"):
            metrics = training.report()
    if exp.opts.profile:
        training.profile()
    return metrics


class TrainingRun:
    """The steps of `dl-run` in train mode, over one Experiment and its run directory."""

    def __init__(self, exp: Experiment, cfg_node: DictConfig, overrides: list[str], started: float) -> None:
        self.exp, self.cfg_node, self.overrides, self.started = exp, cfg_node, overrides, started
        self.cfg = exp.cfg
        self.directory = exp.directory
        self.generator = torch.Generator().manual_seed(self.cfg["seed"])
        self.state: TrainState | None = None
        self.chance: float | None = None
        self.initial: tuple[float | None, str | None] = (None, None)
        self.vanishing: str | None = None
        self.gradient_ratio: float | None = None
        # What the run measured before a resume, carried by its checkpoints: the start-up check made before its first
        # step (initial loss, chance, warning), and the gradient monitor's statistics.
        self.startup: dict[str, Any] | None = None
        self.monitor_state: dict[str, Any] | None = None
        self.logger_state: dict[str, Any] | None = None
        self.pruning = search_pruning()  # a search's pruner, told each epoch's monitored value; None in other runs

    # ---- start or resume ------------------------------------------------------------------------------------------

    def start_or_resume(self) -> None:
        """A new run prints its config; `resume=` (or a cluster's requeue) puts the run back where it stopped."""
        # A job that a cluster tool requeued after pre-empting it starts again in its own run directory.
        requeued = (not self.cfg.get("resume") and bool(os.environ.get("SUBMITIT_EXECUTOR"))
                    and self.directory.has_checkpoint())
        if self.cfg.get("resume") or requeued:
            self._resume(requeued)
        else:
            console.config_tree(self.cfg)
        for leftover in self.directory.remove_temporary() if distributed.is_main() else []:
            console.console.print(f"Removed {leftover.name}, a checkpoint whose writing was interrupted.")

    def _resume(self, requeued: bool) -> None:
        ckpt, path, problems = self.directory.load_latest()
        refuse_changed_optimizer(self.cfg, ckpt.get("config"), path)
        self.state = state = restore(ckpt, self.exp.parts, self.generator, path)
        # A checkpoint written before dl-run kept them has neither: its run falls back to what dl-run did then, the
        # start-up check measured again at each resume and the gradient flow measured from the resume on.
        self.startup, self.monitor_state = ckpt.get("startup_check"), ckpt.get("gradient_monitor")
        self.logger_state = ckpt.get("logger")  # e.g. the MLflow run to continue (absent from older checkpoints)
        # Only now, with the config and checkpoint proved good, is anything in the run directory changed.
        for problem in problems:
            console.print_warning(f"{problem}. Resuming from the previous good checkpoint, {path}, instead.")
        if distributed.launched():
            distributed.broadcast(None)  # every rank has read the checkpoint before rank 0 moves any file
        if problems and distributed.is_main():
            self.directory.set_aside_last()
        if not requeued and distributed.is_main():
            self.directory.record_config(self.cfg_node, self.overrides)
        within = f" (batch {state.batch} of epoch {state.epoch + 1})" if state.batch else ""
        console.console.print(f"{'Requeued: r' if requeued else 'R'}esuming from epoch {state.epoch}, step "
                              f"{state.step}{within} ({path})")

    # ---- announce -------------------------------------------------------------------------------------------------

    def announce(self) -> None:
        """The model table, the device and data, and how the untrained model starts against chance."""
        exp = self.exp
        rows, total, trainable = exp.summary
        console.model_table(rows, total, trainable, exp.info.input_shape)
        batch = exp.opts.batch_size_for(len(exp.splits.x_train))
        console.console.print(f"device {exp.device} ({exp.threads} CPU thread{'s' * (exp.threads > 1)}), "
                              f"{len(exp.splits.x_train)} train / {len(exp.splits.x_val)} val / "
                              f"{len(exp.splits.x_test)} test samples, task {exp.info.task}, loss {exp.loss.name}")
        if distributed.launched():
            console.console.print(f"data parallel: {distributed.world_size()} processes, global batch {batch} "
                                  f"(about {batch // distributed.world_size()} per process)")
        if exp.lr_scale != 1.0:
            console.console.print(f"learning rate scaled ×{exp.lr_scale:.3g} for batch size {batch}: "
                                  f"{exp.optimizer.param_groups[0]['lr']:.4g}")
        self.chance, initial, warning = self._startup_check()
        self.initial = (initial, warning)
        if self.state is None and initial is not None:
            console.console.print(f"initial loss {initial:.4f} (a constant prediction scores {self.chance:.4f})")
            if warning:
                console.print_warning(warning)

    def _startup_check(self) -> tuple[float | None, float | None, str | None]:
        """(chance, initial loss, warning) of the untrained model, measured before the first step; every checkpoint
        carries them, so a resumed run reports the start of the run, not its weights at the resume."""
        keys = ("chance", "initial_loss", "warning")
        if self.startup is not None:
            return tuple(self.startup[k] for k in keys)
        exp = self.exp
        measured = exp.task.startup_check(exp.model, exp.prepare(exp.splits.x_train[:1024]),
                                          exp.splits.y_train[:1024], exp.data.splits.y_train, exp.info)
        if self.state is None:
            self.startup = dict(zip(keys, measured))
        return measured

    # ---- train ----------------------------------------------------------------------------------------------------

    @contextmanager
    def logging(self) -> Iterator[None]:
        """The logger (rank 0's; the others log nothing) and the gradient monitor, open while training and scoring."""
        exp, state = self.exp, self.state
        if distributed.is_main():
            model = self.cfg["model"].get("name") or self.cfg["model"].get("_target_")
            run_info = {"params": hparams_of(self.cfg),
                        "tags": {"dataset": exp.info.name, "model": model, "task": exp.info.task}}
            with phase("open the loggers"):
                self.logger = build_logger(exp.logger_cfg, exp.run_dir,
                                           purge_step=state.step + 1 if state else None,
                                           resume_state=self.logger_state, run_info=run_info,
                                           main_metric=exp.task.main_metric, overrides=tuple(self.overrides))
        else:
            self.logger = NullLogger()
        every = self.logger.gradients_every_n_steps
        self.monitor = GradientMonitor(exp.model, self.logger, every, self.logger.histograms) if every else None
        if self.monitor is not None and self.monitor_state is not None:
            self.monitor.load_state_dict(self.monitor_state)  # its median and warning cover the steps before a resume
        ended = "FINISHED"
        try:
            yield
        except BaseException as err:
            # How the run ended, for the trackers that record it: a signal leaves it resumable (KILLED).
            ended = "KILLED" if isinstance(err, (Interrupted, KeyboardInterrupt)) else "FAILED"
            raise
        finally:
            with phase("close the loggers (write out TensorBoard's files)"):
                if self.monitor is not None:
                    self.monitor.close()
                close_logger(self.logger, ended)

    def train(self) -> None:
        """Train to the end (or until a signal: then Interrupted); note how the gradients flowed."""
        exp, logger, monitor = self.exp, self.logger, self.monitor
        if self.state is None:
            size = exp.opts.batch_size_for(len(exp.splits.x_train))
            logger.text("data/first_batch", batch_summary(exp.prepare(exp.splits.x_train[:size]),
                                                          exp.splits.y_train[:size], exp.info.feature_names), 0)
        self.state = self._fit(logger, monitor)
        if monitor is not None and distributed.is_main():
            self.vanishing, self.gradient_ratio = monitor.vanishing_warning(), monitor.median_ratio()
        if self.vanishing:
            console.print_warning(self.vanishing)
            logger.text("diagnosis/gradient_flow", self.vanishing, self.state.step)

    def _fit(self, logger: Logger, monitor: GradientMonitor | None) -> TrainState:
        exp = self.exp
        inputs = exp.view_inputs(logger, self.state.epoch if self.state is not None else 0)
        view = all_of([make(inputs) for make in exp.task.epoch_views])
        extra: dict[str, Any] = {"config": OmegaConf.to_yaml(self.cfg_node, resolve=True),
                                 "scaling": exp.info.scaling()}
        if self.startup is not None:
            extra["startup_check"] = self.startup
        if monitor is not None:
            extra["gradient_monitor"] = monitor.state_dict  # called at each checkpoint: current at its step
        extra["logger"] = lambda: checkpoint_state(logger)  # what a backend needs to continue (MLflow's run id)
        with console.EpochProgress(exp.opts.progress) as progress, StopOnSignal() as stop, \
                torch.autograd.set_detect_anomaly(exp.opts.detect_anomaly):
            outputs = TrainingOutputs(exp.directory, logger, progress, monitor, stop, view, extra,
                                      should_stop=self.pruning)
            try:
                return Trainer(exp.parts, outputs, self.state, self.generator).fit()
            except RuntimeError as err:
                if exp.opts.detect_anomaly and "nan" in str(err).lower():
                    raise FloatingPointError(f"trainer.detect_anomaly: {err} The warning above shows the forward "
                                             f"operation that produced it.") from None
                raise

    # ---- score the best checkpoint --------------------------------------------------------------------------------

    def score_best(self) -> None:
        """Test once, after training, on the best checkpoint (course 1 §6); its views and the verdict."""
        exp, state, logger = self.exp, self.state, self.logger
        with phase("load best.pt"):
            saved, self.best_path = self.directory.load_best()
            exp.model.load_state_dict(saved["model"])
        with phase("score train, val and test"):
            self.results = exp.score_every_split()
        final = {f"hparam/{split}/{k}": v for split, values in self.results.items() for k, v in values.items()}
        logger.hparams(hparams_of(self.cfg), final, state.step)
        inputs = exp.view_inputs(logger)
        self.test_views: dict[str, Any] = {}
        for view in exp.task.test_views:
            with phase(f"test view: {getattr(view, '__name__', type(view).__name__)}"):
                self.test_views.update(view(inputs, state.step) or {})
        self.verdict: Verdict = exp.task.verdict(state.history, self.chance)  # a GAN says it does not apply
        logger.text("diagnosis/verdict", self.verdict.markdown(), state.step)

    # ---- report ---------------------------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The results in the terminal, curves.png, metrics.json; the run directory printed last."""
        exp, state = self.exp, self.state
        reference = exp.task.reference(exp.data, self.cfg["model"])
        console.console.print(f"Scored once, with the best checkpoint ({self.best_path.name}, "
                              f"epoch {state.best_epoch}):")
        console.results_table(self.results, title="results")
        if reference is not None:
            console.results_table({k: v for k, v in reference.items() if k != "weights"},
                                  title="closed-form least squares on the same features (course 1 §5.1)")
        console.verdict_panel(self.verdict)
        if state.history:
            from dlrun.views import figures

            with phase("curves.png"):
                figures.save(figures.run_curves_figure(state.history, exp.task.main_metric,
                                                       f"{exp.info.name}: curves {self.verdict.case}"),
                             self.directory.file("curves.png"))
        metrics = self._metrics(self._overfit_check())
        if reference is not None:
            metrics["least_squares"] = reference
        with phase("metrics.json"):
            self.directory.write_metrics(metrics)
        # soft_wrap: a long path stays on one line, so it can be copied whole.
        console.console.print(f"\nRun directory: {exp.run_dir}\nOpen the curves:  tensorboard --logdir {exp.run_dir}",
                              soft_wrap=True)
        return metrics

    def profile(self) -> None:
        """trainer.profile=true: where this process's seconds went so far, in the terminal and in profile.json."""
        rows = CLOCK.rows()
        console.profile_table(rows)
        self.directory.write_json("profile.json", {"phases": rows})

    def _overfit_check(self) -> dict[str, Any] | None:
        """trainer.overfit_batches: did the training loss on those few batches fall near zero?"""
        opts, state, chance = self.exp.opts, self.state, self.chance
        if not opts.overfit_batches or chance is None:
            return None
        final = state.history[-1]["train/loss"] if state.history else math.inf
        overfit = {"batches": opts.overfit_batches, "final_train_loss": final, "chance_loss": chance,
                   "fits": final < 0.05 * chance}
        message = (f"overfit_batches={opts.overfit_batches}: the training loss went from {chance:.4g} (chance) "
                   f"to {final:.4g}")
        if overfit["fits"]:
            console.console.print(f"{message}: the model can learn these batches by heart, the pipeline works.",
                                  soft_wrap=True)
        else:
            console.print_warning(f"{message}, not near zero: the model cannot even fit a few batches. Check the "
                                  f"labels, the loss, the learning rate, or give the model more capacity.")
        return overfit

    def _metrics(self, overfit: dict[str, Any] | None) -> dict[str, Any]:
        exp, state, results = self.exp, self.state, self.results
        initial, warning = self.initial
        return {
            "status": "completed",
            "verdict": self.verdict.as_dict(),
            "overfit_check": overfit,
            "initial_loss": {"value": initial, "chance": self.chance, "warning": warning},
            "gradient_flow": {"first_over_last_median": self.gradient_ratio, "warning": self.vanishing},
            "task": exp.info.task,
            "dataset": exp.info.name,
            "epochs_run": state.epoch,
            "steps": state.step,
            "stopped_early": state.stopped_early,
            "pruned_at_epoch": getattr(self.pruning, "pruned_at", None),  # the search's pruner stopped it there
            "best": {"epoch": state.best_epoch, "monitor": exp.opts.monitor, "value": state.best_value},
            "test": results["test"],
            "test_per_class_accuracy": None,
            "evaluation": results,  # every split, scored with the best checkpoint
            "last_epoch": state.history[-1] if state.history else {},
            "parameters": exp.summary[1],
            "train_seconds": round(state.train_seconds, 3),
            "wall_seconds": round(time.perf_counter() - self.started, 3),
            "overrides": trained_with(self.overrides),
            "history": state.history,
            "data_warnings": exp.data.warnings,
            "training_outliers": exp.data.outliers,  # dataset.outliers: training rows corrupted on purpose, or null
            "loss_warning": exp.loss.warning,  # loss.check=false: the loss does not fit the task, trained anyway
            **self.test_views,  # what the task's test views measured (test_per_class_accuracy, ...)
        }


def search_pruning() -> Callable[[int, float | None], bool] | None:
    """The pruning of the search this job is a trial of (dl-run's Optuna sweeper with hydra.sweeper.pruner set);
    None for any other run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    target = str(hydra_cfg.sweeper.get("_target_", ""))
    if hydra_cfg.mode is not RunMode.MULTIRUN or not target.startswith("hydra_plugins.dlrun_optuna_sweeper."):
        return None
    from hydra_plugins.dlrun_optuna_sweeper.pruning import job_pruning

    return job_pruning(hydra_cfg)


def trained_with(overrides: list[str]) -> list[str]:
    """The overrides a run was trained with: a resumed run's own and any given at the resume, without the
    `resume=` that continued it, so a run resumed without new ones reports the same as one that never stopped."""
    return [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != "resume"]


def refuse_changed_optimizer(cfg: dict[str, Any], saved_yaml: str | None, path: Path) -> None:
    """A resumed run continues its optimizer and scheduler from their saved state, which holds their settings
    (learning rate, momentum, schedule): a changed setting would be silently overwritten, so it is refused."""
    if not saved_yaml:
        return
    saved = OmegaConf.to_container(OmegaConf.create(saved_yaml), resolve=True)
    # A key the saved config lacks came to dl-run after the run was made: left off (e.g. optimizer.l1=0), it changes
    # nothing, so a run from before it resumes.
    changed = [f"{group}.{key}={cfg[group].get(key)} (was {saved[group].get(key)})"
               for group in ("optimizer", "scheduler") if isinstance(saved.get(group), dict)
               for key in sorted(set(cfg[group]) | set(saved[group])) if cfg[group].get(key) != saved[group].get(key)
               and not (key not in saved[group] and cfg[group].get(key) in (None, 0, False, "none"))]
    if changed:
        raise ConfigError(f"Resuming from {path} continues the optimizer and scheduler from their saved state, so "
                          f"{', '.join(changed)} would have no effect. Resume without these overrides, or start a new "
                          f"run with them.", key=changed[0].split("=", 1)[0])
