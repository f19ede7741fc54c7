"""Looking inside a CNN (course 3 §2.3, §5.1): Grad-CAM heatmaps, first-layer filters, feature maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlrun.engine.evaluating import evaluating
from dlrun.errors import ConfigError


def _convs(model: nn.Module) -> list[nn.Module]:
    """The 2-D convolutions of an image model; or the 1-D ones of a network that reads a series as channels
    (model=cnn and model=resnet over steps x features), whose maps keep the series' time axis. A TCN's causal
    convolutions are not among them: they read the series as it comes, not as channels (no FeaturesAsChannels)."""
    from dlrun.models.cnn import FeaturesAsChannels

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs and any(isinstance(m, FeaturesAsChannels) for m in model.modules()):
        convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    return convs


def last_conv(model: nn.Module) -> nn.Conv1d | nn.Conv2d | None:
    """The last convolution: its feature maps are the most semantic ones that keep a spatial (or time) layout."""
    convs = _convs(model)
    return convs[-1] if convs else None


def first_conv(model: nn.Module) -> nn.Conv1d | nn.Conv2d | None:
    convs = _convs(model)
    return convs[0] if convs else None


def conv_names(model: nn.Module) -> list[str]:
    """The names (as in model.named_modules()) of the convolutions whose maps Grad-CAM and the feature-map view
    can draw, first to last."""
    convs = {id(m) for m in _convs(model)}
    return [name for name, module in model.named_modules() if id(module) in convs]


def conv_by_name(model: nn.Module, name: str | None, key: str) -> nn.Module | None:
    """The convolution called `name` in the model (None: None, the view's default layer); a ConfigError naming
    `key` and the valid names otherwise."""
    if name is None:
        return None
    names = conv_names(model)
    if name not in names:
        raise ConfigError(f"'{key}={name}' is not a convolution of this model; valid names (as in "
                          f"model.named_modules()): {', '.join(names) or 'none (the model has no convolution)'}.",
                          key=key)
    return model.get_submodule(name)


def grad_cam(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, layer: nn.Module | None = None) -> torch.Tensor:
    """Grad-CAM heatmaps (grad_cam_maps) upsampled to the image size (series length): (N, H, W) or (N, steps)."""
    cam = grad_cam_maps(model, x, classes, layer).unsqueeze(1)
    if cam.dim() == 3:  # a series (N, steps, features): the heatmap over its steps
        return F.interpolate(cam, size=x.shape[1], mode="linear", align_corners=False).squeeze(1)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)


def grad_cam_maps(model: nn.Module, x: torch.Tensor, classes: torch.Tensor,
                  layer: nn.Module | None = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017): where in each image, or when in each series, the evidence for `classes`
    lies.

    The feature maps A_k of the layer are weighted by the spatial (or time) mean of d score / d A_k; the ReLU of
    their sum, scaled to [0, 1], is the heatmap at the layer's own resolution (course 3 §5.1: a later layer is
    coarser): (N, h, w) for images, (N, length) for series. `layer` defaults to the last convolution.
    """
    layer = layer or last_conv(model)
    if layer is None:
        raise ValueError("Grad-CAM needs a model with a 2-D convolution, or a 1-D one over a series")
    store: dict[str, torch.Tensor] = {}

    def keep(_m, _i, output):
        output.retain_grad()
        store["maps"] = output

    hook = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad(), evaluating(model):
            # Gradients from the input on, so that a frozen backbone's maps get them too (transfer learning).
            x = x.detach().float().requires_grad_(True)
            scores = model(x)
            picked = scores.gather(1, classes.view(-1, 1).to(scores.device)).sum()
            model.zero_grad(set_to_none=True)
            picked.backward()
    finally:
        hook.remove()
    maps, grads = store["maps"].detach(), store["maps"].grad.detach()
    axes = tuple(range(2, maps.dim()))  # (length,) in 1-D, (height, width) in 2-D
    weights = grads.mean(dim=axes, keepdim=True)
    cam = F.relu((weights * maps).sum(dim=1))
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, *[1] * (cam.dim() - 1))
    model.zero_grad(set_to_none=True)
    return cam / peak


def filters_grid(model: nn.Module) -> torch.Tensor | None:
    """The first convolution's kernels as one image grid (each kernel scaled to [0, 1]); 1-D kernels as
    (input channels x taps) images."""
    from torchvision.utils import make_grid

    conv = first_conv(model)
    if conv is None:
        return None
    w = conv.weight.detach().float().cpu()
    if w.dim() == 3:  # 1-D: each kernel is (input channels x taps), one gray image per kernel
        w = w.unsqueeze(1)
    w = w[:, :3] if w.shape[1] >= 3 else w[:, :1]
    low, high = w.flatten(1).amin(1).view(-1, 1, 1, 1), w.flatten(1).amax(1).view(-1, 1, 1, 1)
    return make_grid((w - low) / (high - low).clamp_min(1e-12), nrow=8, padding=1, pad_value=1.0)


@torch.no_grad()
def feature_maps_grid(model: nn.Module, image: torch.Tensor, limit: int = 16,
                      layer: nn.Module | None = None) -> torch.Tensor | None:
    """What a convolution (the first by default) makes of one image: its first `limit` feature maps as a grid; of
    one series: one image whose rows are its first `limit` feature maps over time."""
    from torchvision.utils import make_grid

    conv = layer or first_conv(model)
    if conv is None:
        return None
    store: dict[str, torch.Tensor] = {}
    hook = conv.register_forward_hook(lambda _m, _i, out: store.__setitem__("maps", out))
    try:
        with evaluating(model):
            model(image[:1].float())
    finally:
        hook.remove()
    maps = store["maps"][0, :limit].detach().float().cpu().unsqueeze(1)
    if maps.dim() == 3:  # 1-D: one row per feature map over the series' steps, each row scaled to [0, 1]
        low, high = maps.amin(2, keepdim=True), maps.amax(2, keepdim=True)
        return ((maps - low) / (high - low).clamp_min(1e-12)).squeeze(1).unsqueeze(0)
    low, high = maps.flatten(1).amin(1).view(-1, 1, 1, 1), maps.flatten(1).amax(1).view(-1, 1, 1, 1)
    return make_grid((maps - low) / (high - low).clamp_min(1e-12), nrow=8, padding=1, pad_value=1.0)


def grad_cam_figure(images: torch.Tensor, cam_predicted: torch.Tensor, cam_true: torch.Tensor,
                    predicted: torch.Tensor, true: torch.Tensor, class_names: list[str]):
    """Rows: image, Grad-CAM for the predicted class, Grad-CAM for the true class."""
    from dlrun.views.figures import _pyplot

    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.2), squeeze=False)
    shown = images.detach().float().cpu()
    for i in range(n):
        img = shown[i].permute(1, 2, 0)
        img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
        cmap = "gray" if img.shape[-1] == 1 else None
        img = img.squeeze(-1) if img.shape[-1] == 1 else img
        for row, (cam, label) in enumerate(((None, f"true {class_names[true[i]]}"),
                                            (cam_predicted[i], f"pred {class_names[predicted[i]]}"),
                                            (cam_true[i], f"for {class_names[true[i]]}"))):
            ax = axes[row][i]
            ax.imshow(img.numpy(), cmap=cmap)
            if cam is not None:
                ax.imshow(cam.cpu().numpy(), cmap="jet", alpha=0.5)
            ax.set_title(label, fontsize=7)
            ax.axis("off")
    fig.suptitle("Grad-CAM: image / predicted class / true class", fontsize=9)
    fig.tight_layout()
    return fig


def grad_cam_series_figure(series: torch.Tensor, cam_predicted: torch.Tensor, cam_true: torch.Tensor,
                           predicted: list[int], true: list[int], class_names: list[str]):
    """One column per series (steps, features): the series, then under it the Grad-CAM over its steps for the
    predicted class and for the true class, on the same time axis."""
    from dlrun.views.figures import _pyplot

    plt = _pyplot()
    n = len(series)
    fig, axes = plt.subplots(3, n, figsize=(2.0 * n, 3.6), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [3, 1, 1]})
    shown = series.detach().float().cpu()
    steps = shown.shape[1]
    for i in range(n):
        ax = axes[0][i]
        if shown.shape[2] <= 4:  # a few features: one line each
            ax.plot(shown[i].numpy(), linewidth=0.8)
        else:  # many features (an image read row by row): features as rows, time left to right
            ax.imshow(shown[i].T.numpy(), cmap="gray", aspect="auto", extent=(-0.5, steps - 0.5, shown.shape[2], 0))
        ax.set_title(f"true {class_names[true[i]]}", fontsize=7)
        ax.tick_params(labelsize=5)
        for row, (cam, label) in enumerate(((cam_predicted[i], f"pred {class_names[predicted[i]]}"),
                                            (cam_true[i], f"for {class_names[true[i]]}")), start=1):
            strip = axes[row][i]
            strip.imshow(cam.cpu().numpy()[None, :], cmap="jet", vmin=0, vmax=1, aspect="auto",
                         extent=(-0.5, steps - 0.5, 0, 1))
            strip.set_yticks([])
            strip.set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
            strip.tick_params(labelsize=5)
    fig.suptitle("Grad-CAM over time: series / predicted class / true class", fontsize=9)
    fig.tight_layout()
    return fig
