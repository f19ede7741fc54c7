"""mode=backprop: one forward and backward pass written out; every gradient by a hand-written chain rule in float64,
beside autograd's (course 2 §1.2)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dlrun.errors import ConfigError
from dlrun.loggers import build_logger
from dlrun.modes.trained import load_trained
from dlrun.registry import check_arguments
from dlrun.views import console

if TYPE_CHECKING:
    from dlrun.run.experiment import Experiment

# The chain rule by hand must agree with autograd to this (both in float64).
TOLERANCE = 1e-9
LOSSES = ("mse", "mae", "cross_entropy", "bce", "bce_with_logits")
ACTIVATIONS = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu",
               nn.Identity: "identity"}


@dataclass
class Layer:
    """One step of the network as the hand-written pass sees it: a fully-connected layer or an activation."""

    kind: str  # "linear" or an activation's name
    prefix: str = ""  # the torch name of a linear layer, e.g. "3" (its parameters are 3.weight, 3.bias)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    slope: float = 0.0  # leaky_relu's negative slope, elu's alpha


@dataclass
class Pass:
    """The numbers of one pass: each layer's input and output, the loss and every parameter's gradient."""

    values: list[np.ndarray]  # values[0] is x; values[i + 1] is layer i's output
    loss: float
    d_output: np.ndarray  # ∂L/∂S
    gradients: dict[str, np.ndarray] = field(default_factory=dict)  # torch parameter name -> gradient


def layers_of(model: nn.Module) -> list[Layer]:
    """The model as fully-connected layers and elementwise activations, in order; anything else is refused."""
    layers = []
    for name, module in model.named_modules():
        if list(module.children()) or isinstance(module, (nn.Flatten, nn.Dropout)):
            continue  # containers; Flatten changes no value; Dropout is off in a pass outside training
        if isinstance(module, nn.Linear):
            bias = None if module.bias is None else module.bias.detach().double().cpu().numpy()
            layers.append(Layer("linear", name, module.weight.detach().double().cpu().numpy(), bias))
        elif type(module) in ACTIVATIONS:
            slope = getattr(module, "negative_slope", getattr(module, "alpha", 0.0))
            layers.append(Layer(ACTIVATIONS[type(module)], slope=float(slope)))
        else:
            raise ConfigError(f"'mode=backprop' writes out fully-connected layers and the activations "
                              f"{', '.join(ACTIVATIONS.values())}; this model has a {type(module).__name__} "
                              f"('{name}'). Use model=mlp (without batch_norm) or model=linear, e.g. "
                              f"dl-run experiment=backprop.", key="model")
    return layers


def _activate(layer: Layer, h: np.ndarray) -> np.ndarray:
    """f(h) for each activation of course 2 §2."""
    if layer.kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-h))
    if layer.kind == "tanh":
        return np.tanh(h)
    if layer.kind == "relu":
        return np.maximum(h, 0.0)
    if layer.kind == "leaky_relu":
        return np.where(h > 0, h, layer.slope * h)
    if layer.kind == "elu":
        return np.where(h > 0, h, layer.slope * np.expm1(np.minimum(h, 0.0)))
    return h


def _slope(layer: Layer, h: np.ndarray, a: np.ndarray) -> np.ndarray:
    """f'(h), written with the forward pass's values where the course does: σ' = σ(1 - σ), tanh' = 1 - tanh²."""
    if layer.kind == "sigmoid":
        return a * (1.0 - a)
    if layer.kind == "tanh":
        return 1.0 - a * a
    if layer.kind == "relu":
        return (h > 0).astype(np.float64)
    if layer.kind == "leaky_relu":
        return np.where(h > 0, 1.0, layer.slope)
    if layer.kind == "elu":
        return np.where(h > 0, 1.0, a + layer.slope)  # α(eʰ - 1) + α = αeʰ
    return np.ones_like(h)


def _loss_and_slope(name: str, s: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The loss of the output S against the targets, and ∂L/∂S (course 2 §4.1), each a mean over the batch."""
    n = len(s)
    if name == "mse":
        return float(np.mean((s - y) ** 2)), 2.0 * (s - y) / s.size
    if name == "mae":
        return float(np.mean(np.abs(s - y))), np.sign(s - y) / s.size
    if name == "cross_entropy":  # softmax, then the negative log-likelihood of the true class
        shifted = s - s.max(axis=1, keepdims=True)
        p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        one_hot = np.eye(s.shape[1])[y.astype(int)]
        return float(-np.mean(np.log(p[np.arange(n), y.astype(int)]))), (p - one_hot) / n
    t = y.reshape(n, 1)
    if name == "bce_with_logits":  # log(1 + eˢ) - t·s, the sigmoid folded in
        return float(np.mean(np.logaddexp(0.0, s) - t * s)), (1.0 / (1.0 + np.exp(-s)) - t) / n
    # bce: s is already a probability (the model ends with a sigmoid)
    return float(-np.mean(t * np.log(s) + (1 - t) * np.log(1 - s))), (s - t) / (s * (1 - s)) / n


def chain_rule(layers: list[Layer], x: np.ndarray, y: np.ndarray, loss: str) -> Pass:
    """Forward through the layers, then back: ∂L/∂W = δᵀa, ∂L/∂b = Σδ, δ ← δW, and δ ← δ ⊙ f'(h) (no autograd)."""
    values = [x]
    for layer in layers:
        a = values[-1]
        values.append(a @ layer.weight.T + (0.0 if layer.bias is None else layer.bias) if layer.kind == "linear"
                      else _activate(layer, a))
    value, d_output = _loss_and_slope(loss, values[-1], y)
    result = Pass(values, value, d_output)
    delta = d_output
    for i in reversed(range(len(layers))):
        layer = layers[i]
        if layer.kind == "linear":
            result.gradients[f"{layer.prefix}.weight"] = delta.T @ values[i]
            if layer.bias is not None:
                result.gradients[f"{layer.prefix}.bias"] = delta.sum(axis=0)
            delta = delta @ layer.weight
        else:
            delta = delta * _slope(layer, values[i], values[i + 1])
    return result


def autograd_pass(model: nn.Module, loss_fn: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """The same pass through a float64 copy of the model, differentiated by autograd."""
    twin = copy.deepcopy(model).cpu().double().eval()
    target = torch.as_tensor(y) if y.dtype.kind in "iu" else torch.as_tensor(y, dtype=torch.float64)
    if loss_fn.binary:  # one output against 0/1 labels, as Loss does; its module called directly: bce stays in float64
        target = target.to(torch.float64).reshape(-1, 1)
    loss = loss_fn.module(twin(torch.as_tensor(x, dtype=torch.float64)), target)
    loss.backward()
    gradients = {name: p.grad.numpy().copy() for name, p in twin.named_parameters() if p.grad is not None}
    return float(loss.detach()), gradients


def _names(layers: list[Layer]) -> tuple[dict[str, str], list[str]]:
    """Course 2 §1.2's names: w^l_jk, b^l_j for each parameter entry; h^l_j, a^l_j, S for each value."""
    params: dict[str, str] = {}
    values = [f"x_{k + 1}" for k in range(layers[0].weight.shape[1])] if layers and layers[0].kind == "linear" else []
    rows, level, last_linear = [], 0, max((i for i, lay in enumerate(layers) if lay.kind == "linear"), default=-1)
    for i, layer in enumerate(layers):
        if layer.kind == "linear":
            level += 1
            out, inp = layer.weight.shape
            single = i == last_linear and out == 1  # the course writes W³ = [w³_1 w³_2]
            for j in range(out):
                for k in range(inp):
                    params[f"{layer.prefix}.weight[{j},{k}]"] = f"w^{level}_{k + 1}" if single else \
                        f"w^{level}_{j + 1}{k + 1}"
                if layer.bias is not None:
                    params[f"{layer.prefix}.bias[{j}]"] = f"b^{level}_{j + 1}"
            symbol = "S" if i == last_linear else "h"
        else:
            symbol = "p" if i > last_linear else "a"
        width = layer.weight.shape[0] if layer.kind == "linear" else len(rows[-1])
        rows.append([symbol if symbol in "Sp" and width == 1 else
                     (f"{symbol}_{j + 1}" if symbol in "Sp" else f"{symbol}^{level}_{j + 1}") for j in range(width)])
    return params, [values, *rows]


@dataclass
class BackpropOptions:
    """The backprop config node's keys."""

    samples: int = 1  # training samples in the pass (the loss is their mean)
    max_parameters: int = 200  # a larger network would not fit a terminal


def _options(exp: Experiment) -> BackpropOptions:
    opts = BackpropOptions(**check_arguments(BackpropOptions, exp.cfg.get("backprop") or {}, "backprop"))
    if not 1 <= opts.samples <= 8:
        raise ConfigError(f"'backprop.samples={opts.samples}' must be from 1 to 8 (one column per sample).",
                          key="backprop.samples")
    count = sum(p.numel() for p in exp.model.parameters())
    if count > opts.max_parameters:
        raise ConfigError(f"'mode=backprop' writes out every parameter, and this model has {count} (more than "
                          f"backprop.max_parameters={opts.max_parameters}). Take a smaller network, e.g. the course's "
                          f"(3 inputs, hidden [2, 2], 16 parameters): dl-run experiment=backprop; or raise "
                          f"backprop.max_parameters.", key="backprop.max_parameters")
    if exp.loss.name not in LOSSES or getattr(exp.loss.module, "label_smoothing", 0.0):
        raise ConfigError(f"'mode=backprop' writes out the losses {', '.join(LOSSES)} (without label smoothing); this "
                          f"run uses loss={exp.loss.name}.", key="loss")
    return opts


def run_backprop(exp: Experiment, overrides: list[str]) -> dict[str, Any]:
    """mode=backprop: one pass on the first training samples, each gradient by hand and by autograd, as tables."""
    cfg = exp.cfg
    opts = _options(exp)
    reused, overwrite = bool(cfg.get("resume")), bool(cfg.get("overwrite"))
    result = exp.directory.output(exp.directory.file("backprop.json"), "overwrite", overwrite) if reused else None
    if reused:
        load_trained(exp)  # the pass through the trained network
    layers = layers_of(exp.model)
    if not layers or layers[0].kind != "linear":
        raise ConfigError("'mode=backprop' needs a model that starts with a fully-connected layer (model=mlp or "
                          "model=linear).", key="model")
    x = exp.prepare(exp.splits.x_train[:opts.samples]).detach().cpu().double().flatten(1).numpy()
    y = exp.splits.y_train[:opts.samples].detach().cpu().numpy()
    y = y if y.dtype.kind in "iu" else y.astype(np.float64)
    by_hand = chain_rule(layers, x, y, exp.loss.name)
    auto_loss, auto = autograd_pass(exp.model, exp.loss, x, y)
    params, value_names = _names(layers)
    rows = _gradient_rows(exp.model, params, by_hand.gradients, auto)
    difference = max([abs(by_hand.loss - auto_loss)] + [r["difference"] for r in rows])
    agree = difference <= TOLERANCE
    forward = _forward_rows(value_names, by_hand.values, y, by_hand.loss)
    worked = _worked_example(layers, by_hand, params, value_names) if opts.samples == 1 else None
    _show(forward, rows, worked, agree, difference)
    # TensorBoard only: one pass is not a training run for MLflow's or the CSV's tables.
    logger = build_logger(exp.logger_cfg, exp.run_dir, only=("tensorboard",))
    logger.text("backprop/forward", _markdown_forward(forward), 0)
    logger.text("backprop/gradients", _markdown_gradients(rows, agree, difference, worked), 0)
    logger.close()
    metrics = {"status": "completed", "mode": "backprop", "parameters": len(rows), "samples": opts.samples,
               "loss": by_hand.loss, "autograd_loss": auto_loss, "max_difference": difference, "agree": agree,
               "tolerance": TOLERANCE, "forward": forward, "gradients": rows, "worked_example": worked,
               "overrides": overrides}
    if result is not None:
        exp.directory.write_json(result.name, metrics)
    else:
        exp.directory.write_metrics(metrics)
    return metrics


def _gradient_rows(model: nn.Module, names: dict[str, str], by_hand: dict[str, np.ndarray],
                   auto: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One row per parameter entry: its course name, torch name, value, and both gradients."""
    rows = []
    for name, param in model.named_parameters():
        values = param.detach().double().cpu().numpy()
        for index in np.ndindex(values.shape):
            entry = f"{name}[{','.join(str(i) for i in index)}]"
            hand, machine = float(by_hand[name][index]), float(auto[name][index])
            rows.append({"name": names.get(entry, entry), "parameter": entry, "value": float(values[index]),
                         "chain_rule": hand, "autograd": machine, "difference": abs(hand - machine)})
    return rows


def _forward_rows(names: list[list[str]], values: list[np.ndarray], y: np.ndarray, loss: float) -> list[dict]:
    """One row per value of the forward pass (x, h, a, S), then the target and the loss."""
    rows = [{"name": name, "values": [float(v) for v in values[i][:, j]]}
            for i, layer_names in enumerate(names) for j, name in enumerate(layer_names)]
    targets = y.reshape(len(y), -1)
    rows += [{"name": "y" if targets.shape[1] == 1 else f"y_{j + 1}", "values": [float(v) for v in targets[:, j]]}
             for j in range(targets.shape[1])]
    return rows + [{"name": "L (mean)", "values": [loss]}]


def _worked_example(layers: list[Layer], result: Pass, params: dict[str, str],
                    names: list[list[str]]) -> dict[str, Any] | None:
    """Course 2 §1.2's one weight, ∂L/∂w²₂₂ = ∂L/∂S · w³₂ · f'(h²₂) · a¹₂, with this pass's numbers; None when the
    network has no such weight (the last hidden layer needs two units and two inputs, the output one value)."""
    last = len(layers) - 1
    if (last < 2 or layers[last].kind != "linear" or layers[last].weight.shape[0] != 1
            or layers[last - 1].kind == "linear" or layers[last - 2].kind != "linear"
            or min(layers[last - 2].weight.shape) < 2):
        return None
    hidden, output = layers[last - 2], layers[last]
    factors = {"∂L/∂S": float(result.d_output[0, 0]),
               params[f"{output.prefix}.weight[0,1]"]: float(output.weight[0, 1]),
               f"f'({names[last - 1][1]})": float(_slope(layers[last - 1], result.values[last - 1][:, 1],
                                                         result.values[last][:, 1])[0]),
               names[last - 2][1]: float(result.values[last - 2][0, 1])}
    weight = params[f"{hidden.prefix}.weight[1,1]"]
    return {"parameter": weight, "formula": f"∂L/∂{weight} = " + " · ".join(factors), "factors": factors,
            "product": float(np.prod(list(factors.values()))),
            "gradient": float(result.gradients[f"{hidden.prefix}.weight"][1, 1])}


def _show(forward: list[dict], rows: list[dict], worked: dict | None, agree: bool, difference: float) -> None:
    """The two tables in the terminal, the course's worked weight, and whether both ways agree."""
    from rich.table import Table

    samples = len(forward[0]["values"])
    table = Table(title="forward pass", title_justify="left")
    table.add_column("quantity")
    for i in range(samples):
        table.add_column(f"sample {i + 1}" if samples > 1 else "value", justify="right")
    for row in forward:
        table.add_row(row["name"], *(f"{v:.6g}" for v in row["values"]))
    console.console.print(table)
    table = Table(title=f"backward pass: {len(rows)} parameters, chain rule by hand (float64) beside autograd",
                  title_justify="left")
    for column in ("parameter", "torch name", "value", "∂L/∂θ chain rule", "∂L/∂θ autograd", "|difference|"):
        table.add_column(column, justify="left" if column in ("parameter", "torch name") else "right")
    for row in rows:
        table.add_row(row["name"], row["parameter"], f"{row['value']:.6g}", f"{row['chain_rule']:.10g}",
                      f"{row['autograd']:.10g}", f"{row['difference']:.1e}")
    console.console.print(table)
    if worked is not None:
        numbers = " · ".join(f"({v:.6g})" for v in worked["factors"].values())
        console.console.print(f"{worked['formula']}\n  = {numbers} = {worked['product']:.10g} "
                              f"(the table: {worked['gradient']:.10g})", soft_wrap=True)
    verdict = "[green]equal[/]" if agree else "[bold red]NOT equal[/]"
    console.console.print(f"Chain rule and autograd: {verdict} to {TOLERANCE:g} "
                          f"(largest difference {difference:.1e}, loss included).")


def _markdown_forward(forward: list[dict]) -> str:
    samples = len(forward[0]["values"])
    lines = ["| value | " + " | ".join(f"sample {i + 1}" for i in range(samples)) + " |",
             "|---|" + "---:|" * samples]
    lines += [f"| `{row['name']}` | " + " | ".join(f"{v:.6g}" for v in row["values"]) + " |" for row in forward]
    return "\n".join(lines)


def _markdown_gradients(rows: list[dict], agree: bool, difference: float, worked: dict | None) -> str:
    lines = [f"{len(rows)} parameters; chain rule and autograd {'equal' if agree else 'NOT equal'} to "
             f"{TOLERANCE:g} (largest difference {difference:.1e}).", ""]
    if worked is not None:
        numbers = " · ".join(f"({v:.6g})" for v in worked["factors"].values())
        lines += [f"`{worked['formula']}` = {numbers} = {worked['product']:.10g}", ""]
    lines += ["| parameter | torch name | value | chain rule | autograd | difference |",
              "|---|---|---:|---:|---:|---:|"]
    lines += [f"| `{r['name']}` | `{r['parameter']}` | {r['value']:.6g} | {r['chain_rule']:.10g} | "
              f"{r['autograd']:.10g} | {r['difference']:.1e} |" for r in rows]
    return "\n".join(lines)
