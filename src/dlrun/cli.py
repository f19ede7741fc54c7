"""The `dl-run` entry point: Hydra composes the config, then plain values are handed to run()."""

from __future__ import annotations

from dlrun.diagnostics import timing  # first: it notes the seconds the interpreter took before dl-run

import errno
import math
import os
import re
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dlrun import startup_collector
from dlrun.views import console
from dlrun.engine import distributed
from dlrun.run import preflight
from dlrun.run.hydra_mode import known_mode
from dlrun.run import sweep_compose
from dlrun.run.arguments import override_key, plain_value, quote_paths, resume_arguments, resume_command
from dlrun.run.run_directory import CANNOT_WRITE
from dlrun.errors import ConfigError
from dlrun.engine.signals import Interrupted

timing.CLOCK.since_start_of_module("imports: Hydra, OmegaConf, rich, dl-run's command")

if TYPE_CHECKING:
    from dlrun.run.sweep import SweepJobs
    from dlrun.run.sweep_resume import JobOnResume

# Run and sweep directories end in the process id: two runs started in the same second never share one.
# The id of the `dl-run` process itself, which its launcher's workers (joblib, submitit) inherit: a sweep
# directory that a worker resolves again is the same one.
OmegaConf.register_new_resolver("dlrun_pid", lambda: int(os.environ.get("DLRUN_PID") or os.getpid()), replace=True)


def safe_folder_name(text: str) -> str:
    """A sweep job's folder name from its overrides: readable, but never a path (no separators, no '..', not too
    long), so a value such as `predict.input=../x` cannot put a job's folder outside its sweep's."""
    name = re.sub(r"\.{2,}", lambda m: "_" * len(m.group()), re.sub(r"[/\\\x00]", "_", str(text)))
    if len(name.encode()) > 150:  # a file name has at most 255 bytes: keep it readable and unique
        import hashlib

        name = name.encode()[:140].decode(errors="ignore") + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


# configs/hydra/default.yaml names each job's folder with it.
OmegaConf.register_new_resolver("dlrun_safe", safe_folder_name, replace=True)
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# Here, not in main(): a joblib or submitit worker imports this module to run its jobs, and composes them too.
sweep_compose.install()


class SweepDirectory(Callback):
    """Hydra callback (configs/hydra/default.yaml) in the process that launches a multirun's jobs: checks a
    search's direction before any trial, and reports the jobs that ran in other processes (joblib, submitit)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        from dlrun.run import sweep_resume
        from dlrun.run.run_directory import mark

        sweep_dir = Path(config.hydra.sweep.dir)
        new = not OmegaConf.select(config, "sweep.resume", default=False)
        try:
            _check_direction(config.hydra, config.trainer.monitor)
            if new:  # cli.refuse_used_folders made sure it is new or empty
                mark(sweep_dir, created=not sweep_dir.exists())
            sweep_resume.lock(sweep_dir)  # one dl-run process at a time runs this sweep's jobs
            changes = [] if new else sweep_resume.sweep_changes(sweep_resume.recorded(sweep_dir),
                                                                OmegaConf.to_container(config))
            if changes:
                sweep_resume.unlock(sweep_dir)
                raise ConfigError(f"'resume={sweep_dir}': the sweep composed now is not the one that ran there, and "
                                  f"a resume takes no new values: {'; '.join(changes)}. Start a new sweep for them; "
                                  f"nothing in {sweep_dir} was changed.", key="resume")
        except ConfigError as err:  # before any trial; SystemExit passes through Hydra's own error report
            console.print_error(str(err))
            sys.exit(2)
        if new:  # the record `dl-run resume=<sweep dir>` continues from (Hydra's basic sweeper writes the same)
            OmegaConf.save(config, sweep_dir / sweep_resume.RECORD)
        if config.hydra.launcher.get("_target_") != BASIC_LAUNCHER:
            startup_collector.resume()  # no job builds in this process: it only waits for the workers

    def on_multirun_end(self, config: DictConfig, **kwargs: object) -> None:
        if config.hydra.launcher.get("_target_") == BASIC_LAUNCHER:
            return  # the jobs ran in this process: main() reports them, then lets go of the sweep's lock
        from dlrun.run import sweep_resume
        from dlrun.run.sweep import SweepJobs

        jobs = SweepJobs()
        jobs.search = _is_search(config.hydra)
        jobs.read_back(Path(config.hydra.sweep.dir))
        try:
            jobs.report()
        finally:
            sweep_resume.unlock(Path(config.hydra.sweep.dir))
        if jobs.exit_code():
            sys.exit(jobs.exit_code())


def _is_search(hydra_cfg: DictConfig) -> bool:
    return "optuna" in str(hydra_cfg.sweeper.get("_target_", ""))


def _in_launcher_worker() -> bool:
    """Whether this process is a launcher's worker (joblib, submitit), not the one main() ran in."""
    return os.environ.get("DLRUN_PID") != str(os.getpid())


def train_job(cfg: DictConfig, sweep: SweepJobs, found_empty: frozenset[Path] = frozenset()) -> float | None:
    """One run, or one job of a sweep: train it (or its mode), and record how it ended in `sweep`. `found_empty`:
    the folders the user named that existed (empty) before this invocation."""
    timing.CLOCK.since_mark("Hydra: compose the config, set up the job")
    if _in_launcher_worker():  # its first job imports torch
        startup_collector.pause()
    try:
        return _train_job(cfg, sweep, found_empty)
    finally:
        startup_collector.resume()  # where run() did not get as far (a refused config, a failed build)
        timing.CLOCK.mark()  # in a sweep, Hydra composes the next job's config from here


def _train_job(cfg: DictConfig, sweep: SweepJobs, found_empty: frozenset[Path]) -> float | None:
    with timing.phase("imports: torch and the training code"):
        from dlrun.run.sweep import QUIET_KEYS, JobResult
        from dlrun.run.sweep_resume import SWITCHES
        from dlrun.run.training import run  # imported here so `dl-run --help` stays fast

    hydra_cfg = HydraConfig.get()
    run_dir = _run_dir(Path(hydra_cfg.runtime.output_dir))
    overrides = [o for o in hydra_cfg.overrides.task if override_key(o) not in SWITCHES]
    name = " ".join(o for o in overrides if override_key(o) not in QUIET_KEYS) or "(defaults)"
    multirun = hydra_cfg.mode is RunMode.MULTIRUN
    in_worker = multirun and _in_launcher_worker()
    if multirun:
        decided = _sweep_job(cfg, hydra_cfg, sweep, run_dir, (name, overrides), in_worker)
        if decided.action in ("keep", "failed"):  # a resumed sweep's job that ended before: not run again
            return _objective(decided.metrics)
        run_dir = decided.run_dir
    try:
        if not cfg.get("resume") and distributed.is_main():
            _start_folder(run_dir, cfg, found_empty)
        metrics = run(cfg, run_dir, overrides, sweep.datasets if multirun else None)
    except OSError as err:
        if err.errno not in CANNOT_WRITE or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        error = ConfigError(_cannot_write(err), key="hydra.run.dir")
        _failed_on_input(error, run_dir, cfg, overrides, multirun)
        sweep.record(JobResult(name, str(run_dir), error=str(error)))
        return None
    except KeyboardInterrupt:  # outside the training loop (building, scoring): nothing half-done was written
        _interrupted_outside_training(run_dir, cfg)
    except Interrupted as err:
        _interrupted(run_dir, err, sweep.sweep_dir if multirun else None)
    except (ConfigError, FloatingPointError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # the user asked for the whole stack trace
        _failed_on_input(err, run_dir, cfg, overrides, multirun)
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
    return _objective(metrics)


def _objective(metrics: dict | None) -> float | None:
    """The monitored validation metric, which a sweeper (Optuna) optimises: never the test score. None (not NaN)
    for a run without a finite one: the Optuna sweeper records it as a failed trial and goes on."""
    best = (metrics or {}).get("best", {}).get("value")
    return best if best is not None and math.isfinite(best) else None


def _sweep_job(cfg: DictConfig, hydra_cfg: DictConfig, sweep: SweepJobs, own: Path, job: tuple[str, list[str]],
               in_worker: bool) -> JobOnResume:
    """A job of a sweep (`job`: its name and overrides): where it runs, and in a resumed sweep (found by its number)
    whether it runs: completed or failed before, it is recorded as it ended and not run again; with a checkpoint it
    resumes as `resume=<its folder>` would; else it runs, recording its config as Hydra would have."""
    from dlrun.run import sweep_resume
    from dlrun.run.run_directory import RunDirectory
    from dlrun.run.sweep import JobResult

    name, overrides = job

    sweep.sweep_dir, sweep.search = Path(hydra_cfg.sweep.dir), _is_search(hydra_cfg)
    if in_worker:  # jobs side by side (joblib): on a machine with several GPUs each takes its own
        cfg.trainer.device = distributed.job_device(cfg.trainer.device, hydra_cfg.job.num)
    if not cfg.sweep.resume:
        return sweep_resume.JobOnResume("run", own)
    run_dir = sweep_resume.job_folder(sweep.sweep_dir, hydra_cfg.job.num, own)
    decided = sweep_resume.job_on_resume(run_dir, bool(cfg.sweep.retry_failed))
    if decided.action in ("keep", "failed"):
        console.console.print(f"job {hydra_cfg.job.num} ({name}): {decided.action.replace('keep', 'completed')} "
                              f"before, not run again", soft_wrap=True)
        sweep.record(JobResult(name, str(run_dir), decided.metrics, decided.error), decided.crashed)
    elif decided.action == "resume":
        cfg.resume = str(run_dir)  # the training run resumes exactly as a single run does, and records its config
    elif decided.action == "run":
        RunDirectory(run_dir).record_config(cfg, overrides)
        hydra_record = OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg)})
        OmegaConf.save(hydra_record, run_dir / ".hydra" / "hydra.yaml")
    return decided


def _start_folder(run_dir: Path, cfg: DictConfig, found_empty: frozenset[Path]) -> None:
    """A new run's folder is marked as dl-run's; a training run records where its data is and what it holds."""
    from dlrun.run.run_directory import RunDirectory

    directory = RunDirectory(run_dir)
    directory.claim(created=run_dir.resolve() not in found_empty)
    if cfg.get("mode", "train") == "train":
        directory.record_data_sources(OmegaConf.to_container(cfg.dataset, resolve=True) or {})


def _cannot_write(err: OSError) -> str:
    """A sentence for a file that cannot be written: a read-only folder or a full disk."""
    where = err.filename or "a file"
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return (f"Cannot write {where}: the disk is full ({err.strerror}). Free some space and run the command "
                f"again; files written before are as they were (checkpoints are replaced only once a new one is "
                f"complete).")
    return (f"{where}: {err.strerror} (a read-only folder, or a file you may not open). Give a path you can use "
            f"(hydra.run.dir=..., predict.output=..., export.output=..., dataset.path=...).")


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

    resume = resume_command(run_dir)
    console.print_error("Interrupted outside the training loop. " + (
        f"Its checkpoints are intact; continue with:  {resume}" if (run_dir / "checkpoints" / "last.pt").is_file()
        else "Nothing was trained yet."))
    if not cfg.get("resume"):
        RunDirectory(run_dir).remove_unfinished()
    sys.exit(130)


def _interrupted(run_dir: Path, err: Interrupted, sweep_dir: Path | None) -> None:
    # soft_wrap: the command stays on one line, so it can be copied whole. A sweep's job: the sweep resumes.
    stopped = str(err)[0].upper() + str(err)[1:]
    console.console.print(f"\n{stopped}. Checkpoint written: {run_dir / 'checkpoints' / 'last.pt'}"
                          f"\nResume with:  {resume_command(sweep_dir or run_dir)}", soft_wrap=True)
    handler = signal.getsignal(err.signum)
    if err.signum not in (signal.SIGINT, signal.SIGTERM) and callable(handler):
        handler(err.signum, None)  # a cluster tool's pre-emption handler: submitit requeues the job and exits
    sys.exit(err.exit_code)


def _failed_on_input(err: Exception, run_dir: Path, cfg: DictConfig, overrides: list[str], multirun: bool) -> None:
    """Say why; a sweep's job leaves failed.json in its folder (for a summary made in another process, and for a
    resumed sweep, which keeps it failed); a new run leaves no directory behind."""
    from dlrun.run.run_directory import RunDirectory

    console.print_error(str(err) if not overrides else f"{err}\n(job overrides: {' '.join(overrides)})")
    if multirun and run_dir.is_dir():
        try:
            RunDirectory(run_dir).write_json("failed.json", {"error": str(err), "overrides": overrides})
        except OSError:  # the folder cannot be written (that may be why it failed): the summary says it crashed
            pass
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
    tasks = [a.split("=", 1)[1] for a in args if override_key(a) == "task" and "=" in a]
    if not tasks or any(override_key(a) in ("model", "experiment") for a in args if "=" in a):
        return args
    from dlrun.tasks import TASKS  # only when a task is named: `dl-run --help` stays fast

    preset = TASKS.get(tasks[-1]).preset if tasks[-1] in TASKS else None  # an unknown name: the config check says
    return [*args, f"experiment={preset}"] if preset else args


def _devices(args: list[str]) -> int:
    """`trainer.devices=N` from the command line (1 if absent or not a number: the config check says why)."""
    given = [a.split("=", 1)[1] for a in args if a.startswith("trainer.devices=")]
    return int(given[-1]) if given and given[-1].isdigit() else 1


def refuse_used_folders(args: list[str]) -> frozenset[Path]:
    """A new run or sweep writes only into a folder that is new or empty (dl-run's own, or the user's given empty):
    a folder holding anything else (a run, a sweep's jobs, the user's files) is refused before Hydra writes. Return
    the named folders that exist, empty (kept when the run fails)."""
    if any(a.startswith("resume=") for a in args) or (distributed.launched() and not distributed.is_main()):
        return frozenset()
    from dlrun.run.run_directory import check_writable, refuse_used_folder

    multirun = any(a in ("-m", "--multirun") or a.startswith("hparams_search=") for a in args)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    named = [plain_value(a.split("=", 1)[1]) for a in args if a.startswith(f"{key}=")]
    if not named:
        check_writable(Path("outputs"), key, "runs are written under outputs/ there")
        return frozenset()
    folder = Path(named[-1]).expanduser()
    return frozenset({folder.resolve()}) if refuse_used_folder(folder, key) else frozenset()


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


def _prepared_arguments(args: list[str]) -> tuple[list[str], frozenset[Path]]:
    """The command's arguments as Hydra must see them (a resumed run's own overrides, a task's preset), checked,
    and the folders named for the run that exist, empty; a data-parallel run is started here with torchrun, which
    comes back to main() in each process."""
    devices = _devices(args)
    sweep = any(a in ("-m", "--multirun") or a.startswith("hparams_search=") for a in args)
    if sweep and (devices > 1 or distributed.launched()):
        raise ConfigError("A sweep (-m, hparams_search) runs its jobs one process each: it cannot run under "
                          "torchrun or with trainer.devices>1. Train the chosen settings data-parallel "
                          "afterwards, with dl-run trainer.devices=N <the best job's overrides>.",
                          key="trainer.devices")
    args = quote_paths(args)
    found_empty = refuse_used_folders(args)
    if devices > 1 and not distributed.launched():
        distributed.launch(devices, args)  # comes back here in each of the processes it starts
    args = task_arguments(resume_arguments(args))
    preflight.check(args)
    return args, found_empty


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
        with timing.phase("read the command line, check it"):
            prepared, found_empty = _prepared_arguments(sys.argv[1:])
        sys.argv = [sys.argv[0], *prepared]
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
        return train_job(cfg, sweep, found_empty)

    try:
        timing.CLOCK.mark()  # Hydra composes the config between here and the job's first line
        with known_mode(sys.argv[1:]):
            train()
    except KeyboardInterrupt:  # before training started (training itself stops cleanly on its own)
        console.print_error("Interrupted before training started; nothing was trained.")
        sys.exit(130)
    finally:
        distributed.teardown()
    distributed.end_worker()  # a rank other than 0 ends here (see why there)
    _finish(sweep)


def console_main() -> None:
    """The `dl-run` script: main(), then an exit that skips tearing down the interpreter's modules.

    Everything dl-run writes is closed by then (checkpoints, TensorBoard, metrics.json, the loggers); after main()
    the interpreter would only free the objects of torch, Hydra and matplotlib one by one, 1-2.5 CPU seconds on
    2 cores, as long as a tiny run's training (issue #21). So, as Python's own exit would: the other threads are
    joined, the atexit handlers run (logging's, multiprocessing's, torch's), the output is flushed; then the process
    ends with main()'s exit code. Under a profiler or debugger (sys.getprofile/gettrace set), the normal exit.
    An exception main() did not handle takes the normal way too: its traceback and exit code 1.
    """
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    if not isinstance(code, int):
        if code is not None:  # sys.exit("message"): Python prints it and exits with 1
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    _exit_without_teardown(code)


def _exit_without_teardown(code: int) -> None:
    import atexit
    import threading

    # What the interpreter's own exit does first, in its order: threading's exit hooks (they tell executors'
    # manager threads to stop: joblib's loky workers), the join of every non-daemon thread, then the atexit handlers.
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None:  # another Python: its own exit, unchanged
        sys.exit(code)
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


def _finish(sweep: SweepJobs) -> None:
    """A multirun whose jobs ran in this process: its report, then its folder is let go; the exit code."""
    if sweep.sweep_dir is not None:
        from dlrun.run import sweep_resume

        try:
            sweep.report()
        finally:
            sweep_resume.unlock(sweep.sweep_dir)
        if sweep.exit_code():
            sys.exit(sweep.exit_code())
    elif any(job.status == "failed" for job in sweep.jobs):
        sys.exit(2)


if __name__ == "__main__":
    main()
