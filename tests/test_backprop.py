"""mode=backprop (course 2 §1.2): one pass written out, each gradient by a hand-written chain rule beside autograd's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from conftest import compose_config
from dlrun.components.losses import LOSSES
from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.mlp import build_mlp
from dlrun.modes.backprop import autograd_pass, chain_rule, layers_of
from dlrun.run.training import run

QUIET = ("trainer.progress=false", "trainer.threads=1", "trainer.device=cpu")


def test_the_course_network_has_16_parameters_and_the_chain_rule_equals_autograd(tmp_path, capsys):
    overrides = ["experiment=backprop", "backprop.samples=1", *QUIET]
    metrics = run(OmegaConf.create(compose_config(*overrides)), tmp_path, overrides)
    printed = capsys.readouterr().out
    assert "backward pass: 16 parameters" in printed and "Chain rule and autograd: equal to 1e-09" in printed
    assert "∂L/∂w^2_22 = ∂L/∂S · w^3_2 · f'(h^2_2) · a^1_2\n  = (" in printed
    assert metrics["parameters"] == 16  # 6 + 2 + 4 + 2 + 2: the output layer has no bias (S = W³a²)
    names = [row["name"] for row in metrics["gradients"]]
    assert names[:3] == ["w^1_11", "w^1_12", "w^1_13"] and names[-2:] == ["w^3_1", "w^3_2"] and "b^3_1" not in names
    assert metrics["agree"] and metrics["max_difference"] <= 1e-9
    assert all(abs(row["chain_rule"]) > 0 for row in metrics["gradients"])  # N(0, 1) weights: none vanishes exactly
    worked = metrics["worked_example"]  # ∂L/∂w²₂₂ = ∂L/∂S · w³₂ · f'(h²₂) · a¹₂, the course's weight
    assert worked["formula"] == "∂L/∂w^2_22 = ∂L/∂S · w^3_2 · f'(h^2_2) · a^1_2"
    row = next(r for r in metrics["gradients"] if r["name"] == "w^2_22")
    assert worked["product"] == pytest.approx(row["autograd"], abs=1e-12)
    assert 0 < worked["factors"]["f'(h^2_2)"] <= 0.25  # the sigmoid's slope, course 2 §1.2
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0}).Reload()
    table = events.Tensors("backprop/gradients/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "16 parameters" in table and "| `w^2_22` | `3.weight[1,1]` |" in table
    forward = events.Tensors("backprop/forward/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| `a^1_2` |" in forward and "| `S` |" in forward


def _info(inputs: int, task: str = "regression", classes: int = 0) -> DataInfo:
    return DataInfo(name="toy", task=task, input_shape=(inputs,), num_classes=classes)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "leaky_relu", "elu"])
@pytest.mark.parametrize("loss", ["mse", "mae", "cross_entropy", "bce", "bce_with_logits"])
def test_chain_rule_by_hand_equals_autograd_for_each_activation_and_loss(activation, loss):
    torch.manual_seed(0)
    task = "regression" if loss in ("mse", "mae") else "classification"
    info = _info(4, task, classes=0 if task == "regression" else (3 if loss == "cross_entropy" else 2))
    loss_fn = LOSSES.build({"name": loss}, info=info)
    model = build_mlp(info, loss_fn.out_features, hidden=[3, 2], activation=activation)
    if loss == "bce":
        model = nn.Sequential(model, nn.Sigmoid())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4))
    y = rng.normal(size=(5, 1)) if task == "regression" else rng.integers(0, info.num_classes, size=5)
    by_hand = chain_rule(layers_of(model), x, y, loss)
    auto_loss, auto = autograd_pass(model, loss_fn, x, y)
    assert by_hand.loss == pytest.approx(auto_loss, abs=1e-12)
    assert set(by_hand.gradients) == set(auto)
    for name, gradient in auto.items():
        np.testing.assert_allclose(by_hand.gradients[name], gradient, rtol=0, atol=1e-12, err_msg=name)


def test_a_wrong_gradient_by_hand_is_caught():
    """The comparison can fail: a sigmoid slope written as σ instead of σ(1 - σ) gives other numbers."""
    info = _info(3)
    model = build_mlp(info, 1, hidden=[2, 2], activation="sigmoid", output_bias=False)
    layers = layers_of(model)
    x, y = np.ones((1, 3)), np.zeros((1, 1))
    _, auto = autograd_pass(model, LOSSES.build({"name": "mse"}, info=info), x, y)
    for layer in layers:
        if layer.kind == "sigmoid":
            layer.kind = "identity"  # f' = 1 where the forward pass used a sigmoid: what a wrong derivation gives
    wrong = chain_rule(layers, x, y, "mse")
    assert not np.allclose(wrong.gradients["1.weight"], auto["1.weight"], atol=1e-9)


def test_output_bias_false_drops_only_the_output_layers_bias():
    info = _info(3)
    counts = [sum(p.numel() for p in build_mlp(info, 1, hidden=[2, 2], output_bias=bias).parameters())
              for bias in (True, False)]
    assert counts == [17, 16]


def test_a_network_too_large_to_print_is_refused_naming_the_key_and_the_preset(tmp_path):
    overrides = ["mode=backprop", "dataset=iris", "model.hidden=[64]", *QUIET]  # 515 parameters
    with pytest.raises(ConfigError, match=r"backprop\.max_parameters=200.*experiment=backprop") as err:
        run(OmegaConf.create(compose_config(*overrides)), tmp_path, overrides)
    assert err.value.key == "backprop.max_parameters"
    assert not (tmp_path / "metrics.json").exists()


def test_a_layer_the_chain_rule_does_not_write_out_is_refused():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Sigmoid(), nn.Linear(2, 1))
    with pytest.raises(ConfigError, match="BatchNorm1d"):
        layers_of(model)


def test_several_samples_give_one_column_each_and_a_mean_loss(tmp_path):
    overrides = ["experiment=backprop", "backprop.samples=3", "logger=none", *QUIET]
    metrics = run(OmegaConf.create(compose_config(*overrides)), tmp_path, overrides)
    rows = {row["name"]: row["values"] for row in metrics["forward"]}
    assert len(rows["x_1"]) == len(rows["S"]) == 3 and metrics["agree"]
    assert rows["L (mean)"][0] == pytest.approx(np.mean((np.array(rows["S"]) - np.array(rows["y"])) ** 2))
    assert metrics["worked_example"] is None  # the course's worked weight is for one sample
