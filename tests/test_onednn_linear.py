"""Fully connected layers through oneDNN on a CPU (trainer.onednn_linear): nn.Linear's values and gradients."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_config
from dlrun.engine import checkpoint
from dlrun.errors import ConfigError
from dlrun.models import onednn_linear
from dlrun.models.onednn_linear import MIN_PRODUCT, OneDNNLinear, use_onednn_linear
from dlrun.run.experiment import Experiment
from dlrun.run.training import run

needs_onednn = pytest.mark.skipif(not onednn_linear.onednn_available(), reason="torch built without oneDNN")


def twins(in_features: int, out_features: int, bias: bool = True) -> tuple[nn.Linear, nn.Linear]:
    """An nn.Linear and an OneDNNLinear with the same parameters."""
    torch.manual_seed(0)
    plain = nn.Linear(in_features, out_features, bias=bias)
    fast = nn.Linear(in_features, out_features, bias=bias)
    fast.load_state_dict(plain.state_dict())
    fast.__class__ = OneDNNLinear
    return plain, fast


@needs_onednn
@pytest.mark.parametrize("shape,bias", [((64, 784), True), ((64, 784), False), ((8, 16, 784), True)])
def test_large_products_give_nn_linears_values_and_gradients(shape, bias):
    plain, fast = twins(784, 256, bias)
    assert shape[0] * 784 * 256 >= MIN_PRODUCT  # big enough to go through oneDNN
    x = torch.randn(*shape)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn(*shape[:-1], 256)
    out_plain, out_fast = plain(xa), fast(xb)
    assert out_fast.shape == out_plain.shape
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-4)
    (out_plain * upstream).sum().backward()
    (out_fast * upstream).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-3)
    if bias:
        torch.testing.assert_close(fast.bias.grad, plain.bias.grad, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_second_derivatives_match_nn_linears():
    """A gradient penalty differentiates the gradient: that backward takes torch's differentiable product."""
    plain, fast = twins(784, 256)
    x = torch.randn(64, 784)
    penalties = []
    for layer in (plain, fast):
        xi = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(torch.tanh(layer(xi)).sum(), xi, create_graph=True)
        grad.pow(2).sum().backward()
        penalties.append(layer.weight.grad)
    torch.testing.assert_close(penalties[1], penalties[0], rtol=1e-5, atol=1e-5)


@needs_onednn
def test_an_input_without_gradient_gets_no_input_gradient_and_frozen_weights_none():
    plain, fast = twins(784, 256)
    fast.weight.requires_grad_(False)
    x = torch.randn(64, 784, requires_grad=True)
    fast(x).sum().backward()
    assert fast.weight.grad is None and fast.bias.grad is not None and x.grad is not None
    with torch.no_grad():  # evaluation: oneDNN without autograd, same values
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-4)


def test_small_products_and_other_dtypes_are_torchs_own_linear_exactly():
    plain, fast = twins(64, 16)
    x = torch.randn(32, 64)  # 32 x 64 x 16 multiply-adds: below MIN_PRODUCT, oneDNN's fixed cost would not pay
    assert torch.equal(fast(x), plain(x))
    wide_plain, wide_fast = twins(2048, 1024)
    vector = torch.randn(2048)  # one sample without a batch dimension
    assert torch.equal(wide_fast(vector), wide_plain(vector))
    assert torch.equal(fast.double()(x.double()), plain.double()(x.double()))
    big_plain, big_fast = twins(784, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # trainer.precision=bf16: autocast's own bf16 product
        out = big_fast(torch.randn(64, 784))
    assert out.dtype == torch.bfloat16


def test_a_traced_export_records_torchs_plain_linear():
    _, fast = twins(784, 256)
    traced = torch.jit.trace(fast, torch.randn(64, 784))
    assert "aten::linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)


def test_turning_a_model_over_keeps_its_parameters_state_dict_and_printout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    printed = repr(model)
    params = list(model.parameters())
    assert use_onednn_linear(True, torch.device("cpu"), model) is onednn_linear.onednn_available()
    if onednn_linear.onednn_available():
        assert [type(m) for m in model if isinstance(m, nn.Linear)] == [OneDNNLinear, OneDNNLinear]
    assert list(model.parameters()) == params and repr(model) == printed
    assert model.state_dict().keys() == before.keys()
    untouched = nn.Sequential(nn.Linear(8, 4))
    assert use_onednn_linear(False, torch.device("cpu"), untouched) is False
    assert use_onednn_linear("auto", torch.device("cuda"), untouched) is False  # a GPU: cuBLAS, not MKL
    assert type(untouched[0]) is nn.Linear


def test_auto_follows_the_blas_and_the_cpu_vendor(monkeypatch):
    monkeypatch.setattr(onednn_linear, "cpu_vendor", lambda: "GenuineIntel")
    assert onednn_linear.mkl_on_other_vendor() is False  # MKL's own CPUs get its fast code: left alone
    monkeypatch.setattr(onednn_linear, "cpu_vendor", lambda: "AuthenticAMD")
    expected = torch.backends.mkl.is_available() and onednn_linear.onednn_available()
    assert onednn_linear.mkl_on_other_vendor() is expected
    monkeypatch.setattr(onednn_linear, "cpu_vendor", lambda: "")
    assert onednn_linear.mkl_on_other_vendor() is False  # unknown: torch's default


# Wide enough that the products go through oneDNN: 64 x 64 x 512 multiply-adds in the first layer.
WIDE = ("dataset=digits", "model.hidden=[512]", "trainer.batch_size=64", "trainer.device=cpu", "logger=none",
        "trainer.progress=false", "trainer.deterministic=true", "model.dropout=0.1")


@pytest.fixture
def restores_determinism():
    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)


@needs_onednn
def test_a_run_through_onednn_learns_like_torchs_and_resumes_bitwise_identical(tmp_path, restores_determinism):
    def train(run_dir, *overrides):
        return run(OmegaConf.create(compose_config(*WIDE, *overrides)), run_dir, list(overrides))

    fast = train(tmp_path / "fast", "trainer.epochs=3", "trainer.onednn_linear=true")
    plain = train(tmp_path / "plain", "trainer.epochs=3", "trainer.onednn_linear=false")
    assert fast["test"]["accuracy"] > 0.9
    assert abs(fast["test"]["accuracy"] - plain["test"]["accuracy"]) < 0.03
    assert fast["history"] != plain["history"]  # really another path: the sums differ in their last bits
    # Stopped after one epoch and resumed: the same weights as the run that never stopped.
    stopped = tmp_path / "stopped"
    train(stopped, "trainer.epochs=1", "trainer.onednn_linear=true")
    (stopped / ".hydra").mkdir(exist_ok=True)
    train(stopped, "trainer.epochs=3", "trainer.onednn_linear=true", f"resume={stopped}")
    a, b = (checkpoint.load(d / "checkpoints" / "last.pt")["model"] for d in (tmp_path / "fast", stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The checkpoint is nn.Linear's: it loads into a model built without oneDNN.
    exp = Experiment(compose_config(*WIDE, "trainer.onednn_linear=false"), tmp_path / "load")
    exp.model.load_state_dict(a)


def test_onednn_linear_is_refused_unless_true_false_or_auto(tmp_path):
    with pytest.raises(ConfigError, match=r"'trainer.onednn_linear=fast' must be true, false or auto") as err:
        Experiment(compose_config("trainer.onednn_linear=fast"), tmp_path)
    assert err.value.key == "trainer.onednn_linear"
