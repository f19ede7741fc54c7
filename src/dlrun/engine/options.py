"""The `trainer` config group and what it resolves to: device, CPU threads, memory layout, precision."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from dlrun.errors import ConfigError


PRECISIONS = ("auto", "32", "bf16", "fp16")


@dataclass
class TrainerOptions:
    """The `trainer` config group, checked key by key against these types."""

    epochs: int = 50
    max_steps: int | None = None  # stop after this many optimiser steps, whatever the epoch
    batch_size: int | str = 32  # an integer, or "full" for full-batch gradient descent (course 2 §1.1)
    eval_batch_size: int = 4096
    device: str = "auto"  # auto = cuda, then mps, then cpu
    threads: int | str = "auto"  # CPU threads for torch's math; auto = the cores other work leaves free
    deterministic: bool = False
    gradient_clip: float | None = None  # max global gradient norm
    precision: str | int = "auto"  # 32, bf16 or fp16 autocast; auto = bf16 (else fp16) on a GPU, 32 elsewhere
    compile: bool = False  # torch.compile the model for training
    channels_last: bool | str = "auto"  # NHWC memory layout for CNNs; auto = on a CPU (see use_channels_last)
    onednn_linear: bool | str = "auto"  # fully connected layers through oneDNN; auto = where MKL runs slow (AMD)
    devices: int = 1  # processes training together (data parallel); >1 starts them with torchrun
    early_stopping_patience: int | None = None  # epochs without improvement of `monitor` before stopping
    monitor: str = "val/loss"  # the metric that picks the best checkpoint and drives early stopping
    checkpoint_every_n_epochs: int = 1  # last.pt/best.pt are also always written when training ends
    overfit_batches: int = 0  # train (and validate) on this many batches only: can the model learn them by heart?
    checkpoint_every_n_steps: int | None = None  # also write last.pt mid-epoch, so a kill loses at most N steps
    detect_anomaly: bool = False  # torch's autograd anomaly detection: slow, names the op that made a NaN
    progress: bool = True
    profile: bool = False  # print where the process's seconds went, phase by phase (issue #21)
    weight_noise: float = 0.0  # std of the noise on the weights for each training forward pass (course 3 §4.1)
    gradient_noise: float = 0.0  # std of the noise on the gradients before each step (course 3 §4.1)
    gradient_noise_decay: float = 0.55  # its variance shrinks as std²/(1 + step)^decay (Neelakantan et al. 2015)

    def __post_init__(self) -> None:
        for key, valid, what in _CHECKS:
            value = getattr(self, key)
            if not valid(value):
                raise ConfigError(f"'trainer.{key}={value}' must be {what}.", key=f"trainer.{key}")
        if str(self.precision) not in PRECISIONS:
            raise ConfigError(f"'trainer.precision={self.precision}' is not a precision dl-run knows; valid: "
                              f"{', '.join(PRECISIONS)}.", key="trainer.precision")

    def batch_size_for(self, n_train: int) -> int:
        return n_train if self.batch_size == "full" else min(int(self.batch_size), n_train)


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; anything else must be a device torch knows and has."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"'trainer.device={name}' is not a device: use auto, cpu, cuda, cuda:N or mps.",
                          key="trainer.device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"'trainer.device={name}' but no CUDA GPU is available here: use trainer.device=auto "
                          f"or cpu.", key="trainer.device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"'trainer.device={name}' but MPS is not available here: use auto or cpu.",
                          key="trainer.device")
    return device


def resolve_threads(threads: int | str, deterministic: bool) -> int:
    """How many CPU threads torch's math gets: `auto` = the cores not already busy with other work, at least 1,
    and no more than OMP_NUM_THREADS where that is set.

    On an oversubscribed machine torch's threads wait on each other for cores they cannot get: on 2
    shared cores a small CNN trains ten times slower with 2 threads than with 1. A deterministic run
    takes every core, so that its thread count (and its floating-point sums) do not depend on the load.
    OMP_NUM_THREADS is a limit someone set on purpose: the user, a cluster's job script, torchrun for its
    ranks, or joblib for its workers (the cores divided among the jobs running at once). The load average
    cannot see those jobs: it lags a minute behind, so two joblib jobs starting together each took both of
    2 cores (a tiny job 3.2 CPU s instead of 1.1).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads != "auto":
        return int(threads)
    cores = min(cores, _thread_limit() or cores)
    if deterministic or not hasattr(os, "getloadavg"):
        return cores
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


def _thread_limit() -> int | None:
    """OMP_NUM_THREADS as a positive number of threads, else None (unset, empty or not a positive integer)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def use_channels_last(setting: bool | str, device: torch.device, model: nn.Module) -> bool:
    """Whether the model and its image batches use NHWC (channels-last) memory layout.

    `auto` picks it on a CPU for models with 2-D convolutions: NHWC is oneDNN's own layout, so the
    convolutions skip reordering their inputs, and max-pooling has a vectorised kernel for it. One training
    step on this project's 2-core CPU, NHWC against NCHW (batch 64, real data): the MNIST CNN of the
    benchmark 0.95, with batch norm 0.67, the default digits CNN 0.71, lenet5 0.87, resnet 0.79, the
    conv autoencoder 0.77, the U-Net 0.79, the grid detector 0.70. torchvision's architectures keep NCHW
    (resnet18 on 32x32 images: 1.10, its last stages' 1x1 maps make every weight gradient a copy); a model
    says so with `channels_last_on_cpu = False`. On a GPU it is off unless asked for (true): it pays
    there with bf16/fp16 tensor cores, not measured here.
    """
    if setting != "auto":
        return bool(setting)
    return (device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())
            and all(getattr(m, "channels_last_on_cpu", True) for m in model.modules()))


def autocast_for(device: torch.device, precision: str | int):
    """The autocast context for the forward pass, and a gradient scaler for fp16 (None otherwise)."""
    precision = str(precision)
    if precision == "auto":  # as before trainer.precision existed: mixed precision on a GPU only
        if device.type != "cuda":
            return nullcontext(), None
        precision = auto_gpu_precision()
    if precision == "32":
        return nullcontext(), None
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"'trainer.precision=fp16' needs a CUDA GPU (its gradient scaler is CUDA only); this "
                              f"run is on {device.type}. Use trainer.precision=bf16 (works on CPU) or 32.",
                              key="trainer.precision")
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("'trainer.precision=bf16' but this GPU has no bfloat16 support: use fp16 or 32.",
                          key="trainer.precision")
    return torch.autocast(device.type, dtype=torch.bfloat16), None


def auto_gpu_precision() -> str:
    """`precision=auto` on a GPU: bf16 where the GPU computes it natively (Ampere and later), else fp16.

    is_bf16_supported() alone also says yes where bf16 is only emulated (a V100 or a T4): slow there, and some
    cuDNN convolutions refuse it; fp16 with its gradient scaler is what those cards' tensor cores run.
    """
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.4 had no including_emulation: compute capability 8 (Ampere) is native bf16
        native = torch.cuda.get_device_capability()[0] >= 8
    return "bf16" if native else "fp16"


def set_up_cuda(device: torch.device, deterministic: bool) -> None:
    """The CUDA switches a run needs, set before CUDA does its first matrix product.

    Deterministic: cuBLAS needs a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when its handle is made, see
    torch.use_deterministic_algorithms) and cuDNN must not pick its algorithm by timing. Otherwise cuDNN times
    its algorithms once per input shape (cudnn.benchmark). Float32 matrix products and convolutions use TF32
    tensor cores (10 mantissa bits; torch's own default for convolutions, not for matrix products):
    trainer.precision=32 on an Ampere or later GPU runs several times faster than in full float32.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if device.type != "cuda":
        return  # the CPU's own settings (oneDNN, threads) are left as they are
    torch.backends.cudnn.benchmark = not deterministic
    # TF32 is deterministic too (the same inputs give the same bits), so a deterministic run keeps it.
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def _positive_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and value > 0)


def _non_negative(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")


def _switch(value: Any) -> bool:
    return value in (True, False, "auto")


# trainer.<key>: (is the value valid, what a valid one is): one sentence per key in the error.
_CHECKS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("epochs", lambda v: v >= 1, "a positive integer, e.g. 20"),
    ("max_steps", _positive_or_none, "a positive integer or null"),
    ("threads", lambda v: v == "auto" or (isinstance(v, int) and v >= 1), "a positive integer or auto"),
    ("batch_size", lambda v: v == "full" or (isinstance(v, int) and v >= 1),
     "a positive integer (1 is stochastic gradient descent) or 'full'"),
    ("eval_batch_size", lambda v: v >= 1, "a positive integer"),
    ("gradient_clip", _positive_or_none, "positive or null"),
    ("checkpoint_every_n_epochs", lambda v: v >= 1, "a positive integer"),
    ("overfit_batches", lambda v: v >= 0, "0 (off) or positive"),
    ("checkpoint_every_n_steps", _positive_or_none, "a positive integer or null (only at epoch ends)"),
    ("channels_last", _switch, "true, false or auto"),
    ("onednn_linear", _switch, "true, false or auto"),
    ("devices", lambda v: v >= 1, "a positive integer (processes that train together)"),
    ("early_stopping_patience", _positive_or_none, "a positive integer or null"),
    ("weight_noise", _non_negative, "0 (off) or a positive standard deviation, e.g. 0.01"),
    ("gradient_noise", _non_negative, "0 (off) or a positive standard deviation, e.g. 0.01"),
    ("gradient_noise_decay", _non_negative, "0 (constant noise) or positive, e.g. 0.55 as Neelakantan et al. 2015"),
)
