"""Architecture claims, one preset each: skip connections (course 3 §3.1), stacked linear layers (course 1 §5.2),
recurrent networks on long sequences (course 3 §5.3); and the keys they rest on."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from dlrun.data.base import DataInfo, SequenceInfo
from dlrun.models.resnet import build_resnet
from test_presets import SEEDS, job, jobs_over, train_loss

IMAGES = DataInfo(input_shape=(1, 8, 8), task="classification", num_classes=10)
SERIES = DataInfo(input_shape=(16, 3), task="classification", num_classes=4,
                  sequence=SequenceInfo(length=16, features=3))


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("info,conv", [(IMAGES, nn.Conv2d), (SERIES, nn.Conv1d)], ids=["images", "series"])
def test_resnet_without_skips_is_the_same_network_less_its_shortcuts(info, conv):
    with_skips = build_resnet(info, 4, widths=[4, 8], blocks_per_stage=2)
    plain = build_resnet(info, 4, widths=[4, 8], blocks_per_stage=2, skip=False)
    shortcuts = [m.shortcut for m in with_skips.modules() if hasattr(m, "shortcut")]
    assert len(shortcuts) == 4 and sum(isinstance(s, nn.Identity) for s in shortcuts) == 3  # one 1x1 where 4 -> 8
    assert all(m.shortcut is None for m in plain.modules() if hasattr(m, "shortcut"))
    # Every layer of the residual path is kept; only the 1x1 convolution (and its batch norm) of the skip goes.
    assert _parameters(with_skips) - _parameters(plain) == sum(_parameters(s) for s in shortcuts) > 0
    assert sum(isinstance(m, conv) for m in with_skips.modules()) == sum(isinstance(m, conv) for m in plain.modules()) + 1
    x = torch.randn(2, *info.input_shape)
    torch.manual_seed(0)
    plain_identity = build_resnet(info, 4, widths=[4], blocks_per_stage=2, skip=False).eval()
    torch.manual_seed(0)
    skipped_identity = build_resnet(info, 4, widths=[4], blocks_per_stage=2).eval()
    assert _parameters(plain_identity) == _parameters(skipped_identity)  # identity skips have no weights
    assert not torch.allclose(plain_identity(x), skipped_identity(x))  # ... but they change what the network computes


def test_resnet_without_batch_norm_has_none_and_biases_instead():
    plain = build_resnet(IMAGES, 10, widths=[4, 8], blocks_per_stage=1, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))


SKIP_STEPS = ("trainer.epochs=1", "trainer.max_steps=10", "logger.gradients_every_n_steps=5")


def test_a_deep_plain_network_gets_almost_no_gradient_at_its_first_layer(tmp_path):
    # A few steps only: the first/last gradient-norm ratio is there from the first step (the full claim: slow, below).
    plain = job(tmp_path, "skip_connections", *SKIP_STEPS, **{"model.skip": "false"})
    skips = job(tmp_path, "skip_connections", *SKIP_STEPS, **{"model.skip": "true"})
    assert plain["gradient_flow"]["first_over_last_median"] < 1e-4 < 1e-2 < skips["gradient_flow"]["first_over_last_median"]
    assert "Vanishing gradients" in plain["gradient_flow"]["warning"] and skips["gradient_flow"]["warning"] is None


@pytest.mark.slow
def test_skip_connections_let_a_deep_network_train(tmp_path):
    seeds = SEEDS[1].values[0]
    gradients = "logger.gradients_every_n_steps=10"  # job() turns the monitor off; the preset's own value
    plain = jobs_over(seeds, tmp_path, "skip_connections", gradients, **{"model.skip": "false"})
    skips = jobs_over(seeds, tmp_path, "skip_connections", gradients, **{"model.skip": "true"})
    chance = plain[0]["verdict"]["numbers"]["chance_loss"]
    assert statistics.fmean(map(train_loss, skips)) < 0.5 * statistics.fmean(map(train_loss, plain))
    assert statistics.fmean(map(train_loss, plain)) > 0.9 * chance
    ratio = [statistics.fmean(m["gradient_flow"]["first_over_last_median"] for m in runs) for runs in (plain, skips)]
    print(f"\nskip_connections, means over seeds {seeds}: train loss plain {statistics.fmean(map(train_loss, plain)):.4f} "
          f"skips {statistics.fmean(map(train_loss, skips)):.4f} (chance {chance:.4f}); first/last gradient ratio "
          f"plain {ratio[0]:.2e} skips {ratio[1]:.2e}")
    assert ratio[0] < 1e-4 * ratio[1]


def test_an_mlp_without_activations_computes_an_affine_map_and_with_relu_it_does_not():
    from dlrun.models.mlp import build_mlp

    info = DataInfo(input_shape=(2,), task="classification", num_classes=2)
    x, y = torch.randn(64, 2), torch.randn(64, 2)
    for activation, affine in (("identity", True), ("relu", False)):
        torch.manual_seed(0)
        mlp = build_mlp(info, 2, hidden=[16, 16, 16], activation=activation)
        middle = mlp(0.3 * x + 0.7 * y)  # an affine map keeps every weighted mean of two points (weights summing to 1)
        assert torch.allclose(middle, 0.3 * mlp(x) + 0.7 * mlp(y), atol=1e-5) == affine, activation


def best_values(runs: list[dict]) -> float:
    return statistics.fmean(m["best"]["value"] for m in runs)


@pytest.mark.slow
def test_stacked_linear_layers_fit_no_better_than_one_and_relu_does(tmp_path):
    seeds = SEEDS[1].values[0]
    linear = best_values(jobs_over(seeds, tmp_path, "stacked_linear", **{"model.hidden": "[]",
                                                                          "model.activation": "identity"}))
    stacked = best_values(jobs_over(seeds, tmp_path, "stacked_linear", **{"model.hidden": "[64,64,64]",
                                                                           "model.activation": "identity"}))
    relu = best_values(jobs_over(seeds, tmp_path, "stacked_linear", **{"model.hidden": "[64,64,64]",
                                                                        "model.activation": "relu"}))
    print(f"\nstacked_linear, best validation loss, means over seeds {seeds}: linear {linear:.4f} "
          f"identity MLP {stacked:.4f} relu MLP {relu:.4f}")
    assert abs(stacked - linear) < 0.05 * linear
    assert relu < 0.5 * linear


def test_first_symbol_puts_the_class_at_the_first_step_only():
    from dlrun.data.sequences import build_first_symbol

    data = build_first_symbol(n_samples=400, length=12, symbols=4)
    x, y = data.splits.x_train, data.splits.y_train
    assert x.shape[1:] == (12, 4) and data.info.sequence.length == 12 and data.info.num_classes == 4
    assert torch.equal(x[:, 0].argmax(dim=1), y) and torch.equal(x[:, 0].sum(dim=1), torch.ones(len(y)))
    # The later steps are noise of mean 0 whatever the class: nothing there to count or to spot.
    later = torch.stack([x[y == c, 1:].mean(dim=(0, 1)) for c in range(4)])
    assert later.abs().max() < 0.1


def test_first_symbol_refuses_a_sequence_without_steps():
    from dlrun.data.sequences import build_first_symbol
    from dlrun.errors import ConfigError

    with pytest.raises(ConfigError, match=r"dataset\.length=0"):
        build_first_symbol(length=0)
