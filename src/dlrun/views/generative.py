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

from dlrun.diagnostics.checkerboard import checkerboard_energies
from dlrun.engine.evaluating import evaluating
from dlrun.tasks.protocols import Variational, unwrapped
from dlrun.views import EpochView, ViewInputs, logs

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


def _unstandardise(inputs: ViewInputs) -> Callable:
    return getattr(inputs.prepare, "unstandardise", lambda t: t)


def _images(inputs: ViewInputs, x: torch.Tensor) -> bool:
    return len(inputs.info.input_shape) == 3 and logs(inputs) and len(x) > 0  # only images are drawn


def gan_view(inputs: ViewInputs) -> EpochView | None:
    """A GAN's samples from a fixed noise batch: one grid per epoch shows the same generator inputs improving."""
    if not _images(inputs, inputs.splits.x_val):
        return None
    gan = unwrapped(inputs.model)
    z = torch.randn(PANEL * PANEL, gan.latent_dim, generator=torch.Generator().manual_seed(0))
    device, unstandardise = inputs.splits.x_val.device, _unstandardise(inputs)

    @torch.no_grad()
    def view(model: nn.Module, step: int) -> None:
        with evaluating(model):
            samples = model.generator(z.to(device))
        inputs.logger.images("gan/samples", grid([unstandardise(samples)]), step)
    return view


def reconstruction_view(inputs: ViewInputs, tag: str = "val") -> EpochView | None:
    """Reconstructions beside their inputs (and a denoising autoencoder's noisy inputs); a VAE's samples too."""
    x = inputs.splits.x_val if tag == "val" else inputs.splits.x_test
    if not _images(inputs, x):
        return None
    base, prepare, unstandardise = unwrapped(inputs.model), inputs.prepare, _unstandardise(inputs)
    panel = x[torch.linspace(0, len(x) - 1, min(PANEL, len(x))).round().long().to(x.device)]
    std = getattr(getattr(base, "noise", None), "std", 0.0)
    corruption = torch.randn(panel.shape, generator=torch.Generator().manual_seed(0)) * std

    @torch.no_grad()
    def view(model: nn.Module, step: int) -> None:
        clean = prepare(panel)
        noisy = clean + corruption.to(clean.device) if std else clean  # a denoising autoencoder's noisy inputs
        with evaluating(model):
            output = model(noisy)
            reconstruction = getattr(output, "reconstruction", output)  # a VAE's output carries its code too
            rows = [noisy, reconstruction.reshape(noisy.shape)] + ([clean] if std else [])
            inputs.logger.images(f"{tag}/reconstructions", grid([unstandardise(r) for r in rows], len(panel)), step)
            if isinstance(base, Variational):
                log_vae_views(base, unstandardise, inputs.logger, step, clean.device)
    return view


def checkerboard_at_start(inputs: ViewInputs) -> EpochView | None:
    """Before the first step of a new run: the untrained model's checkerboard score on the validation images, as
    step 0 of val/checkerboard (whose later steps the validations log), and its reconstructions at step 0.

    A transposed convolution's outputs carry a 2x2 pattern before any learning (course 3 §3.2); nearest or
    bilinear upsampling's do not. Training on a pixel loss then has to remove it: the curve shows how fast.
    """
    x = inputs.splits.x_val
    if inputs.first_epoch > 0 or not _images(inputs, x):
        return None
    periodic = energy = 0.0
    with torch.no_grad(), evaluating(inputs.model):
        for batch in x.split(inputs.eval_batch_size):
            output = inputs.model(inputs.prepare(batch))
            output = getattr(output, "reconstruction", output).float().reshape(batch.shape)
            p, e = checkerboard_energies(_unstandardise(inputs)(output))
            periodic, energy = periodic + p, energy + e
    inputs.logger.scalars({"val/checkerboard": periodic / energy if energy > 0 else 0.0}, 0)
    drawing = reconstruction_view(inputs)
    if drawing is not None:
        drawing(inputs.model, 0)
    return None


def test_reconstructions(inputs: ViewInputs, step: int) -> None:
    """After the test (logger.figures on): the reconstruction view over test images."""
    view = reconstruction_view(inputs, tag="test") if inputs.logger.figures else None
    if view is not None:
        view(inputs.model, step)


@torch.no_grad()
def log_vae_views(vae: Variational, unstandardise: Callable, logger: Any, step: int, device: torch.device) -> None:
    """Decoded samples of the prior N(0, I), and a traversal: one code axis per row from -2.5 to 2.5, others 0."""
    z = torch.randn(PANEL * PANEL, vae.latent_dim, generator=torch.Generator().manual_seed(1)).to(device)
    logger.images("vae/prior_samples", grid([unstandardise(vae.decode(z))]), step)
    dims = min(vae.latent_dim, PANEL)
    codes = torch.zeros(dims, len(TRAVERSAL), vae.latent_dim)
    for d in range(dims):
        codes[d, :, d] = TRAVERSAL
    decoded = vae.decode(codes.reshape(-1, vae.latent_dim).to(device))
    logger.images("vae/traversal", grid([unstandardise(decoded)], len(TRAVERSAL)), step)
