"""The model summary: every layer's output shape and parameter count, measured on a real forward pass.

Convolution and pooling layers, 1-D and 2-D, also show their output size by the course's formula (course 3 §2.1),
checked against the measured shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dlrun.engine.evaluating import evaluating
from dlrun.models.geometry import predicted_size


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int
    formula: str | None = None  # W_out (L_out in 1-D) by the course formula, for conv and pooling layers
    formula_matches: bool = True  # whether the formula gave the measured length, or height and width


def summarize(model: nn.Module, sample: torch.Tensor) -> tuple[list[LayerRow], int, int]:
    """Rows for each leaf layer, total parameters, trainable parameters (course 1 §5.3 counts them so)."""
    rows: list[LayerRow] = []
    hooks = []
    current: list[str] = []  # the layer running now, to name it if the forward pass fails

    def enter(name: str):
        def pre_hook(module: nn.Module, inputs) -> None:
            shape = tuple(inputs[0].shape[1:]) if inputs and isinstance(inputs[0], torch.Tensor) else ()
            current[:] = [f"{name} ({module._get_name()}, input {shape})"]
        return pre_hook

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                output = output[0]  # recurrent layers return (outputs, state): show the outputs
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
            params = sum(p.numel() for p in module.parameters(recurse=False))
            row = LayerRow(name, module._get_name(), shape, params)
            x = inputs[0] if inputs else None
            # (channels, length) in 1-D, (channels, height, width) in 2-D: the formula gives the sizes after channels
            if isinstance(x, torch.Tensor) and x.dim() in (3, 4) and len(shape) == x.dim() - 1:
                predicted = predicted_size(module, *x.shape[2:])
                if predicted is not None:
                    row.formula, row.formula_matches = predicted[1], predicted[0] == shape[1:]
            rows.append(row)
        return hook

    for name, module in model.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_pre_hook(enter(name)))
            hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad(), evaluating(model):
            model(sample)
    except RuntimeError as err:
        raise RuntimeError(f"at layer {current[0] if current else '?'}: {err}") from None
    finally:
        for hook in hooks:
            hook.remove()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return rows, total, trainable
