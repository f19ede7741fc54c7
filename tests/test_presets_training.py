"""Course presets about training itself (#23): batch norm's higher usable learning rate, too large a momentum.

Directions on the means over 3 seeds, in the slow suite (`python -m pytest -m slow tests/test_presets_training.py`),
as `dl-run experiment=<preset> seed=0,1,2` reports them.
"""

from __future__ import annotations

import statistics

import pytest

from test_presets import jobs_over, mean_over, sweep_params, train_loss

THREE_SEEDS = (0, 1, 2)


@pytest.mark.slow
def test_batch_norm_trains_at_5x_the_rate_where_the_plain_network_stalls(tmp_path):
    def loss(norm: str, lr: str) -> float:
        return mean_over(THREE_SEEDS, train_loss, tmp_path, "batchnorm_lr", **{"model.norm": norm, "optimizer.lr": lr})

    plain, plain_5x = loss("none", "0.2"), loss("none", "1.0")
    normed, normed_5x = loss("batch", "0.2"), loss("batch", "1.0")
    assert plain_5x > 2 * plain  # without batch norm, 5x the rate ends far worse (its ReLUs die)
    assert normed_5x < 2 * normed and normed_5x < 0.1 * plain_5x  # with it, 5x trains about as well


@pytest.mark.slow
def test_too_large_a_momentum_ends_higher_and_its_training_loss_climbs_back(tmp_path):
    def runs(momentum: str) -> list[dict]:
        return jobs_over(THREE_SEEDS, tmp_path, "momentum_too_large", **{"optimizer.momentum": momentum})

    sensible, too_large = runs("0.9"), runs("0.99")
    assert statistics.fmean(map(train_loss, too_large)) > 5 * statistics.fmean(map(train_loss, sensible))

    def climb(metrics: dict) -> float:  # the last epoch's training loss over the lowest one
        losses = [epoch["train/loss"] for epoch in metrics["history"]]
        return losses[-1] / min(losses)

    # Course 2 §4.2, "too large momentum": the training loss increases after some iterations.
    assert statistics.fmean(map(climb, too_large)) > 2 and statistics.fmean(map(climb, sensible)) < 1.5


@pytest.mark.parametrize("experiment", ["batchnorm_lr", "momentum_too_large"])
def test_the_presets_sweep_without_dash_m(experiment):
    assert sweep_params(experiment)
