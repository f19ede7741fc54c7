"""Gradient flow (course 2 §1.2, §2): per-layer gradient norms and activation statistics every N steps.

Backpropagation multiplies the gradient by w·f'(h) once per layer; with sigmoid (f' ≤ 0.25) and small
weights it shrinks towards the input: the vanishing-gradient problem. The monitor shows it layer by
layer in TensorBoard and warns when the first layer's gradient is far below the last one's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dlrun.components.activations import Maxout, Step
from dlrun.components.init import LAYERS_WITH_WEIGHTS

ACTIVATION_TYPES = (nn.Sigmoid, nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, Maxout, Step)
# First-layer gradient norm below this fraction of the last layer's: the gradient has vanished on its way back.
VANISHING_RATIO = 1e-3


class GradientMonitor:
    """Records gradient norms and activation statistics on every N-th step only (no cost in between)."""

    def __init__(self, model: nn.Module, logger: Any, every_n_steps: int, histograms: bool = True) -> None:
        self.logger = logger
        self.every = every_n_steps
        self.histograms = histograms
        self.layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LAYERS_WITH_WEIGHTS)]
        self.ratios: list[float] = []  # first/last gradient-norm ratio of each logged step (the run's, once resumed)
        self._capture = False
        self._activations: dict[str, dict[str, float]] = {}
        self._hooks = [m.register_forward_hook(self._record(name)) for name, m in model.named_modules()
                       if isinstance(m, ACTIVATION_TYPES)]

    def _record(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if not self._capture:
                return
            out = output.detach().float().flatten(1)
            # A dead unit gives 0 for every sample of the batch (a ReLU stuck below zero).
            dead = (out == 0).all(dim=0).float().mean()
            self._activations[name] = {"mean": out.mean(), "std": out.std(), "dead_fraction": dead}
        return hook

    def before_forward(self, step: int) -> None:
        """Call with the number the coming step will have; arms the hooks on logging steps."""
        self._capture = self.every > 0 and step % self.every == 0

    def after_backward(self, step: int) -> None:
        """Log what the armed step saw; cheap no-op on the other steps."""
        if not self._capture:
            return
        self._capture = False
        norms = {}
        values: dict[str, float] = {}
        for name, layer in self.layers:
            if layer.weight.grad is not None:
                norms[name] = layer.weight.grad.norm()
                if self.histograms:
                    self.logger.histogram(f"gradients/{name}", layer.weight.grad, step)
        stacked = torch.stack(list(norms.values())).tolist() if norms else []  # one sync for all layers
        for (name, _), value in zip(norms.items(), stacked):
            values[f"gradient_norm/{name}"] = value
        if len(stacked) >= 2 and stacked[-1] > 0:
            ratio = stacked[0] / stacked[-1]
            self.ratios.append(ratio)
            values["gradient_norm/first_over_last"] = ratio
        for name, stats in self._activations.items():
            for key, value in stats.items():
                values[f"activations/{name}/{key}"] = float(value)
        self._activations.clear()
        self.logger.scalars(values, step)

    def state_dict(self) -> dict[str, Any]:
        """What the monitor has accumulated, as plain data for a checkpoint (a copy: it stays as it is)."""
        return {"ratios": list(self.ratios)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state_dict(): the median and its warning then cover the whole run."""
        self.ratios = [float(r) for r in state["ratios"]]

    def median_ratio(self) -> float | None:
        """The median first/last gradient-norm ratio over the logged steps."""
        return sorted(self.ratios)[len(self.ratios) // 2] if self.ratios else None

    def vanishing_warning(self) -> str | None:
        """A warning when the median first/last gradient-norm ratio is below VANISHING_RATIO."""
        median = self.median_ratio()
        if median is None or median >= VANISHING_RATIO or math.isnan(median):
            return None
        return (f"Vanishing gradients: the first layer's gradient norm is {median:.1e} times the last layer's "
                f"(median over {len(self.ratios)} logged steps). The early layers barely learn. Use ReLU-like "
                f"activations (model.activation=relu), He initialisation (init=he_normal) or batch normalisation "
                f"(model.batch_norm=true); see gradient_norm/* in TensorBoard (course 2 §1.2).")

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
