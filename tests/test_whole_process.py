"""The whole command, not only its loop (issue #21): trainer.profile=true says where the seconds went, and what
surrounds the training costs no more than it must."""

from __future__ import annotations

import json
import time

import pytest

from conftest import TINY
from dlrun.diagnostics.timing import PhaseClock


def test_profile_table_and_file_account_for_the_whole_process(dl_run):
    result = dl_run(*TINY, "trainer.profile=true", script=True)  # the installed script: its own start-up counts
    assert result.code == 0, result.output
    assert "where the seconds went (trainer.profile=true)" in result.stdout
    (run_dir,) = result.run_dirs()
    rows = {row["phase"]: row for row in json.loads((run_dir / "profile.json").read_text())["phases"]}
    for name in ("python start-up", "Hydra: compose the config, set up the job", "imports: torch and the training code",
                 "build the experiment", "data", "train", "steps", "validation, epoch logging and views",
                 "checkpoints", "score train, val and test", "test view: confusion_matrix_view", "curves.png",
                 "metrics.json", "close the loggers (write out TensorBoard's files)"):
        assert name in rows, f"{name} missing from {sorted(rows)}"
    assert rows["steps"]["calls"] == 3 and rows["checkpoints"]["calls"] == 3  # trainer.epochs=3, one a epoch
    assert rows["train"]["depth"] == 0 and rows["steps"]["depth"] == 1
    assert rows["steps"]["wall"] <= rows["train"]["wall"]
    whole = rows["whole process so far"]
    top_level = [r for r in rows.values() if r["depth"] == 0 and r["calls"] is not None]
    # The phases cover the process: what lies between them is a small share of it, never negative.
    assert -0.01 <= rows["other (between the phases above)"]["wall"] <= 0.1 * whole["wall"]
    assert abs(sum(r["wall"] for r in top_level) + rows["other (between the phases above)"]["wall"]
               - whole["wall"]) < 1e-6
    assert 0 < whole["cpu"] and rows["imports: torch and the training code"]["cpu"] > 0


def test_without_the_key_nothing_is_printed_or_written(dl_run):
    result = dl_run(*TINY)
    assert result.code == 0, result.output
    assert "where the seconds went" not in result.stdout
    assert not (result.run_dirs()[0] / "profile.json").exists()


def test_nested_and_repeated_phases_add_up():
    clock = PhaseClock()
    for _ in range(3):
        with clock.phase("epoch"):
            with clock.phase("step"):
                time.sleep(0.01)
    epoch, step = clock.phases["epoch"], clock.phases["step"]
    assert (epoch.calls, step.calls, epoch.depth, step.depth) == (3, 3, 0, 1)
    assert 0.03 <= step.wall <= epoch.wall


def test_digits_are_scikit_learns_without_importing_it():
    # The default experiment's data, read from the file scikit-learn ships, equals load_digits(); in a fresh process
    # neither scikit-learn nor SciPy is imported for it (their import cost more than the whole training).
    import subprocess
    import sys

    import numpy as np
    import sklearn.datasets

    from dlrun.data.tabular import digits_arrays

    pixels, labels = digits_arrays()
    bunch = sklearn.datasets.load_digits()
    assert np.array_equal(pixels, bunch.data) and np.array_equal(labels, bunch.target)
    probe = ("import sys; from dlrun.data.tabular import build_digits; build_digits(); "
             "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_a_sweep_still_refuses_a_job_that_cannot_be_composed_before_any_job_runs(dl_run):
    # dl-run's basic sweeper composes one job of each kind to check a sweep (not every job before the launcher
    # composes each again): the sgd jobs, a kind of their own, are still checked before the first adam job trains.
    result = dl_run("-m", *TINY, "optimizer=adam,sgd", "optimizer.lr=0.01,0.02", "optimizer.rho1=0.8",
                    "hydra.sweep.dir=sweep")
    assert result.code != 0
    assert "rho1" in result.output and "not in struct" in result.output
    assert not list((result.cwd / "sweep").glob("*/metrics.json")) and not list((result.cwd / "sweep").glob("0_*"))


def test_a_sweep_recorded_by_hydras_own_basic_sweeper_resumes_as_the_same_sweep():
    from dlrun.run.sweep_resume import sweep_changes

    def record(target: str) -> dict:
        return {"hydra": {"sweeper": {"_target_": target, "params": None},
                          "overrides": {"task": ["optimizer.lr=0.1,0.2"], "hydra": []}}}

    assert sweep_changes(record("hydra._internal.core_plugins.basic_sweeper.BasicSweeper"),
                         record("hydra_plugins.dlrun_basic_sweeper.sweeper.DlrunBasicSweeper")) == []
    assert sweep_changes(record("hydra_plugins.dlrun_optuna_sweeper.sweeper.DlrunOptunaSweeper"),
                         record("hydra_plugins.dlrun_basic_sweeper.sweeper.DlrunBasicSweeper"))


ATEXIT_USER_CODE = '''
import atexit, threading, time
from pathlib import Path

from dlrun.components.augment import AUGMENTATIONS

def _late_write():
    time.sleep(0.5)
    Path("thread.txt").write_text("finished")

atexit.register(lambda: Path("atexit.txt").write_text("ran"))

def build(**kwargs):
    threading.Thread(target=_late_write).start()  # not a daemon: the process waits for it
    return None
'''


def test_the_script_exits_fast_yet_runs_what_an_interpreter_exit_runs(dl_run, tmp_path):
    # console_main ends the process without tearing the interpreter's modules down (issue #21), but first joins
    # the threads and runs the atexit handlers a normal exit would: a user's code loses nothing.
    (tmp_path / "mine.py").write_text(ATEXIT_USER_CODE)
    (tmp_path / "conf" / "augmentation").mkdir(parents=True)
    (tmp_path / "conf" / "augmentation" / "mine.yaml").write_text("# dl-run --config-dir conf augmentation=mine\n"
                                                                  "_target_: mine.build\n")
    result = dl_run("--config-dir", "conf", "augmentation=mine", *TINY, script=True)
    assert result.code == 0, result.output
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert (tmp_path / "thread.txt").read_text() == "finished"
    assert "Run directory:" in result.stdout  # the last lines printed reached the pipe
    refused = dl_run("model=mlpp", script=True)
    assert refused.code == 2 and "Did you mean 'mlp'" in refused.output


COLLECTOR_USER_CODE = '''
import gc
from pathlib import Path

import torch.nn.functional as F
from torch import nn

from dlrun.components.losses import Loss


class Watched(nn.Module):
    def forward(self, logits, target):
        with Path("collector.txt").open("a") as out:
            out.write(f"{gc.isenabled()}\\n")
        return F.cross_entropy(logits, target)


def build(info):
    return Loss(Watched(), name="watched", out_features=info.num_classes)
'''


def test_the_collector_paused_for_the_start_up_is_on_while_the_users_code_trains(dl_run, tmp_path):
    # The script pauses Python's garbage collector while it imports and builds (issue #21: ~1 CPU second a
    # command); the training, and the user's code in it, run with it on; a program importing dl-run keeps its own.
    import subprocess
    import sys

    (tmp_path / "mine.py").write_text(COLLECTOR_USER_CODE)
    (tmp_path / "conf" / "loss").mkdir(parents=True)
    (tmp_path / "conf" / "loss" / "watched.yaml").write_text("_target_: mine.build\n")
    result = dl_run("--config-dir", "conf", "loss=watched", *TINY, script=True)
    assert result.code == 0, result.output
    seen = (tmp_path / "collector.txt").read_text().split()
    assert seen and set(seen) == {"True"}, seen[:5]
    # The same in a launcher's worker processes, which pause it for their first job's imports.
    (tmp_path / "collector.txt").unlink()
    sweep = dl_run("-m", "--config-dir", "conf", "loss=watched", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   "seed=0,1,2", *TINY, script=True)
    assert sweep.code == 0, sweep.output
    seen = (tmp_path / "collector.txt").read_text().split()
    assert len(seen) > 3 and set(seen) == {"True"}, seen[:5]
    importer = "import gc, dlrun.cli, dlrun.run.training; print(gc.isenabled())"
    assert subprocess.run([sys.executable, "-c", importer], capture_output=True, text=True).stdout.strip() == "True"


def _keys_found_by_reading_are_composed(options_of) -> int:
    """preflight looks command-line keys up in train.yaml and the chosen options' YAMLs instead of composing
    (issue #21); a yes there must be a yes of the composed config. Returns how many keys it said yes to."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from dlrun.run import preflight

    groups = preflight.config_options()
    parser = OverridesParser.create()
    checked = 0
    with initialize_config_module(config_module=preflight.CONFIG_PACKAGE, version_base="1.3"):
        for group in ("model", "dataset", "optimizer", "scheduler", "loss", "init", "augmentation", "trainer"):
            for option in options_of(groups[group]):
                node = OmegaConf.load(preflight.resources.files(preflight.CONFIG_PACKAGE) / group / f"{option}.yaml")
                leaves = [f"{group}.{k}" for k in _leaf_keys(OmegaConf.to_container(node)) if k != "defaults"]
                composed = compose(config_name="train", overrides=[f"{group}={option}"])
                for key in [*leaves, f"{group}.no_such_key", f"{group}.{option}_typo"]:
                    overrides = parser.parse_overrides([f"{group}={option}", f"{key}=1"])
                    if preflight._found_in_the_yamls(overrides[1:], overrides, groups):
                        assert OmegaConf.select(composed, key, default="absent") != "absent", (option, key)
                        checked += 1
    return checked


def test_a_key_found_by_reading_the_yamls_is_in_the_composed_config_too():
    # Two options a group (polynomial, full_batch, adding: options with defaults lists of their own); all: slow.
    picked = {"polynomial", "full_batch", "adding", "lstm", "cnn", "mlp", "digits", "default", "sgd", "adam"}
    assert _keys_found_by_reading_are_composed(lambda options: [o for o in options if o in picked] or options[:2]) > 40


@pytest.mark.slow
def test_every_shipped_options_keys_found_by_reading_the_yamls_are_composed():
    assert _keys_found_by_reading_are_composed(lambda options: options) > 200


def _leaf_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        keys += _leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [f"{prefix}{key}"]
    return keys


def test_only_the_presets_set_hydras_mode_so_a_plain_command_skips_hydras_mode_compose(dl_run):
    # dl-run answers Hydra's "which mode?" without a compose when nothing on the command line can set it (issue
    # #21): that holds only while no shipped YAML outside the presets has a hydra node or a global package.
    from omegaconf import OmegaConf

    from dlrun.run import preflight
    from dlrun.run.hydra_mode import MODE_SETTING_GROUPS, mode_is_unset

    root = preflight.resources.files(preflight.CONFIG_PACKAGE)
    for group in root.iterdir():
        if not group.is_dir() or group.name in (*MODE_SETTING_GROUPS, "hydra") or group.name.startswith("_"):
            continue
        for option in group.iterdir():
            if option.name.endswith(".yaml"):
                assert "hydra" not in OmegaConf.load(option), option
                assert "@package _global_" not in option.read_text(), option
    assert mode_is_unset(["model=cnn", "trainer.epochs=3"]) and not mode_is_unset(["experiment=init_comparison"])
    assert not mode_is_unset(["--config-dir", "mine"]) and not mode_is_unset(["+hydra.mode=MULTIRUN"])
    # A mode set on the command line is still Hydra's to read: this plain command runs as a sweep of two jobs.
    result = dl_run("hydra.mode=MULTIRUN", "seed=0,1", *TINY)
    assert result.code == 0, result.output
    assert len(result.run_dirs()) == 2
