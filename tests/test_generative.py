"""Autoencoders, the VAE and GANs (course 3 §5.2) through the one training loop: they learn, they show their
images in TensorBoard, a GAN resumes with both optimizers, and combinations that cannot work are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config
from dlrun.engine import checkpoint
from dlrun.data.base import DataInfo
from dlrun.errors import ConfigError
from dlrun.logger import NullLogger
from dlrun.models import MODELS
from dlrun.run.experiment import Experiment
from dlrun.run.training import run
from dlrun.engine.trainer import Trainer, TrainingOutputs
from dlrun.run.run_directory import RunDirectory

FAST = ("trainer.device=cpu", "trainer.progress=false", "trainer.batch_size=64", "dataset=digits")


def _train(tmp_path: Path, *overrides: str, epochs: int = 3) -> tuple[Experiment, list[dict[str, float]]]:
    exp = Experiment(compose_config(*FAST, f"trainer.epochs={epochs}", *overrides), tmp_path)
    state = Trainer(exp.parts, TrainingOutputs(RunDirectory(tmp_path), NullLogger()),
                    generator=torch.Generator().manual_seed(0)).fit()
    return exp, state.history


@pytest.mark.parametrize("overrides", [
    ("model=autoencoder",),
    ("model=conv_autoencoder",),
    ("model=conv_autoencoder", "model.upsampling=unpool", "model.noise=0.3", "model.latent_dim=16"),
    ("model=vae", "model.beta=0.1"),
    ("model=conv_vae", "model.beta=0.1"),
], ids=["mlp", "conv-transposed", "conv-unpool-denoising-dense-code", "vae", "conv-vae"])
def test_autoencoders_learn_to_reconstruct_the_clean_input(overrides, tmp_path):
    exp, history = _train(tmp_path, "task=reconstruction", "optimizer.lr=0.003", *overrides)
    chance, _, _ = exp.task.startup_check(exp.model, exp.prepare(exp.splits.x_train), exp.splits.y_train,
                                          exp.splits.y_train, exp.info)
    losses = [h["val/loss"] for h in history]
    assert losses[-1] < losses[0] and losses[-1] < chance, (losses, chance)
    assert history[-1]["val/psnr"] > history[0]["val/psnr"]
    if overrides[0] in ("model=vae", "model=conv_vae"):  # the ELBO's two terms, each logged, make the loss: reconstruction + beta * KL
        last = history[-1]
        assert {"train/reconstruction", "train/kl", "val/reconstruction", "val/kl"} <= set(last)
        assert last["val/kl"] > 0
        assert last["val/loss"] == pytest.approx(last["val/reconstruction"] + 0.1 * last["val/kl"], rel=1e-5)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 7, 9)])
def test_a_conv_vae_decodes_any_code_to_the_input_shape(shape):
    """Samples of the prior N(0, I) decode to images of the input's shape, odd sizes included (7 -> 3 -> 1 -> 7)."""
    info = DataInfo(shape, "reconstruction", name="images")
    vae = MODELS.build({"name": "conv_vae", "channels": [4, 8], "latent_dim": 3}, info=info, out_features=1)
    assert vae.decode(torch.randn(5, 3)).shape == (5, *shape)
    vae.train()
    out = vae(torch.randn(2, *shape))
    assert out.reconstruction.shape == (2, *shape) and out.mean.shape == out.log_var.shape == (2, 3)


@pytest.mark.parametrize("overrides", [("model=mlp",), ("model=dcgan", "optimizer.lr=2e-4", "optimizer.rho1=0.5")],
                         ids=["mlp", "dcgan"])
def test_a_gan_generator_moves_towards_the_data(overrides, tmp_path):
    exp = Experiment(compose_config(*FAST, "task=gan", *overrides, "trainer.epochs=4"), tmp_path)
    real_mean = exp.prepare(exp.splits.x_train).mean(dim=0)
    z = torch.randn(512, exp.model.latent_dim, generator=torch.Generator().manual_seed(3))

    def distance() -> float:
        exp.model.eval()
        with torch.no_grad():
            return float((exp.model.generator(z).mean(dim=0) - real_mean).pow(2).mean())

    before = distance()
    discriminator = [p.detach().clone() for p in exp.model.discriminator.parameters()]
    state = Trainer(exp.parts, TrainingOutputs(RunDirectory(tmp_path), NullLogger()),
                    generator=torch.Generator().manual_seed(0)).fit()
    assert distance() < 0.5 * before
    assert any(not torch.equal(a, b) for a, b in zip(discriminator, exp.model.discriminator.parameters()))
    last = state.history[-1]
    assert {"train/g_loss", "train/d_accuracy_real", "train/d_accuracy_fake", "val/g_loss",
            "val/d_accuracy_real", "val/d_accuracy_fake"} <= set(last)
    assert 0.0 <= last["val/d_accuracy_fake"] <= 1.0


def _images(tb_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(tb_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_denoising_autoencoder_cli_run_shows_reconstructions_in_tensorboard(dl_run):
    result = dl_run("task=reconstruction", "dataset=digits", "model=conv_autoencoder", "model.noise=0.3",
                    "trainer.epochs=2", "trainer.progress=false", "trainer.device=cpu")
    assert result.code == 0, result.output
    metrics = result.metrics()
    assert metrics["task"] == "reconstruction" and metrics["test"]["psnr"] > 10
    (run_dir,) = result.run_dirs()
    events = _images(run_dir / "tb")
    assert {"val/reconstructions", "test/reconstructions"} <= set(events.Tags()["images"])
    grids = events.Images("val/reconstructions")
    assert [g.step for g in grids][0] == 0 and len(grids) == 3  # the untrained model's (step 0), then one per epoch
    assert grids[0].height > 3 * 8 * 6  # three rows (noisy, reconstruction, clean) of 8x8 digits scaled up
    assert (run_dir / "curves.png").is_file()


def test_gan_run_logs_both_losses_and_sample_grids_that_change(tmp_path):
    cfg = compose_config(*FAST, "task=gan", "trainer.epochs=2")
    metrics = run(OmegaConf.create(cfg), tmp_path, [])
    events = _images(tmp_path / "tb")
    grids = events.Images("gan/samples")
    assert [g.step for g in grids] == sorted(g.step for g in grids) and len(grids) == 2
    assert grids[0].encoded_image_string != grids[1].encoded_image_string
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_epoch", "train/g_loss", "val/loss", "val/g_loss", "train/d_accuracy_real",
            "train/d_accuracy_fake"} <= scalars
    assert metrics["verdict"]["case"] == "not applicable"
    assert json.loads((tmp_path / "metrics.json").read_text())["best"]["epoch"] == 2  # the last generator


@pytest.fixture
def restores_determinism():
    """trainer.deterministic=true switches torch's deterministic algorithms on for the process: switch them back."""
    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)


def test_gan_resumed_between_epochs_ends_bitwise_identical(tmp_path, restores_determinism):
    # A fifth of the digits and narrow networks: resuming is bitwise exact at any size, and costs a fraction of the CPU.
    common = (*FAST, "task=gan", "trainer.deterministic=true", "logger=none", "dataset.train_fraction=0.2",
              "model.hidden=[32,64]")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(OmegaConf.create(compose_config(*common, "trainer.epochs=2")), straight, [])
    run(OmegaConf.create(compose_config(*common, "trainer.epochs=1")), stopped, [])
    (stopped / ".hydra").mkdir()
    run(OmegaConf.create(compose_config(*common, "trainer.epochs=2", f"resume={stopped}")), stopped, [])
    a, b = checkpoint.load(straight / "checkpoints" / "last.pt"), checkpoint.load(stopped / "checkpoints" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # Both optimizers came back: Adam's moments of the generator as well as the discriminator's.
    for saved in ("optimizer",):
        assert all(torch.equal(a[saved]["state"][i]["exp_avg"], b[saved]["state"][i]["exp_avg"])
                   for i in a[saved]["state"])
    g_a, g_b = a["task"]["generator_optimizer"]["state"], b["task"]["generator_optimizer"]["state"]
    assert g_a and all(torch.equal(g_a[i]["exp_avg_sq"], g_b[i]["exp_avg_sq"]) for i in g_a)


@pytest.mark.parametrize("overrides,key,words", [
    (("task=gan", "loss=cross_entropy"), "loss", "cannot train a GAN"),
    (("model=vae",), "model", "task=reconstruction"),
    (("task=reconstruction", "model=conv_vae", "model.upsampling=unpool"), "model.upsampling", "sample of the prior"),
    (("task=reconstruction", "model=conv_vae", "dataset=moons"), "model", "Use model=vae"),
    (("task=reconstruction", "model=conv_autoencoder", "dataset=moons"), "model", "Use model=autoencoder"),
    (("task=gan", "model=cnn"), "model", "model=dcgan"),
    (("model=dcgan",), "model", "task=gan"),
    (("task=gan", "scheduler=cosine"), "scheduler", "scheduler=none"),
    (("task=gan", "trainer.early_stopping_patience=3"), "trainer.early_stopping_patience", "judge the samples"),
    (("task=reconstruction", "mode=lr_find"), "mode", "mode=train"),
    (("task=reconstruction", "model=conv_autoencoder", "model.channels=[8,8,8,8]"), "model.channels", "at most 3"),
    (("task=reconstruction", "trainer.monitor=val/accuracy"), "trainer.monitor", "val/psnr"),
    (("task=gan", "model=dcgan", "model.upsampling=unpool"), "model.upsampling", "pooling indices"),
])
def test_combinations_that_cannot_work_are_refused_before_training(overrides, key, words, tmp_path):
    with pytest.raises(ConfigError) as err:
        Experiment(compose_config("trainer.device=cpu", *overrides), tmp_path)
    assert err.value.key == key and words in str(err.value), str(err.value)
    assert not any(tmp_path.iterdir())
