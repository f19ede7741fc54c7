"""Image datasets, held in memory as uint8 tensors (N, C, H, W) and standardised per batch on the device.

MNIST, Fashion-MNIST and CIFAR-10 come through torchvision's own loaders (MNIST's and Fashion-MNIST's files, once
there, are read directly, as torchvision reads them); `shapes` is drawn from a seed; `image_folder` reads the
user's folder of class sub-folders.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from dlrun.data.base import DataInfo, Dataset, Splits, check_fractions
from dlrun.data.registry import DATASETS
from dlrun.data.shapes import SHAPES, draw_scenes, draw_shapes
from dlrun.data.stream import ImagesOnly, StreamedImages, UnreadableImage
from dlrun.errors import ConfigError


def pixel_stats(x: torch.Tensor | Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images scaled to 0..1, exactly, from a 256-bin histogram.

    `x` is one tensor (N, C, H, W), or batches of them (a split streamed from disk).
    """
    counts = None
    for batch in ([x] if isinstance(x, torch.Tensor) else x):
        batch_counts = torch.stack([torch.bincount(batch[:, c].reshape(-1), minlength=256)
                                    for c in range(batch.shape[1])]).to(torch.float64).cpu()
        counts = batch_counts if counts is None else counts + batch_counts
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in counts:
        p = channel / channel.sum()
        mean = float((p * levels).sum())
        means.append(mean)
        stds.append(max(math.sqrt(max(float((p * levels**2).sum()) - mean**2, 0.0)), 1e-3))
    return tuple(means), tuple(stds)


def split_order(n: int, *, name: str, seed: int, val_fraction: float, test_fraction: float | None,
                held_out_test: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded train/val(/test) indices of n images; with a held-out test set only validation is carved out."""
    if not held_out_test:
        check_fractions(val_fraction, test_fraction)
    elif not 0.0 < val_fraction < 0.9:
        raise ConfigError(f"'dataset.val_fraction={val_fraction}' must be between 0 and 0.9, e.g. 0.1.",
                          key="dataset.val_fraction")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    n_val = max(1, int(round(n * val_fraction)))
    n_test = 0 if held_out_test else max(1, int(round(n * test_fraction)))
    if n - n_val - n_test < 1:
        raise ConfigError(f"Dataset '{name}' has {n} images: too few to split into train/val/test.", key="dataset")
    return order[:n - n_val - n_test], order[n - n_val - n_test:n - n_test], order[n - n_test:]


def split_images(x: torch.Tensor, y: torch.Tensor, *, name: str, class_names: list[str], seed: int,
                 val_fraction: float, test_fraction: float | None = None,
                 test: tuple[torch.Tensor, torch.Tensor] | None = None) -> Dataset:
    """Seeded split of uint8 images into train/val(/test); pixel statistics from the training split only.

    With `test` given (a dataset's official test set, or a held-out folder), only validation is carved out.
    """
    idx_train, idx_val, idx_test = split_order(len(x), name=name, seed=seed, val_fraction=val_fraction,
                                               test_fraction=test_fraction, held_out_test=test is not None)
    x_test, y_test = test if test is not None else (x[idx_test], y[idx_test])
    x_train = x[idx_train]
    mean, std = pixel_stats(x_train)
    splits = Splits(x_train, y[idx_train], x[idx_val], y[idx_val], x_test, y_test)
    info = DataInfo(input_shape=tuple(x.shape[1:]), task="classification", num_classes=len(class_names),
                    class_names=list(class_names), pixel_mean=mean, pixel_std=std, name=name)
    return Dataset(splits, info)


# ---- torchvision's datasets: MNIST, Fashion-MNIST, CIFAR-10 -------------------------------------------------

def _expected_files(cls: type, root: Path) -> tuple[Path, list[str]]:
    """Where torchvision looks for a dataset's files under root, and their names."""
    import torchvision.datasets as tvd

    if issubclass(cls, tvd.MNIST):
        return root / cls.__name__ / "raw", [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
    return root / cls.base_folder, [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def _missing_folders(folder: Path) -> list[Path]:
    """folder and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Undo the empty folders a failed download left behind (deepest first)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


# MNIST's and Fashion-MNIST's files in torchvision's layout (<root>/<class name>/raw/), and its class names.
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_CLASSES = {
    "MNIST": ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
              "8 - eight", "9 - nine"],
    "FashionMNIST": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"],
}


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (MNIST's format): a magic number 0x0000 0x08 <rank>, the sizes, the bytes."""
    raw = path.read_bytes()
    rank = raw[3] if len(raw) >= 4 else 0
    header = 4 + 4 * rank
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or not 1 <= rank <= 3:
        raise ConfigError(f"{path} is not an IDX file of unsigned bytes (MNIST's format): it starts with "
                          f"{raw[:4].hex() or 'nothing'}, where 00000801 (labels) or 00000803 (images) was expected. "
                          f"Replace it with the original file.", key="dataset.root")
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    if len(raw) - header != math.prod(shape):
        raise ConfigError(f"{path} holds {len(raw) - header} bytes of data where its header announces "
                          f"{'x'.join(map(str, shape))} = {math.prod(shape)}: the file is cut short or damaged. "
                          f"Replace it with the original file.", key="dataset.root")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header).view(*shape)


def _idx_dataset(cls_name: str, root: Path) -> tuple[torch.Tensor, ...] | None:
    """MNIST's or Fashion-MNIST's four files read directly, as torchvision's loader reads them (without importing
    torchvision: 0.2 CPU s of a 1-epoch run, issue #21); None if a file is missing (torchvision may download it)."""
    paths = [root / cls_name / "raw" / name for name in IDX_FILES]
    if cls_name not in IDX_CLASSES or not all(p.is_file() for p in paths):
        return None
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    classes = len(IDX_CLASSES[cls_name])
    _check_idx_pair(x_train, y_train, paths[0], paths[1], classes)
    _check_idx_pair(x_test, y_test, paths[2], paths[3], classes)
    return x_train.unsqueeze(1), y_train.long(), x_test.unsqueeze(1), y_test.long()


def _check_idx_pair(images: torch.Tensor, labels: torch.Tensor, images_path: Path, labels_path: Path,
                    classes: int) -> None:
    """Images (N, H, W) and N labels below the class count: swapped, mismatched or foreign files are refused."""
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise ConfigError(f"{images_path} holds images of shape {tuple(images.shape)} and {labels_path} labels of "
                          f"shape {tuple(labels.shape)}, where N images of H x W pixels and N labels were expected: "
                          f"the files are swapped or from different sets. Replace them with the original files.",
                          key="dataset.root")
    if len(labels) and int(labels.max()) >= classes:
        raise ConfigError(f"{labels_path} holds label {int(labels.max())}, where the {classes} classes are 0 to "
                          f"{classes - 1}. Replace it with the original file.", key="dataset.root")


def _torchvision_dataset(cls_name: str, name: str, title: str, root: str, download: bool, seed: int,
                         val_fraction: float) -> Dataset:
    read = _idx_dataset(cls_name, Path(root).expanduser())
    if read is not None:
        x_train, y_train, x_test, y_test = read
        return split_images(x_train, y_train, name=name, class_names=IDX_CLASSES[cls_name], seed=seed,
                            val_fraction=val_fraction, test=(x_test, y_test))
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    base = Path(root).expanduser()
    folder, files = _expected_files(cls, base)
    new_folders = _missing_folders(folder.absolute())
    try:
        train = cls(str(base), train=True, download=download)
        test = cls(str(base), train=False, download=download)
    except (RuntimeError, OSError) as err:
        _remove_empty(new_folders)
        where = f"{folder} (dataset.root={root}" + (f", that is {folder.resolve()})" if not base.is_absolute() else ")")
        how = (f"copy {', '.join(files)} into that folder (torchvision's layout), or point dataset.root at the folder "
               f"that holds {folder.relative_to(base)}/")
        if download:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
            reason = lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"
            raise ConfigError(f"'dataset={name}': the {title} files are not in {where}, and downloading them failed "
                              f"({reason}). Provide them: {how}; or run once with internet access.",
                              key="dataset.root") from None
        raise ConfigError(f"'dataset={name}': the {title} files are not in {where}. Provide them: {how}; or set "
                          f"dataset.download=true to fetch them (needs internet).", key="dataset.root") from None

    def as_images(data) -> torch.Tensor:
        x = torch.as_tensor(data)
        return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()  # grey (N,H,W) or (N,H,W,C)

    x_test, y_test = as_images(test.data), torch.as_tensor(test.targets, dtype=torch.long)
    return split_images(as_images(train.data), torch.as_tensor(train.targets, dtype=torch.long), name=name,
                        class_names=list(train.classes), seed=seed, val_fraction=val_fraction,
                        test=(x_test, y_test))


@DATASETS.register("mnist")
def build_mnist(seed: int = 0, root: str = "data", download: bool = True, val_fraction: float = 0.1) -> Dataset:
    """MNIST handwritten digits: 60,000 training and 10,000 test images, 28x28 grey, 10 classes."""
    return _torchvision_dataset("MNIST", "mnist", "MNIST", root, download, seed, val_fraction)


@DATASETS.register("fashion_mnist")
def build_fashion_mnist(seed: int = 0, root: str = "data", download: bool = True,
                        val_fraction: float = 0.1) -> Dataset:
    """Fashion-MNIST: Zalando's 28x28 grey clothing images, 60,000 + 10,000, 10 classes."""
    return _torchvision_dataset("FashionMNIST", "fashion_mnist", "Fashion-MNIST", root, download, seed, val_fraction)


@DATASETS.register("cifar10")
def build_cifar10(seed: int = 0, root: str = "data", download: bool = True, val_fraction: float = 0.1) -> Dataset:
    """CIFAR-10: 32x32 colour images, 50,000 training and 10,000 test, 10 classes."""
    return _torchvision_dataset("CIFAR10", "cifar10", "CIFAR-10", root, download, seed, val_fraction)


# ---- synthetic shapes -----------------------------------------------------------------------------------------

@DATASETS.register("shapes")
def build_shapes(seed: int = 0, n_samples: int = 3000, image_size: int = 32, channels: int = 1,  # noqa: PLR0913 - a registered builder: its parameters are the config's keys
                 min_size: float | None = None, max_size: float | None = None, noise: float = 0.05,
                 rotate: bool = True, val_fraction: float = 0.15, test_fraction: float = 0.15, objects: int = 4,
                 task: str | None = None) -> Dataset:
    """Circles, squares and triangles drawn from a seed: classification, or with task=segmentation/detection
    scenes of up to `objects` shapes with their per-pixel classes or boxes; nothing to download."""
    if n_samples < 10:
        raise ConfigError(f"'dataset.n_samples={n_samples}' must be at least 10.", key="dataset.n_samples")
    scene = task in ("segmentation", "detection")
    # Several shapes must fit side by side in a scene: smaller ones by default.
    min_size = min_size if min_size is not None else (0.25 if scene else 0.3)
    max_size = max_size if max_size is not None else (0.5 if scene else 0.8)
    if scene:
        scenes = draw_scenes(n_samples, image_size, np.random.default_rng(seed), objects=objects, channels=channels,
                             min_size=min_size, max_size=max_size, noise=noise, rotate=rotate)
        targets = scenes.masks.long() if task == "segmentation" else scenes.boxes
        # Segmentation scores every pixel: class 0 is the background. Detection's boxes carry the shape's class.
        names = ["background", *SHAPES] if task == "segmentation" else list(SHAPES)
        data = split_images(scenes.images, targets, name="shapes", class_names=names, seed=seed,
                            val_fraction=val_fraction, test_fraction=test_fraction)
        data.info.task = task
        return data
    scenes = draw_shapes(n_samples, image_size, np.random.default_rng(seed), channels=channels, min_size=min_size,
                         max_size=max_size, noise=noise, rotate=rotate)
    return split_images(scenes.images, scenes.labels, name="shapes", class_names=list(SHAPES), seed=seed,
                        val_fraction=val_fraction, test_fraction=test_fraction)


# ---- the user's folder of images ------------------------------------------------------------------------------

def _image_size(image_size: int | list[int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"'dataset.image_size={image_size}' must be a positive size, e.g. 64 or [48, 64] "
                          f"(height, width).", key="dataset.image_size")
    return size  # type: ignore[return-value]


def _open_folder(path: str, key: str, size: tuple[int, int], channels: int):
    """torchvision's ImageFolder over a class-per-sub-folder tree, decoding each image to uint8 (C, H, W)."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"'{key}={path}': no such folder (looked in {folder.resolve()}). Give a folder with one "
                          f"sub-folder of images per class.", key=key)
    steps = [v2.Resize(size), *([v2.Grayscale(1)] if channels == 1 else []), v2.PILToTensor()]
    try:
        return ImageFolder(str(folder), transform=v2.Compose(steps))
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(f"'{key}={path}' holds no class sub-folders with images ({err}). Lay it out as "
                          f"{path}/<class name>/<image>.png, one sub-folder per class.", key=key) from None


IGNORED = frozenset({"thumbs.db", "desktop.ini"})  # what file managers leave beside images (and dot-files)


def skipped_files(path: str, key: str) -> list[str]:
    """Warnings for the files under a folder of class sub-folders that ImageFolder leaves out without a word: those
    not in an image format it reads, and those not inside a class sub-folder."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    folder = Path(path).expanduser()
    by_suffix: dict[str, list[Path]] = {}
    loose: list[Path] = []
    for file in sorted(folder.rglob("*")):
        if not file.is_file() or file.name.startswith(".") or file.name.lower() in IGNORED:
            continue
        if file.parent == folder:
            loose.append(file)
        elif not file.name.lower().endswith(IMG_EXTENSIONS):
            by_suffix.setdefault(file.suffix.lower() or "(no suffix)", []).append(file)
    warnings = []
    if by_suffix:
        count = sum(len(files) for files in by_suffix.values())
        kinds = ", ".join(f"{suffix}: {len(files)}" for suffix, files in sorted(by_suffix.items()))
        example = next(iter(by_suffix.values()))[0]
        warnings.append(f"'{key}={path}': {count} file{'s' if count > 1 else ''} skipped, not in an image format "
                        f"dl-run reads ({kinds}), e.g. {example}. Readable: {', '.join(IMG_EXTENSIONS)}; convert "
                        f"the files to use them.")
    if loose:
        warnings.append(f"'{key}={path}': {len(loose)} file{'s' if len(loose) > 1 else ''} skipped at the top of the "
                        f"folder, outside any class sub-folder, e.g. {loose[0]}. Put each image in the sub-folder of "
                        f"its class.")
    return warnings


def _decode(images, indices, key: str, path: str, workers: int) -> torch.Tensor:
    """The images at `indices`, decoded by DataLoader workers into one uint8 tensor."""
    loader = torch.utils.data.DataLoader(ImagesOnly(images, indices, key), batch_size=256, num_workers=workers,
                                         generator=torch.Generator())  # leaves torch's global generator alone
    batches = iter(loader)
    try:
        batches = list(batches)
    except UnreadableImage as err:  # a corrupt or truncated file, named (also from a worker process)
        raise UnreadableImage(str(err), key=key) from None
    except OSError as err:
        raise ConfigError(f"'{key}={path}': cannot read an image: {err}", key=key) from None
    finally:
        # Stop the workers now: an iterator left to the garbage collector may be inherited by a process forked
        # later, whose exit would print a traceback from the iterator's __del__.
        getattr(batches, "_shutdown_workers", lambda: None)()
    return torch.cat(batches) if batches else torch.empty((0,), dtype=torch.uint8)


def _open_folders(path: str, test_path: str | None, size: tuple[int, int], channels: int):
    """The folder (and the held-out one) as ImageFolders with the same classes, at least two, and the warnings
    about the files they skip."""
    images = _open_folder(path, "dataset.path", size, channels)
    held_out = _open_folder(test_path, "dataset.test_path", size, channels) if test_path is not None else None
    if held_out is not None and held_out.classes != images.classes:
        raise ConfigError(f"'dataset.test_path={test_path}' has classes {held_out.classes}, but dataset.path has "
                          f"{images.classes}: both folders need the same class sub-folders.", key="dataset.test_path")
    if len(images.classes) < 2:
        raise ConfigError(f"'dataset.path={path}' has one class sub-folder ({images.classes[0]}): a classifier needs "
                          f"at least two, one sub-folder of images per class.", key="dataset.path")
    warnings = skipped_files(path, "dataset.path") + (skipped_files(test_path, "dataset.test_path")
                                                      if test_path is not None else [])
    return images, held_out, warnings


@DATASETS.register("image_folder")
def build_image_folder(path: str | None = None, test_path: str | None = None, image_size: int | list[int] = 64,  # noqa: PLR0913
                       channels: int = 3, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
                       workers: int = 2, max_memory_gb: float = 4.0, in_memory: bool | str = "auto",
                       pin_memory: bool = True, persistent_workers: bool = True) -> Dataset:
    """The user's images: one sub-folder per class, any size, resized to image_size; split, or a held-out folder.

    Held in memory as uint8 when they fit in max_memory_gb (or in_memory=true); otherwise (or in_memory=false)
    the training split is read from disk every epoch by `workers` DataLoader processes.
    """
    if path is None:
        raise ConfigError("'dataset=image_folder' needs 'dataset.path=<folder>' holding one sub-folder of images per "
                          "class.", key="dataset.path")
    if channels not in (1, 3):
        raise ConfigError(f"'dataset.channels={channels}' must be 1 (grey) or 3 (colour).", key="dataset.channels")
    if workers < 0:
        raise ConfigError(f"'dataset.workers={workers}' must be 0 or more.", key="dataset.workers")
    if in_memory not in (True, False, "auto"):
        raise ConfigError(f"'dataset.in_memory={in_memory}' must be true, false or auto (in memory when the images "
                          f"fit in dataset.max_memory_gb).", key="dataset.in_memory")
    size = _image_size(image_size)
    images, held_out, warnings = _open_folders(path, test_path, size, channels)
    name = Path(path).expanduser().resolve().name
    labels = torch.as_tensor(images.targets, dtype=torch.long)
    idx_train, idx_val, idx_test = split_order(len(images), name=name, seed=seed, val_fraction=val_fraction,
                                               test_fraction=test_fraction, held_out_test=held_out is not None)
    gb_per_image = channels * size[0] * size[1] / 1e9
    streamed = in_memory is False or (in_memory == "auto" and
                                      (len(images) + len(held_out or ())) * gb_per_image > max_memory_gb)
    # Streaming keeps validation and test in memory (a fraction of the images); in memory, everything.
    held = (len(idx_val) + len(idx_test) if streamed else len(images)) + len(held_out or ())
    if held * gb_per_image > max_memory_gb:
        advice = ("" if streamed else ", or set dataset.in_memory=false (or auto) to read the training images from "
                  "disk each epoch")
        raise ConfigError(f"'dataset.path={path}': {held} images of {channels}x{size[0]}x{size[1]} need "
                          f"{held * gb_per_image:.1f} GB in memory, more than dataset.max_memory_gb={max_memory_gb}. "
                          f"Use a smaller dataset.image_size, or raise dataset.max_memory_gb if the machine has the "
                          f"memory{advice}.", key="dataset.image_size")
    if not streamed:
        x = _decode(images, range(len(images)), "dataset.path", path, workers)
        test = None
        if held_out is not None:
            test = (_decode(held_out, range(len(held_out)), "dataset.test_path", test_path, workers),
                    torch.as_tensor(held_out.targets, dtype=torch.long))
        data = split_images(x, labels, name=name, class_names=list(images.classes), seed=seed,
                            val_fraction=val_fraction, test_fraction=test_fraction, test=test)
        data.warnings.extend(warnings)
        return data

    x_train = StreamedImages(ImagesOnly(images, idx_train.tolist()), (channels, *size), workers, pin_memory,
                             persistent_workers)
    if held_out is not None:
        x_test = _decode(held_out, range(len(held_out)), "dataset.test_path", test_path, workers)
        y_test = torch.as_tensor(held_out.targets, dtype=torch.long)
    else:
        x_test, y_test = _decode(images, idx_test.tolist(), "dataset.path", path, workers), labels[idx_test]
    try:
        mean, std = pixel_stats(x_train.split(1024))  # one pass over the training images, as in memory
    except OSError as err:
        raise ConfigError(f"'dataset.path={path}': cannot read an image: {err}", key="dataset.path") from None
    splits = Splits(x_train, labels[idx_train], _decode(images, idx_val.tolist(), "dataset.path", path, workers),
                    labels[idx_val], x_test, y_test)
    info = DataInfo(input_shape=(channels, *size), task="classification", num_classes=len(images.classes),
                    class_names=list(images.classes), pixel_mean=mean, pixel_std=std, name=name)
    return Dataset(splits, info, warnings)
