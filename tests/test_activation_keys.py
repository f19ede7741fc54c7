"""model.activation=identity (stacked linear layers stay linear, course 1 §5.2), ELU's alpha (course 2 §2) and
optimizer.l1, the L1 penalty (course 1 §6, course 3 §3.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_config
from dlrun.components.losses import LOSSES
from dlrun.components.optim import OPTIMIZERS, add_l1
from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.mlp import build_mlp
from dlrun.modes.backprop import autograd_pass, chain_rule, layers_of
from dlrun.run.training import run

INFO = DataInfo(name="toy", task="regression", input_shape=(5,))


def _as_one_linear_map(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """W and b of the product of the model's linear layers: W = W3 W2 W1, b = W3 (W2 b1 + b2) + b3."""
    weight, bias = torch.eye(5), torch.zeros(5)
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
        weight, bias = layer.weight @ weight, layer.weight @ bias + layer.bias
    return weight, bias


@pytest.mark.parametrize(("activation", "linear"), [("identity", True), ("relu", False)])
def test_stacked_layers_without_an_activation_are_one_linear_map(activation, linear):
    torch.manual_seed(0)
    model = build_mlp(INFO, 2, hidden=[8, 8, 8], activation=activation)
    weight, bias = _as_one_linear_map(model)
    x = torch.randn(64, 5)
    with torch.no_grad():
        same = torch.allclose(model(x), x @ weight.T + bias, atol=1e-5)
    assert same is linear  # ReLU between the same layers is not one linear map: the check can fail


def test_elu_alpha_sets_the_value_elu_tends_to_for_large_negative_inputs():
    model = build_mlp(INFO, 1, hidden=[3], activation="elu", alpha=0.5)
    elu = next(m for m in model.modules() if isinstance(m, nn.ELU))
    assert elu(torch.tensor([-50.0, -1.0, 2.0])).tolist() == pytest.approx([-0.5, 0.5 * (np.exp(-1) - 1), 2.0])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 5)) * 3, rng.normal(size=(4, 1))  # many negative pre-activations
    layers = layers_of(model)
    assert [lay.slope for lay in layers if lay.kind == "elu"] == [0.5]
    by_hand = chain_rule(layers, x, y, "mse")
    _, auto = autograd_pass(model, LOSSES.build({"name": "mse"}, info=INFO), x, y)
    for name, gradient in auto.items():  # the chain rule's ELU slope, α eˣ = a + α, uses the same α
        np.testing.assert_allclose(by_hand.gradients[name], gradient, rtol=0, atol=1e-12)


def test_a_negative_elu_alpha_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"'model\.alpha=-1\.0' must be 0 or more") as err:
        build_mlp(INFO, 1, hidden=[3], activation="elu", alpha=-1.0)
    assert err.value.key == "model.alpha"


def test_l1_adds_lambda_times_the_sign_of_each_weight_to_its_gradient():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.0]))
    optimizer = add_l1(OPTIMIZERS.build({"name": "sgd", "lr": 0.1}, params=[param]), 0.5)
    (0.0 * param.sum()).backward()  # a flat loss: only the penalty moves the weights
    optimizer.step()
    assert param.tolist() == pytest.approx([0.95, -1.95, 0.0])  # θ - γ·λ·sign(θ); a zero weight stays at zero


def test_l1_shrinks_the_small_weights_of_a_linear_model_far_more_than_the_large_ones(tmp_path):
    """L1's pull is the same for every weight (λ·sign), so the least useful inputs lose most (course 3 §3.4:
    sparsity); L2's pull is proportional to the weight."""
    weights = {}
    for l1 in (0.0, 0.03):
        args = ["dataset=diabetes", "model=linear", "optimizer=sgd", "optimizer.lr=0.05", f"optimizer.l1={l1}",
                "trainer.epochs=30", "logger=none", "trainer.progress=false", "trainer.threads=1", "trainer.device=cpu"]
        run(OmegaConf.create(compose_config(*args)), tmp_path / str(l1), args)
        saved = torch.load(tmp_path / str(l1) / "checkpoints" / "best.pt", weights_only=True)["model"]
        weights[l1] = next(v for k, v in saved.items() if k.endswith("weight")).flatten().abs()
    plain, sparse = weights[0.0], weights[0.03]
    kept = sparse / plain
    assert sparse.sum() < plain.sum()
    assert kept[plain.argmin()] < 0.8 < 0.97 < kept[plain.argmax()]


def test_a_negative_l1_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"'optimizer\.l1=-0\.1' must be zero or positive"):
        add_l1(OPTIMIZERS.build({"name": "sgd"}, params=[torch.nn.Parameter(torch.ones(1))]), -0.1)
