"""The NHWC-aware Flatten of dl-run's CNN heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlrun.models.flatten import Flatten


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_flatten_gives_nn_flattens_values_and_gradient_in_the_inputs_layout(layout):
    x = torch.randn(3, 5, 4, 2).contiguous(memory_format=layout).requires_grad_()
    reference = x.detach().clone().requires_grad_()
    weights = torch.randn(3, 40)
    out = Flatten()(x)
    assert torch.equal(out, nn.Flatten()(reference))  # (channel, row, column) order whatever the layout
    (out * weights).sum().backward()
    (nn.Flatten()(reference) * weights).sum().backward()
    assert torch.equal(x.grad, reference.grad)
    assert x.grad.is_contiguous(memory_format=layout)


def test_flatten_of_a_tensor_without_gradient_is_nn_flatten():
    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    assert torch.equal(Flatten()(x), x.flatten(1))
