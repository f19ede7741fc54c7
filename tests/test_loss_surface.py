"""mode=loss_surface (course 1 §5.1, course 2 §1.1, §3.1): the loss over two parameters and each optimizer's path."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config
from dlrun.errors import ConfigError
from dlrun.run.training import run

QUIET = ("trainer.progress=false", "trainer.threads=1", "trainer.device=cpu")
# The preset's line through points on x in [0, 2] (a narrow valley), from the same start; a coarse grid for speed.
VALLEY = ("mode=loss_surface", "dataset=linear", "dataset.x_range=[0,2]", "model=linear",
          "loss_surface.start=[-2,2]", "loss_surface.grid=11", *QUIET)


def surface_run(tmp_path, name: str, *overrides: str) -> dict:
    args = [*VALLEY, *overrides]
    return run(OmegaConf.create(compose_config(*args)), tmp_path / name, args)


def test_too_high_a_rate_ends_above_a_good_one_and_momentum_and_adam_end_below_sgd(tmp_path):
    good = surface_run(tmp_path, "good", "optimizer=sgd", "optimizer.lr=0.1")
    high = surface_run(tmp_path, "high", "optimizer=sgd", "optimizer.lr=0.5")
    momentum = surface_run(tmp_path, "momentum", "optimizer=momentum", "optimizer.lr=0.1")
    adam = surface_run(tmp_path, "adam", "optimizer=adam", "optimizer.lr=0.1")
    assert good["steps"] == momentum["steps"] == adam["steps"] == 50 and not good["diverged"]
    assert high["diverged"] or high["final_loss"] > good["final_loss"]
    assert momentum["final_loss"] < good["final_loss"] and adam["final_loss"] < good["final_loss"]
    for record in (good, momentum, adam):  # nothing ends below the minimum L-BFGS found
        assert record["final_loss"] >= record["minimum"]["loss"] - 1e-6
    assert good["path"][0][:2] == [-2.0, 2.0] and good["params"] == ["1.weight", "1.bias"]
    assert (tmp_path / "good" / "loss_surface.png").read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(str(tmp_path / "good" / "tb"), size_guidance={"images": 0}).Reload()
    assert "loss_surface/path" in events.Tags()["images"]


def test_two_chosen_weights_of_a_larger_model_with_the_rest_frozen(tmp_path):
    args = ["mode=loss_surface", "dataset=iris", "model.hidden=[4]", "loss_surface.params=[1.weight:0:2,3.bias:1]",
            "loss_surface.steps=5", "loss_surface.grid=7", "optimizer=sgd", "optimizer.lr=0.5", *QUIET]
    record = run(OmegaConf.create(compose_config(*args)), tmp_path, args)
    assert record["params"] == ["1.weight:0:2", "3.bias:1"] and record["steps"] == 5
    assert record["path"][-1][2] < record["path"][0][2]  # descent on those two values alone lowers the loss


@pytest.mark.parametrize(("params", "expected"), [
    ("null", r"has 3\d trainable values.*1\.weight \(4, 4\)"),
    ("[1.weight,3.bias:1]", r"names '1\.weight'.*1\.weight \(4, 4\)"),
    ("[1.weight:9:0,3.bias:1]", r"names '1\.weight:9:0'"),
    ("[3.bias:1]", r"must name two values"),
])
def test_values_that_are_not_two_of_the_model_are_refused_listing_its_parameters(tmp_path, params, expected):
    args = ["mode=loss_surface", "dataset=iris", "model.hidden=[4]", f"loss_surface.params={params}", *QUIET]
    with pytest.raises(ConfigError, match=expected) as err:
        run(OmegaConf.create(compose_config(*args)), tmp_path, args)
    assert err.value.key == "loss_surface.params" and not (tmp_path / "metrics.json").exists()


def test_a_sweep_draws_every_path_on_one_figure_in_the_sweep_folder(dl_run, tmp_path):
    result = dl_run("-m", *VALLEY, "optimizer=sgd,momentum", "optimizer.lr=0.1", "loss_surface.steps=20",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.code == 0, result.output
    assert (tmp_path / "sweep" / "loss_surface.png").read_bytes()[:4] == b"\x89PNG"
    assert "Sweep figure, 2 path(s) (sgd lr=0.1 " in result.stdout and "momentum lr=0.1 α=0.9 " in result.stdout
    finals = [json.loads(p.read_text())["final_loss"] for p in sorted((tmp_path / "sweep").glob("*/metrics.json"))]
    assert len(finals) == 2 and all(f"final loss {f:.6g}" in result.stdout for f in finals)
