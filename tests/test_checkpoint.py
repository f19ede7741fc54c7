"""Checkpoints in-process: damaged files, a failing write, a crafted file, a diverging loss."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from dlrun.engine import checkpoint
from dlrun.errors import ConfigError
from dlrun.run.training import run

IRIS = ("dataset=iris", "model.hidden=[8]", "model.dropout=0.2", "trainer.deterministic=true", "trainer.batch_size=16")


def train(run_dir: Path, *overrides: str) -> dict:
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)  # where a resumed run records its config
    cfg = OmegaConf.create(compose_config("trainer.progress=false", "trainer.device=cpu", "logger=none", *overrides))
    return run(cfg, run_dir, list(overrides))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def files(run_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_truncated_last_checkpoint_resumes_from_the_previous_one_with_a_warning(tmp_path, capsys):
    train(tmp_path / "whole", *IRIS, "trainer.epochs=4")
    run_dir = tmp_path / "damaged"
    train(run_dir, *IRIS, "trainer.epochs=3")
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # a disk that filled up, a copy cut short

    out = train(run_dir, *IRIS, "trainer.epochs=4", f"resume={run_dir}")
    shown = capsys.readouterr()
    warning = shown.out + shown.err
    assert f"Checkpoint {last} is truncated" in warning and "previous.pt" in warning
    assert out["epochs_run"] == 4 and [h["epoch"] for h in out["history"]] == [1, 2, 3, 4]
    assert (run_dir / "checkpoints" / "last.pt.corrupt").is_file()  # kept for inspection, never rotated in
    ours, theirs = weights(run_dir), weights(tmp_path / "whole")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # the replayed epoch is bitwise the same


def test_with_no_good_checkpoint_left_resume_refuses_and_names_each_file(tmp_path):
    train(tmp_path, *IRIS, "trainer.epochs=2")
    for name in ("last.pt", "previous.pt"):
        path = tmp_path / "checkpoints" / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped bit in the middle: torch.load alone would not notice
        path.write_bytes(bytes(data))
    before = files(tmp_path)
    with pytest.raises(ConfigError) as err:
        train(tmp_path, *IRIS, "trainer.epochs=3", f"resume={tmp_path}")
    message = str(err.value)
    assert all(str(tmp_path / "checkpoints" / name) in message for name in ("last.pt", "previous.pt"))
    assert "corrupt" in message and "start a new one" in message
    assert files(tmp_path) == before  # nothing in the run directory was changed


def test_a_failing_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    train(tmp_path, *IRIS, "trainer.epochs=1")
    last = tmp_path / "checkpoints" / "last.pt"
    good = files(tmp_path / "checkpoints")

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(ConfigError, match="No space left on device") as err:
        train(tmp_path, *IRIS, "trainer.epochs=2", f"resume={tmp_path}")
    assert f"Cannot write checkpoint {tmp_path / 'checkpoints'}" in str(err.value) and "untouched" in str(err.value)
    assert files(tmp_path / "checkpoints") == good
    assert not list(last.parent.glob(".*.tmp"))
    monkeypatch.undo()
    assert checkpoint.load(last)["train_state"]["epoch"] == 1


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_RunsCode.marker}",))


def test_a_checkpoint_crafted_to_run_code_is_refused(tmp_path):
    train(tmp_path, *IRIS, "trainer.epochs=1")
    _RunsCode.marker = tmp_path / "code-ran"
    for name in ("last.pt", "previous.pt"):
        torch.save({"model": _RunsCode()}, tmp_path / "checkpoints" / name)
    with pytest.raises(ConfigError, match="could run code"):
        train(tmp_path, *IRIS, "trainer.epochs=2", f"resume={tmp_path}")
    plain_pickle = tmp_path / "plain.pt"
    plain_pickle.write_bytes(pickle.dumps({"model": _RunsCode()}))  # the legacy, non-zip format
    with pytest.raises(ConfigError, match="not a PyTorch checkpoint"):
        checkpoint.load(plain_pickle)
    assert not _RunsCode.marker.exists()


def test_a_diverging_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    diverging = ("dataset=diabetes", "model=linear", "optimizer=sgd", "optimizer.lr=1000",
                 "dataset.standardize_target=false", "trainer.epochs=5", "trainer.checkpoint_every_n_steps=1")
    with pytest.raises(FloatingPointError) as err:
        train(tmp_path, *diverging)
    message = str(err.value)
    step = int(message.split(" at step ")[1].split(",")[0])
    assert "learning rate (1000)" in message and "lower optimizer.lr" in message
    assert f"The last good checkpoint, {tmp_path / 'checkpoints' / 'last.pt'}, is untouched" in message
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert saved["train_state"]["step"] == step - 1  # written before the bad step, never from its weights
    assert all(torch.isfinite(w).all() for w in saved["model"].values())


class _NaNGradient(torch.nn.Module):
    """A finite loss whose gradient is NaN: d/dx sqrt(x²) at x = 0 is inf·0."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((output - output.detach()) ** 2).mean() + ((output - target) ** 2).mean().detach()


def nan_gradient_loss(info):
    """A user's `_target_` loss for the test below."""
    from dlrun.components.losses import Loss

    return Loss(_NaNGradient(), "nan_gradient", info.target_dim)


@pytest.mark.filterwarnings("ignore:Error detected in PowBackward0")  # torch's own report of the forward stack
def test_detect_anomaly_names_the_operation_that_made_the_nan(tmp_path):
    args = ("dataset=diabetes", "model=linear", "loss=mse", "+loss._target_=test_checkpoint.nan_gradient_loss",
            "trainer.epochs=2")
    with pytest.raises(FloatingPointError, match="loss became nan at step 2"):
        train(tmp_path / "plain", *args)  # the NaN weights of step 1 show in the loss of step 2
    with pytest.raises(FloatingPointError, match="trainer.detect_anomaly: Function 'PowBackward0' returned nan"):
        train(tmp_path / "anomaly", *args, "trainer.detect_anomaly=true")  # at step 1, in the backward pass
    assert not torch.is_anomaly_enabled()  # switched off again after the run
