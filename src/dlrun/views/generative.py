"""What reconstruction and GAN runs show in TensorBoard's Images tab after each validation (course 3 §5.2).

Reconstructions beside their inputs (and the noisy inputs of a denoising autoencoder); a VAE's samples
from the prior and a traversal of its code, one dimension per row; a GAN's samples from a fixed noise
batch, so that one grid per epoch shows the same generator inputs improving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dlrun.data.base import DataInfo
from dlrun.models.autoencoder import VAE, VAEOutput
from dlrun.models.gan import GAN

PANEL = 8  # images per row
TRAVERSAL = torch.linspace(-2.5, 2.5, 9)  # code values, in prior standard deviations, along each traversed axis


def grid(rows: list[torch.Tensor], per_row: int = PANEL, min_side: int = 56) -> torch.Tensor:
    """Rows of images (N, C, H, W) in 0..1 -> one (1, C, H', W') grid, small images scaled up to be seen."""
    from torchvision.utils import make_grid

    images = torch.cat([r.detach().float().cpu().clamp(0, 1) for r in rows])
    scale = max(1, min_side // images.shape[-1])
    if scale > 1:  # 8x8 digits would be a few dots on screen: nearest-neighbour keeps the pixels square
        images = nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    return make_grid(images, nrow=per_row, padding=2, pad_value=1.0).unsqueeze(0)


def _base(model: nn.Module) -> nn.Module:
    return model[0] if isinstance(model, nn.Sequential) and len(model) == 2 else model


class _EvalMode:
    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.was)


def epoch_view(info: DataInfo, model: nn.Module, x: torch.Tensor, prepare: Callable, logger: Any,
               tag: str = "val") -> Callable[[nn.Module, int], None] | None:
    """A function (model, step) that logs the reconstruction or GAN images; None when there is nothing to show."""
    if len(info.input_shape) != 3 or getattr(logger, "log_dir", None) is None or len(x) == 0:
        return None  # only images are drawn; the NullLogger writes nothing
    unstandardise = getattr(prepare, "unstandardise", lambda t: t)
    noise = torch.Generator().manual_seed(0)  # fixed: every epoch's grid shows the same inputs or noise
    base = _base(model)
    if isinstance(base, GAN):
        z = torch.randn(PANEL * PANEL, base.latent_dim, generator=noise)

        @torch.no_grad()
        def gan_view(model: nn.Module, step: int) -> None:
            with _EvalMode(model):
                samples = model.generator(z.to(x.device))
            logger.images("gan/samples", grid([unstandardise(samples)]), step)
        return gan_view

    panel = x[torch.linspace(0, len(x) - 1, min(PANEL, len(x))).round().long().to(x.device)]
    std = getattr(getattr(base, "noise", None), "std", 0.0)
    corruption = torch.randn(panel.shape, generator=noise) * std

    @torch.no_grad()
    def reconstruction_view(model: nn.Module, step: int) -> None:
        clean = prepare(panel)
        inputs = clean + corruption.to(clean.device) if std else clean  # a denoising autoencoder's noisy inputs
        with _EvalMode(model):
            output = model(inputs)
            reconstruction = output.reconstruction if isinstance(output, VAEOutput) else output
            rows = [inputs, reconstruction.reshape(inputs.shape)] + ([clean] if std else [])
            logger.images(f"{tag}/reconstructions", grid([unstandardise(r) for r in rows], len(panel)), step)
            if isinstance(base, VAE):
                log_vae_views(base, unstandardise, logger, step, clean.device)
    return reconstruction_view


@torch.no_grad()
def log_vae_views(vae: VAE, unstandardise: Callable, logger: Any, step: int, device: torch.device) -> None:
    """Decoded samples of the prior N(0, I), and a traversal: one code axis per row from -2.5 to 2.5, others 0."""
    z = torch.randn(PANEL * PANEL, vae.latent_dim, generator=torch.Generator().manual_seed(1)).to(device)
    logger.images("vae/prior_samples", grid([unstandardise(vae.decode(z))]), step)
    dims = min(vae.latent_dim, PANEL)
    codes = torch.zeros(dims, len(TRAVERSAL), vae.latent_dim)
    for d in range(dims):
        codes[d, :, d] = TRAVERSAL
    decoded = vae.decode(codes.reshape(-1, vae.latent_dim).to(device))
    logger.images("vae/traversal", grid([unstandardise(decoded)], len(TRAVERSAL)), step)
