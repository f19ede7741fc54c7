"""Checkpoints: everything needed to continue a run, written so that a kill at any instant loses nothing
and loaded so that a file can never run code."""

from __future__ import annotations

import io
import os
import pickle
import random
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrun.engine import distributed
from dlrun.errors import ConfigError

LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"
# Tests only: seconds to pause half-way through writing a checkpoint, so a kill can land inside the write.
PAUSE_ENV = "DLRUN_TEST_CHECKPOINT_PAUSE"


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """All random states as tensors and plain data (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "shuffle": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if distributed.launched():
        # Every rank draws its own dropout masks and augmentations (on its own GPU, or from its CPU stream for
        # its share of the batch): each rank's streams are saved, so each one resumes its own. Called on every
        # rank together (the Trainer snapshots on all ranks at the same steps).
        own = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            own["cuda"] = torch.cuda.get_rng_state()  # the current device: this rank's GPU
        state["ranks"] = distributed.gather(own)
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what rng_state saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["key"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        for index, saved in cuda_states_to_restore(state["cuda"], torch.cuda.device_count()):
            torch.cuda.set_rng_state(saved, index)
    ranks = state.get("ranks")
    if ranks and distributed.launched() and len(ranks) == distributed.world_size():
        own = ranks[distributed.rank()]
        torch.set_rng_state(own["torch"])
        if "cuda" in own and torch.cuda.is_available():
            torch.cuda.set_rng_state(own["cuda"])
    # With another number of processes than the run had, the ranks start from rank 0's streams: a correct run,
    # but not the same random draws as the uninterrupted one.


def cuda_states_to_restore(saved: list[torch.Tensor], gpus: int) -> list[tuple[int, torch.Tensor]]:
    """(GPU index, state) for each saved GPU random state whose GPU this machine has.

    torch.cuda.set_rng_state_all raises IndexError when the checkpoint came from a machine with more GPUs (or a wider
    CUDA_VISIBLE_DEVICES); the states of GPUs not here belong to no device this run uses.
    """
    return list(enumerate(saved[:gpus]))


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def serialize(state: dict[str, Any], path: Path | None = None) -> bytes:
    """A checkpoint's bytes, for writing the same state to more than one file (`path`: the one it is for)."""
    buffer = io.BytesIO()
    try:
        torch.save(state, buffer)
    except OSError as err:
        raise _cannot_write(path or Path("checkpoint"), err) from None
    return buffer.getvalue()


def _cannot_write(path: Path, err: OSError) -> ConfigError:
    return ConfigError(f"Cannot write checkpoint {path}: {err.strerror or err}. The previous checkpoint "
                       f"{path.name} is untouched; free some space (or fix the folder) and resume.", key="checkpoint")


def save(path: Path, state: dict[str, Any] | bytes, keep_previous: bool = False) -> None:
    """Write a checkpoint (a state, or serialize()'s bytes) atomically: a temporary file, fsynced, then a rename.

    keep_previous first renames the file being replaced to previous.pt, so a checkpoint that later proves
    unreadable still has a good one behind it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as handle:
            pause = float(os.environ.get(PAUSE_ENV, 0) or 0)
            if pause:
                data = state if isinstance(state, bytes) else serialize(state)
                handle.write(data[: len(data) // 2])
                handle.flush()
                time.sleep(pause)
                handle.write(data[len(data) // 2:])
            elif isinstance(state, bytes):
                handle.write(state)
            else:
                torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):  # a full disk, a read-only folder: the old checkpoint is still there
            raise _cannot_write(path, err) from None
        raise
    if keep_previous and path.exists():
        os.replace(path, path.with_name(PREVIOUS))
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable too (a power cut after os.replace could otherwise undo them)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows cannot open a folder: the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_temporary(directory: Path) -> list[Path]:
    """Delete half-written checkpoints that a killed run left behind; return what was removed."""
    removed = sorted(directory.glob(".*.tmp")) if directory.is_dir() else []
    for leftover in removed:
        leftover.unlink(missing_ok=True)
    return removed


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint; tensors and plain data only, so a crafted file cannot execute code."""
    try:
        with zipfile.ZipFile(path) as archive:
            # torch.load does not check the archive's CRCs: a flipped bit would load as a wrong weight.
            damaged = archive.testzip()
    except FileNotFoundError:
        raise ConfigError(f"No checkpoint at {path}.", key="resume") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise ConfigError(f"Checkpoint {path} is truncated, corrupt or not a PyTorch checkpoint "
                          f"({_first_line(err)}).", key="resume") from None
    if damaged is not None:
        raise ConfigError(f"Checkpoint {path} is corrupt: its part '{damaged}' fails its checksum.", key="resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err) or "Unsupported" in str(err):
            raise ConfigError(f"Refused to load checkpoint {path}: it holds Python objects that are not tensors "
                              f"or plain data, and loading them could run code. dl-run never writes such files.",
                              key="resume") from None
        raise ConfigError(f"Checkpoint {path} is corrupt ({_first_line(err)}).", key="resume") from None
    except Exception as err:  # noqa: BLE001 - any other failure of a damaged archive
        raise ConfigError(f"Checkpoint {path} is truncated or corrupt ({_first_line(err)}).", key="resume") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def exists(directory: Path) -> bool:
    """Whether a run directory's checkpoints/ holds something to resume from."""
    return any((directory / name).is_file() for name in (LAST, PREVIOUS))


def best_in(directory: Path) -> Path | None:
    """The checkpoint a trained run is used with: best.pt, else last.pt, else previous.pt (None: none of them)."""
    return next((directory / name for name in (BEST, LAST, PREVIOUS) if (directory / name).is_file()), None)


def load_latest(directory: Path) -> tuple[dict[str, Any], Path, list[str]]:
    """The newest loadable checkpoint of a run: last.pt, else previous.pt; with what was wrong with the others."""
    if not exists(directory):
        raise ConfigError(f"No checkpoint in {directory}: the run stopped before writing its first one. Start it "
                          f"again as a new run (without resume=).", key="resume")
    problems: list[str] = []
    for name in (LAST, PREVIOUS):
        path = directory / name
        if not path.exists():
            if name == LAST:
                problems.append(f"{path} is missing (the run was stopped while replacing it)")
            continue
        try:
            return load(path), path, problems
        except ConfigError as err:
            problems.append(str(err).rstrip("."))
    raise ConfigError(f"No loadable checkpoint in {directory}: {'; '.join(problems)}. The run cannot be resumed; "
                      f"start a new one (without resume=).", key="resume")


def set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint out of the way (kept for inspection), so it is never rotated in."""
    target = path.with_name(path.name + ".corrupt")
    os.replace(path, target)
    return target
