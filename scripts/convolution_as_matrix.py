"""A convolution three ways, on the course's worked example (course 3 §1): by hand, as PyTorch computes it, and as
one matrix product (the Toeplitz matrix U of the course, and im2col, the same product with the image's patches as
columns). Every result is checked equal to the others; the exit code is 1 if one differs.

    python scripts/convolution_as_matrix.py                  # x (3x3) ⊛ u (2x2) = (69 50; 48 43)
    python scripts/convolution_as_matrix.py --kernel sobel_x # dl-run's sobel_x (model.fixed_kernels) on a step image

A script rather than a dl-run mode: the lesson is a few lines of arithmetic on a 3x3 image, with no dataset, model or
run directory to build, and reading it top to bottom is half of it.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from dlrun.models.fixed_kernels import NAMED_KERNELS

COURSE_IMAGE = [[4, 6, 3], [8, 5, 1], [2, 4, 6]]  # x, course 3 §1
COURSE_KERNEL = [[3, 2], [5, 1]]  # u
STEP_IMAGE = [[0, 0, 1, 1]] * 4  # dark left, bright right: one vertical edge


def by_hand(x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Slide u over x without padding, stride 1, no flip (as the course and PyTorch do): h[i, j] = Σ x[i+a, j+b]
    u[a, b]; each sum also written out."""
    k, rows, cols = u.shape[0], x.shape[0] - u.shape[0] + 1, x.shape[1] - u.shape[1] + 1
    h, sums = torch.zeros(rows, cols), []
    for i in range(rows):
        for j in range(cols):
            terms = [(x[i + a, j + b].item(), u[a, b].item()) for a in range(k) for b in range(k)]
            h[i, j] = sum(p * w for p, w in terms)
            sums.append(f"h[{i},{j}] = {' + '.join(f'{_n(p)}·{_n(w)}' for p, w in terms)} = {_n(h[i, j].item())}")
    return h, sums


def toeplitz(u: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The course's U: one row per output pixel, holding u's weights at the positions of the input pixels that
    output reads, so that v(h) = U v(x) with v the image flattened row by row."""
    k, rows, cols = u.shape[0], height - u.shape[0] + 1, width - u.shape[1] + 1
    matrix = torch.zeros(rows * cols, height * width)
    for i in range(rows):
        for j in range(cols):
            for a in range(k):
                for b in range(k):
                    matrix[i * cols + j, (i + a) * width + (j + b)] = u[a, b]
    return matrix


def im2col(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The same product the other way round, as libraries compute it: each patch of x one column (F.unfold), u one
    row; (k·k) x (patches)."""
    return F.unfold(x[None, None], kernel_size=u.shape)[0]


def _n(value: float) -> str:
    return f"{value:g}"


def _rows(m: torch.Tensor) -> str:
    return "\n".join("  " + " ".join(f"{_n(v):>5}" for v in row) for row in m.tolist())


def show(x: torch.Tensor, u: torch.Tensor) -> bool:
    """Print the convolution of x by u computed the four ways; whether they all agree."""
    hand, sums = by_hand(x, u)
    torch_h = F.conv2d(x[None, None], u[None, None])[0, 0]
    matrix = toeplitz(u, *x.shape)
    product = (matrix @ x.flatten()).view_as(hand)
    cols = im2col(x, u)
    unfolded = (u.flatten() @ cols).view_as(hand)
    print(f"x =\n{_rows(x)}\nu =\n{_rows(u)}\n\nby hand:")
    print("\n".join("  " + s for s in sums))
    print(f"\nF.conv2d(x, u) =\n{_rows(torch_h)}")
    print(f"\nU ({matrix.shape[0]}x{matrix.shape[1]}) =\n{_rows(matrix)}")
    print(f"v(x) = ({' '.join(_n(v) for v in x.flatten().tolist())})ᵀ")
    print(f"U v(x) = ({' '.join(_n(v) for v in product.flatten().tolist())})ᵀ = v(h)")
    print(f"\nim2col: patches as columns ({cols.shape[0]}x{cols.shape[1]}) =\n{_rows(cols)}")
    print(f"v(u)ᵀ · columns = ({' '.join(_n(v) for v in unfolded.flatten().tolist())})")
    same = all(torch.equal(hand, other) for other in (torch_h, product, unfolded))
    print(f"\nby hand = F.conv2d = U v(x) = im2col: {'yes' if same else 'NO'}")
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", choices=sorted(NAMED_KERNELS), default=None,
                        help="a named kernel of model.fixed_kernels on a 4x4 step image, instead of the course's x, u")
    args = parser.parse_args(argv)
    if args.kernel is None:
        x, u = torch.tensor(COURSE_IMAGE, dtype=torch.float32), torch.tensor(COURSE_KERNEL, dtype=torch.float32)
    else:
        x, u = torch.tensor(STEP_IMAGE, dtype=torch.float32), torch.tensor(NAMED_KERNELS[args.kernel])
    return 0 if show(x, u) else 1


if __name__ == "__main__":
    sys.exit(main())
