"""Synthetic scenes of one circle, square or triangle each, with the shape's mask and bounding box.

Classification uses the images and labels; the masks (segmentation) and boxes (detection) are
drawn with them, so later tasks reuse the same scenes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dlrun.errors import ConfigError

SHAPES = ("circle", "square", "triangle")


@dataclass
class ShapeScenes:
    """Drawn scenes: images and, for every image, its shape's class, pixels and box."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # long (N,): index into SHAPES
    masks: torch.Tensor  # bool (N, H, W): the shape's pixels
    boxes: torch.Tensor  # float (N, 4): x_min, y_min, x_max, y_max in pixels, inclusive


def _inside(label: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Which pixels lie inside each shape, given offsets from its centre in the shape's own frame."""
    circle = dx**2 + dy**2 <= r**2
    square = np.maximum(np.abs(dx), np.abs(dy)) <= r / math.sqrt(2)  # inscribed in the same circle
    # Equilateral triangle inscribed in the circle, apex up: below the two upper edges, above the base.
    triangle = (dy <= r / 2) & (dy >= -r + math.sqrt(3) * np.abs(dx))
    return np.where(label == 0, circle, np.where(label == 1, square, triangle))


def draw_shapes(n: int, image_size: int, rng: np.random.Generator, channels: int = 1, min_size: float = 0.3,
                max_size: float = 0.8, noise: float = 0.05, rotate: bool = True) -> ShapeScenes:
    """n scenes of image_size² pixels; a shape's size is a fraction of the image side (its circumscribed circle)."""
    if image_size < 8:
        raise ConfigError(f"'dataset.image_size={image_size}' must be at least 8 pixels.", key="dataset.image_size")
    if not 0.0 < min_size <= max_size <= 1.0:
        raise ConfigError(f"'dataset.min_size={min_size}' and 'dataset.max_size={max_size}' must satisfy "
                          f"0 < min_size <= max_size <= 1 (fractions of the image side).", key="dataset.min_size")
    if min_size * image_size < 4:
        raise ConfigError(f"'dataset.min_size={min_size}' draws shapes under 4 pixels across on {image_size}-pixel "
                          f"images: too small to tell apart. Raise min_size or image_size.", key="dataset.min_size")
    if channels not in (1, 3):
        raise ConfigError(f"'dataset.channels={channels}' must be 1 (grey) or 3 (colour).", key="dataset.channels")
    if noise < 0:
        raise ConfigError(f"'dataset.noise={noise}' must be 0 or more.", key="dataset.noise")
    labels = rng.integers(0, len(SHAPES), n)
    radius = rng.uniform(min_size, max_size, n) * image_size / 2
    cx = rng.uniform(radius, image_size - radius)
    cy = rng.uniform(radius, image_size - radius)
    angle = rng.uniform(0, 2 * math.pi, n) if rotate else np.zeros(n)
    background = rng.uniform(0.0, 0.35, (n, channels))
    foreground = rng.uniform(0.6, 1.0, (n, channels))
    ys, xs = np.mgrid[0:image_size, 0:image_size] + 0.5  # pixel centres

    images = np.empty((n, channels, image_size, image_size), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=bool)
    for start in range(0, n, 1024):  # in chunks, to keep the (chunk, H, W) arrays small
        s = slice(start, start + 1024)
        col = lambda v, s=s: v[s, None, None]  # noqa: E731  (one value per scene, broadcast over pixels)
        dx, dy = xs - col(cx), ys - col(cy)
        cos, sin = np.cos(col(angle)), np.sin(col(angle))
        mask = _inside(col(labels), cos * dx + sin * dy, -sin * dx + cos * dy, col(radius))
        pixels = np.where(mask[:, None], foreground[s, :, None, None], background[s, :, None, None])
        pixels = pixels + noise * rng.standard_normal(pixels.shape)
        images[s] = np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)
        masks[s] = mask

    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (N, H), (N, W): which rows and columns the shape touches
    boxes = np.stack([cols.argmax(1), rows.argmax(1), image_size - 1 - cols[:, ::-1].argmax(1),
                      image_size - 1 - rows[:, ::-1].argmax(1)], axis=1).astype(np.float32)
    return ShapeScenes(torch.from_numpy(images), torch.from_numpy(labels).long(), torch.from_numpy(masks),
                       torch.from_numpy(boxes))


@dataclass
class Scenes:
    """Scenes of several shapes each, for segmentation (a class per pixel) and detection (boxes)."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    masks: torch.Tensor  # uint8 (N, H, W): 0 = background, 1 + index into SHAPES inside a shape
    boxes: torch.Tensor  # float (N, objects, 5): class, x_min, y_min, x_max, y_max in [0, 1]; class -1 = no object


def draw_scenes(n: int, image_size: int, rng: np.random.Generator, objects: int = 3, channels: int = 1,
                min_size: float = 0.3, max_size: float = 0.8, noise: float = 0.05, rotate: bool = True,
                tries: int = 20) -> Scenes:
    """n scenes of 1..objects shapes that do not overlap (a shape that finds no free place is left out)."""
    draw_shapes(1, image_size, np.random.default_rng(0), channels, min_size, max_size, noise, rotate)  # checks
    if objects < 1:
        raise ConfigError(f"'dataset.objects={objects}' must be at least 1 shape per scene.", key="dataset.objects")
    ys, xs = np.mgrid[0:image_size, 0:image_size] + 0.5  # pixel centres
    images = np.empty((n, channels, image_size, image_size), dtype=np.uint8)
    masks = np.zeros((n, image_size, image_size), dtype=np.uint8)
    boxes = np.full((n, objects, 5), -1.0, dtype=np.float32)
    for i in range(n):
        wanted = rng.integers(1, objects + 1)
        placed: list[tuple[float, float, float]] = []  # centre x, centre y, radius of each shape drawn
        pixels = np.broadcast_to(rng.uniform(0.0, 0.35, (channels, 1, 1)), (channels, image_size, image_size)).copy()
        for _ in range(wanted):
            label, r = rng.integers(0, len(SHAPES)), rng.uniform(min_size, max_size) * image_size / 2
            for _ in range(tries):  # the circumscribed circles must not touch: no shape hides another
                cx, cy = rng.uniform(r, image_size - r, 2)
                if all((cx - px) ** 2 + (cy - py) ** 2 > (r + pr + 1) ** 2 for px, py, pr in placed):
                    break
            else:
                continue
            angle = rng.uniform(0, 2 * math.pi) if rotate else 0.0
            dx, dy = xs - cx, ys - cy
            inside = _inside(np.array(label), math.cos(angle) * dx + math.sin(angle) * dy,
                             -math.sin(angle) * dx + math.cos(angle) * dy, np.array(r))
            if not inside.any():
                continue
            pixels[:, inside] = rng.uniform(0.6, 1.0, (channels, 1))
            masks[i][inside] = label + 1
            rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
            # Normalised to [0, 1]: pixel edges, so a box covers its pixels whole.
            boxes[i, len(placed)] = [label, cols[0] / image_size, rows[0] / image_size, (cols[-1] + 1) / image_size,
                                     (rows[-1] + 1) / image_size]
            placed.append((cx, cy, r))
        pixels = pixels + noise * rng.standard_normal(pixels.shape)
        images[i] = np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)
    return Scenes(torch.from_numpy(images), torch.from_numpy(masks), torch.from_numpy(boxes))
