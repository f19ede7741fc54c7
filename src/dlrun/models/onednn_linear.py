"""Fully connected layers through oneDNN's matrix products on a CPU where torch's BLAS (MKL) runs slow.

torch's CPU wheels do nn.Linear's three matrix products (forward, weight gradient, input gradient) with
Intel MKL. MKL picks its code by CPU vendor: on an AMD CPU it runs its AVX2 kernels even where the CPU has
AVX-512. oneDNN, which torch also ships (its convolutions already use it), picks by instruction set. On this
project's 2-core AMD EPYC (Zen 5), one thread, fp32, microseconds per product, MKL / oneDNN:

    batch x in -> out      forward         weight gradient   input gradient
    64 x 784 -> 256        241 / 125       235 / 122         240 / 119
    64 x 9216 -> 128       1452 / 688      1450 / 642        1511 / 658
    64 x 256 -> 128        42 / 30         41 / 34           41 / 28
    32 x 64 -> 64          4.7 / 12.9      4.4 / 14.8        3.9 / 12.5

oneDNN costs about 10 us a call whatever the size, so a product goes through it only from MIN_PRODUCT
multiply-adds up (batch x in x out); smaller ones stay with torch. A whole MNIST MLP training step
(784-256-128-10, batch 64, Adam) took 0.80 ms instead of 0.97 ms. The results are the same products summed
in another order: gradients agree with nn.Linear's to a relative 1e-6.

`trainer.onednn_linear=auto` turns it on where torch's BLAS is MKL and the CPU is not Intel's; the choice
depends on the machine only, never on a timing, so a resumed run takes the same path as the run it resumes.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dlrun.errors import ConfigError

MIN_PRODUCT = 1 << 20  # batch x in x out: from about here oneDNN's fixed cost per call is paid back


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias by oneDNN; weight may be a strided view (the backward passes transposes)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad2 = grad.reshape(-1, grad.shape[-1])
        # Under create_graph (a gradient penalty, say) the gradients must be differentiable themselves: oneDNN's
        # product has no derivative, torch's matmul has.
        product = _product if not torch.is_grad_enabled() else lambda a, b, _: a @ b.t()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # grad @ weight
            grad_x = product(grad2, weight.t(), None).reshape(x.shape)
        if ctx.needs_input_grad[1]:  # grad.T @ x
            grad_w = product(grad2.t(), x.reshape(-1, x.shape[-1]).t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad2.sum(0)
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Linear):
    """nn.Linear (same parameters, same state_dict) whose large fp32 products on a CPU go through oneDNN."""

    def _get_name(self) -> str:
        return "Linear"  # model summaries and printouts show the layer the user configured

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Exports (traced TorchScript, ONNX, torch.export) and torch.compile record torch's own operation; they
        # are tested first, since a size test would be traced (a guard on a free batch size). Then small products,
        # the common case on this per-step path, before the rarer tests.
        if (torch.jit.is_tracing() or torch.compiler.is_compiling() or x.numel() * self.out_features < MIN_PRODUCT
                or x.device.type != "cpu" or x.dim() < 2
                or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                or torch.is_autocast_enabled("cpu")):
            return F.linear(x, self.weight, self.bias)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad
                                        or (self.bias is not None and self.bias.requires_grad)):
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return _product(x, self.weight, self.bias)


def onednn_available() -> bool:
    """Whether this torch has oneDNN and the fp32 product this module calls."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def mkl_on_other_vendor() -> bool:
    """Whether torch's BLAS is MKL on a CPU that is not Intel's (MKL then runs its AVX2 code) and oneDNN is here."""
    return torch.backends.mkl.is_available() and onednn_available() and cpu_vendor() not in ("", "GenuineIntel")


def cpu_vendor() -> str:
    """The CPU's vendor string (GenuineIntel, AuthenticAMD, ...), or "" where it cannot be read."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
        return ""
    for vendor in ("GenuineIntel", "AuthenticAMD"):  # Windows names it in platform.processor()
        if vendor in platform.processor():
            return vendor
    return ""


def use_onednn_linear(setting: bool | str, device: torch.device, model: nn.Module) -> bool:
    """Whether the model's nn.Linear layers compute through oneDNN (trainer.onednn_linear); turns them so if so.

    `auto` = on a CPU where torch's BLAS is MKL and the CPU is not Intel's. Each plain nn.Linear becomes an
    OneDNNLinear in place: the same object with the same parameters, so optimisers, hooks and checkpoints
    already holding it are unaffected, and its state_dict keys do not change.
    """
    if setting == "auto":
        setting = device.type == "cpu" and mkl_on_other_vendor()
    if not setting:
        return False
    if not onednn_available():
        raise ConfigError(f"'trainer.onednn_linear=true' but this torch ({torch.__version__}) was built without "
                          f"oneDNN: use auto or false.", key="trainer.onednn_linear")
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = OneDNNLinear
    return True
