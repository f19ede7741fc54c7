"""Nothing lost, nothing run, nothing silent (#17): what dl-run may write where, what it reads from a run folder,
and how a run's data is found again. The refusals are in cases_boundaries.py (run by test_bad_input.py); here
what works: each through `dl-run` in a process of its own (conftest.dl_run)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import user_env
from dlrun.cli import safe_folder_name

FAST = ("dataset=csv", "dataset.target=y", "model.hidden=[8]", "trainer.epochs=2", "trainer.progress=false",
        "logger=none")


def write_csv(path: Path, rows: int = 60, shift: float = 0.0) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 2)) + shift
    y = (x[:, 0] + x[:, 1] > 2 * shift).astype(int)
    path.write_text("a,b,y\n" + "".join(f"{a:.4f},{b:.4f},{t}\n" for (a, b), t in zip(x, y)))


def ok(result) -> None:
    assert result.code == 0, result.output
    assert "Traceback" not in result.output


def test_a_new_run_is_marked_as_dl_runs_and_records_its_data(dl_run, tmp_path):
    write_csv(tmp_path / "data.csv")
    result = dl_run(*FAST, "dataset.path=data.csv", "hydra.run.dir=run")
    ok(result)
    marker = json.loads((tmp_path / "run" / ".dlrun").read_text())
    assert marker["dl-run"] and marker["created"] is True
    source = json.loads((tmp_path / "run" / "data_sources.json").read_text())["dataset.path"]
    assert source["given"] == "data.csv" and source["resolved"] == str((tmp_path / "data.csv").resolve())
    assert source["fingerprint"]["sha256"] == hashlib.sha256((tmp_path / "data.csv").read_bytes()).hexdigest()


def test_a_failed_run_removes_only_the_folder_it_made_and_keeps_an_empty_one_it_was_given(dl_run, tmp_path):
    (tmp_path / "empty").mkdir()
    assert dl_run("model=mlpp", "hydra.run.dir=empty").code == 2
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    assert dl_run("model=mlpp", "hydra.run.dir=new").code == 2
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fork_server) -> Path:
    """A CSV run in <root>/runs/run, trained from <root>."""
    root = tmp_path_factory.mktemp("trained")
    write_csv(root / "data.csv")
    done = fork_server.run([*FAST, "dataset.path=data.csv", "hydra.run.dir=runs/run"], root, user_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return root / "runs" / "run"


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_overwrite_true_replaces_an_output_that_is_refused_without_it(dl_run, tmp_path, trained):
    run = copy_of(trained, tmp_path)
    (tmp_path / "new.csv").write_text("a,b\n0.5,0.5\n1,2\n")
    (tmp_path / "out.csv").write_text("mine\n")
    predict = ("mode=predict", f"resume={run}", "predict.input=new.csv", "predict.output=out.csv")
    refused = dl_run(*predict)
    assert refused.code == 2 and "overwrite=true" in refused.output
    assert (tmp_path / "out.csv").read_text() == "mine\n"
    ok(dl_run(*predict, "overwrite=true"))
    assert (tmp_path / "out.csv").read_text().startswith("row,predicted")
    (tmp_path / "model.pt").write_text("mine\n")
    export = ("mode=export", f"resume={run}", "export.format=torchscript", "export.output=model.pt")
    assert dl_run(*export).code == 2 and (tmp_path / "model.pt").read_text() == "mine\n"
    ok(dl_run(*export, "overwrite=true"))
    assert (tmp_path / "model.pt").read_bytes()[:2] == b"PK"  # a TorchScript archive
    assert not list(tmp_path.glob(".*partial*"))


def test_lr_find_on_a_run_writes_its_own_file_and_keeps_the_runs_metrics(dl_run, tmp_path, trained):
    run = copy_of(trained, tmp_path)
    before = (run / "metrics.json").read_bytes()
    ok(dl_run("mode=lr_find", f"resume={run}", "lr_find.steps=10"))
    assert (run / "metrics.json").read_bytes() == before
    assert json.loads((run / "lr_find.json").read_text())["mode"] == "lr_find"
    again = dl_run("mode=lr_find", f"resume={run}", "lr_find.steps=10")
    assert again.code == 2 and "lr_find.json already exists" in again.output and "overwrite=true" in again.output


def test_a_run_in_a_folder_with_spaces_and_accents_resumes_evaluates_predicts_and_exports(dl_run, tmp_path):
    home = tmp_path / "tëst ünï"
    home.mkdir()
    write_csv(home / "data.csv")
    (home / "new.csv").write_text("a,b\n0.5,0.5\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = home / "run"
    ok(dl_run(*FAST, f"dataset.path={home / 'data.csv'}", f"hydra.run.dir={run}", cwd=elsewhere))
    ok(dl_run(f"resume={run}", "trainer.epochs=3", cwd=elsewhere))
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 3
    ok(dl_run("mode=eval", f"resume={run}", cwd=elsewhere))
    ok(dl_run("mode=predict", f"resume={run}", f"predict.input={home / 'new.csv'}", cwd=elsewhere))
    ok(dl_run("mode=export", f"resume={run}", "export.format=torchscript", cwd=elsewhere))
    assert (run / "eval_data.json").is_file() and (home / "new.predictions.csv").is_file()
    assert (run / "model.torchscript.pt").is_file()
    assert not (elsewhere / "outputs").exists()


def test_a_reused_run_finds_its_data_from_any_folder_refuses_it_changed_and_takes_a_new_path(dl_run, tmp_path,
                                                                                            trained):
    run = copy_of(trained, tmp_path)
    data = Path(json.loads((run / "data_sources.json").read_text())["dataset.path"]["resolved"])
    original = data.read_bytes()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_csv(elsewhere / "data.csv", shift=3.0)  # another file of the same name where the command runs
    ok(dl_run("mode=eval", f"resume={run}", cwd=elsewhere))
    scored = json.loads((run / "eval_data.json").read_text())["test"]
    # The run's own data, not the file of that name where the command runs.
    assert scored == pytest.approx(json.loads((run / "metrics.json").read_text())["test"], rel=1e-5)
    try:
        data.write_bytes(original.replace(b"1\n", b"0\n", 3))
        changed = dl_run("mode=eval", f"resume={run}", "overwrite=true", cwd=elsewhere)
        assert changed.code == 2 and "Traceback" not in changed.output
        assert "dataset.path=data.csv" in changed.output and "changed since the run trained" in changed.output
        # A path given on the command line wins, unchecked.
        ok(dl_run("mode=eval", f"resume={run}", "overwrite=true", "dataset.path=data.csv", cwd=elsewhere))
        assert json.loads((run / "eval_data.json").read_text())["test"] != scored
    finally:
        data.write_bytes(original)


def test_a_sweep_value_with_dots_and_slashes_keeps_its_job_inside_the_sweep(dl_run, tmp_path):
    (tmp_path / "inner" / "deeper").mkdir(parents=True)
    result = dl_run("-m", "hydra.sweep.dir=sweep", "dataset=iris", "model.hidden=[4]", "trainer.epochs=1",
                    "trainer.progress=false", "logger=none", "predict.output=../../escaped,a/b", cwd=tmp_path / "inner"
                    / "deeper")
    ok(result)
    sweep = tmp_path / "inner" / "deeper" / "sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == 2 and all(".." not in job for job in jobs)
    assert safe_folder_name("predict.output=../../escaped") in jobs[0] and "predict.output=a_b" in jobs[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inner"]
    assert (sweep / ".dlrun").is_file()


def test_code_a_run_folder_names_runs_only_when_the_user_names_it(dl_run, tmp_path):
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "def build_tiny(info, out_features: int, width: int = 4) -> nn.Module:\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(info.input_dim, width), nn.Tanh(),\n"
        "                         nn.Linear(width, out_features))\n")
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "tiny.yaml").write_text("_target_: my_models.build_tiny\nwidth: 5\n")
    common = ("dataset=iris", "trainer.epochs=1", "trainer.progress=false", "logger=none")
    ok(dl_run("--config-dir", "mine", "model=tiny", *common, "hydra.run.dir=run"))
    refused = dl_run("mode=eval", "resume=run")
    assert refused.code == 2 and "--config-dir mine" in refused.output.replace(str(tmp_path / "mine"), "mine")
    ok(dl_run("--config-dir", "mine", "mode=eval", "resume=run"))
    transfer = ("model=transfer", "model.source=run", *common)
    refused = dl_run(*transfer, "hydra.run.dir=t1")
    assert refused.code == 2 and "trust_code=[my_models.build_tiny]" in refused.output
    assert not (tmp_path / "t1").exists()
    ok(dl_run(*transfer, "trust_code=[my_models.build_tiny]", "hydra.run.dir=t2"))


def test_hydra_reads_back_every_quoted_folder_name():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from dlrun.run.arguments import hydra_value

    parser = OverridesParser.create()
    for text in ["/home/josé/runs/a b", "it's", "end\\", "a\\'b", "x${y}", "C:\\x\\", "a,b", "plain/run-1.csv"]:
        value = parser.parse_override(f"k={hydra_value(text)}").value()
        assert OmegaConf.create({"k": value}).k == text


def test_the_board_refuses_a_port_out_of_range_in_a_sentence(tmp_path):
    board = Path(sys.executable).with_name("dl-run-board")
    done = subprocess.run([str(board), str(tmp_path), "--port", "99999"], capture_output=True, text=True,
                          timeout=60, env={**os.environ})
    assert done.returncode == 2 and "65535" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
