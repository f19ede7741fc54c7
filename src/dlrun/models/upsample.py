"""Ways back up to a larger feature map (course 3 §3.2-§3.3), shared by autoencoders and U-Nets.

A decoder that mirrors an encoder must undo its pooling. The course shows three ways:
- `transposed`: a transposed convolution with stride = scale, whose kernels are learned (§3.2);
- `nearest` / `bilinear`: fixed interpolation, then an ordinary 3x3 convolution (no checkerboard artefacts);
- `unpool`: max-unpooling that puts each value back where the encoder's max-pooling found it, from the
  pooling indices the encoder kept, then a 3x3 convolution (§3.3).
`kernel` sets the transposed convolution's kernel (2 by default: kernel = stride, each output pixel gets one
tap) or the kernel of the convolution after the other three (3 by default). A transposed kernel the stride does
not divide (3 with stride 2) overlaps unevenly: every other output pixel sums more taps than its neighbours,
the checkerboard artefacts of §3.2 (Odena et al. 2016).
`Downsample` is the encoder side: max-pooling that keeps its indices when the decoder unpools.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrun.errors import ConfigError

UPSAMPLING = ("transposed", "nearest", "bilinear", "unpool")


def check_upsampling(kind: str, key: str = "model.upsampling") -> str:
    """The kind, or a ConfigError listing the valid ones."""
    if kind not in UPSAMPLING:
        raise ConfigError(f"'{key}={kind}' is not an upsampling dl-run knows; valid: {', '.join(UPSAMPLING)} "
                          f"(course 3 §3.2-§3.3).", key=key)
    return kind


def transposed_padding(kernel: int, stride: int) -> tuple[int, int] | None:
    """(padding, output_padding) that make a transposed convolution give exactly stride x its input size, or
    None when no pair can (stride 1 with an even kernel: output_padding would have to be 1, and it must be < 1).

    out = (in - 1) * stride - 2 * padding + kernel + output_padding = stride * in
      <=> 2 * padding - output_padding = kernel - stride, with padding >= 0 and 0 <= output_padding < stride.
    """
    if kernel <= stride:
        return 0, stride - kernel
    padding = (kernel - stride + 1) // 2
    output_padding = 2 * padding - (kernel - stride)
    return (padding, output_padding) if output_padding < stride else None


def check_upsampling_geometry(kind: str, kernel: int | None, stride: int, scale: int = 2,
                              key: str = "model.upsampling") -> int:
    """The kernel to use (the kind's default for None), or a ConfigError naming the key, the value and valid ones.

    Every stage of dl-run's encoders pools by `scale` (2), so the decoder must scale each map by exactly that.
    """
    check_upsampling(kind, key)
    if stride != scale:
        raise ConfigError(f"'{key}_stride={stride}': each stage of the model halves the map (max-pooling or a "
                          f"strided convolution by {scale}), so each upsampling must multiply it by {scale} to give "
                          f"the sizes back; valid: {key}_stride={scale}, with any {key}_kernel (course 3 §3.2).",
                          key=f"{key}_stride")
    kernel = (scale if kind == "transposed" else 3) if kernel is None else kernel
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1:
        raise ConfigError(f"'{key}_kernel={kernel}' must be a positive kernel size or null (the default: {scale} for "
                          f"transposed, = the stride, 3 for the others), e.g. {key}_kernel=4.", key=f"{key}_kernel")
    if kind == "transposed" and transposed_padding(kernel, stride) is None:
        valid = [k for k in range(1, 8) if transposed_padding(k, stride) is not None]
        raise ConfigError(f"'{key}_kernel={kernel}' with stride {stride}: no padding gives exactly {stride}x the "
                          f"map's size; valid kernels: {', '.join(map(str, valid))}, ...", key=f"{key}_kernel")
    return kernel


class Downsample(nn.Module):
    """Max-pooling by `scale`; returns (pooled, indices), the indices only when an unpooling decoder needs them."""

    def __init__(self, scale: int = 2, keep_indices: bool = False) -> None:
        super().__init__()
        self.keep_indices = keep_indices
        self.pool = nn.MaxPool2d(scale, return_indices=keep_indices)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.keep_indices:
            return self.pool(x)
        return self.pool(x), None


class MaxUnpool(nn.Module):
    """nn.MaxUnpool2d as a scatter: each value goes back to the position its pooling index names, zeros elsewhere.

    torch's own max_unpool2d refuses to run under trainer.deterministic=true (it has no deterministic
    kernel); the indices of one max-pooling never collide, so a plain scatter is exact and deterministic.
    """

    def __init__(self, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor, indices: torch.Tensor,
                output_size: tuple[int, int] | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        out_h, out_w = tuple(output_size[-2:]) if output_size is not None else (h * self.scale, w * self.scale)
        flat = x.new_zeros(n, c, out_h * out_w)
        return flat.scatter(2, indices.flatten(2), x.flatten(2)).view(n, c, out_h, out_w)


class Upsample(nn.Module):
    """Scale a feature map up by `scale` and map in_channels to out_channels, the `kind` way."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, scale: int = 2,
                 kernel: int | None = None) -> None:
        super().__init__()
        self.kind = check_upsampling(kind)
        kernel = check_upsampling_geometry(kind, kernel, scale, scale)
        if kind == "transposed":
            # kernel = stride (the default): every output pixel gets exactly one kernel tap, so no overlap pattern.
            padding, output_padding = transposed_padding(kernel, scale)
            self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=kernel, stride=scale,
                                         padding=padding, output_padding=output_padding)
            self.conv = None
        else:
            self.up = (MaxUnpool(scale) if kind == "unpool" else
                       nn.Upsample(scale_factor=scale, mode=kind, **({"align_corners": False}
                                                                       if kind == "bilinear" else {})))
            # padding kernel // 2 keeps the size for an odd kernel; an even one gives one row and column more,
            # which forward() crops (torch's padding="same" would warn of a padded copy for even kernels)
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        """`indices` from the paired Downsample (unpool only); `size` = the encoder's map size before pooling."""
        if self.kind == "unpool":
            if indices is None:
                raise ValueError("upsampling=unpool needs the pooling indices of the matching encoder layer")
            x = self.up(x, indices, output_size=size)
        else:
            x = self.up(x)
            if size is not None and tuple(x.shape[-2:]) != tuple(size):
                # An odd encoder size (7 -> 3 by pooling) comes back one short (6): pad or crop to match it.
                x = _fit(x, size)
        return x if self.conv is None else self.conv(x)[..., : x.shape[-2], : x.shape[-1]]


def _fit(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    return nn.functional.pad(x, [0, dw, 0, dh])  # negative padding crops
