"""Speed switches: trainer.precision, trainer.compile, trainer.channels_last, on the CPU this machine has."""

from __future__ import annotations

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from conftest import compose_config
from dlrun.engine import checkpoint
from dlrun.run.arguments import resume_arguments
from dlrun.errors import ConfigError
from dlrun.run.experiment import Experiment
from dlrun.run.training import run

TINY = ("trainer.epochs=2", "model.hidden=[16]", "trainer.progress=false", "trainer.device=cpu", "logger=none")


def train(tmp_path, *overrides: str) -> dict:
    return run(OmegaConf.create(compose_config(*TINY, *overrides)), tmp_path, list(overrides))


def test_bf16_autocast_trains_on_the_cpu_and_rounds_differently_from_32_bit(tmp_path):
    full = train(tmp_path / "32", "trainer.precision=32")
    half = train(tmp_path / "bf16", "trainer.precision=bf16")
    losses = [h["train/loss"] for h in half["history"]]
    assert losses[-1] < losses[0] < 2.4  # it learns
    assert half["history"] != full["history"]  # bf16 matmuls: not the float32 run in disguise
    assert abs(half["test"]["accuracy"] - full["test"]["accuracy"]) < 0.1


def test_fp16_is_refused_on_the_cpu_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.precision=fp16.*CUDA GPU.*bf16") as err:
        train(tmp_path, "trainer.precision=fp16")
    assert err.value.key == "trainer.precision"
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(ConfigError, match="valid: auto, 32, bf16, fp16"):
        train(tmp_path, "trainer.precision=16")


def test_channels_last_keeps_cnn_weights_in_nhwc_and_trains(tmp_path):
    overrides = ("model=cnn", "model.channels=[4,4]", "model.hidden=[16]", "trainer.channels_last=true")
    exp = Experiment(compose_config(*TINY, *overrides), tmp_path)
    # The second convolution: with one input channel (the first), both layouts are the same.
    conv = [m for m in exp.model.modules() if isinstance(m, torch.nn.Conv2d)][1]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    out = train(tmp_path, *overrides)
    assert out["history"][-1]["train/loss"] < out["history"][0]["train/loss"]


def _nhwc(exp: Experiment) -> bool:
    conv = [m for m in exp.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    return conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


@pytest.mark.parametrize("overrides, nhwc", [
    (("model=cnn", "model.channels=[4,4]"), True),  # auto on a CPU: dl-run's CNNs train in NHWC
    (("model=cnn", "model.channels=[4,4]", "trainer.channels_last=false"), False),
    (("model=torchvision", "model.arch=resnet18"), False),  # measured slower in NHWC on small images
])
def test_channels_last_auto_picks_nhwc_for_dl_runs_cnns_on_the_cpu(tmp_path, overrides, nhwc):
    settings = [o for o in TINY if not o.startswith("model.")]  # torchvision's models have no model.hidden
    exp = Experiment(compose_config(*settings, *overrides), tmp_path)
    assert _nhwc(exp) is nhwc
    assert exp.opts.channels_last is nhwc


def test_channels_last_is_refused_unless_true_false_or_auto(tmp_path):
    with pytest.raises(ConfigError, match=r"'trainer.channels_last=fast' must be true, false or auto") as err:
        Experiment(compose_config(*TINY, "model=cnn", "trainer.channels_last=fast"), tmp_path)
    assert err.value.key == "trainer.channels_last"


def test_nhwc_and_nchw_cnns_learn_the_same_function(tmp_path):
    """The layout changes how the sums are ordered, not what is computed: same seed, nearly the same run."""
    runs = [train(tmp_path / layout, "model=cnn", "model.channels=[4,8]", f"trainer.channels_last={layout}")
            for layout in ("true", "false")]
    for a, b in zip(runs[0]["history"], runs[1]["history"]):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
    assert runs[0]["test"]["accuracy"] == pytest.approx(runs[1]["test"]["accuracy"], abs=0.01)


@pytest.mark.slow  # inductor compiles C++ on first use: 25-50 s on 2 busy cores with a cold cache (7 s warm)
def test_a_compiled_model_trains_like_the_eager_one(tmp_path):
    eager = train(tmp_path / "eager", "trainer.epochs=1")
    compiled = train(tmp_path / "compiled", "trainer.epochs=1", "trainer.compile=true")
    assert compiled["history"][0]["train/loss"] == pytest.approx(eager["history"][0]["train/loss"], rel=1e-4)
    # The checkpoint holds the plain model's weights (no torch.compile prefix): it resumes without compile.
    keys = checkpoint.load(tmp_path / "compiled" / "checkpoints" / "last.pt")["model"].keys()
    assert not any("_orig_mod" in k for k in keys)


def test_a_run_saved_with_the_old_mixed_precision_switch_resumes_with_trainer_precision(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["trainer.mixed_precision=false",
                                                                        "trainer.epochs=3"]))
    args = resume_arguments([f"resume={tmp_path}"])
    assert "trainer.precision=32" in args and "trainer.epochs=3" in args
    assert not any("mixed_precision" in a for a in args)
