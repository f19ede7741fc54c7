"""Every `dl-run` command in a fenced block of README.md and docs/*.md works, so the docs cannot rot.

Each page is followed as a reader would, in a fresh directory: fenced blocks whose first line is
`# file: <path>` are written there, `python <that file>` lines are run, and `dl-run` lines are taken in
order, `resume=<run dir>` meaning the run the page trained last. The default suite *checks* every
command (Hydra composes it and the whole Experiment is built: dataset, model, loss, optimizer,
augmentation; sweeps take their first value; `--help`, `--list`, `--cfg` are run, they only print); it
*runs* the command of extending.md that uses all four of the reader's own pieces. The slow suite runs every command, with tiny settings, in one process.
MNIST and CIFAR-10 commands read tiny files in the real formats (image_fixtures), never the network.
"""

from __future__ import annotations

import json
import re
import runpy
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from dlrun import cli
from dlrun.run import preflight
from dlrun.modes.predict import read_inputs
from dlrun.run.experiment import Experiment
from image_fixtures import write_cifar10, write_mnist

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
RUN_DIR = "RUN_DIR"  # stands for `<run dir>`, so that shlex keeps it one word
# Appended to every training command: a couple of steps, on the CPU, quietly.
TINY = ["trainer.max_steps=2", "trainer.progress=false", "trainer.threads=1", "trainer.device=cpu",
        "lr_find.steps=10"]
# Flags that print something instead of training: cheap, so they are run even in the default suite.
PRINTING = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}


@dataclass
class Page:
    path: Path
    files: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[str, list[str], str]] = field(default_factory=list)  # (dl-run | python, args, line)


def read_page(path: Path) -> Page:
    """The files a page asks the reader to write and, in order, its python and dl-run command lines."""
    page = Page(path)
    for _, body in FENCE.findall(path.read_text()):
        lines = body.splitlines()
        if lines and lines[0].startswith("# file: "):
            page.files[lines[0][len("# file: "):].strip()] = "\n".join(lines[1:]) + "\n"
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line.replace("<run dir>", RUN_DIR), comments=True)
            if words[:1] == ["dl-run"]:
                page.steps.append(("dl-run", words[1:], line.strip()))
            elif words[:1] == ["python"] and len(words) == 2 and words[1] in page.files:
                page.steps.append(("python", words[1:], line.strip()))
    return page


def set_up(page: Page, workdir: Path) -> None:
    """The page's own files, and tiny MNIST, Fashion-MNIST and CIFAR-10 under data/."""
    for name, text in page.files.items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text(text)
    write_mnist(workdir / "data")
    write_mnist(workdir / "data", folder="FashionMNIST")
    write_cifar10(workdir / "data")


def key_of(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def localise(args: list[str], workdir: Path) -> list[str]:
    """The page's dataset.root (the reader's real MNIST) points at the tiny fixtures instead."""
    return [f"dataset.root={workdir / 'data'}" if key_of(a) == "dataset.root" else a for a in args]


def first_of_sweeps(overrides: list[str]) -> list[str]:
    """A sweep's first job: each `key=a,b,c` becomes `key=a`."""
    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        out.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
                   else o.input_line)
    return out


def compose_job(overrides: list[str], config_dir: str | None) -> dict:
    """The config of the command's (first) job, as plain data, the preset's own sweep included."""
    search = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="dlrun.configs", version_base="1.3"):
        # Only a preset (experiment=...) sweeps by itself; composing Hydra's own config costs time, so only then.
        preset = any(key_of(o) == "experiment" for o in overrides)
        cfg = compose(config_name="train", overrides=overrides + search, return_hydra_config=preset)
        params = OmegaConf.to_container(cfg.hydra.sweeper.params) if preset and cfg.hydra.sweeper.params else {}
        if params:  # a preset that sweeps by itself (experiment=init_comparison): its first job
            given = {key_of(o) for o in overrides}
            extra = first_of_sweeps([f"{k}={v}" for k, v in params.items() if k not in given])
            cfg = compose(config_name="train", overrides=overrides + extra + search, return_hydra_config=True)
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)


def check_command(args: list[str], workdir: Path, trained: list[str] | None) -> None:
    """Judge one command without training: overrides, composition, and the whole Experiment."""
    if "--list" in args or set(args) & PRINTING:  # they only print: run them (--help, --cfg job, --list, ...)
        code = run_dl_run(args)
        assert code in (0, None), f"exit code {code}"
        return
    if any(a.startswith("resume=") for a in args):
        assert trained is not None, "resume=<run dir> comes before any training command on the page"
        given = {key_of(a) for a in args if "=" in a}
        args = [a for a in trained if key_of(a) not in given] + [a for a in args if not a.startswith("resume=")]
    # The command line as dl-run rewrites it (task=segmentation alone brings in its preset).
    args = cli.task_arguments(args)
    # Hydra's composition refuses unknown options and keys as dl-run's preflight does (tested in test_cli).
    parsed = get_args_parser().parse_args(args)
    cfg = compose_job(first_of_sweeps(parsed.overrides), parsed.config_dir)
    exp = Experiment(cfg, workdir / "not-written")
    if cfg["mode"] == "predict":
        read_inputs(cfg["predict"]["input"], exp.info)


@pytest.fixture
def reader(tmp_path, monkeypatch):
    """A fresh directory to follow a page in, importable as the directory `dl-run` starts in."""
    import torchvision

    # The tiny CIFAR-10 files cannot have the real ones' checksums (as in test_images).
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - modules:  # the page's own modules (my_code) go with its directory
        if getattr(sys.modules[name], "__file__", None) and str(tmp_path) in sys.modules[name].__file__:
            del sys.modules[name]
    GlobalHydra.instance().clear()


def follow(page: Page, workdir: Path, run: bool) -> list[str]:
    """Take the page's steps in order; the commands that failed, with why."""
    set_up(page, workdir)
    failures, trained, last_run = [], None, None
    for n, (kind, args, line) in enumerate(page.steps):
        if kind == "python":
            runpy.run_path(str(workdir / args[0]), run_name="__main__")
            continue
        args = localise(args, workdir)
        prints = bool(set(args) & PRINTING) or "--list" in args
        resumes = any(a.startswith("resume=") for a in args)
        try:
            if run:
                if resumes:
                    assert last_run is not None, "resume=<run dir> comes before any single training run on the page"
                    args = [f"resume={last_run}" if a.startswith("resume=") else a for a in args]
                extra = [] if prints else TINY + ([] if resumes else [f"hydra.run.dir=outputs/docs/{n}",
                                                                      f"hydra.sweep.dir=outputs/docs/{n}"])
                code = run_dl_run([*args, *extra])
                assert code in (0, None), f"exit code {code}"
                if not resumes and (workdir / f"outputs/docs/{n}/checkpoints/last.pt").is_file():
                    last_run = workdir / f"outputs/docs/{n}"
            else:
                check_command(args, workdir, trained)
        except Exception as err:  # noqa: BLE001 - report every broken command, not only the first
            failures.append(f"{page.path.name}: `{line}`: {type(err).__name__}: {err}")
        if not prints and not resumes and not any(a.startswith("mode=") for a in args):
            trained = [a for a in args if "=" in a and not a.startswith(("-", "hydra."))]
    return failures


def run_dl_run(args: list[str]) -> int | None:
    """`dl-run ARGS` in this process, as the console script runs it."""
    saved = sys.argv
    sys.argv = ["dl-run", *args]
    try:
        cli.main()
        return 0
    except SystemExit as exit_:
        return exit_.code
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()


def test_every_page_has_commands_and_the_readme_links_the_guides():
    guides = [p for p in PAGES[1:] if p.name != "README.md"]  # docs/README.md is the index
    assert [p.name for p in guides if not read_page(p).steps] == []
    assert sum(len(read_page(p).steps) for p in PAGES) >= 60
    readme, index = (ROOT / "README.md").read_text(), (ROOT / "docs" / "README.md").read_text()
    assert "docs/README.md" in readme and all(f"({p.name})" in index for p in guides)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_composes_and_builds(path, reader):
    failures = follow(read_page(path), reader, run=False)
    assert not failures, "\n".join(failures)


def test_the_extending_guide_trains_the_users_own_pieces(reader):
    """The page's command that uses all four of the reader's pieces trains (the slow suite runs the others)."""
    page = read_page(ROOT / "docs" / "extending.md")
    set_up(page, reader)
    (args,) = [args for kind, args, _ in page.steps if "loss=focal" in args]
    assert run_dl_run([*args, *TINY, "logger=none", "hydra.run.dir=outputs/mine"]) in (0, None)
    metrics = json.loads((reader / "outputs" / "mine" / "metrics.json").read_text())
    assert metrics["dataset"] == "stripes" and metrics["steps"] == 2
    config = (reader / "outputs" / "mine" / ".hydra" / "config.yaml").read_text()
    for target in ("my_code.build_stripes", "my_code.build_tiny_cnn", "my_code.build_focal", "my_code.build_cutout"):
        assert f"_target_: {target}" in config
    assert preflight.describe_options("my_configs")["model"]["tiny_cnn"] == (
        "My smallest CNN: one convolution, max pooling and a linear layer.")  # `dl-run --list --config-dir my_configs`


@pytest.mark.slow
@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_runs(path, reader):
    failures = follow(read_page(path), reader, run=True)
    assert not failures, "\n".join(failures)
