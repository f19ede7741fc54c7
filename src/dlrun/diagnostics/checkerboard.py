"""The checkerboard score: how much of an image's energy lies in a 2x2-periodic pattern (course 3 §3.2).

A transposed convolution whose kernel the stride does not divide (kernel 3, stride 2) overlaps unevenly: every
other output row and column sums more kernel taps than its neighbours, so its outputs carry a pattern that
repeats every 2 pixels (Odena et al. 2016, "Deconvolution and checkerboard artifacts"). In the 2-D Fourier
transform such a pattern lives at three frequencies: (pi, 0) (rows alternate), (0, pi) (columns alternate) and
(pi, pi) (a checkerboard). The score is their energy over the energy of the image's variations (every frequency
but zero, by Parseval), so it is 0 for a flat image, 1 for a pure 2x2 pattern, and about 3 / (H W) for white
noise.
"""

from __future__ import annotations

import torch


def checkerboard_energies(images: torch.Tensor) -> tuple[float, float]:
    """(energy at the 2x2-periodic frequencies, total energy), summed over a batch (N, C, H, W).

    Odd sizes drop their last row or column: the frequency pi is a Fourier bin of an even length only.
    """
    x = images.double()
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    height, width = x.shape[-2:]
    rows = 1.0 - 2.0 * (torch.arange(height, device=x.device) % 2)  # +1, -1, +1, ...: e^{i pi y}
    cols = 1.0 - 2.0 * (torch.arange(width, device=x.device) % 2)
    along_rows = (x * rows[:, None]).sum(dim=(-2, -1))  # X(pi, 0)
    along_cols = (x * cols[None, :]).sum(dim=(-2, -1))  # X(0, pi)
    diagonal = (x * (rows[:, None] * cols[None, :])).sum(dim=(-2, -1))  # X(pi, pi)
    periodic = (along_rows ** 2 + along_cols ** 2 + diagonal ** 2).sum()
    # Parseval: the sum over every frequency of |X|^2, less the mean's (the zero frequency): a brighter or darker
    # image is not a smoother one
    total = height * width * (x ** 2).sum() - (x.sum(dim=(-2, -1)) ** 2).sum()
    return float(periodic), float(total)


def checkerboard_score(images: torch.Tensor) -> float:
    """The share of the images' energy in the 2x2-periodic pattern: 0 (none, or a blank image) to 1."""
    periodic, total = checkerboard_energies(images)
    return periodic / total if total > 0 else 0.0
