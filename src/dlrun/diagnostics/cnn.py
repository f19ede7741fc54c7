"""Looking inside a CNN (course 3 §2.3, §5.1): Grad-CAM heatmaps, first-layer filters, feature maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlrun.engine.evaluating import evaluating


def last_conv(model: nn.Module) -> nn.Conv2d | None:
    """The last 2-D convolution: its feature maps are the most semantic ones that keep a spatial layout."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[0] if convs else None


def grad_cam(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, layer: nn.Conv2d | None = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017): where in each image the evidence for `classes` lies.

    The feature maps A_k of the layer are weighted by the spatial mean of d score / d A_k; the ReLU of
    their sum, upsampled to the image size and scaled to [0, 1], is the heatmap. Returns (N, H, W).
    """
    layer = layer or last_conv(model)
    if layer is None:
        raise ValueError("Grad-CAM needs a model with a 2-D convolution")
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
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * maps).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    model.zero_grad(set_to_none=True)
    return cam / peak


def filters_grid(model: nn.Module) -> torch.Tensor | None:
    """The first convolution's kernels as one image grid (each kernel scaled to [0, 1])."""
    from torchvision.utils import make_grid

    conv = first_conv(model)
    if conv is None:
        return None
    w = conv.weight.detach().float().cpu()
    w = w[:, :3] if w.shape[1] >= 3 else w[:, :1]
    low, high = w.flatten(1).amin(1).view(-1, 1, 1, 1), w.flatten(1).amax(1).view(-1, 1, 1, 1)
    return make_grid((w - low) / (high - low).clamp_min(1e-12), nrow=8, padding=1, pad_value=1.0)


@torch.no_grad()
def feature_maps_grid(model: nn.Module, image: torch.Tensor, limit: int = 16) -> torch.Tensor | None:
    """What the first convolution makes of one image: its first `limit` feature maps as a grid."""
    from torchvision.utils import make_grid

    conv = first_conv(model)
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
