"""A sweep's jobs share the composition of their config files (issue #21, src/dlrun/run/sweep_compose.py): every
job's config, shared or not, is the one Hydra's own compose gives, node by node, flags and types included."""

from __future__ import annotations

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

import dlrun.cli  # noqa: F401 - installs the sharing, as in `dl-run` and in its launchers' workers
from dlrun.run import sweep_compose


def job_overrides(sweep_args: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of `sweep_args`: the product of the comma-separated values."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(sweep_args)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def described(node, path: str = "cfg") -> list:
    """Every node: its path, class, own flags, metadata types and, for a leaf, its unresolved value."""
    meta = node._metadata
    rows = [(path, type(node).__name__, dict(meta.flags or {}), str(meta.ref_type), str(meta.object_type),
             meta.optional, str(meta.key))]
    if isinstance(node, DictConfig) and not (node._is_missing() or node._is_none()):
        for key in node.keys():
            rows += described(node._get_node(key), f"{path}.{key}")
    elif isinstance(node, ListConfig) and not (node._is_missing() or node._is_none()):
        for index in range(len(node)):
            rows += described(node._get_node(index), f"{path}[{index}]")
    elif not isinstance(node, (DictConfig, ListConfig)):
        rows.append((path, repr(node._value())))
    return rows


@pytest.fixture
def loader():
    sweep_compose.SHARED.__init__()  # what earlier tests in this process kept
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="dlrun.configs", version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


SWEEPS = {
    "values only": ["optimizer.lr=0.1,0.01,0.001", "trainer.epochs=2"],
    "options and values": ["model=mlp,cnn", "optimizer=sgd", "optimizer.lr=0.1,0.01"],
    "a preset": ["experiment=optimizer_comparison", "seed=0,1"],
    "added and deleted keys": ["+trainer.note=a,b", "~logger", "seed=0,1"],
    "a hydra option and a hydra value": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2"],
    "a dataset with its own defaults": ["dataset=polynomial,digits", "seed=0,1"],
}


@pytest.mark.parametrize("sweep", SWEEPS.values(), ids=SWEEPS.keys())
def test_each_job_is_composed_as_hydra_composes_it(loader, sweep):
    master = loader.load_configuration("train", sweep, run_mode=RunMode.MULTIRUN)
    master_hydra_overrides = list(master.hydra.overrides.hydra)
    jobs = job_overrides([o for o in sweep if o not in master_hydra_overrides])
    for job in jobs:
        shared = loader.load_sweep_config(master, job)
        own = sweep_compose._hydra_load_sweep_config(loader, master, job)  # Hydra's, nothing kept
        assert described(shared) == described(own), job
        assert OmegaConf.to_yaml(shared) == OmegaConf.to_yaml(own)
    choices = {tuple(o for o in job if o.split("=")[0].lstrip("+~") in ("model", "optimizer", "experiment",
                                                                          "dataset", "hydra/launcher", "logger"))
               for job in jobs}
    # One composition a choice of options, and fewer of them than jobs: most jobs above were given a kept one.
    assert len(sweep_compose.SHARED.defaults_lists) == len(choices) < len(jobs)


def test_a_job_changes_only_its_own_copy(loader):
    master = loader.load_configuration("train", ["optimizer.lr=0.1,0.01"], run_mode=RunMode.MULTIRUN)
    first = loader.load_sweep_config(master, ["optimizer.lr=0.1"])
    first.trainer.epochs = 999  # a job's code may change its config; the next job does not see it
    first.model.hidden.append(7)
    second = loader.load_sweep_config(master, ["optimizer.lr=0.01"])
    assert second.trainer.epochs != 999 and 7 not in second.model.hidden
    assert (first.optimizer.lr, second.optimizer.lr) == (0.1, 0.01)


def test_a_run_is_composed_by_hydra_alone(loader):
    loader.load_configuration("train", ["optimizer.lr=0.1"], run_mode=RunMode.RUN)
    assert sweep_compose.SHARED.defaults_lists == {}  # only a sweep's jobs share
