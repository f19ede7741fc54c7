"""The loss-curve cases of course 2 §4.2, one preset each: every seed's run gets its case as the verdict."""

from __future__ import annotations

import math
import random

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from dlrun.diagnostics.curves import diagnose
from dlrun.run.training import run

# Each preset and the case the course describes for it.
CASES = {
    "curves_underfitting": "underfitting",
    "curves_levels_off": "validation levels off",
    "curves_unrepresentative_train": "unrepresentative training set",
    "curves_unrepresentative_val": "unrepresentative validation set",
}


def preset_run(tmp_path, experiment: str, seed: int) -> dict:
    """One run of the preset as `dl-run experiment=<experiment> seed=<seed>` trains it: its metrics."""
    overrides = [f"experiment={experiment}", f"seed={seed}"]
    cfg = compose_config(*overrides, "trainer.progress=false", "trainer.device=cpu", "trainer.threads=1",
                         "logger.gradients_every_n_steps=0", "logger.figures=false",
                         "trainer.checkpoint_every_n_epochs=1000")
    return run(OmegaConf.create(cfg), tmp_path / f"{experiment}_seed{seed}", overrides)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(CASES))
def test_each_preset_gets_its_loss_curve_case_on_every_seed(tmp_path, experiment):
    verdicts = [preset_run(tmp_path, experiment, seed)["verdict"] for seed in (0, 1, 2)]
    assert [v["case"] for v in verdicts] == [CASES[experiment]] * 3, [v["numbers"] for v in verdicts]


def test_a_validation_curve_jumping_about_is_an_unrepresentative_split_whatever_its_last_value():
    # A smooth training curve and a validation curve that falls with it under ±40% noise (lognormal, 10 draws):
    # read by the other cases first, 4 of these 10 were called overfitting or stopped too early by where the noise
    # happened to put the minimum and the last value.
    n = 40
    train = [0.05 + 2.2 * math.exp(-8 * i / n) for i in range(n)]
    level = [0.1 + 2.0 * math.exp(-8 * i / n) for i in range(n)]
    for draw in range(10):
        rng = random.Random(draw)
        noisy = [v * math.exp(rng.gauss(0, 0.4)) for v in level]
        assert diagnose(train, noisy, math.log(10)).case == "unrepresentative validation set", draw
    assert diagnose(train, level, math.log(10)).case == "healthy"  # the same curve without the noise


def test_a_validation_curve_level_after_a_quarter_of_training_levels_off_wherever_its_noise_puts_the_minimum():
    # The validation loss is level (±1% of noise) from about epoch 13 of 60 while the training loss keeps falling.
    # Judged by the epoch of its minimum (30 to 54 here), all 10 draws were called healthy.
    n = 60
    train = [0.01 + 2.2 * math.exp(-6 * i / n) for i in range(n)]
    for draw in range(10):
        rng = random.Random(draw)
        val = [0.3 + 1.9 * math.exp(-25 * i / n) + rng.uniform(-0.003, 0.003) for i in range(n)]
        verdict = diagnose(train, val, math.log(10))
        assert verdict.case == "validation levels off", draw
        assert verdict.numbers["val_level_epoch"] < 30
