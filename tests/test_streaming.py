"""image_folder streamed from disk by DataLoader workers: the same batches, the same training, exact resume."""

from __future__ import annotations

import signal

import pytest
import torch

from conftest import compose_config
from dlrun.engine import checkpoint
from dlrun.engine.batches import StreamedBatches, batch_source
from dlrun.data.stream import StreamedImages
from dlrun.errors import ConfigError
from dlrun.engine.signals import Interrupted, StopOnSignal
from dlrun.logger import NullLogger
from dlrun.run.experiment import Experiment
from dlrun.engine.resume import restore
from dlrun.engine.trainer import Trainer, TrainingOutputs
from dlrun.run.run_directory import RunDirectory
from image_fixtures import write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("streaming") / "images", per_class=20)


def experiment(folder, tmp_path, in_memory: bool, workers: int = 0, *overrides: str) -> Experiment:
    cfg = compose_config("dataset=image_folder", f"dataset.path={folder}", "dataset.image_size=8", "dataset.channels=1",
                         f"dataset.in_memory={str(in_memory).lower()}", f"dataset.workers={workers}",
                         "model.hidden=[16]", "trainer.batch_size=4", "trainer.epochs=1", "trainer.device=cpu",
                         "trainer.threads=1", "trainer.progress=false", *overrides)
    return Experiment(cfg, tmp_path)


def train(exp: Experiment, tmp_path, state=None, generator=None, progress=None, stop=None):
    outputs = TrainingOutputs(RunDirectory(tmp_path), NullLogger(), progress, stop=stop)
    return Trainer(exp.parts, outputs, state, generator or torch.Generator().manual_seed(0)).fit()


def test_streamed_training_sees_the_same_batches_and_learns_the_same_weights(folder, tmp_path):
    memory = experiment(folder, tmp_path / "memory", in_memory=True)
    streamed = experiment(folder, tmp_path / "streamed", in_memory=False, workers=2)
    assert isinstance(streamed.splits.x_train, StreamedImages) and isinstance(memory.splits.x_train, torch.Tensor)
    assert streamed.info.pixel_mean == memory.info.pixel_mean and streamed.info.pixel_std == memory.info.pixel_std
    for a, b in zip(memory.splits.tensors(), streamed.splits.tensors()):
        assert torch.equal(a, b if isinstance(b, torch.Tensor) else b[:])  # same split, same decoded pixels
    order = torch.randperm(len(memory.splits.x_train), generator=torch.Generator().manual_seed(3))
    source = batch_source(streamed.splits.x_train, streamed.splits.y_train)
    assert isinstance(source, StreamedBatches)
    in_memory = list(batch_source(memory.splits.x_train, memory.splits.y_train).epoch(order, 4, start=2))
    from_disk = list(source.epoch(order, 4, start=2))
    assert len(in_memory) == len(from_disk) == -(-len(order) // 4) - 2
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(in_memory, from_disk))

    a, b = train(memory, tmp_path / "memory"), train(streamed, tmp_path / "streamed")
    assert a.history == b.history and a.step == b.step == -(-len(order) // 4)
    assert all(torch.equal(p, q) for p, q in zip(memory.model.state_dict().values(),
                                                 streamed.model.state_dict().values()))


class StopAfter:
    """A progress display that asks the loop to stop after `step`, as Ctrl-C would."""

    def __init__(self, stop: StopOnSignal, step: int) -> None:
        self.stop, self.step = stop, step

    def start_epoch(self, *args, **kwargs) -> None:
        pass

    def advance(self, loss, step: int) -> None:
        if step == self.step:
            self.stop.signum = signal.SIGINT

    def end_epoch(self, *args) -> None:
        pass


def test_a_streamed_run_stopped_mid_epoch_resumes_to_the_same_weights(folder, tmp_path):
    whole = experiment(folder, tmp_path / "whole", False, 2, "trainer.epochs=2")
    train(whole, tmp_path / "whole")
    stopped = experiment(folder, tmp_path / "stopped", False, 2, "trainer.epochs=2")
    stop = StopOnSignal()
    with pytest.raises(Interrupted):
        train(stopped, tmp_path / "stopped", progress=StopAfter(stop, 10), stop=stop)  # epoch 2, batch 3 of 7
    resumed = experiment(folder, tmp_path / "stopped", False, 2, "trainer.epochs=2")
    generator = torch.Generator()
    state = restore(checkpoint.load(tmp_path / "stopped" / "checkpoints" / "last.pt"), resumed.parts, generator)
    assert state.epoch == 1 and state.batch == 3
    state = train(resumed, tmp_path / "stopped", state=state, generator=generator)
    assert state.step == 14
    assert all(torch.equal(p, q) for p, q in zip(whole.model.state_dict().values(),
                                                 resumed.model.state_dict().values()))


def test_in_memory_true_refuses_a_folder_over_the_memory_limit_and_auto_streams_it(folder, tmp_path):
    with pytest.raises(ConfigError, match="dataset.in_memory=false"):
        experiment(folder, tmp_path, True, 0, "dataset.max_memory_gb=0.000001")
    # 40 images of 1x8x8 = 2.6 kB: over 2 kB, auto streams the training split and holds val and test.
    auto = experiment(folder, tmp_path, "auto", 0, "dataset.max_memory_gb=0.000002")
    assert isinstance(auto.splits.x_train, StreamedImages) and isinstance(auto.splits.x_val, torch.Tensor)
