"""Feature-map sizes by the course's formula (course 3 §2.1), for convolutions and pooling."""

from __future__ import annotations

from torch import nn


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """W_out = floor((W_in - 1 + 2·padding - dilation·(kernel - 1)) / stride + 1)  (course 3 §2.1)."""
    return (size - 1 + 2 * padding - dilation * (kernel - 1)) // stride + 1


def formula_text(size: int, kernel: int, stride: int, padding: int, dilation: int) -> str:
    """The formula with the numbers filled in, as the course writes it."""
    out = conv_output_size(size, kernel, stride, padding, dilation)
    return f"⌊({size} - 1 + 2·{padding} - {dilation}·({kernel} - 1)) / {stride} + 1⌋ = {out}"


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def layer_geometry(module: nn.Module) -> tuple[tuple[int, int], ...] | None:
    """(kernel, stride, padding, dilation) as (height, width) pairs for a layer the formula covers, else None.

    Covered: Conv2d and max/average pooling with numeric padding and floor rounding; not
    'same' padding, ceil_mode, adaptive pooling or transposed convolutions.
    """
    if isinstance(module, nn.Conv2d) and not isinstance(module.padding, str) and module.padding_mode == "zeros":
        return (_pair(module.kernel_size), _pair(module.stride), _pair(module.padding), _pair(module.dilation))
    if isinstance(module, nn.MaxPool2d) and not module.ceil_mode:
        return (_pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(module.padding),
                _pair(module.dilation))
    if isinstance(module, nn.AvgPool2d) and not module.ceil_mode:
        return (_pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(module.padding), (1, 1))
    return None


def predicted_size(module: nn.Module, height: int, width: int) -> tuple[tuple[int, int], str] | None:
    """(H_out, W_out) of a layer by the course formula, and the formula written out; None if not covered."""
    geometry = layer_geometry(module)
    if geometry is None:
        return None
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry
    out = (conv_output_size(height, kh, sh, ph, dh), conv_output_size(width, kw, sw, pw, dw))
    text = formula_text(width, kw, sw, pw, dw)
    if (height, kh, sh, ph, dh) != (width, kw, sw, pw, dw):
        text = f"H: {formula_text(height, kh, sh, ph, dh)}; W: {text}"
    return out, text
