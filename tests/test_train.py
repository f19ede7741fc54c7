"""The training loop in-process, on the real configs shrunk for speed."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from dlrun.engine import checkpoint
from dlrun.run.training import run


def train(tmp_path, *overrides: str) -> dict:
    cfg = OmegaConf.create(compose_config("trainer.progress=false", "trainer.device=cpu", *overrides))
    return run(cfg, tmp_path, list(overrides))


def test_batch_size_sets_the_number_of_steps(tmp_path):
    full = train(tmp_path / "full", "dataset=iris", "trainer.batch_size=full", "trainer.epochs=4")
    assert full["steps"] == 4  # full-batch gradient descent: one step per epoch
    sgd = train(tmp_path / "one", "dataset=iris", "trainer.batch_size=1", "trainer.epochs=1")
    n_train = 150 - round(150 * 0.15) - round(150 * 0.2)  # iris: 150 flowers, 15% val, 20% test
    assert sgd["steps"] == n_train  # stochastic: one step per sample
    mini = train(tmp_path / "mini", "dataset=iris", "trainer.batch_size=16", "trainer.epochs=2")
    assert mini["steps"] == 2 * -(-sgd["steps"] // 16)


def test_max_steps_stops_mid_epoch(tmp_path):
    out = train(tmp_path, "trainer.max_steps=7", "trainer.epochs=100")
    assert out["steps"] == 7 and out["epochs_run"] == 1


def test_early_stopping_stops_when_the_monitor_stalls(tmp_path):
    out = train(tmp_path, "dataset=iris", "optimizer.lr=0.000001", "trainer.epochs=200",
                "trainer.early_stopping_patience=2", "trainer.monitor=val/accuracy")
    assert out["stopped_early"] and out["epochs_run"] < 200
    assert out["epochs_run"] - out["best"]["epoch"] == 2


def test_the_test_split_is_scored_with_the_best_checkpoint(tmp_path):
    out = train(tmp_path, "dataset=iris", "trainer.epochs=15", "optimizer.lr=0.05")
    best = checkpoint.load(tmp_path / "checkpoints" / "best.pt")
    assert best["train_state"]["epoch"] == out["best"]["epoch"]
    assert out["evaluation"]["val"]["loss"] == pytest.approx(out["best"]["value"], rel=1e-5)


def test_same_seed_gives_the_same_weights_and_another_seed_does_not(tmp_path):
    a = train(tmp_path / "a", "dataset=moons", "trainer.epochs=2", "trainer.deterministic=true")
    b = train(tmp_path / "b", "dataset=moons", "trainer.epochs=2", "trainer.deterministic=true")
    c = train(tmp_path / "c", "dataset=moons", "trainer.epochs=2", "seed=1")
    weights = lambda d: checkpoint.load(d / "checkpoints" / "last.pt")["model"]  # noqa: E731
    wa, wb, wc = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert a["history"] == b["history"] and a["history"] != c["history"]


@pytest.mark.parametrize("scheduler,check", [
    ("cosine", lambda lrs: lrs[-1] < 1e-5 and lrs[0] > lrs[-1]),
    ("step scheduler.step_size=2 scheduler.gamma=0.5", lambda lrs: lrs == [1e-3, 1e-3, 5e-4, 5e-4]),
    ("none", lambda lrs: lrs == [1e-3] * 4),
    ("warmup_cosine scheduler.warmup_fraction=0.5", lambda lrs: lrs[1] > lrs[0] and lrs[-1] < lrs[1]),
])
def test_schedulers_step_at_their_cadence(tmp_path, scheduler, check):
    name, *keys = scheduler.split()
    out = train(tmp_path, f"scheduler={name}", *keys, "trainer.epochs=4", "dataset=iris")
    lrs = [round(h["lr"], 12) for h in out["history"]]  # the rate each epoch trained with
    assert check(lrs), lrs


def test_gradient_clipping_and_every_optimizer_train(tmp_path):
    for optimizer in ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"):
        out = train(tmp_path / optimizer, f"optimizer={optimizer}", "dataset=moons", "trainer.epochs=3",
                    "trainer.gradient_clip=1.0")
        assert out["history"][-1]["train/loss"] < out["history"][0]["train/loss"] * 1.05, optimizer


def test_a_diverging_loss_stops_with_the_likely_cause(tmp_path):
    with pytest.raises(FloatingPointError, match="learning rate"):
        train(tmp_path, "dataset=diabetes", "model=linear", "optimizer=sgd", "optimizer.lr=1000",
              "dataset.standardize_target=false", "trainer.epochs=5")


def test_linear_regression_approaches_the_true_weights(tmp_path):
    out = train(tmp_path, "dataset=linear", "model=linear", "optimizer=sgd", "optimizer.lr=0.1", "trainer.epochs=100",
                "trainer.batch_size=full")
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")["model"]
    ls = out["least_squares"]["weights"]
    assert state["1.weight"].flatten().tolist() == pytest.approx(sum(ls["W"], []), abs=0.05)
    assert state["1.bias"].tolist() == pytest.approx(ls["b"], abs=0.05)


def test_a_huge_learning_rate_gets_the_divergence_verdict(tmp_path):
    out = train(tmp_path, "optimizer.lr=50", "trainer.epochs=8")
    assert out["verdict"]["case"] == "divergence"
    assert out["verdict"]["numbers"]["train_last"] > out["verdict"]["numbers"]["chance_loss"]


def _gradient_run(tmp_path, activation: str, init: str) -> dict:
    return train(tmp_path, "model.hidden=[32,32,32,32,32,32,32,32]", f"model.activation={activation}", f"init={init}",
                 "trainer.epochs=1", "trainer.max_steps=20", "logger.gradients_every_n_steps=5")


def test_vanishing_gradients_are_reported_for_deep_sigmoid_not_for_relu_he(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sigmoid = _gradient_run(tmp_path / "sigmoid", "sigmoid", "xavier_uniform")
    assert sigmoid["gradient_flow"]["warning"] and "Vanishing gradients" in sigmoid["gradient_flow"]["warning"]
    assert sigmoid["gradient_flow"]["first_over_last_median"] < 1e-3
    relu = _gradient_run(tmp_path / "relu", "relu", "he_normal")
    assert relu["gradient_flow"]["warning"] is None and relu["gradient_flow"]["first_over_last_median"] > 0.1

    events = EventAccumulator(str(tmp_path / "sigmoid" / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    layers = [t for t in scalars if t.startswith("gradient_norm/") and not t.endswith("first_over_last")]
    assert len(layers) == 9  # eight hidden layers and the output layer
    assert {"activations/2/mean", "activations/2/std", "activations/2/dead_fraction"} <= scalars
    assert [e.step for e in events.Scalars("gradient_norm/first_over_last")][:2] == [5, 10]
    assert any(t.startswith("gradients/") for t in events.Tags()["histograms"])


def test_threads_auto_leaves_busy_cores_alone_and_a_number_is_taken_as_given(monkeypatch):
    import os

    from dlrun.engine.options import resolve_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert resolve_threads(3, deterministic=False) == 3
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 5.0, 0.0, 0.0))  # every core busy with other work
    assert resolve_threads("auto", deterministic=False) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine
    assert resolve_threads("auto", deterministic=False) == cores
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 5.0, 0.0, 0.0))
    assert resolve_threads("auto", deterministic=True) == cores  # repeatable sums need a fixed thread count


def test_threads_auto_keeps_within_omp_num_threads(monkeypatch):
    # The limit a user, a job script, torchrun or joblib's workers set; a number given on the command line wins.
    import os

    from dlrun.engine.options import resolve_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    for limit, auto in (("3", 3), ("1", 1), ("64", 8), ("", 8), ("none", 8), ("0", 8)):
        monkeypatch.setenv("OMP_NUM_THREADS", limit)
        assert resolve_threads("auto", deterministic=False) == auto, limit
        assert resolve_threads("auto", deterministic=True) == auto, limit
        assert resolve_threads(5, deterministic=False) == 5


def test_freed_memory_is_kept_for_reuse_instead_of_faulting_in_fresh_pages():
    import resource
    import sys

    from dlrun.engine.memory import keep_freed_memory

    if not sys.platform.startswith("linux") or not keep_freed_memory():
        pytest.skip("glibc's mallopt only")

    def faults_while_allocating() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            torch.ones(64, 1024, 1024)  # 256 MB, freed at once: a big activation of one training step
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    for _ in range(3):
        faults_while_allocating()  # the heap grows to hold the block: new pages, the first times only
    assert faults_while_allocating() < 64 * 1024 * 1024 * 4 / 4096 / 2  # not 5 x 65,536 fresh pages each time


def test_step_scalars_are_written_in_bursts_and_all_on_disk_after_a_flush(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dlrun.logger import LOGGERS

    logger = LOGGERS.build({"name": "tensorboard"}, run_dir=tmp_path)
    for step in range(1, 101):
        logger.scalars({"train/loss_step": 1.0 / step}, step)
    logger.flush()  # as before every checkpoint: what the checkpoint saw is on disk
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    values = events.Scalars("train/loss_step")
    assert [e.step for e in values] == list(range(1, 101))
    assert values[-1].value == pytest.approx(0.01) and values[0].wall_time <= values[-1].wall_time
    logger.close()
