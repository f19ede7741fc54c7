"""Any torchvision classification architecture by name, adapted to the dataset's channels and classes."""

from __future__ import annotations

from torch import nn

from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models.cnn import image_channels
from dlrun.models.registry import MODELS
from dlrun.registry import closest


def classification_architectures() -> list[str]:
    """torchvision's classification models (detection, segmentation and video live in sub-modules)."""
    import torchvision  # here, not at the top: importing it takes seconds that runs of other models need not pay

    return torchvision.models.list_models(module=torchvision.models)


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Give the first convolution in_channels inputs (torchvision's models expect 3: RGB)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(parent, name, nn.Conv2d(
                        in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                        child.dilation, 1, child.bias is not None, child.padding_mode))  # first convs are dense
                return


@MODELS.register("torchvision")
def build_torchvision(info: DataInfo, out_features: int, arch: str = "resnet18") -> nn.Module:
    """torchvision.models.<arch> with random weights (nothing is downloaded), its first conv and classifier resized."""
    channels, height, _ = image_channels(info, "torchvision")
    names = classification_architectures()
    if arch not in names:
        guess = closest(arch, names)
        raise ConfigError(f"'model.arch={arch}' is not a torchvision classification architecture. Valid: "
                          f"{', '.join(names)}.{f' Did you mean {guess!r}?' if guess else ''}", key="model.arch")
    kwargs: dict = {"weights": None, "num_classes": out_features}
    if arch in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)  # one output, as the loss expects
    if arch.startswith("vit_"):
        kwargs["image_size"] = height  # a vision transformer is built for one image size
    import torchvision

    try:
        model = torchvision.models.get_model(arch, **kwargs)
    except (ValueError, AssertionError, TypeError) as err:
        raise ConfigError(f"'model.arch={arch}' cannot be built for dataset '{info.name}' "
                          f"(inputs {tuple(info.input_shape)}): {err}", key="model.arch") from None
    _replace_first_conv(model, channels)
    # NCHW even on a CPU (trainer.channels_last=auto): resnet18 on 32x32 images stepped 1.10x slower in NHWC.
    model.channels_last_on_cpu = False
    return model
