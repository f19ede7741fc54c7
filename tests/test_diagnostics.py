"""The loss-curve verdict on synthetic curves for every case of course 2 §4.2, and the chance level."""

from __future__ import annotations

import math

import pytest
import torch

from dlrun.data.base import DataInfo
from dlrun.diagnostics.curves import CASES, chance_loss, diagnose
from dlrun.components.losses import LOSSES

N = 50
CHANCE = math.log(10)


def decay(start: float, end: float, rate: float = 8.0, n: int = N) -> list[float]:
    return [end + (start - end) * math.exp(-rate * i / n) for i in range(n)]


CURVES = {
    "healthy": (decay(2.2, 0.05), decay(2.1, 0.12)),
    "stopped too early": (decay(2.2, 0.05, rate=0.8), decay(2.1, 0.12, rate=0.8)),
    "underfitting": ([2.3 - 0.1 * (1 - math.exp(-i / 3)) for i in range(N)],
                     [2.3 - 0.09 * (1 - math.exp(-i / 3)) for i in range(N)]),
    "overfitting": (decay(2.2, 0.01), [0.4 + 0.8 * (i / N - 0.3) ** 2 * 4 for i in range(N)]),
    "validation levels off": (decay(2.2, 0.002, rate=4), [max(0.5, v) for v in decay(2.1, 0.0, rate=25)]),
    "unrepresentative training set": (decay(2.2, 0.05), decay(2.1, 0.9)),
    "unrepresentative validation set": (decay(2.2, 0.05), [v * (1.4 if i % 2 else 0.7) for i, v in
                                                           enumerate(decay(2.1, 0.3))]),
    "divergence": (decay(2.2, 0.3)[:25] + [0.3 * 1.15 ** i for i in range(25)], decay(2.1, 0.4)[:25] + [5.0] * 25),
}


def test_every_case_has_a_synthetic_curve():
    assert set(CURVES) == set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_each_synthetic_curve_gets_its_verdict_with_numbers(case):
    train, val = CURVES[case]
    verdict = diagnose(train, val, CHANCE)
    assert verdict.case == case, verdict.numbers
    assert verdict.numbers["epochs"] == N and "train_last" in verdict.numbers
    assert (verdict.remedies == []) == (case == "healthy")
    assert case in verdict.markdown()


def test_curves_falling_at_the_end_of_an_annealed_schedule_are_no_sign_of_stopping_too_early():
    train, val = CURVES["stopped too early"]
    assert diagnose(train, val, CHANCE, [1e-3] * N).case == "stopped too early"  # a constant rate: cut short
    onecycle = [1e-3 * (1 + math.cos(math.pi * (i + 1) / N)) / 2 for i in range(N)]  # annealed to 0
    verdict = diagnose(train, val, CHANCE, onecycle)
    assert verdict.case == "healthy" and "learning rate annealed" in verdict.summary
    assert verdict.numbers["lr_last"] == onecycle[-1] and verdict.numbers["lr_at_last_20pct"] == onecycle[N - N // 5]
    # An annealed run that overfits is still overfitting: the schedule excuses only the late fall.
    assert diagnose(*CURVES["overfitting"], CHANCE, onecycle).case == "overfitting"


def test_nan_is_divergence():
    assert diagnose([2.0, float("nan")], [2.0, 2.0], CHANCE).case == "divergence"


def test_chance_loss_is_the_loss_of_the_class_frequencies():
    info = DataInfo((2,), "classification", num_classes=4)
    targets = torch.tensor([0, 0, 1, 2, 3, 3, 3, 3])
    ce = LOSSES.build({"name": "cross_entropy"}, info=info)
    p = torch.tensor([2, 1, 1, 4]) / 8
    assert chance_loss(ce, targets, 4) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-5)
    binary = DataInfo((2,), "classification", num_classes=2)
    for name in ("bce", "bce_with_logits"):
        loss = LOSSES.build({"name": name}, info=binary)
        assert chance_loss(loss, torch.tensor([0, 1, 1, 1]), 2) == pytest.approx(
            -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-4)
    mse = LOSSES.build({"name": "mse"}, info=DataInfo((2,), "regression"))
    y = torch.tensor([[1.0], [3.0]])
    assert chance_loss(mse, y, None) == pytest.approx(1.0)


def test_too_few_epochs_get_no_case_of_the_course():
    verdict = diagnose([2.0, 1.0], [2.0, 1.5], CHANCE)
    assert verdict.case == "too few epochs" and verdict.remedies


def test_lr_suggestion_is_where_the_loss_falls_fastest():
    from dlrun.diagnostics.lr_finder import suggest

    lrs = [10 ** (-6 + i * 0.05) for i in range(120)]  # 1e-6 .. ~1
    # flat, then a fall centred on 1e-3, a minimum near 1e-2, then an explosion
    losses = [2.0 - 1.5 / (1 + math.exp(-(math.log10(lr) + 3) * 4)) + (max(0.0, math.log10(lr) + 2) ** 2) * 5
              for lr in lrs]
    assert suggest(lrs, losses) == pytest.approx(1e-3, rel=0.3)


def test_lr_find_mode_suggests_a_rate_that_trains(tmp_path):
    from omegaconf import OmegaConf

    from conftest import compose_config
    from dlrun.run.training import run

    cfg = compose_config("mode=lr_find", "trainer.progress=false", "trainer.device=cpu", "lr_find.steps=100")
    found = run(OmegaConf.create(cfg), tmp_path / "find", ["mode=lr_find"])
    lr = found["suggested_lr"]
    assert 1e-4 < lr < 1.0
    assert (tmp_path / "find" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert found["losses"][-1] > min(found["losses"])  # the sweep went past the best rate
    cfg = compose_config(f"optimizer.lr={lr}", "trainer.epochs=5", "trainer.progress=false", "trainer.device=cpu")
    trained = run(OmegaConf.create(cfg), tmp_path / "train", [])
    assert trained["test"]["accuracy"] > 0.9


def test_first_batch_summary_shows_each_feature_and_the_classes():
    from dlrun.diagnostics.startup import batch_summary

    x = torch.tensor([[0.0, 100.0], [2.0, 300.0]])
    text = batch_summary(x, torch.tensor([1, 1]), ["small", "large"])
    assert "| small | 1 |" in text and "| large | 200 |" in text and "1: 2" in text
