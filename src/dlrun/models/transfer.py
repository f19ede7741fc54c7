"""Transfer learning and fine-tuning (course 3 §4.2): a trained network's layers, a new head for new classes.

The backbone comes from a dl-run run (its saved config tells the architecture, its checkpoint the weights),
from a torchvision architecture and its weights, or is pretrained first on other classes of the same
dataset (`pretrain_classes`, what the transfer_digits preset does: dlrun.run.pretrain trains it before the
model is built, and hands this builder the trained run as its source). Its last linear layer is replaced by a
new one with the new number of outputs. Then either only the head trains (`freeze=true`: the backbone is a
fixed feature extractor, its batch-norm statistics frozen too) or every layer, or the last N, fine-tune
(`freeze=false`, `trainable_blocks=N`), the backbone at its own learning rate (`backbone_lr`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from dlrun.engine import checkpoint
from dlrun.engine.resume import architecture_mismatch
from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.registry import MODELS
from dlrun.registry import refuse_untrusted

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


class TransferModel(nn.Module):
    """A backbone with a new head; frozen layers stay in evaluation mode (batch-norm statistics fixed)."""

    def __init__(self, net: nn.Module, head: nn.Module, frozen: list[nn.Module], backbone_lr: float | None) -> None:
        super().__init__()
        self.net = net
        self.heads = [head]  # the new last layer, inside net (in a list: not registered a second time)
        self.frozen = frozen
        self.backbone_lr = backbone_lr
        for module in frozen:
            module.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        for module in self.frozen:
            module.eval()  # a fixed feature extractor: batch norm keeps the statistics it was trained with
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        """The head at the optimizer's learning rate, the trainable backbone layers at backbone_lr."""
        head = {id(p) for p in self.heads[0].parameters()}
        backbone = [p for p in self.net.parameters() if p.requires_grad and id(p) not in head]
        groups = [{"params": list(self.heads[0].parameters())}]
        if backbone:
            groups.append({"params": backbone, **({"lr": self.backbone_lr} if self.backbone_lr is not None else {})})
        return groups


def optimizer_parameters(model: nn.Module) -> list:
    """What the optimizer updates: the trainable parameters, in groups when a transfer model has a backbone_lr."""
    for module in model.modules():
        if isinstance(module, TransferModel):
            return module.param_groups()
    return [p for p in model.parameters() if p.requires_grad]


def has_pretrained_weights(model: nn.Module) -> bool:
    """Whether the model holds pretrained weights that an initialisation scheme must not overwrite."""
    return any(isinstance(m, TransferModel) and getattr(m, "pretrained", False) for m in model.modules())


def _last_linear(net: nn.Module, where: str) -> tuple[nn.Module, str, nn.Linear]:
    """The parent, attribute name and module of the network's last linear layer: its head."""
    found = None
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, name, child)
    if found is None:
        raise ConfigError(f"The backbone ({where}) has no final linear layer to replace with a new head; transfer "
                          f"needs a classifier that ends in one (mlp, cnn, resnet, most torchvision models).",
                          key="model")
    return found


def _blocks(net: nn.Module, head: nn.Module) -> list[list[nn.Module]]:
    """The backbone's layers with weights in order, each with the normalisation layers that follow it."""
    blocks: list[list[nn.Module]] = []
    for module in net.modules():
        if module is head or list(module.children()) or not list(module.parameters(recurse=False)):
            continue
        if isinstance(module, NORMS) and blocks:
            blocks[-1].append(module)
        else:
            blocks.append([module])
    return blocks


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str, advice: str) -> None:
    """Load a state dict whose layers must match the architecture's, or refuse naming the layers and shapes."""
    lines = architecture_mismatch(state, net.state_dict(), "the architecture")
    if lines:
        shown = "; ".join(lines[:8]) + (f"; and {len(lines) - 8} more" if len(lines) > 8 else "")
        raise ConfigError(f"The backbone weights in {source} do not fit its architecture: {shown}. {advice}",
                          key="model.source")
    net.load_state_dict(state)


def _outputs(state: dict[str, torch.Tensor]) -> int:
    """The number of outputs of the network a state dict was saved from (its last weight's rows)."""
    return next(v.shape[0] for k, v in reversed(state.items()) if k.endswith("weight") and v.dim() >= 2)


# ---- where the backbone comes from ----------------------------------------------------------------------------

def from_run(source: str, info: DataInfo) -> tuple[nn.Module, str]:
    """The network of a dl-run run directory (or a checkpoint inside one), built from its saved config."""
    path = Path(source).expanduser()
    if path.is_file():
        ckpt, run_dir = path, path.parent.parent
    else:
        run_dir = path
        ckpt = checkpoint.best_in(run_dir / "checkpoints") or run_dir / "checkpoints" / checkpoint.BEST
    config = run_dir / ".hydra" / "config.yaml"
    if not ckpt.is_file() or not config.is_file():
        raise ConfigError(f"'model.source={source}' is not a dl-run run directory with a checkpoint: expected "
                          f"{config} and {ckpt}.", key="model.source")
    try:  # read as data: a _target_ in it is refused unless the user trusts it (registry.trusting)
        saved = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same sentence
        raise ConfigError(f"'model.source={source}': {config} cannot be read as a config ({err}).",
                          key="model.source") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise ConfigError(f"'model.source={source}': {config} has no model section.", key="model.source")
    model_cfg = dict(saved["model"])
    if model_cfg.get("name") == "transfer":
        raise ConfigError(f"'model.source={source}' is itself a transfer run: give the run that trained its "
                          f"backbone, {model_cfg.get('source') or 'its pretraining run'}.", key="model.source")
    for where, target in _targets(model_cfg, "model.source"):  # before anything else of the run is read
        try:
            refuse_untrusted(target, f"{where}._target_")
        except ConfigError as err:
            raise ConfigError(f"'model.source={source}': the model section of {config}: {err}",
                              key="model.source") from None
    state = checkpoint.load(ckpt)["model"]
    if state and all(k.startswith("0.") for k in state):
        state = {k[2:]: v for k, v in state.items()}  # saved with an output activation appended (nll, bce)
    net = MODELS.build(model_cfg, key="model.source", info=info, out_features=_outputs(state))
    load_weights(net, state, str(ckpt), f"The run trained model={model_cfg.get('name')} on inputs of another shape "
                 f"or with other settings than dataset '{info.name}' {tuple(info.input_shape)} gives: transfer "
                 f"needs inputs of the same shape.")
    return net, f"{ckpt} (model={model_cfg.get('name')})"


def _targets(node: Any, where: str) -> list[tuple[str, Any]]:
    """Every `_target_` in a nested config, with where it is."""
    if isinstance(node, dict):
        found = [(where, node["_target_"])] if "_target_" in node else []
        return found + [t for k, v in node.items() for t in _targets(v, f"{where}.{k}")]
    if isinstance(node, list):
        return [t for i, v in enumerate(node) for t in _targets(v, f"{where}[{i}]")]
    return []


def from_torchvision(arch: str, weights: str | None, download: bool, info: DataInfo) -> tuple[nn.Module, str]:
    """torchvision.models.<arch> with weights from a file (offline), or downloaded by name when asked."""
    import torchvision

    from dlrun.models.torchvision_models import build_torchvision

    if weights is None:
        raise ConfigError(f"'model.arch={arch}' needs its pretrained weights: model.weights=<file> (a state dict "
                          f"saved with torch.save), or model.weights=DEFAULT with model.download=true (needs "
                          f"internet).", key="model.weights")
    file = Path(weights).expanduser()
    if file.is_file():
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
            raise ConfigError(f"'model.weights={weights}' cannot be read as a state dict: {err}",
                              key="model.weights") from None
        state = state.get("model", state) if isinstance(state, dict) else state
        where = str(file)
    else:
        try:
            enum = torchvision.models.get_model_weights(arch)[weights]
        except (KeyError, ValueError):
            raise ConfigError(f"'model.weights={weights}' is neither a file nor a weights name of "
                              f"torchvision's {arch} (e.g. DEFAULT).", key="model.weights") from None
        if not download:
            raise ConfigError(f"'model.weights={weights}' is not a file here, and downloading it is off: set "
                              f"model.download=true (needs internet), or download {enum.url} elsewhere and give "
                              f"model.weights=<that file>.", key="model.weights")
        try:
            state = enum.get_state_dict(progress=False)
        except (OSError, RuntimeError) as err:
            raise ConfigError(f"'model.weights={weights}': downloading {enum.url} failed ({err}). Offline, download "
                              f"it elsewhere and give model.weights=<that file>.", key="model.weights") from None
        where = enum.url
    channels = info.input_shape[0]
    # Pretrained first convolutions expect RGB; grey data gets the mean of the three colour kernels.
    first = next((k for k, v in state.items() if v.dim() == 4), None)
    if first is not None and state[first].shape[1] != channels and channels != 3:
        state = {**state, first: state[first].mean(dim=1, keepdim=True).repeat(1, channels, 1, 1)}
    net = build_torchvision(info, _outputs(state), arch)
    load_weights(net, state, where, f"Give the weights of model.arch={arch}, or the arch they were saved from.")
    return net, f"{where} (torchvision {arch})"


@MODELS.register("transfer")
def build_transfer(  # noqa: PLR0913 - a registered builder: its parameters are the config's keys
    info: DataInfo,
    out_features: int,
    source: str | None = None,
    arch: str | None = None,
    weights: str | None = None,
    download: bool = False,
    pretrain_classes: list[int] | None = None,
    backbone: dict | None = None,
    pretrain_epochs: int = 20,
    pretrain_lr: float = 0.001,
    pretrain_dir: str | None = None,
    pretrained: bool = True,
    freeze: bool = True,
    trainable_blocks: int | None = None,
    backbone_lr: float | None = None,
) -> nn.Module:
    """A pretrained backbone (source, arch + weights, or pretrain_classes) with a new head of out_features."""
    given = [k for k, v in (("source", source), ("arch", arch), ("pretrain_classes", pretrain_classes)) if v]
    if len(given) != 1:
        raise ConfigError(f"'model=transfer' needs a backbone, exactly one of: model.source=<dl-run run directory "
                          f"or checkpoint>, model.arch=<torchvision architecture> with model.weights, or "
                          f"model.pretrain_classes=[...] with model.backbone; got "
                          f"{', '.join(given) or 'none'}.", key="model")
    if trainable_blocks is not None and (freeze or trainable_blocks < 0):
        raise ConfigError(f"'model.trainable_blocks={trainable_blocks}' fine-tunes the last N backbone layers: it "
                          f"needs model.freeze=false and N >= 0 (null: all of them).", key="model.trainable_blocks")
    if backbone_lr is not None and (freeze or backbone_lr <= 0):
        raise ConfigError(f"'model.backbone_lr={backbone_lr}' is the fine-tuned backbone's learning rate: it needs "
                          f"model.freeze=false and a positive value.", key="model.backbone_lr")
    if source:
        net, where = from_run(source, info)
    elif arch:
        net, where = from_torchvision(arch, weights, download, info)
    elif backbone is None:
        raise ConfigError("'model.pretrain_classes' needs model.backbone, the model config to pretrain, e.g. "
                          "{name: cnn, channels: [16, 32]}.", key="model.backbone")
    else:  # pretrained=false: the same architecture from random weights, the baseline transfer must beat
        # (pretrained=true never gets here: the experiment pretrains first and gives the trained run as source)
        net = MODELS.build(dict(backbone), key="model.backbone", info=info, out_features=len(pretrain_classes))
        where = "random weights"
    if not pretrained and where != "random weights":  # the same architecture, its learned weights thrown away
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        where = "random weights"
    parent, name, old = _last_linear(net, where)
    head = nn.Linear(old.in_features, out_features)
    setattr(parent, name, head)
    blocks = _blocks(net, head)
    if freeze:
        frozen = [m for block in blocks for m in block]
    else:
        keep = len(blocks) if trainable_blocks is None else min(trainable_blocks, len(blocks))
        frozen = [m for block in blocks[:len(blocks) - keep] for m in block]
    model = TransferModel(net, head, frozen, backbone_lr)
    model.pretrained = pretrained
    return model
