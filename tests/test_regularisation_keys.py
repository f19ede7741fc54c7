"""The small keys of #23: layer norm beside batch norm, augmentation=scale, noise on the weights or the gradients."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import DL_RUN, compose_config
from dlrun.components.augment import AUGMENTATIONS, Scale
from dlrun.data.base import DataInfo
from dlrun.data.prepare import Prepare
from dlrun.engine import checkpoint
from dlrun.engine.options import TrainerOptions
from dlrun.engine.noise import gradient_noise_std, noisy_weights
from dlrun.errors import ConfigError
from dlrun.models.registry import MODELS
from dlrun.run.training import run

DIGITS = DataInfo(input_shape=(1, 8, 8), task="classification", num_classes=10)


# ---- model.norm: none, batch or layer ----------------------------------------------------------------------------

def kinds(net: nn.Module) -> list[str]:
    return [type(m).__name__ for m in net.modules()]


def test_norm_layer_puts_layer_norm_in_the_mlp_and_the_cnn():
    mlp = MODELS.build({"name": "mlp", "hidden": [16, 16], "norm": "layer"}, info=DIGITS, out_features=10)
    assert kinds(mlp).count("LayerNorm") == 2 and "BatchNorm1d" not in kinds(mlp)
    cnn = MODELS.build({"name": "cnn", "channels": [4, 8], "hidden": [16], "norm": "layer"}, info=DIGITS,
                       out_features=10)
    # A feature map's layer norm: each sample over its channels and positions (GroupNorm with one group).
    assert [m.num_groups for m in cnn.modules() if isinstance(m, nn.GroupNorm)] == [1, 1]
    assert kinds(cnn).count("LayerNorm") == 1 and not any("BatchNorm" in k for k in kinds(cnn))
    old_spelling = MODELS.build({"name": "mlp", "hidden": [16], "batch_norm": True}, info=DIGITS, out_features=10)
    assert "BatchNorm1d" in kinds(old_spelling)


def test_layer_norm_reads_each_sample_alone_where_batch_norm_reads_the_batch():
    x = torch.randn(32, 1, 8, 8)
    for norm, alone in (("layer", True), ("batch", False)):
        torch.manual_seed(0)
        net = MODELS.build({"name": "mlp", "hidden": [16], "norm": norm}, info=DIGITS, out_features=10).train()
        assert torch.allclose(net(x)[:4], net(x[:4]), atol=1e-5) is alone, norm


@pytest.mark.parametrize(("keys", "words"), [
    ({"norm": "group"}, ["'model.norm=group'", "none, batch, layer"]),
    ({"norm": "layer", "batch_norm": True}, ["model.batch_norm=true", "model.norm=layer", "give one"]),
])
def test_a_bad_norm_is_refused_naming_the_key(keys, words):
    with pytest.raises(ConfigError) as err:
        MODELS.build({"name": "mlp", "hidden": [16], **keys}, info=DIGITS, out_features=10)
    assert err.value.key == "model.norm" and all(w in str(err.value) for w in words), str(err.value)


# ---- augmentation=scale ------------------------------------------------------------------------------------------

def square_batch(n: int = 8, size: int = 16, side: int = 4) -> torch.Tensor:
    """White side x side squares in the middle of black images: their bright area shows the zoom."""
    x = torch.zeros(n, 1, size, size)
    lo = (size - side) // 2
    x[..., lo:lo + side, lo:lo + side] = 1.0
    return x


def test_scale_grows_or_shrinks_each_image_by_its_factor_and_keeps_the_size():
    x = square_batch()
    for factor in (2.0, 0.5):
        out = Scale(factor, factor)(x)
        assert out.shape == x.shape
        # The bright area grows with the factor squared: 16 pixels -> 64 zoomed in, -> 4 zoomed out.
        assert torch.allclose(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)) * factor**2, rtol=0.02)


def test_augmentation_scale_draws_a_factor_per_image_within_its_zoom():
    x = square_batch(n=64)
    torch.manual_seed(0)
    ratio = AUGMENTATIONS.build({"name": "scale", "zoom": 0.5})(x).sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert ratio.min() >= 0.5**2 * 0.95 and ratio.max() <= 1.5**2 * 1.05
    assert ratio.min() < 0.6 and ratio.max() > 1.6  # some shrink, some grow: not one factor for the batch


def test_scale_is_applied_in_training_only():
    prepare = Prepare(DIGITS, AUGMENTATIONS.build({"name": "scale", "zoom": 0.3}), torch.device("cpu"))
    x = square_batch(size=8, side=2)
    assert torch.equal(prepare(x, train=False), x)
    assert not torch.equal(prepare(x, train=True), x)


@pytest.mark.parametrize("zoom", [-0.1, 0.95])
def test_a_zoom_out_of_range_is_refused_naming_the_key(zoom):
    with pytest.raises(ConfigError, match=r"'augmentation.zoom=.*' must be in \[0, 0.9\]") as err:
        AUGMENTATIONS.build({"name": "scale", "zoom": zoom})
    assert err.value.key == "augmentation.zoom"


# ---- trainer.weight_noise, trainer.gradient_noise ----------------------------------------------------------------

def test_gradient_noise_decays_as_neelakantan_et_al():
    # Variance std² / (1 + t)^0.55: at step 99 the variance is 100^-0.55 of the first step's.
    assert gradient_noise_std(0.1, 0.55, 0) == 0.1
    assert gradient_noise_std(0.1, 0.55, 99) ** 2 == pytest.approx(0.01 * 100**-0.55)
    assert gradient_noise_std(0.1, 0.0, 99) == 0.1


def test_noisy_weights_move_the_weights_for_the_pass_and_put_them_back_exactly():
    torch.manual_seed(0)
    net, x = nn.Linear(4, 3), torch.randn(5, 4)
    clean = [p.detach().clone() for p in net.parameters()]
    with noisy_weights(list(net.parameters()), 0.1, torch.Generator().manual_seed(0)):
        noisy = [p.detach().clone() for p in net.parameters()]
        (net(x) ** 2).sum().backward()
    assert all(torch.equal(p, c) for p, c in zip(net.parameters(), clean))
    assert not any(torch.equal(n, c) for n, c in zip(noisy, clean))
    # The gradient of Σ(Wx + b)² is taken at the noisy weights: 2(W'x + b')xᵀ.
    w, b = noisy
    assert torch.allclose(net.weight.grad, 2 * (x @ w.T + b).T @ x, atol=1e-5)


SHORT = ("dataset=digits", "model.hidden=[16]", "trainer.epochs=2", "trainer.batch_size=96", "trainer.device=cpu",
         "trainer.progress=false", "logger.gradients_every_n_steps=0", "logger.figures=false", "optimizer=adam",
         "optimizer.lr=0.01")


def train_short(tmp_path: Path, *overrides: str) -> dict:
    cfg = compose_config(*SHORT, *overrides)
    name = "-".join(overrides) or "plain"
    metrics = run(OmegaConf.create(cfg), tmp_path / name, list(overrides))
    weights = checkpoint.load(tmp_path / name / "checkpoints" / "last.pt")["model"]
    return {"metrics": metrics, "weights": weights}


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


def test_noise_zero_is_the_plain_run_and_noise_on_changes_the_weights_and_still_learns(tmp_path):
    plain = train_short(tmp_path)
    zero = train_short(tmp_path, "trainer.weight_noise=0", "trainer.gradient_noise=0")
    assert same_weights(zero, plain)
    chance = math.log(10)
    for key in ("trainer.weight_noise=0.05", "trainer.gradient_noise=0.05"):
        noisy = train_short(tmp_path, key)
        assert not same_weights(noisy, plain), key
        history = noisy["metrics"]["history"]  # train/loss: each epoch's mean loss at the noisy weights or steps
        assert history[-1]["train/loss"] < history[0]["train/loss"], key
        assert noisy["metrics"]["evaluation"]["train"]["loss"] < 0.9 * chance, key


@pytest.mark.parametrize("key", ["weight_noise", "gradient_noise", "gradient_noise_decay"])
def test_negative_noise_is_refused_naming_the_key(key):
    with pytest.raises(ConfigError, match=rf"'trainer.{key}=-0.1' must be 0") as err:
        TrainerOptions(**{key: -0.1})
    assert err.value.key == f"trainer.{key}"


STOP_AT = '''import os, signal


def build():
    """Train on the data as it is; at batch $STOP_AT_STEP of this process the run gets a SIGTERM, as a cluster
    would send it."""
    seen, stop = [0], int(os.environ.get("STOP_AT_STEP", "0"))

    def stop_at(x):
        seen[0] += 1
        if seen[0] == stop:
            os.kill(os.getpid(), signal.SIGTERM)
        return x
    return stop_at
'''


@pytest.mark.slow  # three dl-run processes; test_resume.py's default-suite check covers resuming itself
def test_a_run_with_noise_stopped_mid_epoch_and_resumed_ends_bitwise_identical(tmp_path):
    (tmp_path / "stop_at.py").write_text(STOP_AT)
    (tmp_path / "conf" / "augmentation").mkdir(parents=True)
    (tmp_path / "conf" / "augmentation" / "stop.yaml").write_text(
        "# STOP_AT_STEP=7 dl-run --config-dir conf augmentation=stop\n_target_: stop_at.build\n")
    args = ["--config-dir", "conf", *SHORT, "augmentation=stop", "trainer.deterministic=true",
            "trainer.weight_noise=0.05", "trainer.gradient_noise=0.05", "model.dropout=0.2"]

    def dl_run(*more: str, stop_at: int = 0) -> subprocess.CompletedProcess:
        env = {**os.environ, "STOP_AT_STEP": str(stop_at)}
        return subprocess.run([DL_RUN, *more], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)

    whole = dl_run(*args, "hydra.run.dir=whole")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    stopped = dl_run(*args, f"hydra.run.dir={tmp_path / 'stopped'}", stop_at=7)
    assert stopped.returncode == 143, stopped.stdout + stopped.stderr
    resumed = dl_run(f"resume={tmp_path / 'stopped'}", "--config-dir", "conf")
    assert resumed.returncode == 0 and "Resuming from epoch 0, step 7" in resumed.stdout, resumed.stdout
    ours, theirs = (checkpoint.load(tmp_path / d / "checkpoints" / "last.pt")["model"] for d in ("stopped", "whole"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "the resumed run's weights differ"
