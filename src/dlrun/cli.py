"""The `dl-run` entry point: Hydra composes the config, then plain values are handed to run()."""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dlrun.views import console
from dlrun.engine import distributed
from dlrun.run import preflight
from dlrun.errors import ConfigError
from dlrun.engine.signals import Interrupted

if TYPE_CHECKING:
    from dlrun.run.sweep import SweepJobs

# Run and sweep directories end in the process id: two runs started in the same second never share one.
# The id of the `dl-run` process itself, which its launcher's workers (joblib, submitit) inherit: a sweep
# directory that a worker resolves again is the same one.
OmegaConf.register_new_resolver("dlrun_pid", lambda: int(os.environ.get("DLRUN_PID") or os.getpid()), replace=True)
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


class SweepDirectory(Callback):
    """Hydra callback (configs/hydra/default.yaml) in the process that launches a multirun's jobs: checks a
    search's direction before any trial, and reports the jobs that ran in other processes (joblib, submitit)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        try:
            _check_direction(config.hydra, config.trainer.monitor)
        except ConfigError as err:  # before any trial; SystemExit passes through Hydra's own error report
            console.print_error(str(err))
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: object) -> None:
        if config.hydra.launcher.get("_target_") == BASIC_LAUNCHER:
            return  # the jobs ran in this process: main() reports them
        from dlrun.run.sweep import SweepJobs

        jobs = SweepJobs()
        jobs.search = _is_search(config.hydra)
        jobs.read_back(Path(config.hydra.sweep.dir))
        jobs.report()
        if jobs.exit_code():
            sys.exit(jobs.exit_code())


def _is_search(hydra_cfg: DictConfig) -> bool:
    return "optuna" in str(hydra_cfg.sweeper.get("_target_", ""))


def train_job(cfg: DictConfig, sweep: SweepJobs) -> float | None:
    """One run, or one job of a sweep: train it (or its mode), and record how it ended in `sweep`."""
    from dlrun.run.sweep import QUIET_KEYS, JobResult
    from dlrun.run.training import run  # imported here so `dl-run --help` stays fast

    hydra_cfg = HydraConfig.get()
    run_dir = _run_dir(Path(hydra_cfg.runtime.output_dir))
    overrides = list(hydra_cfg.overrides.task)
    name = " ".join(o for o in overrides if _override_key(o) not in QUIET_KEYS) or "(defaults)"
    multirun = hydra_cfg.mode is RunMode.MULTIRUN
    in_worker = multirun and os.environ.get("DLRUN_PID") != str(os.getpid())  # a launcher's worker process
    if multirun:
        sweep.sweep_dir, sweep.search = Path(hydra_cfg.sweep.dir), _is_search(hydra_cfg)
    if in_worker:  # jobs side by side (joblib): on a machine with several GPUs each takes its own
        cfg.trainer.device = distributed.job_device(cfg.trainer.device, hydra_cfg.job.num)
    try:
        metrics = run(cfg, run_dir, overrides, sweep.datasets if multirun else None)
    except KeyboardInterrupt:  # outside the training loop (building, scoring): nothing half-done was written
        _interrupted_outside_training(run_dir, cfg)
    except Interrupted as err:
        _interrupted(run_dir, err)
    except (ConfigError, FloatingPointError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # the user asked for the whole stack trace
        _failed_on_input(err, run_dir, cfg, overrides, in_worker)
        sweep.record(JobResult(name, str(run_dir), error=str(err)))
        return None
    except Exception as err:  # noqa: BLE001 - a crash in one job of a sweep must not lose the others
        if not multirun or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sweep.record(JobResult(name, str(run_dir), error=_crashed(err, run_dir, overrides, hydra_cfg.job.num, name)),
                     crashed=True)
        return None
    if metrics.get("mode", "train") != "train" or not distributed.is_main():
        return None
    sweep.record(JobResult(name, str(run_dir), metrics=metrics))
    # The monitored validation metric, which a sweeper (Optuna) optimises: never the test score. None (not NaN)
    # for a run without a finite one: the Optuna sweeper records it as a failed trial and goes on.
    best = metrics["best"]["value"]
    return best if best is not None and math.isfinite(best) else None


def _run_dir(own: Path) -> Path:
    """The run directory: Hydra's; under torchrun every rank works in rank 0's, and only rank 0 writes to it."""
    if not distributed.launched():
        return own
    run_dir = Path(distributed.broadcast(str(own)))
    if own != run_dir:
        shutil.rmtree(own, ignore_errors=True)  # the scratch directory Hydra made for this rank
    return run_dir


def _interrupted_outside_training(run_dir: Path, cfg: DictConfig) -> None:
    from dlrun.run.run_directory import RunDirectory

    resume = f"dl-run {shlex.quote(f'resume={run_dir.resolve()}')}"
    console.print_error("Interrupted outside the training loop. " + (
        f"Its checkpoints are intact; continue with:  {resume}" if (run_dir / "checkpoints" / "last.pt").is_file()
        else "Nothing was trained yet."))
    if not cfg.get("resume"):
        RunDirectory(run_dir).remove_unfinished()
    sys.exit(130)


def _interrupted(run_dir: Path, err: Interrupted) -> None:
    # soft_wrap: the command stays on one line, so it can be copied whole.
    stopped = str(err)[0].upper() + str(err)[1:]
    console.console.print(f"\n{stopped}. Checkpoint written: {run_dir / 'checkpoints' / 'last.pt'}"
                          f"\nResume with:  dl-run {shlex.quote(f'resume={run_dir.resolve()}')}", soft_wrap=True)
    handler = signal.getsignal(err.signum)
    if err.signum not in (signal.SIGINT, signal.SIGTERM) and callable(handler):
        handler(err.signum, None)  # a cluster tool's pre-emption handler: submitit requeues the job and exits
    sys.exit(err.exit_code)


def _failed_on_input(err: Exception, run_dir: Path, cfg: DictConfig, overrides: list[str], in_worker: bool) -> None:
    """Say why; a worker's job leaves failed.json for the sweep's summary; a new run leaves no directory behind."""
    from dlrun.run.run_directory import RunDirectory

    console.print_error(str(err) if not overrides else f"{err}\n(job overrides: {' '.join(overrides)})")
    if in_worker:  # the sweep's summary, made in another process, reads why it failed here
        RunDirectory(run_dir).write_json("failed.json", {"error": str(err), "overrides": overrides})
    elif not cfg.get("resume"):
        RunDirectory(run_dir).remove_unfinished()


def _crashed(err: Exception, run_dir: Path, overrides: list[str], number: int, name: str) -> str:
    """A job of a sweep that crashed: its traceback printed and kept in its metrics.json; the sweep goes on."""
    from dlrun.run.run_directory import RunDirectory

    traceback.print_exc()
    error = f"{type(err).__name__}: {err}"
    console.print_error(f"job {number} ({name}) crashed: {error}. The sweep goes on.")
    if run_dir.is_dir():
        RunDirectory(run_dir).write_metrics({"status": "failed", "error": error, "traceback": traceback.format_exc(),
                                             "overrides": overrides})
    return error


def _check_direction(hydra_cfg: DictConfig, monitor: str) -> None:
    """An Optuna search must minimise a loss and maximise an accuracy, or it looks for the worst trial."""
    from dlrun.tasks import monitor_mode

    direction = hydra_cfg.sweeper.get("direction")
    wanted = {"min": "minimize", "max": "maximize"}[monitor_mode(monitor)]
    if isinstance(direction, str) and direction != wanted:
        raise ConfigError(f"'hydra.sweeper.direction={direction}' but trainer.monitor={monitor} is better "
                          f"{'lower' if wanted == 'minimize' else 'higher'}: set hydra.sweeper.direction={wanted}.",
                          key="hydra.sweeper.direction")


def task_arguments(args: list[str]) -> list[str]:
    """`task=<name>` without `model=` or `experiment=` adds the task's preset, if it has one (segmentation and
    detection: no classifier can serve them), as a dataset may pick its model."""
    tasks = [a.split("=", 1)[1] for a in args if _override_key(a) == "task" and "=" in a]
    if not tasks or any(_override_key(a) in ("model", "experiment") for a in args if "=" in a):
        return args
    from dlrun.tasks import TASKS  # only when a task is named: `dl-run --help` stays fast

    preset = TASKS.get(tasks[-1]).preset if tasks[-1] in TASKS else None  # an unknown name: the config check says
    return [*args, f"experiment={preset}"] if preset else args


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _devices(args: list[str]) -> int:
    """`trainer.devices=N` from the command line (1 if absent or not a number: the config check says why)."""
    given = [a.split("=", 1)[1] for a in args if a.startswith("trainer.devices=")]
    return int(given[-1]) if given and given[-1].isdigit() else 1


def resume_arguments(args: list[str]) -> list[str]:
    """`resume=<run dir>` re-runs that run's own overrides in its own directory, plus any new ones given."""
    resume = [a for a in args if a.startswith("resume=")]
    if not resume:
        return args
    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser()
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not run_dir.is_dir():
        raise ConfigError(f"'resume={run_dir}': no such directory. Give the run directory that dl-run printed "
                          f"at the end of the run (outputs/<date>/<time>_<pid>).", key="resume")
    checkpoints = run_dir / "checkpoints"
    if not saved.is_file() or not any((checkpoints / name).is_file() for name in ("last.pt", "previous.pt")):
        raise ConfigError(f"'resume={run_dir}' is not a dl-run run directory with a checkpoint: expected "
                          f"{saved} and {checkpoints / 'last.pt'}.", key="resume")
    given = [a for a in args if not a.startswith("resume=")]
    given_keys = {_override_key(a) for a in given if "=" in a}
    original = [o for o in map(_renamed, yaml.safe_load(saved.read_text()) or [])
                if _override_key(o) not in given_keys | {"resume", "hydra.run.dir"}]
    # hydra.output_subdir=null: Hydra must not rewrite the run's .hydra/ before the new overrides are checked;
    # run() records them itself once the config has proved valid.
    return _config_dir_of(run_dir, given) + original + given + [
        f"hydra.run.dir={run_dir.resolve()}", "hydra.output_subdir=null", f"resume={run_dir.resolve()}"]


def _renamed(override: str) -> str:
    """An override saved by an older dl-run, in today's words (trainer.mixed_precision became trainer.precision)."""
    if _override_key(override) == "trainer.mixed_precision":
        return "trainer.precision=" + ("32" if override.split("=", 1)[1].lower() == "false" else "auto")
    return override


def _config_dir_of(run_dir: Path, given: list[str]) -> list[str]:
    """The run's own --config-dir (Hydra records it), unless one is given again: its configs are the run's."""
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if any(a in ("--config-dir", "-cd") or a.startswith("--config-dir=") for a in given) or not hydra_yaml.is_file():
        return []
    sources = (yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra", {}).get("runtime", {}).get(
        "config_sources", [])
    return [arg for s in sources if s.get("provider") == "command-line" and s.get("schema") == "file"
            for arg in ("--config-dir", s["path"])]


def refuse_existing_run(args: list[str]) -> None:
    """A new run must not write into a directory that holds another run's checkpoints."""
    if any(a.startswith("resume=") for a in args) or any(a in ("-m", "--multirun") for a in args):
        return
    for arg in args:
        if arg.startswith("hydra.run.dir="):
            run_dir = Path(arg.split("=", 1)[1]).expanduser()
            if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("*.pt")):
                raise ConfigError(f"'hydra.run.dir={run_dir}' already holds a run (its checkpoints are in "
                                  f"{run_dir / 'checkpoints'}). Continue it with dl-run resume={run_dir}, or give a "
                                  f"new directory.", key="hydra.run.dir")


def list_options(argv: list[str]) -> None:
    """`dl-run --list`: every group's options with a one-line description."""
    from rich.table import Table

    config_dir = argv[argv.index("--config-dir") + 1] if "--config-dir" in argv[:-1] else None
    table = Table(title="dl-run options: pick one per group, e.g. dl-run model=mlp", title_justify="left")
    table.add_column("group")
    table.add_column("option")
    table.add_column("what it is")
    for group, options in sorted(preflight.describe_options(config_dir).items()):
        for i, (option, text) in enumerate(options.items()):
            table.add_row(group if i == 0 else "", option, text)
        table.add_section()
    console.console.print(table)


def _prepared_arguments(args: list[str]) -> list[str]:
    """The command's arguments as Hydra must see them (a resumed run's own overrides, a task's preset), checked;
    a data-parallel run is started here with torchrun, which comes back to main() in each process."""
    devices = _devices(args)
    sweep = any(a in ("-m", "--multirun") or a.startswith("hparams_search=") for a in args)
    if sweep and (devices > 1 or distributed.launched()):
        raise ConfigError("A sweep (-m, hparams_search) runs its jobs one process each: it cannot run under "
                          "torchrun or with trainer.devices>1. Train the chosen settings data-parallel "
                          "afterwards, with dl-run trainer.devices=N <the best job's overrides>.",
                          key="trainer.devices")
    if devices > 1 and not distributed.launched():
        distributed.launch(devices, args)  # comes back here in each of the processes it starts
    refuse_existing_run(args)
    args = task_arguments(resume_arguments(args))
    preflight.check(args)
    return args


def main() -> None:
    """Console script `dl-run`."""
    from dlrun.run.sweep import SweepJobs

    if "--list" in sys.argv[1:]:
        list_options(sys.argv[1:])
        return
    # A `_target_: my_module.build` names code in the directory the user runs from, as `python -m` would see it.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    os.environ["DLRUN_PID"] = str(os.getpid())
    try:
        sys.argv = [sys.argv[0], *_prepared_arguments(sys.argv[1:])]
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        console.print_error(str(err))
        sys.exit(2)
    if not distributed.is_main():
        console.console.quiet = True  # rank 0 speaks for all; errors still reach stderr
    distributed.setup()
    sys.argv += distributed.worker_arguments()
    sweep = SweepJobs()  # what this invocation's jobs end with, handed to each job

    @hydra.main(config_path="pkg://dlrun.configs", config_name="train", version_base="1.3")
    def train(cfg: DictConfig) -> float | None:
        return train_job(cfg, sweep)

    try:
        train()
    except KeyboardInterrupt:  # before training started (training itself stops cleanly on its own)
        console.print_error("Interrupted before training started; nothing was trained.")
        sys.exit(130)
    finally:
        distributed.teardown()
    distributed.end_worker()  # a rank other than 0 ends here (see why there)
    if sweep.sweep_dir is not None:  # a multirun whose jobs ran in this process
        sweep.report()
        if sweep.exit_code():
            sys.exit(sweep.exit_code())
    elif any(job.status == "failed" for job in sweep.jobs):
        sys.exit(2)


if __name__ == "__main__":
    main()
