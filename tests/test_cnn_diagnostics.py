"""Grad-CAM, filters and feature maps on a small CNN whose evidence location is known."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.diagnostics.cnn import feature_maps_grid, filters_grid, grad_cam


def spot_detector() -> nn.Module:
    """A fixed CNN whose class-1 score is the brightness of the image's top-left quarter."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.ones_(conv.weight)
    head = nn.Linear(16 * 16, 2, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        mask = torch.zeros(16, 16)
        mask[:8, :8] = 1.0
        head.weight[1] = mask.flatten()
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), head)


def test_grad_cam_lights_up_where_the_evidence_is():
    model = spot_detector()
    x = 0.05 * torch.rand(3, 1, 16, 16)
    x[:, :, 2:6, 2:6] += 1.0  # a bright spot inside the quarter that class 1 looks at
    cam = grad_cam(model, x, torch.tensor([1, 1, 1]))
    assert cam.shape == (3, 16, 16)
    assert cam.max() <= 1.0 + 1e-6 and cam.min() >= 0
    inside, outside = cam[:, 2:6, 2:6].mean(), cam[:, 8:, 8:].mean()
    assert inside > 0.8 and outside < 0.1
    assert all(p.grad is None for p in model.parameters())  # leaves no gradients behind


def test_filters_and_feature_maps_become_image_grids():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    grid = filters_grid(model)
    assert grid.shape[0] == 3 and 0 <= grid.min() and grid.max() <= 1
    maps = feature_maps_grid(model, torch.rand(2, 3, 12, 12))
    assert maps.shape[0] == 3 and maps.shape[1] >= 10
    assert filters_grid(nn.Sequential(nn.Linear(2, 2))) is None


def test_a_cnn_run_on_digits_logs_grad_cam_filters_and_a_confusion_matrix(tmp_path):
    from omegaconf import OmegaConf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import compose_config
    from dlrun.run.training import run

    cfg = compose_config("dataset=digits", "model=cnn", "trainer.epochs=2", "trainer.progress=false",
                         "trainer.device=cpu", "logger.gradcam_every_n_epochs=1", "model.dropout=0.5")
    metrics = run(OmegaConf.create(cfg), tmp_path, [])
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"cnn/grad_cam", "cnn/first_layer_filters", "cnn/first_layer_feature_maps",
            "test/confusion_matrix"} <= set(events.Tags()["images"])
    # Every epoch's panel, not only the last: the heatmaps of epoch 1 and of epoch 2 are both there.
    epoch_steps = [h["step"] for h in metrics["history"]]
    assert [e.step for e in events.Images("cnn/grad_cam")][:2] == epoch_steps


def test_mode_gradcam_on_a_trained_run_writes_its_panel_and_keeps_the_run(dl_run):
    trained = dl_run("dataset=digits", "model=cnn", "trainer.epochs=1", "trainer.progress=false")
    assert trained.code == 0, trained.output
    (run_dir,) = trained.run_dirs()
    before = (run_dir / "metrics.json").read_text(), (run_dir / ".hydra" / "overrides.yaml").read_text()
    result = dl_run("mode=gradcam", f"resume={run_dir}")
    assert result.code == 0, result.output
    assert (run_dir / "grad_cam.png").read_bytes()[:4] == b"\x89PNG"
    assert ((run_dir / "metrics.json").read_text(), (run_dir / ".hydra" / "overrides.yaml").read_text()) == before
    refused = dl_run("mode=gradcam")
    assert refused.code != 0 and "resume=<run dir>" in refused.output
