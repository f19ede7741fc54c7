"""The `dl-run` entry point: Hydra composes the config, then plain values are handed to run()."""

from __future__ import annotations

import errno
import math
import os
import re
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
from dlrun.run.run_directory import CANNOT_WRITE
from dlrun.errors import ConfigError
from dlrun.engine.signals import Interrupted

if TYPE_CHECKING:
    from dlrun.run.sweep import SweepJobs

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


class SweepDirectory(Callback):
    """Hydra callback (configs/hydra/default.yaml) in the process that launches a multirun's jobs: checks a
    search's direction before any trial, and reports the jobs that ran in other processes (joblib, submitit)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        from dlrun.run.run_directory import mark

        try:
            _check_direction(config.hydra, config.trainer.monitor)
        except ConfigError as err:  # before any trial; SystemExit passes through Hydra's own error report
            console.print_error(str(err))
            sys.exit(2)
        sweep_dir = Path(config.hydra.sweep.dir)
        mark(sweep_dir, created=not sweep_dir.exists())  # cli.refuse_used_folders made sure it is new or empty

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


def train_job(cfg: DictConfig, sweep: SweepJobs, found_empty: frozenset[Path] = frozenset()) -> float | None:
    """One run, or one job of a sweep: train it (or its mode), and record how it ended in `sweep`. `found_empty`:
    the folders the user named that existed (empty) before this invocation."""
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
        if not cfg.get("resume") and distributed.is_main():
            _start_folder(run_dir, cfg, found_empty)
        metrics = run(cfg, run_dir, overrides, sweep.datasets if multirun else None)
    except OSError as err:
        if err.errno not in CANNOT_WRITE or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        error = ConfigError(_cannot_write(err), key="hydra.run.dir")
        _failed_on_input(error, run_dir, cfg, overrides, in_worker)
        sweep.record(JobResult(name, str(run_dir), error=str(error)))
        return None
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


def _interrupted(run_dir: Path, err: Interrupted) -> None:
    # soft_wrap: the command stays on one line, so it can be copied whole.
    stopped = str(err)[0].upper() + str(err)[1:]
    console.console.print(f"\n{stopped}. Checkpoint written: {run_dir / 'checkpoints' / 'last.pt'}"
                          f"\nResume with:  {resume_command(run_dir)}", soft_wrap=True)
    handler = signal.getsignal(err.signum)
    if err.signum not in (signal.SIGINT, signal.SIGTERM) and callable(handler):
        handler(err.signum, None)  # a cluster tool's pre-emption handler: submitit requeues the job and exits
    sys.exit(err.exit_code)


def _failed_on_input(err: Exception, run_dir: Path, cfg: DictConfig, overrides: list[str], in_worker: bool) -> None:
    """Say why; a worker's job leaves failed.json for the sweep's summary; a new run leaves no directory behind."""
    from dlrun.run.run_directory import RunDirectory

    console.print_error(str(err) if not overrides else f"{err}\n(job overrides: {' '.join(overrides)})")
    if in_worker:  # the sweep's summary, made in another process, reads why it failed here
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


def hydra_value(text: str) -> str:
    """A value as Hydra's override grammar reads it back unchanged: plain when it is plain, else a quoted string
    (a folder with spaces or accents, e.g. /home/josé/runs, would stop Hydra's parser)."""
    if re.fullmatch(r"[A-Za-z0-9_./\-]+", text):
        return text
    quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)  # escape quotes and the backslashes before
    quoted = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted)  # ... and those that end the string
    return "'" + quoted.replace("${", "\\${") + "'"


def _plain_value(value: str) -> str:
    """A value as the user typed it, without Hydra's quotes (resume='/a b/run')."""
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            return str(OverridesParser.create().parse_override(f"x={value}").value())
        except Exception:  # noqa: BLE001 - not a quoted string after all: take it as typed
            return value
    return value


def quote_paths(args: list[str]) -> list[str]:
    """`key=value` arguments whose value holds spaces or non-ASCII letters (a path such as `tëst ünï/new.csv`),
    which Hydra's parser would refuse, quoted for it; anything else as given."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        odd = any(c.isspace() or ord(c) > 127 for c in value)
        if eq and odd and not key.startswith("-") and not re.search(r"[\[\]{}(),'\"=]", value) and value.strip():
            arg = f"{key}={hydra_value(value)}"
        out.append(arg)
    return out


def resume_arguments(args: list[str]) -> list[str]:
    """`resume=<run dir>` re-runs that run's own overrides in its own directory, plus any new ones given; the run's
    files are read as data: they may not name code (a `_target_`, Hydra's own settings) unless given again."""
    resume = [a for a in args if a.startswith("resume=")]
    if not resume:
        return args
    run_dir = Path(_plain_value(resume[-1].split("=", 1)[1])).expanduser()
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
    try:
        recorded = yaml.safe_load(saved.read_text()) or []
    except yaml.YAMLError as err:
        raise ConfigError(f"'resume={run_dir}': {saved} is not a YAML list of overrides ({err}).",
                          key="resume") from None
    if not isinstance(recorded, list) or not all(isinstance(o, str) for o in recorded):
        raise ConfigError(f"'resume={run_dir}': {saved} is not a list of overrides.", key="resume")
    original = [o for o in map(_renamed, recorded) if _override_key(o) not in given_keys | {"resume", "hydra.run.dir"}]
    _refuse_saved_code(original, saved)
    mode = next((a.split("=", 1)[1] for a in reversed(given) if a.startswith("mode=")), "train")
    logging = _writable_run(run_dir, mode)
    data = _data_arguments(run_dir, original, given_keys)
    # hydra.output_subdir=null: Hydra must not rewrite the run's .hydra/ before the new overrides are checked;
    # run() records them itself once the config has proved valid.
    folder = hydra_value(str(run_dir.resolve()))
    options, given = _options_first(given)
    return options + _config_dir_of(run_dir, options) + original + data + given + logging + [
        f"hydra.run.dir={folder}", "hydra.output_subdir=null", f"resume={folder}"]


# Hydra's command-line options that take a value (the rest are flags).
_VALUED_OPTIONS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn", "--cfg", "-c", "--package",
                   "-p", "--experimental-rerun")


def _options_first(args: list[str]) -> tuple[list[str], list[str]]:
    """The command's options (--config-dir DIR, -m, ...) and its overrides, apart: options go before the overrides,
    or Hydra's argument parser refuses the overrides that follow one."""
    options, overrides, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):  # an override never starts with '-' (+key and ~key do not)
            takes = arg in _VALUED_OPTIONS and i + 1 < len(args)
            options += args[i:i + 2] if takes else [arg]
            i += 2 if takes else 1
        else:
            overrides.append(arg)
            i += 1
    return options, overrides


def _refuse_saved_code(original: list[str], saved: Path) -> None:
    """A run folder's saved overrides are data: one that names code to call (`_target_`) or changes Hydra itself
    (its callbacks, launchers, environment) is used only when the user gives it again on the command line."""
    for override in original:
        key = _override_key(override)
        if "_target_" in override or key.startswith("hydra"):
            raise ConfigError(f"The run's saved override '{override}' (in {saved}) names code to call or changes "
                              f"Hydra's own settings, and dl-run runs nothing a run folder names unless you say so: "
                              f"if you trust it, give '{override}' again on the command line with resume=.", key=key)


def _writable_run(run_dir: Path, mode: str) -> list[str]:
    """Training on writes in the run's folder: refused when it is read-only. A mode writes its own file (checked
    where it does); Hydra's log then goes to the terminal instead of the read-only folder."""
    if os.access(run_dir, os.W_OK | os.X_OK):
        return []
    if mode == "train":
        raise ConfigError(f"'resume={run_dir}': cannot write in {run_dir} (it is read-only for you), and resuming "
                          f"writes its checkpoints and metrics there. Make it writable, or copy the run elsewhere.",
                          key="resume")
    return ["hydra/job_logging=stdout"]


def _data_arguments(run_dir: Path, original: list[str], given_keys: set[str]) -> list[str]:
    """The run's data, found where it was (data_sources.json holds each path as resolved when the run started)
    whatever folder dl-run runs in now, and checked to hold what it held; a path given now wins, unchecked."""
    from dlrun.run.run_directory import RunDirectory, data_changes

    sources = RunDirectory(run_dir).data_sources()
    saved_values = {_override_key(o): o.split("=", 1)[1] for o in original if "=" in o}
    out = []
    for key, entry in sources.items():
        group = key.split(".", 1)[0]
        if not isinstance(entry, dict) or key in given_keys or group in given_keys or "resolved" not in entry:
            continue  # a new dataset, or a new path for this one: the user's, as given
        if key in saved_values and _plain_value(saved_values[key]) != entry.get("given"):
            continue  # the run was resumed with another path since: that one is in its overrides
        problem = data_changes(key, entry)
        if problem:
            raise ConfigError(f"'{key}={entry.get('given')}': the run {run_dir} trained on {entry['resolved']}, and "
                              f"{problem}. Give {key}=<the file to use> with resume= to use another (it is then "
                              f"taken as given, unchecked).", key=key)
        out.append(f"{key}={hydra_value(entry['resolved'])}")
    return out


def _renamed(override: str) -> str:
    """An override saved by an older dl-run, in today's words (trainer.mixed_precision became trainer.precision)."""
    if _override_key(override) == "trainer.mixed_precision":
        return "trainer.precision=" + ("32" if override.split("=", 1)[1].lower() == "false" else "auto")
    return override


# Words in a config file that make Hydra or dl-run import or call something, or change the environment.
CODE_WORDS = ("_target_", "env_set", "searchpath", "callbacks")


def recorded_config_dirs(run_dir: Path) -> list[str]:
    """The --config-dir folders a run was made with, as Hydra recorded them in .hydra/hydra.yaml (read as data)."""
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return []
    try:
        recorded = yaml.safe_load(hydra_yaml.read_text()) or {}
        sources = recorded.get("hydra", {}).get("runtime", {}).get("config_sources", []) or []
    except (yaml.YAMLError, AttributeError):
        raise ConfigError(f"'resume={run_dir}': {hydra_yaml} is not the file Hydra writes.", key="resume") from None
    return [str(s.get("path")) for s in sources if isinstance(s, dict) and s.get("provider") == "command-line"
            and s.get("schema") == "file"]


def resume_command(run_dir: Path) -> str:
    """The command that continues a run, as printed for the user to copy: with the run's own --config-dir, which
    dl-run takes from a run folder only when the user gives it (its configs may name code)."""
    config_dirs = [arg for folder in recorded_config_dirs(run_dir) for arg in ("--config-dir", folder)]
    return shlex.join(["dl-run", f"resume={run_dir.resolve()}", *config_dirs])


def _config_dir_of(run_dir: Path, given: list[str]) -> list[str]:
    """The run's own --config-dir (Hydra records it), unless one is given again: its configs are the run's. A
    folder whose configs name code is used only when the user gives it again with --config-dir."""
    if any(a in ("--config-dir", "-cd") or a.startswith("--config-dir=") for a in given):
        return []
    folders = recorded_config_dirs(run_dir)
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(f"'resume={run_dir}': the run was made with --config-dir {folder}, which is gone. "
                              f"Give --config-dir <where those configs are now>.", key="--config-dir")
        named = _code_named_in(Path(folder))
        if named:
            raise ConfigError(f"'resume={run_dir}': the run was made with --config-dir {folder}, whose {named}; "
                              f"dl-run runs nothing a run folder names unless you say so. If you trust that folder, "
                              f"give --config-dir {hydra_value(folder)} again on the command line.",
                              key="--config-dir")
    return [arg for folder in folders for arg in ("--config-dir", folder)]


def _code_named_in(folder: Path) -> str | None:
    """What in a config folder names code to import or call, or changes Hydra itself (None: plain settings)."""
    if (folder / "hydra").is_dir():
        return "hydra/ folder changes Hydra's own settings"
    for path in sorted(folder.rglob("*.y*ml"))[:2000]:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        word = next((w for w in CODE_WORDS if w in text), None)
        if word:
            return f"file {path.relative_to(folder)} names code ({word})"
    return None


def refuse_used_folders(args: list[str]) -> frozenset[Path]:
    """A new run or sweep writes only into a folder that is new or empty (dl-run's own, or the user's given empty):
    a folder holding anything else (a run, a sweep's jobs, the user's files) is refused before Hydra writes. Return
    the named folders that exist, empty (kept when the run fails)."""
    if any(a.startswith("resume=") for a in args) or (distributed.launched() and not distributed.is_main()):
        return frozenset()
    from dlrun.run.run_directory import check_writable, refuse_used_folder

    multirun = any(a in ("-m", "--multirun") or a.startswith("hparams_search=") for a in args)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    named = [_plain_value(a.split("=", 1)[1]) for a in args if a.startswith(f"{key}=")]
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
