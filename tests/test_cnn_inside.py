"""Convolution itself and inside a CNN (course 3 §1, §2.3, §5.1): given first-layer kernels (model.fixed_kernels),
frozen through training, and Grad-CAM and feature maps of any convolution by name (logger.gradcam_layer,
logger.feature_map_layer), refused before training when the name is wrong."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_config
from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.models import MODELS

DIGITS = DataInfo((1, 8, 8), "classification", 10, name="digits")
PATTERNS = DataInfo((20, 1), "classification", 3, name="patterns")  # a series: 20 steps of 1 feature


def cnn(*overrides: str, info: DataInfo = DIGITS) -> torch.nn.Module:
    """model=cnn built from the real config with the command line's overrides."""
    cfg = compose_config("dataset=digits", "model=cnn", *overrides)
    return MODELS.build(cfg["model"], info=info, out_features=info.num_classes)


def test_sobel_and_laplace_on_a_step_image_give_the_hand_computed_edges():
    model = cnn("model.fixed_kernels=[sobel_x,sobel_y,laplace]")
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0  # dark left half, bright right half: one vertical edge between columns 3 and 4
    maps = model.features.stage1.conv1(step)[0]
    assert maps.shape == (3, 8, 8)  # one feature map per given kernel
    inner = maps[:, 1:-1, 1:-2]  # away from the zero padding of the border
    # sobel_x = 1/4 [[1,0,-1],[2,0,-2],[1,0,-1]] (course 3 §1): at columns 3 and 4, 1/4 (0 - (1 + 2 + 1)) = -1
    expected_x = torch.zeros(6, 5)
    expected_x[:, 2:4] = -1.0
    assert torch.equal(inner[0], expected_x)
    assert torch.equal(inner[1], torch.zeros(6, 5))  # sobel_y: no horizontal edge
    # laplace: column 3 (dark, bright right neighbour) 1; column 4 (bright, dark left neighbour) 1 + 1 + 1 - 4 = -1
    expected_laplace = torch.zeros(6, 5)
    expected_laplace[:, 2], expected_laplace[:, 3] = 1.0, -1.0
    assert torch.equal(inner[2], expected_laplace)


def test_a_kernel_given_as_a_list_applies_to_every_input_channel_and_sums():
    rgb = DataInfo((3, 8, 8), "classification", 10, name="cifar10")
    model = cnn("model.fixed_kernels=[[[0,0,0],[0,1,0],[0,0,0]]]", info=rgb)  # the identity kernel
    x = torch.rand(2, 3, 8, 8)
    out = model.features.stage1.conv1(x)
    assert out.shape == (2, 1, 8, 8)
    assert torch.allclose(out[:, 0], x.sum(dim=1))  # course 3 §2.3: each channel's result summed into one map


@pytest.mark.parametrize(("override", "info", "expected"), [
    ("model.fixed_kernels=[sobel]", DIGITS, "valid names: sobel_x, sobel_y, laplace"),
    ("model.fixed_kernels=[[[1,2],[3,4]]]", DIGITS, "kernels of size 2, but the convolutions have model.kernel_size=3"),
    ("model.fixed_kernels=[[[1,2,3]]]", DIGITS, "not a square list of rows"),
    ("model.fixed_kernels=[sobel_x]", PATTERNS, "names the 2-D kernel 'sobel_x', but this CNN convolves a series"),
])
def test_bad_fixed_kernels_are_refused_naming_the_key_and_what_is_valid(override, info, expected):
    with pytest.raises(ConfigError, match="model.fixed_kernels") as err:
        cnn(override, info=info)
    assert expected in str(err.value) and err.value.key == "model.fixed_kernels"


def test_a_one_dimensional_cnn_takes_a_difference_kernel_along_time():
    model = cnn("model.fixed_kernels=[[1,0,-1]]", info=PATTERNS)
    ramp = torch.arange(20.0).view(1, 20, 1)  # (batch, steps, features)
    out = model.features.stage1.conv1(model.to_channels(ramp))[0, 0]
    assert torch.equal(out[1:-1], torch.full((18,), -2.0))  # x[t-1] - x[t+1] on a ramp of slope 1


def test_fixed_kernels_stay_as_given_through_init_and_training_and_grad_cam_reads_a_named_middle_layer(tmp_path):
    from omegaconf import OmegaConf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dlrun.engine.checkpoint import load
    from dlrun.models.fixed_kernels import NAMED_KERNELS
    from dlrun.run.training import run

    # three stages on 8x8 digits: 8x8, then 4x4 (the middle one), then 2x2 maps
    cfg = compose_config("dataset=digits", "model=cnn", "model.channels=[4,4,4]", "model.hidden=[16]",
                         "model.fixed_kernels=[sobel_x,sobel_y]", "init=he_normal", "trainer.max_steps=5",
                         "trainer.progress=false", "trainer.device=cpu", "trainer.threads=1",
                         "logger.gradcam_layer=features.stage2.conv1", "logger.feature_map_layer=features.stage1.conv1")
    run(OmegaConf.create(cfg), tmp_path, [])
    weights = load(tmp_path / "checkpoints" / "last.pt")["model"]
    given = torch.tensor([NAMED_KERNELS["sobel_x"], NAMED_KERNELS["sobel_y"]]).unsqueeze(1)
    assert torch.equal(weights["features.stage1.conv1.weight"], given)
    assert torch.equal(weights["features.stage1.conv1.bias"], torch.zeros(2))
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    cam = events.Images("cnn/grad_cam_map")[-1]
    assert (cam.height, cam.width) == (4, 8 * 4)  # the 8 panel images' heatmaps, each at stage 2's 4x4
    assert "cnn/feature_maps/features.stage1.conv1" in events.Tags()["images"]


def test_grad_cam_maps_have_the_spatial_size_of_the_layer_they_read():
    from dlrun.diagnostics.cnn import grad_cam, grad_cam_maps

    model = cnn("model.channels=[4,4,4]", "model.hidden=[16]")
    x, classes = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    assert grad_cam_maps(model, x, classes).shape == (3, 2, 2)  # by default the last convolution
    assert grad_cam_maps(model, x, classes, model.features.stage2.conv1).shape == (3, 4, 4)
    assert grad_cam(model, x, classes, model.features.stage2.conv1).shape == (3, 8, 8)  # upsampled for the figure


def test_a_wrong_layer_name_is_refused_before_training_listing_the_convolutions(dl_run):
    result = dl_run("dataset=digits", "model=cnn", "logger.gradcam_layer=features.stage1.act1", "trainer.epochs=1")
    assert result.code == 2, result.output
    assert "'logger.gradcam_layer=features.stage1.act1' is not a convolution" in result.output
    assert "features.stage1.conv1, features.stage2.conv1" in result.output
    assert not result.run_dirs()  # refused before anything was trained or written


@pytest.mark.slow  # three dl-run processes, about 35 CPU s: the in-process run above covers the views
def test_mode_gradcam_reads_the_layer_given_on_its_command_line(dl_run):
    trained = dl_run("dataset=digits", "model=cnn", "model.channels=[4,4]", "model.hidden=[16]", "trainer.epochs=1",
                     "trainer.progress=false", "trainer.threads=1", "logger.figures=false")
    assert trained.code == 0, trained.output
    (run_dir,) = trained.run_dirs()
    result = dl_run("mode=gradcam", f"resume={run_dir}", "logger.gradcam_layer=features.stage1.conv1")
    assert result.code == 0, result.output
    assert "at features.stage1.conv1" in result.output
    assert (run_dir / "grad_cam.png").read_bytes()[:4] == b"\x89PNG"
    refused = dl_run("mode=gradcam", f"resume={run_dir}", "logger.feature_map_layer=stage1.conv1", "overwrite=true")
    assert refused.code == 2 and "valid names" in refused.output and "features.stage1.conv1" in refused.output


def test_the_course_example_is_the_same_by_hand_by_pytorch_and_as_the_courses_matrix_product(capsys):
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "convolution_as_matrix.py"))
    assert script["main"]([]) == 0
    out = capsys.readouterr().out
    assert "h[0,0] = 4·3 + 6·2 + 8·5 + 5·1 = 69" in out and "U v(x) = (69 50 48 43)ᵀ = v(h)" in out
    # course 3 §1's U, row for row
    assert script["toeplitz"](torch.tensor([[3.0, 2.0], [5.0, 1.0]]), 3, 3).tolist() == [
        [3, 2, 0, 5, 1, 0, 0, 0, 0], [0, 3, 2, 0, 5, 1, 0, 0, 0], [0, 0, 0, 3, 2, 0, 5, 1, 0],
        [0, 0, 0, 0, 3, 2, 0, 5, 1]]
    assert script["main"](["--kernel", "sobel_x"]) == 0
    assert "U v(x) = (-1 -1 -1 -1)ᵀ" in capsys.readouterr().out  # the step image's edge, as the CNN's first layer sees it


def test_the_layers_of_an_unnamed_sequential_are_named_by_their_number():
    from torch import nn

    from dlrun.run.experiment import view_layers

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
    assert view_layers(model, {"gradcam_layer": 0, "tensorboard": {}}) == {"gradcam_layer": "0",
                                                                          "feature_map_layer": None}
    with pytest.raises(ConfigError, match=r"'logger.feature_map_layer=1' is not a convolution.*valid names .*: 0, 2\."):
        view_layers(model, {"feature_map_layer": 1, "tensorboard": {}})
