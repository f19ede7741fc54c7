"""A stopped sweep, continued in its own folder (`dl-run resume=<sweep dir>`): what its folder recorded, the lock
that keeps two resumes out of one folder, and what becomes of each job. Both sweepers (Hydra's grid and dl-run's
search) decide each job with `job_on_resume`. Imports no torch: the CLI checks a sweep folder before Hydra runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dlrun.errors import ConfigError

RECORD = "multirun.yaml"  # the sweep's composed config and overrides (Hydra's basic sweeper writes it too)
LOCK = ".dlrun-sweep.lock"  # held by the dl-run process that runs the sweep's jobs
# Overrides of a resumed sweep that say how it continues, not what its jobs compute: never part of a job's record.
SWITCHES = ("sweep.resume", "sweep.retry_failed", "resume")
# What a resume may add to the sweep's own overrides: how it runs and what it prints, never what a job computes.
RESUME_MAY_ADD = ("sweep.retry_failed", "trainer.progress", "trainer.device")
RESUME_MAY_ADD_HYDRA = ("hydra/launcher", "hydra.launcher.")
# Hydra settings a sweep folder may carry back into the re-launch (a launcher, a sweeper, their settings); anything
# else of Hydra's (callbacks, environment, search path) runs only when the user gives it again.
RECORDED_HYDRA = ("hydra/launcher", "hydra/sweeper", "hydra.launcher.", "hydra.sweeper.", "hydra.mode",
                  "hydra.sweep.subdir", "hydra.job.config.")
SET_BY_RESUME = ("hydra.sweep.dir", "hydra.output_subdir")
# Sweepers that run the same jobs: a grid recorded by Hydra's basic sweeper, before dl-run's subclass of it became
# the default (issue #21), resumes as the same sweep.
SAME_SWEEPER = {"hydra._internal.core_plugins.basic_sweeper.BasicSweeper":
                "hydra_plugins.dlrun_basic_sweeper.sweeper.DlrunBasicSweeper"}


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def is_sweep(folder: Path) -> bool:
    """Whether a folder holds a sweep's record (a folder that holds a single run is not one)."""
    return (Path(folder) / RECORD).is_file()


def recorded(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's multirun.yaml, read as data: its overrides are checked before any is used."""
    path = Path(sweep_dir) / RECORD
    try:
        content = yaml.safe_load(path.read_text())
        hydra = content["hydra"]
        task, hydra_overrides = list(hydra["overrides"]["task"]), list(hydra["overrides"]["hydra"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise ConfigError(f"'resume={sweep_dir}': {path} is not the record Hydra writes of a sweep ({err}).",
                          key="resume") from None
    if not all(isinstance(o, str) for o in task + hydra_overrides):
        raise ConfigError(f"'resume={sweep_dir}': {path} holds overrides that are not strings.", key="resume")
    return content


def recorded_overrides(content: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The sweep's own overrides (the jobs', Hydra's) without what a resume sets again itself."""
    overrides = content["hydra"]["overrides"]
    task = [o for o in overrides["task"] if _key(o) not in SWITCHES]
    return task, [o for o in overrides["hydra"] if _key(o) not in SET_BY_RESUME]


def refuse_new_values(sweep_dir: Path, task: list[str], given: list[str]) -> list[str]:
    """The given overrides a resume may take (the same values again are dropped); anything that would change what
    the sweep's jobs compute (a grid or search space, a setting) is refused, listing every difference."""
    saved = {_key(o): o for o in task}
    kept, changes = [], []
    for override in given:
        key = _key(override)
        if key in saved:
            if override.lstrip("+") != saved[key].lstrip("+"):
                changes.append(f"{saved[key]} -> {override}")
        elif key in RESUME_MAY_ADD or key.startswith(RESUME_MAY_ADD_HYDRA):
            kept.append(override)
        else:
            changes.append(f"{override} (not in the sweep)")
    if changes:
        raise ConfigError(f"'resume={sweep_dir}' continues the sweep with its own values, and takes no new ones: "
                          f"{'; '.join(changes)}. Its jobs ran with {' '.join(task) or 'the defaults'}; a resume may "
                          f"add only {', '.join(RESUME_MAY_ADD)} or hydra.launcher settings. For other values, start a "
                          f"new sweep. Nothing in {sweep_dir} was changed.", key=_key(changes[0].split(' -> ')[-1]))
    return kept


def refuse_recorded_code(sweep_dir: Path, hydra_overrides: list[str]) -> None:
    """The sweep folder's Hydra overrides are data: a launcher or sweeper choice and their settings are taken, but
    one that names code to call or changes Hydra otherwise runs only when the user gives it again."""
    for override in hydra_overrides:
        if "_target_" in override or not _key(override).startswith(RECORDED_HYDRA):
            raise ConfigError(f"The sweep's recorded override '{override}' (in {Path(sweep_dir) / RECORD}) names code "
                              f"to call or changes Hydra's own settings, and dl-run runs nothing a folder names unless "
                              f"you say so: if you trust it, give '{override}' again with resume=.", key=_key(override))


def sweep_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How the sweep composed now differs from the one recorded in its folder: its sweeper, its grid or search space
    (a preset's hydra.sweeper.params), or the jobs' overrides."""
    changes = []
    for key in ("_target_", "params"):
        old, new = (before.get("hydra", {}).get("sweeper") or {}).get(key), (now["hydra"]["sweeper"] or {}).get(key)
        if key == "_target_":
            old = SAME_SWEEPER.get(old, old)
        if old != new:
            changes.append(f"hydra.sweeper.{key}: {old} -> {new}")
    old_task, _ = recorded_overrides(before)
    new_task, _ = recorded_overrides(now)
    quiet = set(RESUME_MAY_ADD)
    old_task, new_task = ([o for o in t if _key(o) not in quiet] for t in (old_task, new_task))
    if old_task != new_task:
        changes.append(f"the jobs' overrides: {' '.join(old_task)} -> {' '.join(new_task)}")
    return changes


# ---- the lock: one dl-run process at a time runs a sweep's jobs ---------------------------------------------------

def lock_holder(sweep_dir: Path) -> dict[str, Any] | None:
    """Who holds the sweep's lock (pid, host, since), or None when it is free or its holder is gone (a stale lock)."""
    try:
        holder = json.loads((Path(sweep_dir) / LOCK).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "since": "?"}  # being written this instant: held
    if not isinstance(holder, dict):
        return None
    if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
        return None  # killed (SIGKILL, a crash) before it could let go
    return holder


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def lock(sweep_dir: Path) -> None:
    """Take the sweep's lock (a file made with O_EXCL, holding this process's id and host), or refuse naming the
    process that holds it; a lock whose process is gone from this machine is taken over."""
    path = Path(sweep_dir) / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = lock_holder(sweep_dir)
            if holder is not None:
                raise ConfigError(locked_message(sweep_dir, holder), key="resume") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")}, handle)
        return
    raise ConfigError(locked_message(sweep_dir, {"pid": "?", "host": "?", "since": "?"}), key="resume")


def locked_message(sweep_dir: Path, holder: dict[str, Any]) -> str:
    """Why a sweep folder cannot be resumed now: another dl-run process runs its jobs."""
    return (f"'resume={sweep_dir}': another dl-run (process {holder.get('pid')} on {holder.get('host')}, since "
            f"{holder.get('since')}) is running this sweep's jobs, and two at once would train the same jobs into "
            f"the same folders. Wait for it to end; if that process is gone (on another machine), remove "
            f"{Path(sweep_dir) / LOCK}.")


def unlock(sweep_dir: Path) -> None:
    """Let go of the sweep's lock, if this process holds it."""
    path = Path(sweep_dir) / LOCK
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(holder, dict) and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


# ---- each job of a resumed sweep ----------------------------------------------------------------------------------

@dataclass
class JobOnResume:
    """What a resumed sweep does with one job: `keep` (completed: its recorded result, nothing rerun), `failed`
    (failed before: it stays failed), `resume` (from its checkpoint, as a single run resumes) or `run` (afresh)."""

    action: str
    run_dir: Path
    metrics: dict[str, Any] | None = None  # a kept job's metrics.json
    error: str | None = None  # why a job that stays failed failed
    crashed: bool = False  # it crashed (rather than failed on its input or a NaN loss)


def job_folder(sweep_dir: Path, number: int, own: Path) -> Path:
    """The folder of job `number` (hydra.job.num, the first number in its name): the one Hydra names `own` when it
    holds the job's files, else an earlier folder of that number, else `own`."""
    if own.is_dir() and any(p.suffix != ".log" for p in own.iterdir()):
        return own
    for folder in sorted(Path(sweep_dir).iterdir()) if Path(sweep_dir).is_dir() else []:
        found = re.match(r"^\D*?(\d+)(?:_|$)", folder.name)
        if folder.is_dir() and folder != own and found and int(found.group(1)) == number:
            return folder
    return own


def job_on_resume(run_dir: Path, retry_failed: bool) -> JobOnResume:
    """Decide what a resumed sweep does with the job whose folder is `run_dir`. Reads only, except with
    `retry_failed`, when a failed job's record of its failure is removed so that it runs again."""
    from dlrun.engine import checkpoint

    metrics, failed = _json(run_dir / "metrics.json"), _json(run_dir / "failed.json")
    if metrics is not None and metrics.get("status") == "completed":
        return JobOnResume("keep", run_dir, metrics=metrics)
    crash = metrics.get("error") if metrics is not None and metrics.get("status") == "failed" else None
    error = (failed or {}).get("error") or crash
    if error and not retry_failed:
        return JobOnResume("failed", run_dir, error=str(error), crashed=failed is None)
    if error:  # asked to try again: the record of the failure goes, a new one is written by the new attempt
        (run_dir / "failed.json").unlink(missing_ok=True)
        if crash:
            (run_dir / "metrics.json").unlink(missing_ok=True)
    if checkpoint.exists(run_dir / "checkpoints"):
        return JobOnResume("resume", run_dir)
    if (run_dir / "tb").is_dir() and (run_dir / ".dlrun").is_file():
        shutil.rmtree(run_dir / "tb")  # events of an attempt killed before its first checkpoint: it starts over
    return JobOnResume("run", run_dir)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None
