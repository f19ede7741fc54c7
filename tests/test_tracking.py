"""Tracking runs beyond TensorBoard (#19): logger=mlflow against a real MLflow server on localhost (one per module,
a temporary SQLite store) and the default SQLite store beside the runs, read back with MLflow's own client;
logger=csv; several backends at once; a sweep as a parent run; a killed run resumed as one run; a server that is
down before or goes away during a run; and the MLflow UI opened by dl-run-board --mlflow in headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow", reason='the tracking tests need MLflow: pip install -e ".[mlflow]"')

from browser import free_port, render, texts_of  # noqa: E402
from conftest import DL_RUN, user_env  # noqa: E402
from test_resume import write_slow_augmentation  # noqa: E402

from dlrun.loggers.mlflow import process_stamp  # noqa: E402

QUICK = ("trainer.progress=false", "trainer.device=cpu", "trainer.threads=1", "model.hidden=[16]")
SCREENS = Path("/tmp/screens")


class MlflowServer:
    """`mlflow server` on a free localhost port over a temporary SQLite file; it can be stopped and started again."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = root / "server.db"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.database}",
                   "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job workers: half the start
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _answers(f"{self.url}/health"):
            assert self.process.poll() is None and time.monotonic() < deadline, (
                f"mlflow server did not start:\n{(self.root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its uvicorn worker, gone at once
            self.process.wait()

    def client(self):
        return mlflow.MlflowClient(self.url)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One MLflow server for the module (its start costs more than a tiny run)."""
    running = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    running.start()
    yield running
    running.stop()


def runs_of(client, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}: {[e.name for e in client.search_experiments()]}"
    return client.search_runs([found.experiment_id], run_view_type=mlflow.entities.ViewType.ALL)


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def tensorboard_hparams(tb_dir: Path) -> dict[str, object]:
    """The HParams tab's values of a run, read from its event file with TensorBoard's own parsers."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    for events in sorted(tb_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    info = metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
                    return {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
    raise AssertionError(f"no HParams in {tb_dir}")


def _fake_run(client, experiment_id: str, name: str, stamp: str) -> str:
    return client.create_run(experiment_id, run_name=name, tags={"dlrun.process": stamp}).info.run_id


def test_a_run_logs_params_metrics_tags_and_artifacts_and_runs_of_gone_processes_become_killed(server, dl_run,
                                                                                               tmp_path):
    client = server.client()
    # Two runs left RUNNING in the store: one by a process that has ended (a SIGKILLed dl-run), one by a process that
    # still runs (a parallel sweep's job): the next dl-run to open the store marks the first KILLED only.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        others = client.create_experiment("others")
        gone_id = _fake_run(client, others, "gone", process_stamp(ended.pid))
        alive_id = _fake_run(client, others, "alive", process_stamp(alive.pid))
        done = dl_run("logger=many", f"logger.mlflow.tracking_uri={server.url}", "logger.mlflow.experiment=digits-mlp",
                      "trainer.epochs=4", "logger.log_every_n_steps=5", *QUICK, "hydra.run.dir=run")
        assert done.code == 0, done.output
        assert client.get_run(gone_id).info.status == "KILLED"
        assert client.get_run(gone_id).data.tags["status"] == "killed"
        assert client.get_run(alive_id).info.status == "RUNNING"
    finally:
        alive.kill()
        alive.wait()

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    (run,) = runs_of(client, "digits-mlp")
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    tags = run.data.tags
    assert {k: tags[k] for k in ("dataset", "model", "task", "status", "verdict")} == {
        "dataset": "digits", "model": "mlp", "task": "classification", "status": "completed",
        "verdict": metrics["verdict"]["case"]}
    # Params: the flattened config, the same values as TensorBoard's HParams tab.
    hparams = tensorboard_hparams(tmp_path / "run" / "tb")
    assert len(hparams) > 20 and set(hparams) <= set(run.data.params)
    for key, value in hparams.items():
        param = run.data.params[key]
        assert (str(value) == param if isinstance(value, (bool, str)) else float(param) == pytest.approx(value)), key
    assert run.data.params["optimizer.name"] == "adam" and run.data.params["model.hidden"] == "[16]"
    # Every epoch's values at the epoch's last step, as metrics.json has them; the step loss every 5 steps.
    epochs = metrics["history"]
    assert history(client, run.info.run_id, "val/loss") == [(e["step"], pytest.approx(e["val/loss"])) for e in epochs]
    assert [s for s, _ in history(client, run.info.run_id, "val/accuracy")] == [e["step"] for e in epochs]
    assert [s for s, _ in history(client, run.info.run_id, "train/loss_step")] == list(range(5, metrics["steps"] + 1,
                                                                                           5))
    assert run.data.metrics["hparam/test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "metrics.json", "curves.png", "figures", "notes"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "config")} == {"config/config.yaml",
                                                                                   "config/overrides.yaml"}
    assert "figures/test_confusion_matrix.png" in {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    config = Path(client.download_artifacts(run.info.run_id, "config/config.yaml", str(tmp_path / "downloaded")))
    assert config.read_text() == (tmp_path / "run" / ".hydra" / "config.yaml").read_text()

    # logger=many wrote the CSVs too: one row per epoch, one column per scalar; the step values in their own file.
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["val/loss"]) for r in rows] == pytest.approx([e["val/loss"] for e in epochs])
    with open(tmp_path / "run" / "metrics_steps.csv", newline="") as handle:
        steps = [int(r["step"]) for r in csv.DictReader(handle) if r["train/loss_step"]]
    assert steps == list(range(5, metrics["steps"] + 1, 5))


def test_a_sweep_is_one_parent_run_with_a_child_run_per_job_and_the_summary(server, dl_run, tmp_path):
    done = dl_run("-m", "logger=mlflow", f"logger.mlflow.tracking_uri={server.url}", "logger.mlflow.experiment=sweep",
                  "dataset=iris", "trainer.epochs=2", *QUICK, "optimizer.lr=0.1,0.01")
    assert done.code == 0, done.output
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    client = server.client()
    runs = runs_of(client, "sweep")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: r.info.run_name)
    assert parent.info.run_name == sweep_dir.name and parent.info.status == "FINISHED"
    assert parent.data.tags["status"] == "completed"
    assert [r.info.run_name for r in children] == sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()
                                                         and p.name[0].isdigit())
    assert [r.data.params["optimizer.lr"] for r in children] == ["0.1", "0.01"]
    assert all(r.info.status == "FINISHED" and len(history(client, r.info.run_id, "val/loss")) == 2 for r in children)
    summary = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary.md", "val_curves.png"} <= summary
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # a server was named: no local store


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory) -> Path:
    """A sweep of 4 jobs run by joblib 4 at a time, logging to the default store: the folder it ran in."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install hydra-joblib-launcher")
    cwd = tmp_path_factory.mktemp("sweep")
    done = subprocess.run([DL_RUN, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "logger=mlflow",
                           "dataset=iris", "trainer.epochs=2", *QUICK, "optimizer.lr=0.1,0.03,0.01,0.003"],
                          cwd=cwd, capture_output=True, text=True, timeout=600, env=user_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return cwd


@pytest.mark.slow
def test_four_joblib_jobs_log_into_one_store_as_children_of_the_sweep_run(joblib_sweep):
    cwd = joblib_sweep
    assert sorted(p.name for p in (cwd / "outputs").iterdir()) == ["mlflow-artifacts", "mlflow.db", "mlflow.db.lock",
                                                                   "multirun"]
    assert not (cwd / "mlruns").exists()  # nothing beside outputs/
    (sweep_dir,) = (cwd / "outputs" / "multirun").glob("*/*")
    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    runs = runs_of(client, "iris")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == sweep_dir.name and parent.info.status == "FINISHED"
    assert len(runs) == 5 and len(children) == 4
    assert sorted(r.data.params["optimizer.lr"] for r in children) == ["0.003", "0.01", "0.03", "0.1"]
    for child in children:
        job_dir = sweep_dir / child.info.run_name
        steps = [e["step"] for e in json.loads((job_dir / "metrics.json").read_text())["history"]]
        assert child.info.status == "FINISHED", child.info.run_name
        assert [s for s, _ in history(client, child.info.run_id, "val/loss")] == steps
    # No job took another's live run for a dead one.
    assert not [r for r in runs if r.data.tags.get("status") == "killed"]
    assert {"summary.csv", "summary.md", "val_curves.png"} <= {a.path for a in client.list_artifacts(
        parent.info.run_id)}


@pytest.mark.slow
def test_the_mlflow_ui_started_by_dl_run_board_shows_the_sweep_runs_and_a_metric(joblib_sweep, tmp_path):
    cwd = joblib_sweep
    (sweep_dir,) = (cwd / "outputs" / "multirun").glob("*/*")
    port = free_port()
    log = tmp_path / "board.log"
    with open(log, "wb") as out:
        board = subprocess.Popen([str(Path(DL_RUN).with_name("dl-run-board")), "--mlflow", "outputs", "--port",
                                  str(port)], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=user_env())
    try:
        deadline = time.monotonic() + 240
        while f"http://127.0.0.1:{port}" not in log.read_text():
            assert board.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")  # the UI's own server, as the page reads it
        experiment = client.get_experiment_by_name("iris").experiment_id
        runs = client.search_runs([experiment])
        # MLflow's page comparing the sweep's runs: the parent and its jobs side by side, their params and metrics.
        ids = urllib.parse.quote(json.dumps([r.info.run_id for r in runs]))
        shot = tmp_path / "mlflow_ui.png"
        dom = render(f"http://127.0.0.1:{port}/#/compare-runs?runs={ids}&experiments=%5B%22{experiment}%22%5D",
                     screenshot=shot, window=(1600, 2400), budget_ms=30000)
        SCREENS.mkdir(exist_ok=True)
        shutil.copy(shot, SCREENS / "h19b_mlflow_ui_sweep.png")
    finally:
        board.send_signal(signal.SIGTERM)
        board.wait(timeout=120)
    cells = texts_of(dom, "td")
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(jobs) == 4 and set(jobs) <= set(cells), cells
    assert sweep_dir.name in cells, cells
    assert "val/loss" in texts_of(dom, "a")  # the metrics table: each metric's name links to its chart


def test_a_run_killed_with_sigkill_and_resumed_is_one_mlflow_run_with_one_value_per_step(server, tmp_path):
    write_slow_augmentation(tmp_path)
    args = ["--config-dir", "conf", "augmentation=slow", "dataset=digits", "trainer.epochs=4",
            "trainer.checkpoint_every_n_steps=4", "logger.log_every_n_steps=2", "logger=[tensorboard,mlflow]",
            f"logger.mlflow.tracking_uri={server.url}", "logger.mlflow.experiment=resumed", *QUICK]
    client = server.client()
    with open(tmp_path / "first.log", "w") as out:
        first = subprocess.Popen([DL_RUN, *args, "hydra.run.dir=run"], cwd=tmp_path, stdout=out,
                                 stderr=subprocess.STDOUT, env=user_env())
    deadline = time.monotonic() + 240
    # SIGKILL once MLflow has the first epoch and a few steps of the second: nothing of dl-run's runs after it.
    while not (client.get_experiment_by_name("resumed") and runs_of(client, "resumed")
               and max((s for s, _ in history(client, runs_of(client, "resumed")[0].info.run_id, "train/loss_step")),
                       default=0) > 30):
        assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(0.1)
    first.kill()
    first.wait()
    (killed,) = runs_of(client, "resumed")
    assert killed.info.status == "RUNNING"  # what MLflow's client leaves behind a SIGKILL

    resumed = subprocess.run([DL_RUN, "--config-dir", "conf", "resume=run"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env=user_env())
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming from epoch" in resumed.stdout
    (run,) = runs_of(client, "resumed")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4
    assert [s for s, _ in history(client, run.info.run_id, "val/loss")] == [e["step"] for e in metrics["history"]]
    assert [s for s, _ in history(client, run.info.run_id, "train/loss_step")] == list(range(2, metrics["steps"] + 1,
                                                                                           2))


def test_a_server_that_is_down_is_refused_before_anything_is_written(dl_run, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done = dl_run("logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={url}", *QUICK, "hydra.run.dir=run")
    assert done.code == 2, done.output
    assert f"logger.mlflow.tracking_uri={url}" in done.output and "no MLflow server answers" in done.output
    assert "Traceback" not in done.output
    assert list(tmp_path.iterdir()) == []  # no run directory, no store


def test_a_server_that_goes_away_mid_run_does_not_stop_the_training(server, tmp_path):
    """Run last among the module's server tests: it stops the server for good (its database is read directly)."""
    write_slow_augmentation(tmp_path)
    args = ["--config-dir", "conf", "augmentation=slow", "dataset=digits", "trainer.epochs=5",
            "logger=[tensorboard,csv,mlflow]", f"logger.mlflow.tracking_uri={server.url}",
            "logger.mlflow.experiment=server-away", *QUICK, "hydra.run.dir=run"]
    client = server.client()
    with open(tmp_path / "run.log", "w") as out:
        training = subprocess.Popen([DL_RUN, *args], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                    env=user_env())
    deadline = time.monotonic() + 240
    while not (client.get_experiment_by_name("server-away") and runs_of(client, "server-away")
               and history(client, runs_of(client, "server-away")[0].info.run_id, "val/loss")):
        assert training.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()
        time.sleep(0.1)
    server.stop()
    assert training.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()
    output = (tmp_path / "run.log").read_text()
    assert f"MLflow at {server.url} did not take the run's values" in output
    assert re.search(rf"\d+ metric values never reached MLflow at {re.escape(server.url)}", output), output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 5
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4, 5]  # the other loggers went on
    stored = mlflow.MlflowClient(f"sqlite:///{server.database}")  # what the server had taken when it went away
    (run,) = runs_of(stored, "server-away")
    assert 1 <= len(history(stored, run.info.run_id, "val/loss")) < 5


@pytest.mark.parametrize("logger_cfg,key,words", [
    ({"tensorboard": {}, "wandb": {}}, "logger.wandb", "Valid loggers: csv, mlflow, none, tensorboard"),
    ({"tensorboard": {"subdr": "x"}}, "logger.tensorboard.subdr", "Did you mean 'subdir'"),
    ({"log_every_n_steps": 0, "tensorboard": {}}, "logger.log_every_n_steps", "must be at least 1"),
    ({"csv": {"file": "../metrics.csv"}}, "logger.csv.file", "a file name ending in .csv"),
    ({"mlflow": {"tracking_uri": "ftp://host/runs"}}, "logger.mlflow.tracking_uri", "neither sqlite:///<file>"),
    ({"mlflow": {"tracking_uri": "sqlite:///{tmp}/missing/runs.db"}}, "logger.mlflow.tracking_uri", "does not exist"),
])
def test_bad_logger_settings_are_refused_naming_the_key(logger_cfg, key, words, tmp_path):
    from dlrun.errors import ConfigError
    from dlrun.loggers import check_logger

    logger_cfg = json.loads(json.dumps(logger_cfg).replace("{tmp}", str(tmp_path)))
    with pytest.raises(ConfigError) as refused:
        check_logger(logger_cfg, tmp_path / "run")
    assert refused.value.key == key and words in str(refused.value), str(refused.value)
    assert list(tmp_path.iterdir()) == []  # checked before anything is written


def test_logger_mlflow_without_the_package_names_the_pip_command(monkeypatch, tmp_path):
    from dlrun.errors import ConfigError
    from dlrun.loggers import check_logger

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed: find_spec finds nothing
    with pytest.raises(ConfigError, match=r'pip install "mlflow>=3\.7".*pip install -e "\.\[mlflow\]"'):
        check_logger({"tensorboard": {}, "mlflow": {}}, tmp_path)


def test_a_logger_node_recorded_before_backends_had_their_own_keys_reads_as_that_backend():
    from dlrun.loggers import split_config

    old = {"name": "tensorboard", "subdir": "tb", "log_every_n_steps": 10, "gradients_every_n_steps": 100,
           "histograms": True, "figures": True, "gradcam_every_n_epochs": 0}
    shared, backends = split_config(old)
    assert backends == {"tensorboard": {"subdir": "tb"}} and shared["log_every_n_steps"] == 10
    assert split_config({"name": "none"})[1] == {}
