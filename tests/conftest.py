"""Shared fixtures: compose the real configs (shrunk for speed) and run the real `dl-run` script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

DL_RUN = str(Path(sys.executable).with_name("dl-run"))


def pytest_configure(config: pytest.Config) -> None:
    """The default suite trains on the CPU wherever it runs: its tests leave trainer.device=auto, which on a GPU
    machine would train in bf16 on CUDA and check nothing GPU-specific. GPUs stay visible (to this process and
    the dl-run processes it starts) only when the gpu-marked tests are selected: pytest -m gpu (tests/test_gpu.py)."""
    if not re.search(r"(?<!not )\bgpu\b", config.option.markexpr or ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-costs", metavar="PATH", default=None,
                     help="write each test's CPU seconds (its own process, subprocesses and fork-server children "
                          "included; setup and teardown too) to PATH as a markdown table: the 40 costliest tests "
                          "and the cost per file. CPU time, unlike wall time, hardly moves on a loaded machine.")


def _cpu_seconds() -> float:
    """CPU seconds this process, its waited-for subprocesses and its fork server's children have used so far."""
    import forkserver

    times = os.times()
    return (times.user + times.system + times.children_user + times.children_system
            + sum(server.cpu_seconds for server in forkserver.SERVERS))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    if item.config.getoption("--cpu-costs"):
        item.stash[_COST_START] = (_cpu_seconds(), time.monotonic())
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item):
    yield
    if _COST_START in item.stash:  # recorded on the teardown report, which pytest-xdist's workers send back too
        cpu, wall = item.stash[_COST_START]
        item.user_properties.append(("cost", (_cpu_seconds() - cpu, time.monotonic() - wall)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, value in report.user_properties:
        if name == "cost" and report.when == "teardown":
            _COSTS[report.nodeid] = value
            _COSTS_SINCE_WRITTEN.append(report.nodeid)
    if _COST_PATH[0] and len(_COSTS_SINCE_WRITTEN) >= 20:  # a run stopped part-way still leaves its table so far
        _COSTS_SINCE_WRITTEN.clear()
        Path(_COST_PATH[0]).write_text(cost_table(_COSTS))


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the table is written by the controller (or the only process)
        _COST_PATH[0] = session.config.getoption("--cpu-costs")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _COST_PATH[0] and _COSTS:
        Path(_COST_PATH[0]).write_text(cost_table(_COSTS))


def cost_table(costs: dict[str, tuple[float, float]], top: int = 40) -> str:
    """Markdown: the total, the `top` costliest tests and the cost per file, in CPU and wall seconds."""
    per_file: dict[str, list[float]] = {}
    for nodeid, (cpu, wall) in costs.items():
        row = per_file.setdefault(nodeid.split("::")[0], [0.0, 0.0, 0])
        row[0] += cpu
        row[1] += wall
        row[2] += 1
    lines = [f"Total: {sum(c for c, _ in costs.values()):.0f} CPU s, {sum(w for _, w in costs.values()):.0f} "
             f"wall s (summed over tests), {len(costs)} tests\n", f"## The {top} costliest tests\n",
             "| CPU s | wall s | test |", "|---:|---:|---|"]
    for nodeid, (cpu, wall) in sorted(costs.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| {cpu:.1f} | {wall:.1f} | {nodeid} |")
    lines += ["", "## Cost per file\n", "| CPU s | wall s | tests | file |", "|---:|---:|---:|---|"]
    for name, (cpu, wall, count) in sorted(per_file.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {cpu:.1f} | {wall:.1f} | {count} | {name} |")
    return "\n".join(lines) + "\n"


_COST_START = pytest.StashKey[tuple]()
_COSTS: dict[str, tuple[float, float]] = {}
_COSTS_SINCE_WRITTEN: list[str] = []
_COST_PATH: list[str | None] = [None]


def compose_config(*overrides: str) -> dict:
    """The config exactly as `dl-run <overrides>` would compose it, as plain data."""
    with initialize_config_module(config_module="dlrun.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


class Result:
    def __init__(self, proc: subprocess.CompletedProcess, cwd: Path) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.output = proc.stdout + proc.stderr
        self.cwd = cwd

    def run_dirs(self) -> list[Path]:
        """Every run directory under outputs/ that holds a metrics.json."""
        return sorted(p.parent for p in (self.cwd / "outputs").rglob("metrics.json"))

    def metrics(self) -> dict:
        (run_dir,) = self.run_dirs()
        return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def fork_server(tmp_path_factory):
    """One process that has imported dl-run and forks a fresh child per command (tests/forkserver.py)."""
    from forkserver import ForkServer

    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    yield server
    server.close()


def user_env() -> dict[str, str]:
    """The environment a user's shell would give dl-run: without the debugging switch that adds tracebacks."""
    return {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}


@pytest.fixture
def dl_run(tmp_path: Path, fork_server):
    """Run `dl-run ARGS` in a fresh process and directory, as a user would.

    `script=True` execs the installed `dl-run` script itself; otherwise the process is forked from the fork
    server, which runs the same entry point without re-importing torch each time.
    """

    def run(*args: str, cwd: Path | None = None, timeout: float = 300, script: bool = False) -> Result:
        cwd = cwd or tmp_path
        if script:
            proc = subprocess.run([DL_RUN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                  env=user_env())
        else:
            proc = fork_server.run(list(args), cwd, user_env(), timeout)
        return Result(proc, cwd)

    return run


@pytest.fixture(autouse=True)
def _torch_determinism_restored():
    """A test that trains with trainer.deterministic=true in-process must not make later tests deterministic."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


# Settings that keep an end-to-end run to a second or two.
TINY = ("trainer.epochs=3", "model.hidden=[32]", "trainer.progress=false")
