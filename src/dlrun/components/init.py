"""Weight initialisation schemes of course 2 §3.2, applied to every linear, convolution and recurrent layer."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from dlrun.errors import ConfigError
from dlrun.registry import Registry

INITS = Registry("init")

WeightFn = Callable[[torch.Tensor], None]
LAYERS_WITH_WEIGHTS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)


@INITS.register("default")
def build_default() -> WeightFn | None:
    """PyTorch's own initialisation (Kaiming-uniform with a=√5), weights and biases left as built."""
    return None


@INITS.register("zeros")
def build_zeros() -> WeightFn:
    """All weights 0: every unit of a layer computes the same thing, so the network cannot learn."""
    return nn.init.zeros_


@INITS.register("normal")
def build_normal(std: float = 1.0, mean: float = 0.0) -> WeightFn:
    """N(mean, std²): with std=1 and sigmoid this is the course's vanishing-gradient setting."""
    if std <= 0:
        raise ConfigError(f"'init.std={std}' must be positive.", key="init.std")
    return lambda w: nn.init.normal_(w, mean=mean, std=std)


@INITS.register("uniform")
def build_uniform(a: float = -0.05, b: float = 0.05) -> WeightFn:
    """U[a, b]."""
    if a >= b:
        raise ConfigError(f"'init.a={a}' must be below 'init.b={b}'.", key="init.a")
    return lambda w: nn.init.uniform_(w, a, b)


@INITS.register("lecun_uniform")
def build_lecun_uniform() -> WeightFn:
    """U[-√(3/q_in), √(3/q_in)]: Var[w] = 1/q_in keeps the forward variance constant."""
    return lambda w: nn.init.kaiming_uniform_(w, nonlinearity="linear")


@INITS.register("lecun_normal")
def build_lecun_normal() -> WeightFn:
    """N(0, 1/q_in)."""
    return lambda w: nn.init.kaiming_normal_(w, nonlinearity="linear")


@INITS.register("xavier_uniform")
def build_xavier_uniform(gain: float = 1.0) -> WeightFn:
    """U[-√(6/(q_in+q_out)), √(6/(q_in+q_out))]: a compromise between forward and backward variance."""
    return lambda w: nn.init.xavier_uniform_(w, gain=gain)


@INITS.register("xavier_normal")
def build_xavier_normal(gain: float = 1.0) -> WeightFn:
    """N(0, 2/(q_in+q_out))."""
    return lambda w: nn.init.xavier_normal_(w, gain=gain)


@INITS.register("he_uniform")
def build_he_uniform(nonlinearity: str = "relu") -> WeightFn:
    """U[-√(6/q_in), √(6/q_in)]: Var[w] = 2/q_in compensates ReLU halving the variance."""
    _check_nonlinearity(nonlinearity)
    return lambda w: nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity)


@INITS.register("he_normal")
def build_he_normal(nonlinearity: str = "relu") -> WeightFn:
    """N(0, 2/q_in) (He et al., 2015)."""
    _check_nonlinearity(nonlinearity)
    return lambda w: nn.init.kaiming_normal_(w, nonlinearity=nonlinearity)


@INITS.register("orthogonal")
def build_orthogonal(gain: float = 1.0) -> WeightFn:
    """A (semi-)orthogonal weight matrix: preserves norms through linear layers."""
    return lambda w: nn.init.orthogonal_(w, gain=gain)


def _check_nonlinearity(name: str) -> None:
    valid = ("relu", "leaky_relu", "linear", "tanh", "sigmoid", "selu")
    if name not in valid:
        raise ConfigError(f"'init.nonlinearity={name}' must be one of {', '.join(valid)}.", key="init.nonlinearity")


def apply_init(model: nn.Module, weight_fn: WeightFn | None, bias: float | None = 0.0) -> int:
    """Initialise every linear/convolution/recurrent weight with `weight_fn` and set biases; return layers touched.

    `bias=None` keeps the biases PyTorch chose; a layer its builder froze keeps its weights.
    """
    if weight_fn is None:
        return 0
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LAYERS_WITH_WEIGHTS):
                if not module.weight.requires_grad:  # given kernels its builder froze (model.fixed_kernels)
                    continue
                weight_fn(module.weight)
                if module.bias is not None and bias is not None:
                    nn.init.constant_(module.bias, bias)
                count += 1
            elif isinstance(module, nn.RNNBase):
                # A recurrent layer holds an input and a recurrent weight matrix (and biases) per layer and direction.
                for name, param in module.named_parameters(recurse=False):
                    if name.startswith("weight"):
                        weight_fn(param)
                    elif bias is not None:
                        nn.init.constant_(param, bias)
                count += 1
    return count


def fan_in(weight: torch.Tensor) -> int:
    """q_{l-1}: the number of inputs feeding one unit."""
    return int(math.prod(weight.shape[1:]))
