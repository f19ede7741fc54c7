"""The progress display: a bar only for epochs long enough to watch, that counts a resumed epoch's done batches."""

from __future__ import annotations

import io
import re

import pytest
import torch
from rich.console import Console

from dlrun.views import console


def text(screen: io.StringIO) -> str:
    """What the terminal shows, without colour codes."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())


@pytest.fixture
def terminal(monkeypatch) -> io.StringIO:
    screen = io.StringIO()
    monkeypatch.setattr(console, "console", Console(file=screen, force_terminal=True, width=100))
    return screen


def test_a_resumed_epoch_counts_its_done_batches(terminal):
    with console.EpochProgress(refresh_every=1, show_after=0.0) as progress:
        progress.start_epoch(2, 3, 100, done=40)  # resumed after batch 40 of epoch 2
        progress.advance(torch.tensor(0.25), step=141)
        assert progress._progress.tasks[0].completed == 41
        progress._progress.refresh()
        assert "41/100" in text(terminal) and "loss 0.2500" in text(terminal)
        progress.end_epoch(2, {"train/loss": 0.25}, is_best=True)
    assert "epoch   2  train/loss 0.2500  *best" in text(terminal)


def test_no_bar_for_epochs_shorter_than_show_after(terminal):
    with console.EpochProgress(refresh_every=1, show_after=60.0) as progress:
        progress.start_epoch(1, 1, 10)
        for step in range(1, 11):
            progress.advance(torch.tensor(1.0), step=step)
        assert progress._progress is None  # no live display: the epoch line prints without redrawing a bar
        progress.end_epoch(1, {"train/loss": 1.0}, is_best=False)
    assert text(terminal).strip() == "epoch   1  train/loss 1.0000"
