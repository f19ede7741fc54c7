"""A run directory: the one object that knows its layout and the one place that writes a run's files.

    <run dir>/
      .dlrun                               the mark of a folder dl-run made (its version and the process that
                                           made it): only a marked folder is ever removed, and only what it wrote
      .hydra/config.yaml, overrides.yaml   the composed config and the command's overrides (Hydra writes them
                                           for a new run; record_config for a resumed one)
      data_sources.json                    every data path of a training run as given and as resolved, with its
                                           content's fingerprint: a reused run finds and checks its data by it
      checkpoints/last.pt, best.pt         written atomically; previous.pt is the last.pt before the newest
      tb/, tb/train/, tb/val/              TensorBoard events (dlrun.logger); train and val: the Loss card's curves
      metrics.json                         what the training measured (modes write their own files beside it)
      curves.png, grad_cam.png, ...        figures

The rules it keeps: dl-run writes only into a folder it made (or one that was empty), never replaces a file it
did not write unless the user gives overwrite=true, never writes a mode's output over the run's own records, and
reads a run folder's files as data. This module imports no torch: cli.py checks folders with it before Hydra runs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dlrun.errors import ConfigError

MARKER = ".dlrun"
DATA_SOURCES = "data_sources.json"
# The run's own records: no mode writes over them, overwrite=true or not.
RECORDS = ("metrics.json", DATA_SOURCES, MARKER)
RECORD_FOLDERS = ("checkpoints", ".hydra", "tb")
# Dataset keys that name a file or folder (relative paths start from where dl-run runs).
DATA_PATH_KEYS = ("path", "test_path", "root")
# What a failed new run may leave, all of it written by this invocation: removed with the folder.
_STARTUP_FILES = (".hydra", MARKER, DATA_SOURCES)
_MAX_LISTED = 200_000  # files fingerprinted under one data folder
CANNOT_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _checkpoint():  # noqa: ANN202 - torch is imported only when a checkpoint is touched (`dl-run --help` stays fast)
    from dlrun.engine import checkpoint

    return checkpoint


# ---- folders dl-run may write into (checked before Hydra makes or writes anything) -------------------------------

def mark(path: Path, created: bool) -> None:
    """Write dl-run's mark into a folder it is about to write a run or sweep into."""
    from dlrun import __version__

    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / MARKER).write_text(json.dumps({"dl-run": __version__, "pid": os.getpid(), "created": created}))


def _read_mark(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def check_writable(path: Path, key: str, why: str) -> None:
    """Refuse a path whose folder (or the nearest one that exists) cannot be written, naming it."""
    folder = Path(path).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"'{key}={path}': {folder} is a file, so no folder can be made there. Give another path.",
                          key=key)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"'{key}={path}': cannot write in {folder} (it is read-only for you), and {why}. Give a "
                          f"path in a folder you can write to.", key=key)


def refuse_used_folder(path: Path, key: str) -> bool:
    """A folder the user names for a new run (hydra.run.dir) or sweep (hydra.sweep.dir) must be new or empty: dl-run
    writes nowhere else, so nothing of the user's is replaced or removed. Return whether it exists (empty)."""
    path = Path(path).expanduser()
    if not path.exists():
        check_writable(path, key, "a new run writes its folder there")
        return False
    if not path.is_dir():
        raise ConfigError(f"'{key}={path}' is a file, not a folder. Give a new folder.", key=key)
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        check_writable(path, key, "a new run writes its files there")
        return True
    new = path.with_name(path.name + "_2")
    if any((path / "checkpoints").glob("*.pt")):
        raise ConfigError(f"'{key}={path}' already holds a run (its checkpoints are in {path / 'checkpoints'}). "
                          f"Continue it with dl-run resume={path}, or give a new directory.", key=key)
    if (path / "multirun.yaml").is_file() or any((path / name / ".hydra").is_dir() for name in entries):
        raise ConfigError(f"'{key}={path}' already holds the jobs of an earlier sweep: running the sweep there "
                          f"again would replace their checkpoints, metrics and summary. Give a new "
                          f"hydra.sweep.dir, e.g. {key}={new}.", key=key)
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    whose = ("a folder dl-run made for a run that never reached a checkpoint" if MARKER in entries
             else "not a folder dl-run made")
    raise ConfigError(f"'{key}={path}' is {whose}, and it is not empty (it holds {shown}): dl-run writes a new run "
                      f"only into a new or empty folder, so nothing in it is replaced or removed. Give a new folder, "
                      f"e.g. {key}={new}.", key=key)


# ---- data a run read, found and checked again when the run is reused ----------------------------------------------

def fingerprint(path: Path, key: str) -> dict[str, Any]:
    """What a data file or folder holds, in a few bytes: a file's SHA-256; a folder's list of files with their
    sizes and modification times (a dataset root, which may hold other datasets too: its files' sizes)."""
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return {"kind": "file", "sha256": digest.hexdigest()}
    if not path.is_dir():
        return {"kind": "missing"}
    files = sorted(p for p in path.rglob("*") if p.is_file())[:_MAX_LISTED]
    if key.endswith(".root"):
        return {"kind": "root", "sizes": {str(p.relative_to(path)): p.stat().st_size for p in files}}
    listing = "\n".join(f"{p.relative_to(path)}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}" for p in files)
    return {"kind": "folder", "files": len(files), "sha256": hashlib.sha256(listing.encode()).hexdigest()}


def data_changes(key: str, entry: Mapping[str, Any]) -> str | None:
    """Why a recorded data source cannot be used as the run used it, or None when it is as it was."""
    then, resolved = entry.get("fingerprint") or {}, Path(entry["resolved"])
    if then.get("kind") in (None, "missing"):
        return None  # nothing was there when the run started (a download): nothing to compare
    if not resolved.exists():
        return f"{resolved} is gone"
    now = fingerprint(resolved, key)
    if then["kind"] == "root":
        changed = [name for name, size in then["sizes"].items() if (now.get("sizes") or {}).get(name) != size]
        return f"{len(changed)} of its files changed or are gone (e.g. {changed[0]})" if changed else None
    if now.get("sha256") != then.get("sha256"):
        what = "its content" if then["kind"] == "file" else "its files (names, sizes or modification times)"
        return f"{what} changed since the run trained on it (SHA-256 now {now.get('sha256', '-')[:12]}…, was " \
               f"{then['sha256'][:12]}…)"
    return None


# ---- one run's folder ---------------------------------------------------------------------------------------------

class RunDirectory:
    """One run's folder: where each of its files is, and how each is written."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.checkpoint_dir = self.path / "checkpoints"
        self.hydra_dir = self.path / ".hydra"
        self.metrics_path = self.path / "metrics.json"

    def __str__(self) -> str:
        return str(self.path)

    # ---- checkpoints ----------------------------------------------------------------------------------------------

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / _checkpoint().LAST

    def has_checkpoint(self) -> bool:
        """Whether there is a last.pt or previous.pt to resume from."""
        return _checkpoint().exists(self.checkpoint_dir)

    def best_checkpoint(self) -> Path:
        """The checkpoint a trained run is scored and used with: best.pt, else last.pt, else previous.pt."""
        checkpoint = _checkpoint()
        path = checkpoint.best_in(self.checkpoint_dir)
        if path is not None:
            return path
        raise ConfigError(f"No checkpoint in {self.checkpoint_dir}: expected {checkpoint.BEST} or "
                          f"{checkpoint.LAST}. Give a run directory that dl-run printed at the end of a run.",
                          key="resume")

    def load_best(self) -> tuple[dict[str, Any], Path]:
        """The best checkpoint's content and its path."""
        path = self.best_checkpoint()
        return _checkpoint().load(path), path

    def load_latest(self) -> tuple[dict[str, Any], Path, list[str]]:
        """The newest loadable checkpoint (last.pt, else previous.pt), with what was wrong with the others."""
        return _checkpoint().load_latest(self.checkpoint_dir)

    def save_checkpoints(self, last: dict[str, Any], best: dict[str, Any] | None) -> None:
        """best.pt (when given), then last.pt (the one before it kept as previous.pt); a state that is both is
        serialised once and written twice."""
        checkpoint = _checkpoint()
        data = checkpoint.serialize(last, self.last_checkpoint) if best is last else last
        if best is not None:
            checkpoint.save(self.checkpoint_dir / checkpoint.BEST, data if best is last else best)
        checkpoint.save(self.last_checkpoint, data, keep_previous=True)

    def set_aside_last(self) -> None:
        """Move an unreadable last.pt out of the way (kept as last.pt.corrupt), so it is never rotated in."""
        if self.last_checkpoint.exists():
            _checkpoint().set_aside(self.last_checkpoint)

    def remove_temporary(self) -> list[Path]:
        """Delete half-written checkpoints a killed run left behind; return what was removed."""
        return _checkpoint().remove_temporary(self.checkpoint_dir)

    # ---- results and configs --------------------------------------------------------------------------------------

    def write_json(self, name: str, content: dict[str, Any]) -> Path:
        """A JSON file of results in the run directory (metrics.json, eval_<dataset>.json, failed.json)."""
        return write_whole(self.path / name, json.dumps(content, indent=2))

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """metrics.json: the training's. A mode (lr_find, eval...) never replaces a training's metrics.json."""
        if metrics.get("mode", "train") != "train" and self.metrics_path.exists():
            raise ConfigError(f"mode={metrics['mode']} would replace {self.metrics_path}, the results of the "
                              f"training of this run: a mode writes its own file beside it.", key="mode")
        return self.write_json(self.metrics_path.name, metrics)

    def file(self, name: str) -> Path:
        """Where a file of the run (a figure, an export) goes."""
        return self.path / name

    def output(self, path: str | Path, key: str, overwrite: bool, inputs: Sequence[str | Path] = ()) -> Path:
        """Where a mode writes a file (`file(name)` for one in the run, or the user's path), checked before anything
        is computed: not one of the run's records or checkpoints, not an input, not a folder, writable, and not an
        existing file unless the user asked with overwrite=true (the error names `key`)."""
        out = Path(path).expanduser()
        where, run = out.absolute(), self.path.absolute()
        if out.is_dir():
            raise ConfigError(f"'{key}={out}' is a folder: give a file path, e.g. {key}={out / _default_name(key)}.",
                              key=key)
        inside = where.resolve().parent == run.resolve() and where.name in RECORDS
        if inside or any(_within(where, run / folder) for folder in RECORD_FOLDERS):
            raise ConfigError(f"'{key}={out}' is one of the run's own records ({where.name} in {run}): a mode never "
                              f"writes over them. Give another path.", key=key)
        if any(where.resolve() == Path(p).expanduser().resolve() for p in inputs):
            raise ConfigError(f"'{key}={out}' is the input itself: give another path.", key=key)
        if out.exists() and not overwrite:
            label = f"'{key}={out}'" if key.endswith(".output") else str(out)
            instead = "give another path, or add" if key.endswith(".output") else "add"
            raise ConfigError(f"{label} already exists, and dl-run does not replace a file unless you ask: {instead} "
                              f"overwrite=true to replace it.", key=key)
        check_writable(out.parent, key, f"{out.name} must be written there")
        return out

    def record_config(self, cfg_node: Any, overrides: list[str]) -> None:
        """Write .hydra/config.yaml and overrides.yaml, as Hydra writes them for a new run (for a resumed run, or a
        run dl-run makes itself: a transfer backbone's pretraining)."""
        from omegaconf import OmegaConf

        self.hydra_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg_node, self.hydra_dir / "config.yaml")
        (self.hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))

    def record_data_sources(self, dataset_cfg: Mapping[str, Any]) -> Path:
        """data_sources.json: every data path of the dataset config as given and as resolved (from where dl-run
        runs), with a fingerprint of what it holds, so a reused run finds the same data from any folder."""
        sources = {}
        for name in DATA_PATH_KEYS:
            value = dataset_cfg.get(name)
            if isinstance(value, str) and value:
                key, resolved = f"dataset.{name}", Path(value).expanduser().resolve()
                sources[key] = {"given": value, "resolved": str(resolved), "fingerprint": fingerprint(resolved, key)}
        return self.write_json(DATA_SOURCES, sources)

    def data_sources(self) -> dict[str, Any]:
        """What record_data_sources wrote ({} for a run made before dl-run recorded it)."""
        try:
            sources = json.loads((self.path / DATA_SOURCES).read_text())
        except (OSError, ValueError):
            return {}
        return sources if isinstance(sources, dict) else {}

    # ---- this invocation's own folder ---------------------------------------------------------------------------

    def claim(self, created: bool) -> None:
        """Mark the folder as dl-run's, made (or found empty, created=False) by this process."""
        mark(self.path, created)

    def remove_unfinished(self) -> None:
        """After bad input, leave no run directory that looks like a run: only a folder that this process marked,
        holding only what its start wrote (Hydra's .hydra/ and log, the mark, data_sources.json), is removed;
        a folder the user gave empty is emptied and kept."""
        mine = _read_mark(self.path)
        if not self.path.is_dir() or mine is None or mine.get("pid") != os.getpid():
            return
        entries = list(self.path.iterdir())
        if any(p.name not in _STARTUP_FILES and p.suffix != ".log" for p in entries):
            return
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if mine.get("created"):
            try:
                self.path.rmdir()
            except OSError:
                pass


def write_whole(path: Path, content: str | bytes) -> Path:
    """Write a file whole or not at all: a temporary file beside it, renamed over it once complete (a full disk
    leaves the earlier file as it was)."""
    partial = partial_path(path)
    try:
        if isinstance(content, bytes):
            partial.write_bytes(content)
        else:
            partial.write_text(content)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def partial_path(path: Path) -> Path:
    """Where a file is written before it is renamed to `path` (same folder, same suffix, hidden)."""
    return path.with_name(f".{path.stem}.partial{os.getpid()}{path.suffix}")


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _default_name(key: str) -> str:
    return {"predict.output": "predictions.csv", "export.output": "model.onnx"}.get(key, "out")
