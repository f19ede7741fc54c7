"""The decoder's upsampling choices (course 3 §3.2-§3.3): sizes, channels and unpooling positions."""

import pytest
import torch

from dlrun.errors import ConfigError
from dlrun.models.upsample import UPSAMPLING, Downsample, Upsample


@pytest.mark.parametrize("kind", UPSAMPLING)
@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_upsample_undoes_pooling_size_and_sets_channels(kind, size):
    x = torch.randn(2, 4, *size)
    pooled, indices = Downsample(2, keep_indices=kind == "unpool")(x)
    up = Upsample(kind, 4, 6)(pooled, indices, size=size)
    assert up.shape == (2, 6, *size)
    up.sum().backward()  # every kind is trainable end to end


def test_unpooling_puts_each_maximum_back_where_it_was():
    x = torch.tensor([[[[1., 5., 0., 2.],
                        [3., 4., 7., 1.],
                        [0., 0., 1., 1.],
                        [9., 2., 3., 8.]]]])
    pooled, indices = Downsample(2, keep_indices=True)(x)
    unpooled = Upsample("unpool", 1, 1).up(pooled, indices, output_size=x.shape[-2:])
    expected = torch.tensor([[[[0., 5., 0., 0.],
                               [0., 0., 7., 0.],
                               [0., 0., 0., 0.],
                               [9., 0., 0., 8.]]]])
    assert torch.equal(unpooled, expected)
    assert torch.equal(unpooled, torch.nn.MaxUnpool2d(2)(pooled, indices, output_size=x.shape[-2:]))


def test_unpooling_runs_in_deterministic_mode():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # trainer.deterministic=true: torch's own max_unpool2d refuses
    try:
        pooled, indices = Downsample(2, keep_indices=True)(torch.randn(2, 3, 6, 6))
        assert Upsample("unpool", 3, 3)(pooled, indices, size=(6, 6)).shape == (2, 3, 6, 6)
    finally:
        torch.use_deterministic_algorithms(previous)


def test_unknown_upsampling_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match="transposed, nearest, bilinear, unpool"):
        Upsample("bicubic", 1, 1)
