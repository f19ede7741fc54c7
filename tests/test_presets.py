"""The course's claims, one preset each: the direction of each effect on the preset's own settings."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import compose_config
from dlrun.run.training import run


def sweep_params(experiment: str) -> dict[str, list[str]]:
    """The values the preset sweeps over, read from its hydra.sweeper.params."""
    with initialize_config_module(config_module="dlrun.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert str(cfg.hydra.mode).endswith("MULTIRUN")  # a sweep even without -m
    parser = OverridesParser.create()
    return {k: list(parser.parse_override(f"{k}={v}").sweep_string_iterator())
            for k, v in cfg.hydra.sweeper.params.items()}


def job(tmp_path, experiment: str, *shrink: str, **choice: str) -> dict:
    """Run one job of the preset's sweep in-process (shrunk for speed), checking the preset sweeps that choice."""
    params = sweep_params(experiment)
    overrides = [f"{k}={v}" for k, v in choice.items()]
    for key, value in choice.items():
        swept = [v.lower().replace(" ", "") for v in params[key]]
        assert value.lower() in swept, f"{experiment} does not sweep {key}={value}"
    cfg = compose_config(f"experiment={experiment}", *overrides, "trainer.progress=false", "trainer.device=cpu",
                         "logger.gradients_every_n_steps=0", "logger.figures=false",
                         "trainer.checkpoint_every_n_epochs=1000", *shrink)
    name = "_".join(f"{k}-{v}" for k, v in choice.items())
    return run(OmegaConf.create(cfg), tmp_path / name, overrides)


def test_relu_learns_faster_than_sigmoid(tmp_path):
    sigmoid = job(tmp_path, "activation_comparison", "trainer.epochs=3", **{"model.activation": "sigmoid"})
    relu = job(tmp_path, "activation_comparison", "trainer.epochs=3", **{"model.activation": "relu"})
    assert relu["evaluation"]["train"]["loss"] < sigmoid["evaluation"]["train"]["loss"]


def test_momentum_and_adam_beat_plain_sgd(tmp_path):
    losses = {name: job(tmp_path, "optimizer_comparison", "trainer.epochs=3", optimizer=name)["evaluation"]["train"]["loss"]
              for name in ("sgd", "momentum", "adam")}
    assert losses["momentum"] < losses["sgd"] and losses["adam"] < losses["sgd"]


def test_scaling_the_learning_rate_with_the_batch_helps_large_batches(tmp_path):
    fixed = job(tmp_path, "batch_lr_coupling", "trainer.epochs=4", **{"trainer.batch_size": "128", "optimizer.scale_lr_with_batch": "none"})
    scaled = job(tmp_path, "batch_lr_coupling", "trainer.epochs=4",
                 **{"trainer.batch_size": "128", "optimizer.scale_lr_with_batch": "linear"})
    assert scaled["evaluation"]["train"]["loss"] < fixed["evaluation"]["train"]["loss"]


def test_batch_norm_speeds_up_a_deep_sigmoid_network(tmp_path):
    plain = job(tmp_path, "batchnorm", "trainer.epochs=3", **{"model.batch_norm": "false"})
    normed = job(tmp_path, "batchnorm", "trainer.epochs=3", **{"model.batch_norm": "true"})
    assert normed["evaluation"]["train"]["loss"] < 0.5 * plain["evaluation"]["train"]["loss"]


def test_dropout_lowers_the_best_validation_loss_of_an_overfitting_network(tmp_path):
    plain = job(tmp_path, "dropout_overfit", "trainer.epochs=30", **{"model.dropout": "0.0"})
    dropout = job(tmp_path, "dropout_overfit", "trainer.epochs=30", **{"model.dropout": "0.5"})
    assert plain["verdict"]["case"] in ("overfitting", "validation levels off")
    assert dropout["best"]["value"] < plain["best"]["value"]


def test_random_shifts_beat_no_augmentation_on_a_tenth_of_the_digits(tmp_path):
    steps = "augmentation.steps"
    plain = job(tmp_path, "augmentation_small_data", "trainer.epochs=100", **{steps: "[]"})
    shifted = job(tmp_path, "augmentation_small_data", "trainer.epochs=100", **{steps: "[{name:crop,padding:1}]"})
    assert shifted["best"]["value"] < 0.9 * plain["best"]["value"]
    assert shifted["test"]["loss"] < plain["test"]["loss"]


@pytest.mark.parametrize("experiment", ["init_comparison", "polynomial_capacity", "vanishing_gradients",
                                        "activation_comparison", "optimizer_comparison", "batch_lr_coupling",
                                        "batchnorm", "dropout_overfit", "augmentation_small_data",
                                        "transfer_digits"])
def test_every_sweep_preset_runs_as_a_multirun_without_dash_m(experiment):
    assert sweep_params(experiment)
