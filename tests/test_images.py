"""Images (course 3): CNN geometry, residual and torchvision models, image datasets, batched augmentation."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import numpy as np
import torch
import torchvision
from torch import nn

from dlrun.components.augment import AUGMENTATIONS, Crop, Flip
from dlrun.data import DATASETS
from dlrun.data.base import DataInfo
from dlrun.data.prepare import Prepare
from dlrun.data.shapes import draw_shapes
from dlrun.errors import ConfigError
from dlrun.components.losses import LOSSES
from dlrun.models import MODELS
from dlrun.models.geometry import conv_output_size, predicted_size
from dlrun.models.resnet import ResidualBlock
from dlrun.diagnostics.summary import summarize
from dlrun.tasks import evaluate
from image_fixtures import digit_images, write_cifar10, write_idx, write_image_folder, write_mnist

MNIST_LIKE = DataInfo(input_shape=(1, 28, 28), task="classification", num_classes=10, name="mnist")
DIGITS_LIKE = DataInfo(input_shape=(1, 8, 8), task="classification", num_classes=10, name="digits")


# ---- the output-size formula (course 3 §2.1) ------------------------------------------------------------------

def test_course_example_200_pixels_kernel_3_stride_2_gives_99():
    assert conv_output_size(200, kernel=3, stride=2, padding=0, dilation=1) == 99


def test_formula_gives_torchs_shapes_over_many_geometries():
    checked = 0
    for size, kernel, stride, padding, dilation in itertools.product((6, 13), (1, 2, 3, 5), (1, 2, 3), (0, 1, 2),
                                                                     (1, 2, 3)):
        expected = conv_output_size(size, kernel, stride, padding, dilation)
        if padding > kernel // 2 or expected < 1:  # torch refuses these (pooling) or they are empty
            continue
        x = torch.zeros(1, 2, size, size + 1)
        layers = [nn.Conv2d(2, 1, kernel, stride, padding, dilation), nn.MaxPool2d(kernel, stride, padding, dilation),
                  nn.AvgPool2d(kernel, stride, padding) if dilation == 1 else None]
        for layer in filter(None, layers):
            (h, w), _ = predicted_size(layer, size, size + 1)
            assert layer(x).shape[2:] == (h, w), (type(layer).__name__, size, kernel, stride, padding, dilation)
            checked += 1
    assert checked > 200


def test_model_summary_shows_the_formula_and_it_matches_every_conv_and_pool():
    net = MODELS.build({"name": "cnn", "channels": [[8, 16], 32], "kernel_size": 5, "padding": 2, "dilation": 1,
                        "stride": 1}, info=MNIST_LIKE, out_features=10)
    rows, _, _ = summarize(net, torch.zeros(2, 1, 28, 28))
    covered = [r for r in rows if r.formula]
    assert [r.kind for r in covered] == ["Conv2d", "Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d"]
    assert all(r.formula_matches and r.formula.endswith(f"= {r.output_shape[2]}") for r in covered)
    assert covered[2].formula == "⌊(28 - 1 + 2·0 - 1·(2 - 1)) / 2 + 1⌋ = 14"


@pytest.mark.parametrize("keys,words", [
    ({"kernel_size": 9, "padding": 0}, ["features.stage1.conv1", "8x8", "⌊(8 - 1 + 2·0 - 1·(9 - 1)) / 1 + 1⌋ = 0"]),
    ({"channels": [8, 8, 8, 8]}, ["features.stage4.pool", "1x1", "= 0"]),
    ({"kernel_size": 3, "padding": 0, "dilation": 4}, ["features.stage1.conv1", "dilation 4", "= 0"]),
    ({"stride": 3, "padding": 0, "pool": "none", "channels": [4, 4, 4]}, ["features.stage2.conv1", "2x2", "= 0"]),
])
def test_cnn_geometry_that_shrinks_a_feature_map_to_nothing_is_refused(keys, words):
    with pytest.raises(ConfigError) as err:
        MODELS.build({"name": "cnn", **keys}, info=DIGITS_LIKE, out_features=10)
    for word in words:
        assert word in str(err.value)


# ---- models ---------------------------------------------------------------------------------------------------

def test_cnn_keys_build_the_layers_they_name():
    net = MODELS.build({"name": "cnn", "channels": [[32, 64]], "padding": 0, "hidden": [128], "batch_norm": True,
                        "dropout": 0.5, "dropout2d": 0.1, "pool": "avg", "activation": "leaky_relu"},
                       info=MNIST_LIKE, out_features=10)
    kinds = [type(m).__name__ for m in net.modules() if not list(m.children())]
    assert kinds == ["Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU", "AvgPool2d",
                     "Dropout2d", "Flatten", "Linear", "BatchNorm1d", "LeakyReLU", "Dropout", "Linear"]
    assert net.head.fc1.in_features == 64 * 12 * 12  # 28 -> 26 -> 24 -> pool 12: the PyTorch example's network
    gap = MODELS.build({"name": "cnn", "global_pool": True, "hidden": []}, info=MNIST_LIKE, out_features=10)
    assert gap.head.out.in_features == 64 and gap(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_resnet_blocks_pass_their_input_through_the_skip_connection():
    block = ResidualBlock(8, 8, 1, nn.ReLU).eval()
    nn.init.zeros_(block.bn2.weight)  # the residual branch now adds nothing: only the skip path is left
    x = torch.randn(2, 8, 6, 6)
    assert torch.allclose(block(x), torch.relu(x))
    net = MODELS.build({"name": "resnet", "widths": [8, 16], "blocks_per_stage": 2}, info=MNIST_LIKE, out_features=10)
    convs = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert convs == 1 + 2 * 2 * 2 + 1  # stem, two 3x3 convs per block, one 1x1 projection where the width doubles
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_torchvision_architectures_take_the_datasets_channels_and_classes():
    net = MODELS.build({"name": "torchvision", "arch": "resnet18"}, info=MNIST_LIKE, out_features=7)
    assert net.conv1.in_channels == 1 and net(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    small = MODELS.build({"name": "torchvision", "arch": "mobilenet_v3_small"},
                         info=DataInfo((3, 32, 32), "classification", 4), out_features=4)
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ConfigError, match="Did you mean 'resnet18'"):
        MODELS.build({"name": "torchvision", "arch": "resnet81"}, info=MNIST_LIKE, out_features=10)


# ---- augmentation (course 3 §4.1) -----------------------------------------------------------------------------

def _patterns(n: int = 12, size: int = 24) -> torch.Tensor:
    """Images in 0..1, each a random pattern in its own hue (hues 360/n degrees apart)."""
    torch.manual_seed(0)
    hue = torch.arange(n)[:, None] * (2 * torch.pi / n) - torch.arange(3) * (2 * torch.pi / 3)
    colour = 0.5 + 0.3 * torch.cos(hue)  # (n, 3)
    pattern = 0.5 + 0.5 * torch.rand(n, 1, size, size)
    return colour[:, :, None, None] * pattern


def _hue(x: torch.Tensor) -> torch.Tensor:
    """Each image's colour direction: what flips, shifts, turns, noise, brightness and contrast leave alone."""
    means = x.mean(dim=(2, 3))
    return nn.functional.normalize(means - means.mean(1, keepdim=True), dim=1)


@pytest.mark.parametrize("name", [n for n in AUGMENTATIONS.names() if n != "none"])
def test_every_augmentation_keeps_shapes_and_the_order_of_images(name):
    augment = AUGMENTATIONS.build({"name": name})
    x = _patterns()
    torch.manual_seed(1)
    out = augment(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)  # it does something
    assert 0.0 <= out.min() and out.max() <= 1.0
    # Image i is still image i (its hue is kept): the label that travels with it still fits.
    assert torch.equal((_hue(out) @ _hue(x).T).argmax(1), torch.arange(len(x)))


def test_flip_and_crop_draw_per_image_and_do_what_they_say():
    x = _patterns(32)
    torch.manual_seed(0)
    flipped = Flip(0.5, horizontal=True, vertical=False)(x)
    same = [torch.equal(a, b) for a, b in zip(flipped, x)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and 0 < sum(mirrored) < 32  # each image on its own
    cropped = Crop(2)(x)
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    for out, source in zip(cropped, padded):
        windows = [source[:, dy:dy + 24, dx:dx + 24] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out, w) for w in windows)


def test_compose_list_form_applies_its_steps_in_order():
    augment = AUGMENTATIONS.build({"name": "compose", "steps": ["flip", {"name": "rotate", "degrees": 10.0}]})
    assert repr(augment) == "Compose(Flip(p=0.5, horizontal=True, vertical=False), Rotate(degrees=10.0))"
    with pytest.raises(ConfigError, match="augmentation.steps\\[1\\]"):
        AUGMENTATIONS.build({"name": "compose", "steps": ["flip", "rotat"]})


def test_augmentation_is_applied_in_training_only():
    x = torch.from_numpy(digit_images(16, 28, 0)[0])
    info = DataInfo((1, 28, 28), "classification", 10, pixel_mean=(0.2,), pixel_std=(0.3,), name="tiny")
    plain = Prepare(info, None, torch.device("cpu"))
    augmented = Prepare(info, AUGMENTATIONS.build({"name": "standard"}), torch.device("cpu"))
    assert torch.allclose(plain(x), (x.float() / 255 - 0.2) / 0.3, atol=1e-5)  # uint8 -> standardised per batch
    assert torch.equal(augmented(x), plain(x))  # evaluation: no augmentation
    assert not torch.equal(augmented(x, train=True), plain(x, train=True))
    net = MODELS.build({"name": "cnn"}, info=info, out_features=10)
    loss = LOSSES.build({"name": "cross_entropy"}, info=info)
    y = torch.arange(16) % 10
    assert evaluate(net, loss, x, y, info, 8, augmented) == evaluate(net, loss, x, y, info, 8, plain)


def test_augmentation_of_flat_inputs_is_refused():
    with pytest.raises(ConfigError, match="augmentation=none"):
        Prepare(DataInfo((4,), "classification", 3, name="iris"), AUGMENTATIONS.build({"name": "flip"}),
                torch.device("cpu"))


# ---- datasets -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_loaders_read_the_idx_files_into_uint8_tensors(tmp_path, name, folder):
    root = write_mnist(tmp_path, folder, n_train=50, n_test=20)
    data = DATASETS.build({"name": name, "root": str(root), "download": False, "val_fraction": 0.2}, seed=0)
    s = data.splits
    assert s.x_train.dtype == torch.uint8 and s.x_train.shape == (40, 1, 28, 28) and len(s.x_val) == 10
    images, labels = digit_images(20, 28, 1)
    assert torch.equal(s.x_test, torch.from_numpy(images)) and torch.equal(s.y_test, torch.from_numpy(labels).long())
    assert data.info.input_shape == (1, 28, 28) and data.info.num_classes == 10
    pixels = s.x_train.double() / 255
    assert data.info.pixel_mean[0] == pytest.approx(pixels.mean().item())  # from the training split
    assert data.info.pixel_std[0] == pytest.approx(pixels.std(unbiased=False).item())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_files_read_directly_equal_torchvisions_loader_without_importing_it(tmp_path, name, folder):
    # Read without torchvision (issue #21: its import was 0.2 CPU s of a 1-epoch run), the same tensors and class
    # names as torchvision's own loader gives; a fresh process building the dataset does not import torchvision.
    import subprocess
    import sys

    root = write_mnist(tmp_path, folder, n_train=50, n_test=20)
    tv_class = getattr(torchvision.datasets, folder)
    data = DATASETS.build({"name": name, "root": str(root), "download": False, "val_fraction": 0.2}, seed=0)
    test = tv_class(str(root), train=False, download=False)
    assert torch.equal(data.splits.x_test[:, 0], test.data) and torch.equal(data.splits.y_test, test.targets)
    assert data.info.class_names == tv_class.classes
    code = (f"import sys; from dlrun.data.registry import DATASETS; import dlrun.data.images; "
            f"DATASETS.build({{'name': '{name}', 'root': {str(root)!r}, 'download': False}}, seed=0); "
            f"print('torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_a_damaged_mnist_file_is_refused_with_its_path(tmp_path):
    root = write_mnist(tmp_path)
    labels = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-5])  # cut short, as an interrupted copy leaves it
    with pytest.raises(ConfigError, match="cut short or damaged") as err:
        DATASETS.build({"name": "mnist", "root": str(root), "download": False}, seed=0)
    assert str(labels) in str(err.value) and "55" in str(err.value) and err.value.key == "dataset.root"
    labels.write_bytes(b"<html>Not Found</html>")  # what a failed download by hand may leave
    with pytest.raises(ConfigError, match="not an IDX file"):
        DATASETS.build({"name": "mnist", "root": str(root), "download": False}, seed=0)
    write_idx(labels, np.arange(59) % 10)  # one label short of the 60 images
    with pytest.raises(ConfigError, match="swapped or from different sets"):
        DATASETS.build({"name": "mnist", "root": str(root), "download": False}, seed=0)
    write_idx(labels, np.arange(60) % 10 + 200)  # labels no MNIST file holds
    with pytest.raises(ConfigError, match="label 209"):
        DATASETS.build({"name": "mnist", "root": str(root), "download": False}, seed=0)


def test_cifar10_loader_reads_the_pickled_batches(tmp_path, monkeypatch):
    # torchvision checks CIFAR-10's files against the real ones' md5 sums; the tiny fixture cannot match them.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    data = DATASETS.build({"name": "cifar10", "root": str(write_cifar10(tmp_path)), "download": False}, seed=0)
    assert data.info.input_shape == (3, 32, 32) and data.info.class_names[0] == "airplane"
    assert len(data.splits.x_train) + len(data.splits.x_val) == 50 and len(data.splits.x_test) == 10
    images, _ = digit_images(10, 32, 5, channels=3)
    assert torch.equal(data.splits.x_test, torch.from_numpy(images))  # channels first, as written


def test_missing_files_say_where_they_were_expected_and_how_to_provide_them(tmp_path):
    with pytest.raises(ConfigError) as err:
        DATASETS.build({"name": "mnist", "root": str(tmp_path / "nowhere"), "download": False}, seed=0)
    message = str(err.value)
    for words in (str(tmp_path / "nowhere" / "MNIST" / "raw"), "train-images-idx3-ubyte", "dataset.download=true",
                  "dataset.root"):
        assert words in message
    assert not (tmp_path / "nowhere").exists()


def test_shapes_are_reproducible_with_masks_and_boxes_that_fit():
    a = draw_shapes(60, 32, __import__("numpy").random.default_rng(3))
    b = draw_shapes(60, 32, __import__("numpy").random.default_rng(3))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert set(a.labels.tolist()) == {0, 1, 2}
    for mask, box in zip(a.masks, a.boxes):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item(), ys.max().item()]
    # The shape is brighter than its background: the mask marks the drawn pixels.
    inside = torch.stack([img[0][m].float().mean() for img, m in zip(a.images, a.masks)])
    outside = torch.stack([img[0][~m].float().mean() for img, m in zip(a.images, a.masks)])
    assert (inside > outside + 50).all()


def test_image_folder_reads_resizes_and_splits_the_users_pngs(tmp_path):
    write_image_folder(tmp_path / "train", per_class=10)
    data = DATASETS.build({"name": "image_folder", "path": str(tmp_path / "train"), "image_size": [12, 16],
                           "workers": 0, "val_fraction": 0.2, "test_fraction": 0.2}, seed=0)
    s = data.splits
    assert s.x_train.dtype == torch.uint8 and s.x_train.shape[1:] == (3, 12, 16)
    assert len(s.x_train) + len(s.x_val) + len(s.x_test) == 20 and data.info.class_names == ["cat", "dog"]
    assert all(((x.float().mean() > 127) == bool(y)) for x, y in zip(s.x_train, s.y_train))  # dogs were drawn bright
    write_image_folder(tmp_path / "held_out", per_class=3, seed=1)
    held = DATASETS.build({"name": "image_folder", "path": str(tmp_path / "train"), "channels": 1, "image_size": 8,
                           "test_path": str(tmp_path / "held_out"), "workers": 0}, seed=0)
    assert held.splits.x_test.shape == (6, 1, 8, 8) and len(held.splits.x_train) + len(held.splits.x_val) == 20


@pytest.mark.parametrize("setup,words", [
    (lambda p: None, ["no such folder"]),
    (lambda p: p.mkdir(), ["no class sub-folders"]),
    (lambda p: write_image_folder(p, classes=("a",)) and write_image_folder(p.parent / "t", classes=("b",)),
     ["same class sub-folders"]),
])
def test_image_folder_problems_are_explained(tmp_path, setup, words):
    folder = tmp_path / "imgs"
    setup(folder)
    with pytest.raises(ConfigError) as err:
        DATASETS.build({"name": "image_folder", "path": str(folder), "workers": 0,
                        **({"test_path": str(tmp_path / "t")} if (tmp_path / "t").exists() else {})}, seed=0)
    assert all(w in str(err.value) for w in words), str(err.value)


# ---- end to end through the real `dl-run` -------------------------------------------------------------------------

def test_dl_run_cnn_on_digits_learns_shows_the_formula_and_logs_the_augmented_batch(dl_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = dl_run("dataset=digits", "model=cnn", "augmentation=noise", "augmentation.std=0.05", "trainer.epochs=8",
                    "trainer.progress=false")
    assert result.code == 0, result.output
    assert result.metrics()["test"]["accuracy"] >= 0.9
    assert "features.stage1.conv1" in result.stdout and "⌊(8 - 1 + 2·1 - 1·(3 - 1)) / 1 + 1⌋ = 8" in result.stdout
    events = EventAccumulator(str(result.run_dirs()[0] / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "train/augmented_batch" in events.Tags()["images"]
    (grid,) = events.Images("train/augmented_batch")
    assert grid.step == 0 and grid.width * grid.height == 32 * 8 * 8  # the first batch: 32 images of 8x8


def test_dl_run_trains_on_mnist_files_through_the_uint8_fast_path(dl_run, tmp_path):
    root = write_mnist(tmp_path / "data", n_train=200, n_test=50)
    result = dl_run("dataset=mnist", f"dataset.root={root}", "dataset.download=false", "model=lenet5",
                    "trainer.epochs=4", "trainer.progress=false", "optimizer.lr=0.003")
    assert result.code == 0, result.output
    metrics = result.metrics()
    assert metrics["dataset"] == "mnist" and metrics["test"]["accuracy"] >= 0.8  # the bar's row is easy to learn
