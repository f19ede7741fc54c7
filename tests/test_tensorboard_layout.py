"""TensorBoard opens on the curves that matter (#19): the loss, training and validation on one card, then the main
metric the same way, then the diagnostics; the HParams tab leads with the keys the command changed, booleans as
booleans. Read back with TensorBoard's own event reader, and once in a real headless browser (tests/browser.py)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from browser import render, serve_tensorboard, texts_of
from conftest import Result, user_env

QUICK = ("model.hidden=[16]", "trainer.progress=false", "trainer.threads=1", "trainer.device=cpu")


def read_events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def one_run(fork_server, tmp_path_factory) -> Result:
    """One small run, read by the tests below: two epochs, gradient diagnostics every 10 steps."""
    cwd = tmp_path_factory.mktemp("one_run")
    args = ["optimizer=sgd", "optimizer.lr=0.1", "trainer.epochs=2", "logger.gradients_every_n_steps=10", *QUICK]
    result = Result(fork_server.run(args, cwd, user_env()), cwd)
    assert result.code == 0, result.output
    return result


def test_loss_then_main_metric_lead_with_training_and_validation_as_sub_runs(one_run):
    (run_dir,) = one_run.run_dirs()
    history = one_run.metrics()["history"]
    main, train, val = (read_events(run_dir / "tb" / sub) for sub in ("", "train", "val"))
    # One tag, two sub-runs: TensorBoard draws tb/train and tb/val on the one "Loss" card.
    assert scalars(train, "Loss") == [(h["step"], h["train/loss"]) for h in history]
    assert scalars(val, "Loss") == [(h["step"], h["val/loss"]) for h in history]
    assert scalars(val, "Metric/accuracy") == [(h["step"], h["val/accuracy"]) for h in history]
    # TensorBoard sorts the Time Series groups by character code (capitals first): Loss, Metric, then the rest.
    groups = {tag.split("/")[0] for events in (main, train, val) for kind in ("scalars", "images", "histograms")
              for tag in events.Tags()[kind]}
    assert sorted(groups)[:2] == ["Loss", "Metric"]
    assert {"activations", "gradient_norm", "train", "val", "hparam"} <= groups  # the diagnostics stay, below
    # The tags written before stay where they were: scripts and older runs read them the same way.
    assert scalars(main, "val/loss") == scalars(val, "Loss")
    assert scalars(main, "train/loss_epoch") == scalars(train, "Loss")


def test_hparams_lead_with_the_overridden_keys_then_the_main_metric_and_keep_booleans(one_run):
    (run_dir,) = one_run.run_dirs()
    content = read_events(run_dir / "tb").PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG]).hparams
    # The plugin lists (and ticks for its table) the hyperparameters that differ first: the ones the command set.
    differing = {info.name for info in experiment.hparam_infos if info.differs}
    assert differing == {"optimizer.name", "optimizer.lr", "trainer.epochs", "model.hidden", "trainer.threads"}
    # (trainer.device and trainer.progress are no hyperparameters; logger.* neither)
    metrics = [info.name.tag for info in experiment.metric_infos]
    assert metrics[:3] == ["hparam/val/accuracy", "hparam/test/accuracy", "hparam/train/accuracy"]
    assert start["dataset.standardize"].WhichOneof("kind") == "bool_value"  # shown as false, not 0.0000
    assert start["dataset.standardize"].bool_value is False
    assert start["dataset.classes"].string_value == "None"
    assert start["optimizer.lr"].number_value == pytest.approx(0.1)


def hparams_served(url: str) -> dict:
    """What TensorBoard's HParams plugin serves its page: the experiment, hyperparameters in the table's order."""
    request = urllib.request.Request(url + "data/plugin/hparams/experiment", data=b'{"experimentName": ""}',
                                     headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_a_sweep_opens_in_the_browser_on_the_loss_card_of_every_job(dl_run, tmp_path):
    result = dl_run("-m", "optimizer=sgd,adam", "optimizer.lr=0.1,0.01", "trainer.epochs=2", *QUICK)
    assert result.code == 0, result.output
    jobs = result.run_dirs()
    assert len(jobs) == 4
    sweep = jobs[0].parent
    with serve_tensorboard(sweep) as url:
        # forceSVG (a TensorBoard flag): the charts draw in the page itself, so the screenshot shows their lines
        # however late a loaded machine's WebGL worker would have drawn them.
        dom = render(url + "?forceSVG=true", screenshot=tmp_path / "time_series.png", window=(1600, 1200))
        served = hparams_served(url)
    assert (tmp_path / "time_series.png").read_bytes()[:4] == b"\x89PNG"
    # The rendered page: under the (empty) pinned section, the first group is the loss, the next the main metric.
    assert texts_of(dom, ".group-title")[:3] == ["Pinned", "Loss", "Metric"]
    loss_card, metric_card = texts_of(dom, "scalar-card")[:2]
    assert loss_card.startswith("Loss") and metric_card.startswith("Metric/accuracy")
    for job in jobs:  # each job's training and validation curves on the one card
        assert f"{job.name}/tb/train" in loss_card and f"{job.name}/tb/val" in loss_card, job.name
        assert f"{job.name}/tb/val" in metric_card, job.name
    # HParams: the keys the sweep set come first, then the shared ones by name.
    names = [info["name"] for info in served["hparamInfos"]]
    varied = {"optimizer.name", "optimizer.lr", "trainer.epochs", "model.hidden", "trainer.threads"}
    assert set(names[:len(varied)]) == varied and names[len(varied):] == sorted(names[len(varied):])


# Slow: test_resume's kill-and-resume test checks the same purge of tb/train and tb/val after SIGKILLs.
@pytest.mark.slow
def test_a_resume_after_a_lost_epoch_leaves_one_value_per_step_on_the_loss_card(dl_run, tmp_path):
    first = dl_run("trainer.epochs=2", *QUICK)
    assert first.code == 0, first.output
    (run_dir,) = first.run_dirs()
    saved = (run_dir / "checkpoints" / "last.pt").read_bytes()
    # Epoch 3 is logged, then its checkpoint is lost (as when a run is killed between the two): the resume from
    # epoch 2 logs epoch 3 again, and TensorBoard must keep only the second one, in each sub-run.
    assert dl_run(f"resume={run_dir}", "trainer.epochs=3").code == 0
    (run_dir / "checkpoints" / "last.pt").write_bytes(saved)
    again = dl_run(f"resume={run_dir}", "trainer.epochs=3")
    assert again.code == 0, again.output
    history = again.metrics()["history"]
    for subrun in ("train", "val"):
        loss = scalars(read_events(run_dir / "tb" / subrun), "Loss")
        assert loss == [(h["step"], h[f"{subrun}/loss"]) for h in history], subrun
