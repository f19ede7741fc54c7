"""Course 3 §5.3 on long sequences: the adding problem, the gates' bias key, and the long_sequences preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrun.data.registry import DATASETS
from dlrun.models.registry import MODELS
from test_presets import jobs_over


def test_adding_targets_are_the_sum_of_one_marked_value_in_each_half():
    data = DATASETS.build({"name": "adding", "n_samples": 300, "length": 10}, seed=0)
    x, y = data.splits.x_train, data.splits.y_train
    markers = x[:, :, 1]
    assert torch.equal(markers[:, :5].sum(dim=1), torch.ones(len(x)))
    assert torch.equal(markers[:, 5:].sum(dim=1), torch.ones(len(x)))
    assert torch.allclose(y[:, 0], (x[:, :, 0] * markers).sum(dim=1))
    # The trivial baseline the preset compares against: predicting the mean, 1, scores an MSE of 1/6.
    assert abs(((y - 1.0) ** 2).mean().item() - 1 / 6) < 0.03


def gate_biases(cell: str, forget_bias: float | None) -> dict[str, torch.Tensor]:
    info = DATASETS.build({"name": "adding", "n_samples": 20, "length": 4}, seed=0).info
    net = MODELS.build({"name": cell, "hidden": 3, "layers": 2, "forget_bias": forget_bias}, info=info,
                       out_features=1)
    return {name: p.detach() for name, p in net.rnn.named_parameters() if name.startswith("bias_")}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forget_bias_sets_the_remembering_gate_and_only_it(cell):
    hidden = 3
    gate = slice(hidden, 2 * hidden)  # torch's gate order: LSTM i, f, g, o; GRU r, z, n
    for name, bias in gate_biases(cell, 2.5).items():
        expected = 2.5 if name.startswith("bias_ih") else 0.0
        assert torch.all(bias[gate] == expected), name
        assert not torch.all(bias[:hidden] == 0.0), name  # the other gates keep torch's random init
    # null keeps torch's own init: small random biases, none set to a constant.
    assert all(np.unique(b.numpy()).size == b.numel() for b in gate_biases(cell, None).values())


def r2_on_test(metrics: dict) -> float:
    return metrics["evaluation"]["test"]["r2"]


@pytest.mark.slow
def test_the_plain_rnn_stays_at_the_baseline_while_lstm_and_gru_learn_the_adding_problem(tmp_path):
    seeds = (0, 1, 2)
    r2 = {cell: [r2_on_test(m) for m in jobs_over(seeds, tmp_path, "long_sequences", model=cell)]
          for cell in ("rnn", "lstm", "gru")}
    print({cell: [round(v, 4) for v in values] for cell, values in r2.items()})
    mean = {cell: sum(values) / len(values) for cell, values in r2.items()}
    assert mean["rnn"] < 0.2, r2
    assert mean["lstm"] > 0.8 and mean["gru"] > 0.8, r2
