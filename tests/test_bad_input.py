"""The bad-input catalogue, each case `dl-run` in a process of its own (conftest.dl_run): each case must end with a non-zero exit and
one clear message naming the key or file, the value and what is valid; no traceback; no new run directory
left looking like a run; and every file that existed before the command byte for byte as it was (the whole
working folder is hashed before and after). Cases about data live in cases_bad_data.py, cases about files and
folders in cases_boundaries.py; each of those modules also writes the input files its cases name."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hashlib

import pytest

import cases_bad_data
import cases_boundaries
from conftest import user_env

# {run} is an earlier, finished run in outputs/; {damaged} one whose checkpoints are both truncated.
CASES = [
    # (arguments, words the message must contain)
    (["model=mlpp"], ["model=mlpp", "linear", "mlp, polynomial", "Did you mean 'mlp'"]),
    (["-m", "init=zeros,xavir"], ["init=xavir", "xavier_uniform"]),
    (["trainer.epocs=5"], ["trainer.epocs", "epochs", "Did you mean 'epochs'"]),
    (["model.hiden=[3]"], ["model.hiden", "hidden"]),
    (["+model.foo=1"], ["model.foo", "hidden"]),
    (["trainer.epochs=abc"], ["trainer.epochs", "'abc'", "integer"]),
    (["optimizer.lr=fast"], ["optimizer.lr", "'fast'", "number"]),
    (["optimizer.lr=-1"], ["optimizer.lr=-1", "positive"]),
    (["optimizer.lr=0"], ["optimizer.lr=0", "positive"]),
    (["trainer.batch_size=0"], ["trainer.batch_size=0", "full"]),
    (["trainer.batch_size=big"], ["trainer.batch_size=big", "full"]),
    (["trainer.epochs=0"], ["trainer.epochs=0", "positive"]),
    (["trainer.epochs=-3"], ["trainer.epochs=-3", "positive"]),
    (["dataset=csv", "dataset.path=missing.csv", "dataset.target=y"], ["dataset.path=missing.csv", "no such file"]),
    (["dataset=csv", "dataset.path=data.csv", "dataset.target=price"], ["dataset.target=price", "a, b, y"]),
    (["loss=bce"], ["loss=bce", "10 classes", "cross_entropy"]),
    (["dataset=diabetes", "loss=cross_entropy"], ["loss=cross_entropy", "regression", "mse"]),
    (["dataset=linear", "dataset.noise=0.1", "loss=nll"], ["loss=nll", "regression"]),
    (["model.activation=relu6"], ["model.activation=relu6", "leaky_relu", "Did you mean 'relu'"]),
    (["trainer.device=tpu"], ["trainer.device=tpu", "cpu"]),
    (["mode=fly"], ["mode=fly", "train"]),
    (["task=regression"], ["task=regression", "digits", "classification"]),
    (["resume=nowhere"], ["resume=nowhere", "no such directory"]),
    (["trainer.threads=0"], ["trainer.threads=0", "auto"]),
    (["model=cnn", "model.kernel_size=9", "model.padding=0"], ["features.stage1.conv1", "8x8", "= 0", "padding"]),
    (["dataset=mnist", "dataset.root=nowhere", "dataset.download=false"],
     ["nowhere/MNIST/raw", "train-images-idx3-ubyte", "dataset.download=true"]),
    (["model=torchvision", "model.arch=resnet81"], ["model.arch=resnet81", "Did you mean 'resnet18'"]),
    # Files that exist but cannot be used.
    (["dataset=csv", "dataset.path=empty.csv", "dataset.target=y"], ["dataset.path=empty.csv", "no data rows"]),
    (["dataset=csv", "dataset.path=text.csv", "dataset.target=y"], ["text.csv, line 3, column 'b'",
                                                                    "'x' is not a number"]),
    (["dataset=csv", "dataset.path=folder", "dataset.target=y"], ["dataset.path=folder", "is a directory"]),
    (["dataset=csv", "dataset.path=binary.csv", "dataset.target=y"], ["dataset.path=binary.csv",
                                                                      "not a text CSV file"]),
    # Values no run could use.
    (["trainer.monitor=val/accurracy"], ["trainer.monitor=val/accurracy", "val/loss, train/loss, val/accuracy"]),
    (["optimizer.weight_decay=-1"], ["optimizer.weight_decay=-1.0", "zero or positive"]),
    (["trainer.checkpoint_every_n_steps=0"], ["trainer.checkpoint_every_n_steps=0", "positive integer or null"]),
    (["dataset.val_fraction=0.6", "dataset.test_fraction=0.6"], ["dataset.val_fraction=0.6", "below 0.9"]),
    # Runs that cannot be resumed or must not be overwritten.
    (["resume=folder"], ["resume=folder", "neither a dl-run run directory", "overrides.yaml", "multirun.yaml"]),
    ([r"resume={damaged}"], ["{damaged}/checkpoints/last.pt is truncated", "previous.pt is truncated",
                             "start a new one"]),
    ([r"resume={run}", "model.hidden=[16]"], ["another model architecture",
                                              "'1.weight' has shape (8, 4) in the checkpoint but (16, 4)"]),
    ([r"resume={run}", "optimizer=sgd"], ["optimizer.name=sgd (was adam)", "saved state", "start a new run"]),
    ([r"resume={run}", "optimizer.lr=0.5"], ["optimizer.lr=0.5 (was 0.001)", "no effect"]),
    ([r"hydra.run.dir={run}"], ["hydra.run.dir={run}", "already holds a run", "resume={run}"]),
    # Sequences (course 3 §5.3-5.4): windows that do not fit, a model that cannot read the data.
    (["dataset=sine", "dataset.input_length=3000"], ["dataset.input_length=3000", "longer than the 2000 steps"]),
    (["dataset=sine", "dataset.horizon=0"], ["dataset.horizon=0", "positive"]),
    (["dataset=csv_timeseries", "dataset.path=data.csv", "dataset.target=price"], ["dataset.target=price", "a, b, y"]),
    (["model=lstm"], ["model=lstm", "digits", "not a sequence dataset", "dataset=sine"]),
    (["dataset=toy_seq2seq", "model=mlp"], ["model=mlp", "tokens", "model=transformer"]),
] + cases_bad_data.CASES + cases_boundaries.CASES


@pytest.fixture(scope="module")
def earlier_runs(tmp_path_factory, fork_server) -> dict[str, Path]:
    """A finished run, and a copy of it whose checkpoints are cut short."""
    root = tmp_path_factory.mktemp("earlier")
    done = fork_server.run(["dataset=iris", "model.hidden=[8]", "trainer.epochs=2", "trainer.progress=false",
                            "hydra.run.dir=run"], root, user_env())
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.copytree(root / "run", root / "damaged")
    for name in ("last.pt", "previous.pt"):
        path = root / "damaged" / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:500])
    return {"run": root / "run", "damaged": root / "damaged"}


def snapshot(outputs: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under outputs/ with its bytes and modification time (empty date folders do not count)."""
    return {str(p.relative_to(outputs)): (p.read_bytes(), p.stat().st_mtime_ns) for p in outputs.rglob("*")
            if p.is_file()}


def hashed_tree(root: Path) -> dict[str, str]:
    """Every file under root with the SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
            if p.is_file()}


IDS = [" ".join(a) for a, _ in CASES]


def refuse(args: list[str], workdir: Path, earlier_runs: dict[str, Path], server) -> dict:
    """Run one case in a directory of its own holding the input files and copies of the earlier runs."""
    workdir.mkdir(parents=True)
    (workdir / "data.csv").write_text("a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(30)))
    (workdir / "empty.csv").write_text("")
    (workdir / "text.csv").write_text("a,b,y\n1,2,0\n3,x,1\n")
    (workdir / "binary.csv").write_bytes(b"\xff\xfe\x00\x01\x80\x81")
    (workdir / "folder").mkdir()
    cases_bad_data.make_inputs(workdir)
    cases_boundaries.make_inputs(workdir)
    outputs = workdir / "outputs"
    places = {name: outputs / name for name in earlier_runs}
    for name, source in earlier_runs.items():
        shutil.copytree(source, places[name])
    before, tree = snapshot(outputs), hashed_tree(workdir)
    proc = server.run([*(a.format(**places) for a in args), "trainer.progress=false"], workdir, user_env())
    after = hashed_tree(workdir)
    return {"code": proc.returncode, "output": proc.stdout + proc.stderr, "places": places,
            "unchanged": snapshot(outputs) == before,
            "changed_files": sorted(name for name, digest in tree.items() if after.get(name) != digest)}


@pytest.fixture(scope="module")
def refusals(request, earlier_runs, tmp_path_factory, fork_server) -> dict[str, dict]:
    """The selected cases, each in a process of its own, two at a time."""
    selected = {item.callspec.id for item in request.session.items
                if getattr(item, "originalname", None) == "test_bad_input_is_refused_clearly"}
    root = tmp_path_factory.mktemp("refusals")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case_id: pool.submit(refuse, args, root / f"case{n}", earlier_runs, fork_server)
                   for n, (case_id, (args, _)) in enumerate(zip(IDS, CASES)) if case_id in selected}
        return {case_id: future.result() for case_id, future in futures.items()}


@pytest.mark.parametrize("args,words", CASES, ids=IDS)
def test_bad_input_is_refused_clearly(refusals, request, args, words):
    outcome = refusals[request.node.callspec.id]
    assert outcome["code"] != 0
    assert "Traceback" not in outcome["output"]
    for word in words:
        word = word.format(**outcome["places"])
        assert word in outcome["output"], f"{word!r} missing from: {outcome['output']}"
    assert outcome["unchanged"]  # no new run directory, and the earlier runs exactly as they were
    assert not outcome["changed_files"]  # every file of the working folder byte for byte as it was


def test_bad_input_leaves_an_earlier_run_untouched(dl_run, tmp_path):
    good = dl_run("trainer.epochs=1", "model.hidden=[8]", "trainer.progress=false")
    assert good.code == 0
    (run_dir,) = good.run_dirs()
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    bad = dl_run(f"resume={run_dir}", "optimizer.lr=-1", script=True)  # the installed script, not a fork
    assert bad.code != 0 and "optimizer.lr" in bad.output
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
