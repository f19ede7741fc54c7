"""Feature-map sizes by the course's formula (course 3 §2.1), for convolutions and pooling, in 1-D and 2-D."""

from __future__ import annotations

from torch import nn

# The layers the formula covers, by how many sizes (length; height and width) their output has.
CONVS = (nn.Conv1d, nn.Conv2d)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d)
AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d)


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """W_out = floor((W_in - 1 + 2·padding - dilation·(kernel - 1)) / stride + 1)  (course 3 §2.1)."""
    return (size - 1 + 2 * padding - dilation * (kernel - 1)) // stride + 1


def formula_text(size: int, kernel: int, stride: int, padding: int, dilation: int) -> str:
    """The formula with the numbers filled in, as the course writes it."""
    out = conv_output_size(size, kernel, stride, padding, dilation)
    return f"⌊({size} - 1 + 2·{padding} - {dilation}·({kernel} - 1)) / {stride} + 1⌋ = {out}"


def _sizes(value, dims: int) -> tuple[int, ...]:
    return (value,) * dims if isinstance(value, int) else tuple(value)


def _own_forward(module: nn.Module, kinds: tuple[type, ...]) -> bool:
    """A layer of one of `kinds` whose forward is torch's own: a subclass that pads its input first (the TCN's
    causal convolution) is not what the formula describes."""
    return any(type(module).forward is kind.forward for kind in kinds if isinstance(module, kind))


def layer_geometry(module: nn.Module) -> tuple[tuple[int, ...], ...] | None:
    """(kernel, stride, padding, dilation), one size per axis (length; or height, width), for a layer the formula
    covers, else None.

    Covered: Conv1d/Conv2d and 1-D/2-D max and average pooling with numeric padding and floor rounding; not
    'same' padding, ceil_mode, adaptive pooling, transposed convolutions, nor a subclass with its own forward.
    """
    if _own_forward(module, CONVS) and not isinstance(module.padding, str) and module.padding_mode == "zeros":
        return (module.kernel_size, module.stride, module.padding, module.dilation)
    if _own_forward(module, MAX_POOLS) and not module.ceil_mode:
        dims = 1 if isinstance(module, nn.MaxPool1d) else 2
        return tuple(_sizes(v, dims) for v in (module.kernel_size, module.stride or module.kernel_size,
                                               module.padding, module.dilation))
    if _own_forward(module, AVG_POOLS) and not module.ceil_mode:
        dims = 1 if isinstance(module, nn.AvgPool1d) else 2
        return tuple(_sizes(v, dims) for v in (module.kernel_size, module.stride or module.kernel_size,
                                               module.padding, 1))
    return None


def predicted_size(module: nn.Module, *sizes: int) -> tuple[tuple[int, ...], str] | None:
    """The output's sizes (L_out; or H_out, W_out) of a layer by the course formula, given its input's sizes, and the
    formula written out; None if the layer is not covered or its axes are not as many as `sizes`."""
    geometry = layer_geometry(module)
    if geometry is None or len(geometry[0]) != len(sizes):
        return None
    per_axis = list(zip(sizes, *geometry))
    out = tuple(conv_output_size(*axis) for axis in per_axis)
    text = formula_text(*per_axis[-1])
    if len(per_axis) == 2 and per_axis[0] != per_axis[1]:
        text = f"H: {formula_text(*per_axis[0])}; W: {text}"
    return out, text
