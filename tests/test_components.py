"""Components one by one: datasets, models, activations, initialisation, losses (course 1-2)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

from dlrun.components.activations import ACTIVATIONS
from dlrun.data import DATASETS
from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.components.init import INITS, apply_init, fan_in
from dlrun.components.losses import LOSSES
from dlrun.models import MODELS
from dlrun.diagnostics.summary import summarize

# Datasets that read the user's files (a path or a root folder) have their own tests with tiny fixtures.
BUILT_IN = [n for n in DATASETS.names() if not {"path", "root"} & set(inspect.signature(DATASETS.get(n)).parameters)]


@pytest.mark.parametrize("name", BUILT_IN)
def test_datasets_split_disjointly_and_reproducibly(name):
    a = DATASETS.build({"name": name}, seed=3)
    b = DATASETS.build({"name": name}, seed=3)
    c = DATASETS.build({"name": name}, seed=4)
    for ta, tb in zip(a.splits.tensors(), b.splits.tensors()):
        assert torch.equal(ta, tb)  # same seed, same split
    if a.info.sequence is not None and a.info.sequence.time_ordered:
        return  # split by time, not by a seeded shuffle: test_sequences.py checks those splits
    assert not torch.equal(a.splits.x_train, c.splits.x_train)
    sizes = [len(a.splits.x_train), len(a.splits.x_val), len(a.splits.x_test)]
    assert min(sizes) >= 1 and sizes[0] > sizes[2]
    # Every sample lands in exactly one split: the sums over all splits match the whole dataset's.
    whole = DATASETS.build({"name": name, "val_fraction": 0.01, "test_fraction": 0.01}, seed=3)
    total = lambda d: sum(float(t.double().sum()) for t in (d.splits.y_train, d.splits.y_val, d.splits.y_test))  # noqa
    if a.info.target_mean is None:
        assert total(a) == pytest.approx(total(whole), rel=1e-6)
    assert sum(sizes) == sum(len(t) for t in (whole.splits.x_train, whole.splits.x_val, whole.splits.x_test))
    assert a.info.task in ("classification", "regression", "seq2seq")


def test_standardisation_is_fitted_on_the_training_split_only():
    data = DATASETS.build({"name": "wine", "standardize": True}, seed=0)
    x = data.splits.x_train
    assert torch.allclose(x.mean(0), torch.zeros(x.shape[1]), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(x.shape[1]), atol=1e-4)
    assert not torch.allclose(data.splits.x_test.mean(0), torch.zeros(x.shape[1]), atol=1e-3)


def test_linear_dataset_multi_output_matches_its_true_weights():
    data = DATASETS.build({"name": "linear", "inputs": 4, "outputs": 3, "noise": 0.0}, seed=1)
    w = torch.tensor(data.info.extras["true_weight"])
    b = torch.tensor(data.info.extras["true_bias"])
    x, y = data.splits.x_train, data.splits.y_train
    assert y.shape[1] == 3 and data.info.target_dim == 3
    assert torch.allclose(x @ w.T.float() + b.float(), y, atol=1e-5)


def test_csv_dataset_reads_features_target_and_guesses_the_task(tmp_path):
    path = tmp_path / "flowers.csv"
    path.write_text("size,weight,kind\n" + "".join(f"{i},{i * 0.37:.2f},{'ab'[i % 2]}\n" for i in range(40)))
    data = DATASETS.build({"name": "csv", "path": str(path), "target": "kind"}, seed=0)
    assert data.info.task == "classification" and data.info.class_names == ["a", "b"]
    assert data.info.input_shape == (2,)
    reg = DATASETS.build({"name": "csv", "path": str(path), "target": "weight", "features": ["size"]}, seed=0)
    assert reg.info.task == "regression" and reg.info.input_shape == (1,)


@pytest.mark.parametrize("content,words", [
    ("a,b\n", "no data rows"),
    ("a,b,y\n1,x,0\n2,3,1\n3,4,0\n4,5,1\n", "'x' is not a number"),
    ("a,b,y\n1,2\n", "2 cells where the header has 3"),
])
def test_csv_problems_name_the_file_line_and_column(tmp_path, content, words):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=words):
        DATASETS.build({"name": "csv", "path": str(path), "target": "y"}, seed=0)


@pytest.mark.parametrize("model", MODELS.names())
@pytest.mark.parametrize("dataset", ["digits", "moons", "diabetes", "linear", "sine", "digits_rows", "toy_seq2seq"])
def test_every_model_is_sized_from_the_dataset(model, dataset):
    data = DATASETS.build({"name": dataset}, seed=0)
    info = data.info
    out = {"classification": info.num_classes, "regression": info.target_dim,
           "seq2seq": info.sequence.vocab_size if info.sequence else None}[info.task]
    try:
        net = MODELS.build({"name": model}, info=info, out_features=out)
    except ConfigError as err:
        # A model may refuse a kind of data it cannot read (an image model flat inputs, a recurrent model a
        # table, a tabular model tokens), a task it is not made for (a U-Net needs masks, an autoencoder or a GAN
        # their task), or its own settings (a transfer model its backbone), but must say so.
        assert err.key == "model" and any(w in str(err) for w in ("needs image inputs", "sequence", "tokens",
                                                                  "task=", "needs a backbone")), str(err)
        return
    expected = (5, info.sequence.target_length, out) if info.task == "seq2seq" else (5, out)
    assert net(data.splits.x_train[:5]).shape == expected


def test_summary_counts_parameters_as_the_course_does():
    # Course 1 §5.3: 3 inputs, two hidden layers of 2, one output: 3·2+2 + 2·2+2 + 2+1 parameters.
    info = DataInfo(input_shape=(3,), task="regression")
    net = MODELS.build({"name": "mlp", "hidden": [2, 2]}, info=info, out_features=1)
    rows, total, trainable = summarize(net, torch.zeros(2, 3))
    assert total == trainable == 17 == sum(r.parameters for r in rows)
    assert [r.output_shape for r in rows if r.kind == "Linear"] == [(2,), (2,), (1,)]


def test_mlp_options_build_the_layers_they_name():
    info = DataInfo(input_shape=(4,), task="classification", num_classes=3)
    net = MODELS.build({"name": "mlp", "hidden": [8], "batch_norm": True, "dropout": 0.5,
                        "activation": "maxout", "pieces": 3}, info=info, out_features=3)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "Maxout", "Dropout", "Linear"]
    assert net[1].out_features == 24 and net(torch.randn(5, 4)).shape == (5, 3)


def test_dropout_is_active_only_in_training():
    info = DataInfo(input_shape=(16,), task="regression")
    net = MODELS.build({"name": "mlp", "hidden": [64], "dropout": 0.5}, info=info, out_features=1)
    x = torch.randn(4, 16)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


def test_polynomial_bases_span_the_same_polynomials():
    x = torch.linspace(-1, 1, 50).unsqueeze(1).double()
    for basis in ("monomial", "legendre"):
        net = MODELS.build({"name": "polynomial", "degree": 4, "basis": basis},
                           info=DataInfo(input_shape=(1,), task="regression"), out_features=1)
        features = net[0](x)
        assert features.shape == (50, 4)
    legendre = MODELS.build({"name": "polynomial", "degree": 3}, info=DataInfo(input_shape=(1,), task="regression"),
                            out_features=1)[0](x)
    assert torch.allclose(legendre[:, 1], (3 * x[:, 0] ** 2 - 1) / 2)  # P2
    assert torch.allclose(legendre[:, 2], (5 * x[:, 0] ** 3 - 3 * x[:, 0]) / 2)  # P3


def test_activations_follow_the_course_formulas():
    x = torch.tensor([-2.0, -0.5, 0.0, 1.5])
    assert torch.allclose(ACTIVATIONS.build({"name": "leaky_relu"})(x), torch.maximum(0.1 * x, x))
    assert torch.allclose(ACTIVATIONS.build({"name": "elu"})(x), torch.where(x >= 0, x, torch.exp(x) - 1))
    step = ACTIVATIONS.build({"name": "step"})
    assert step(x).tolist() == [0.0, 0.0, 0.0, 1.0]
    xs = x.clone().requires_grad_()
    assert not step(xs).requires_grad  # no gradient flows back through a step
    maxout = ACTIVATIONS.build({"name": "maxout", "pieces": 2})
    assert maxout(torch.tensor([[1.0, 3.0, -1.0, -2.0]])).tolist() == [[3.0, -1.0]]


def _layer() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(400, 300)


def test_zeros_init_zeroes_weights_and_biases():
    layer = _layer()
    apply_init(layer, INITS.build({"name": "zeros"}), 0.0)
    assert torch.count_nonzero(layer.weight) == 0 and torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize("name,expected_std", [
    ("lecun_uniform", lambda q_in, q_out: math.sqrt(1 / q_in)),
    ("lecun_normal", lambda q_in, q_out: math.sqrt(1 / q_in)),
    ("xavier_uniform", lambda q_in, q_out: math.sqrt(2 / (q_in + q_out))),
    ("xavier_normal", lambda q_in, q_out: math.sqrt(2 / (q_in + q_out))),
    ("he_uniform", lambda q_in, q_out: math.sqrt(2 / q_in)),
    ("he_normal", lambda q_in, q_out: math.sqrt(2 / q_in)),
])
def test_init_variances_follow_course_2_section_3_2(name, expected_std):
    layer = _layer()
    apply_init(layer, INITS.build({"name": name}), 0.0)
    assert layer.weight.std().item() == pytest.approx(expected_std(fan_in(layer.weight), 300), rel=0.03)
    assert torch.count_nonzero(layer.bias) == 0
    if name == "lecun_uniform":
        assert layer.weight.abs().max() <= math.sqrt(3 / 400) + 1e-6


def test_default_init_keeps_pytorch_weights():
    layer = _layer()
    before = layer.weight.clone()
    apply_init(layer, INITS.build({"name": "default"}), 0.0)
    assert torch.equal(layer.weight, before)


def test_bce_puts_a_sigmoid_on_the_model_and_nll_a_log_softmax():
    binary = DataInfo(input_shape=(2,), task="classification", num_classes=2, name="moons")
    bce = LOSSES.build({"name": "bce"}, info=binary)
    assert bce.out_features == 1 and bce.output_activation == "sigmoid"
    assert bce.predict_classes(torch.tensor([[0.2], [0.7]])).tolist() == [0, 1]
    logits = LOSSES.build({"name": "bce_with_logits"}, info=binary)
    assert logits.predict_classes(torch.tensor([[-0.1], [0.3]])).tolist() == [0, 1]
    assert LOSSES.build({"name": "nll"}, info=binary).output_activation == "log_softmax"


def test_auto_loss_follows_the_task():
    assert LOSSES.build({"name": "auto"}, info=DataInfo((2,), "classification", num_classes=3)).name == "cross_entropy"
    assert LOSSES.build({"name": "auto"}, info=DataInfo((2,), "regression")).name == "mse"


def test_msle_refuses_negative_targets():
    info = DataInfo((1,), "regression", name="signed")
    with pytest.raises(ConfigError, match="non-negative"):
        LOSSES.build({"name": "msle"}, info=info, train_targets=torch.tensor([[1.0], [-2.0]]))


def test_msle_matches_its_formula():
    loss = LOSSES.build({"name": "msle"}, info=DataInfo((1,), "regression"))
    y, p = torch.tensor([[1.0], [9.0]]), torch.tensor([[3.0], [4.0]])
    expected = np.mean((np.log1p([1.0, 9.0]) - np.log1p([3.0, 4.0])) ** 2)
    assert loss(p, y).item() == pytest.approx(expected, rel=1e-5)
