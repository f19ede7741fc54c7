"""Tiny image datasets written in the real file formats, so tests never download anything.

MNIST and Fashion-MNIST: IDX files in <root>/<Name>/raw; CIFAR-10: pickled batches in
<root>/cifar-10-batches-py; image_folder: PNG files in one sub-folder per class.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def digit_images(n: int, size: int, seed: int, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images whose class (0..9) is the row of a bright bar: learnable, and each one distinct."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, size=(n, channels, size, size), dtype=np.uint8)
    rows = (labels * (size - 2) // 9)
    for i, r in enumerate(rows):
        images[i, :, r:r + 2, 2:size - 2] = 255
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as LeCun's MNIST files are laid out: magic (type 0x08 = uint8, ndim), sizes, data."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 60, n_test: int = 20) -> Path:
    """A tiny MNIST-format dataset under root/folder/raw; returns root."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = digit_images(n, 28, seed)
        write_idx(raw / MNIST_FILES[split][0], images[:, 0])
        write_idx(raw / MNIST_FILES[split][1], labels)
    return root


def write_cifar10(root: Path, per_batch: int = 10) -> Path:
    """A tiny CIFAR-10 in its pickled python format under root/cifar-10-batches-py; returns root."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for seed, name in enumerate(names):
        images, labels = digit_images(per_batch, 32, seed, channels=3)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": images.reshape(per_batch, -1), "labels": labels.tolist()}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, handle)
    return root


def write_image_folder(path: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6,
                       seed: int = 0) -> Path:
    """PNG files of assorted sizes and modes (RGB, grey, RGBA), one sub-folder per class; returns path."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (path / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(10, 40)), int(rng.integers(10, 40))
            pixels = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8) + np.uint8(150 * c)
            mode = ("RGB", "L", "RGBA")[i % 3]
            Image.fromarray(pixels).convert(mode).save(path / name / f"{i}.png")
    return path
