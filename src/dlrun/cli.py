"""The `dl-run` entry point: Hydra composes the config, then plain values are handed to run()."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import traceback
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dlrun import console, preflight
from dlrun.errors import ConfigError
from dlrun.interrupt import Interrupted

# What each job of this process ended with; a multirun keeps going past a bad job and reports at the end.
_jobs: list = []  # sweep.JobResult, one per job
_crashes: list[str] = []  # jobs that failed on something other than the user's input
_sweep_dirs: set[str] = set()
# Overrides that change how a run looks, not what it computes: left out of the names of sweep rows.
QUIET_KEYS = {"trainer.progress", "trainer.device", "resume"}

# Run and sweep directories end in the process id: two runs started in the same second never share one.
OmegaConf.register_new_resolver("dlrun_pid", os.getpid, replace=True)


@hydra.main(config_path="pkg://dlrun.configs", config_name="train", version_base="1.3")
def _train(cfg: DictConfig) -> float | None:
    from dlrun.run import remove_unfinished, run  # imported here so `dl-run --help` stays fast
    from dlrun.sweep import JobResult

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    name = " ".join(o for o in overrides if _override_key(o) not in QUIET_KEYS) or "(defaults)"
    if hydra_cfg.mode is RunMode.MULTIRUN:
        _sweep_dirs.add(hydra_cfg.sweep.dir)
        from dlrun.data import reuse

        reuse.between_jobs = True  # the next job with the same dataset settings takes this one's
    try:
        metrics = run(cfg, run_dir, overrides)
    except KeyboardInterrupt:  # outside the training loop (building, scoring): nothing half-done was written
        resume = f"dl-run {shlex.quote(f'resume={run_dir.resolve()}')}"
        console.print_error("Interrupted outside the training loop. " + (
            f"Its checkpoints are intact; continue with:  {resume}" if (run_dir / "checkpoints" / "last.pt").is_file()
            else "Nothing was trained yet."))
        if not cfg.get("resume"):
            remove_unfinished(run_dir)
        sys.exit(130)
    except Interrupted as err:
        # soft_wrap: the command stays on one line, so it can be copied whole.
        stopped = str(err)[0].upper() + str(err)[1:]
        console.console.print(f"\n{stopped}. Checkpoint written: {run_dir / 'checkpoints' / 'last.pt'}"
                              f"\nResume with:  dl-run {shlex.quote(f'resume={run_dir.resolve()}')}", soft_wrap=True)
        handler = signal.getsignal(err.signum)
        if err.signum not in (signal.SIGINT, signal.SIGTERM) and callable(handler):
            handler(err.signum, None)  # a cluster tool's pre-emption handler: submitit requeues the job and exits
        sys.exit(err.exit_code)
    except (ConfigError, FloatingPointError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # the user asked for the whole stack trace
        console.print_error(str(err) if not overrides else f"{err}\n(job overrides: {' '.join(overrides)})")
        if not cfg.get("resume"):
            remove_unfinished(run_dir)
        _jobs.append(JobResult(name, str(run_dir), error=str(err)))
        return None
    except Exception as err:  # noqa: BLE001 - a crash in one job of a sweep must not lose the others
        if hydra_cfg.mode is not RunMode.MULTIRUN or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        traceback.print_exc()
        error = f"{type(err).__name__}: {err}"
        console.print_error(f"job {hydra_cfg.job.num} ({name}) crashed: {error}. The sweep goes on.")
        if run_dir.is_dir():
            (run_dir / "metrics.json").write_text(json.dumps(
                {"status": "failed", "error": error, "traceback": traceback.format_exc(), "overrides": overrides},
                indent=2))
        _jobs.append(JobResult(name, str(run_dir), error=error))
        _crashes.append(name)
        return None
    if metrics.get("mode", "train") != "train":
        return None
    _jobs.append(JobResult(name, str(run_dir), metrics=metrics))
    test = metrics["test"]
    return test.get("accuracy", test.get("loss"))


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


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
    original = [o for o in yaml.safe_load(saved.read_text()) or []
                if _override_key(o) not in given_keys | {"resume", "hydra.run.dir"}]
    # hydra.output_subdir=null: Hydra must not rewrite the run's .hydra/ before the new overrides are checked;
    # run() records them itself once the config has proved valid.
    return _config_dir_of(run_dir, given) + original + given + [
        f"hydra.run.dir={run_dir.resolve()}", "hydra.output_subdir=null", f"resume={run_dir.resolve()}"]


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


def report_sweep(sweep_dir: Path) -> None:
    """The sweep table in the terminal, and summary.csv, summary.md and val_curves.png beside the jobs."""
    from dlrun import sweep

    failed = sum(job.status == "failed" for job in _jobs)
    table = sweep.rows(_jobs)
    # Name each row by what differs between the jobs; what they share goes in the title.
    common = set.intersection(*(set(job.name.split()) for job in _jobs)) if _jobs else set()
    # The terminal gets the essentials; summary.csv has every column.
    shown = {" ".join(o for o in str(row["job"]).split() if o not in common) or str(row["job"]):
             {k: v for k, v in row.items()
                               if k not in ("job", "run_dir", "error", "epochs", "best_epoch", "train/loss")}
             for row in table}
    console.results_table(shown, title=f"sweep: {len(_jobs) - failed} finished job(s)"
                          + (f", {failed} failed" if failed else "") + ", best first"
                          + (f" (all with {' '.join(sorted(common))})" if common and len(_jobs) > 1 else ""))
    for job in _jobs:
        if job.status == "failed":
            console.console.print(f"failed: {job.name}: {job.error}", soft_wrap=True)
    if sweep_dir.is_dir():
        paths = sweep.write(sweep_dir, _jobs)
        console.console.print("Summary: " + ", ".join(str(p) for p in paths), soft_wrap=True)
    console.console.print(f"Compare the runs:  tensorboard --logdir {sweep_dir.resolve()}", soft_wrap=True)


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


def main() -> None:
    """Console script `dl-run`."""
    if "--list" in sys.argv[1:]:
        list_options(sys.argv[1:])
        return
    # A `_target_: my_module.build` names code in the directory the user runs from, as `python -m` would see it.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        refuse_existing_run(sys.argv[1:])
        sys.argv = [sys.argv[0], *resume_arguments(sys.argv[1:])]
        preflight.check(sys.argv[1:])
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        console.print_error(str(err))
        sys.exit(2)
    try:
        _train()
    except KeyboardInterrupt:  # before training started (training itself stops cleanly on its own)
        console.print_error("Interrupted before training started; nothing was trained.")
        sys.exit(130)
    if _sweep_dirs:
        report_sweep(Path(next(iter(_sweep_dirs))))
    if _crashes:
        sys.exit(1)
    if any(job.status == "failed" for job in _jobs):
        sys.exit(2)


if __name__ == "__main__":
    main()
