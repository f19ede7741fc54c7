"""Bad-input cases about files and folders (tests/test_bad_input.py runs them): outputs that must not be replaced,
folders dl-run did not create, run folders that must not run code, values that must not end in a traceback; and
the input files those cases name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# (arguments, words the message must contain); {run} is an earlier, finished run in outputs/, {damaged} one whose
# checkpoints are both truncated (see test_bad_input.earlier_runs).
PREDICT = ["mode=predict", r"resume={run}", "predict.input=iris.npy"]
EXPORT = ["mode=export", r"resume={run}", "export.format=torchscript"]
CASES: list[tuple[list[str], list[str]]] = [
    # A folder the user names for a run or a sweep is used only when new or empty: nothing in it is removed or added.
    (["hydra.run.dir=mylogs", "model=mlpp"], ["hydra.run.dir=mylogs", "not a folder dl-run made", "server.log"]),
    (["hydra.run.dir=mylogs", "trainer.epochs=1"], ["hydra.run.dir=mylogs", "new or empty folder", "mylogs_2"]),
    (["hydra.run.dir=userdir"], ["hydra.run.dir=userdir", "notes.txt", "nothing in it is replaced or removed"]),
    (["hydra.run.dir=report.docx"], ["hydra.run.dir=report.docx", "is a file, not a folder"]),
    (["hydra.run.dir=report.docx/run"], ["hydra.run.dir=report.docx/run", "is a file, so no folder can be made"]),
    (["-m", "hydra.sweep.dir=mylogs", "seed=1,2"], ["hydra.sweep.dir=mylogs", "server.log", "new or empty"]),
    (["-m", "hydra.sweep.dir=oldsweep", "seed=1,2"], ["hydra.sweep.dir=oldsweep", "jobs of an earlier sweep",
                                                     "new hydra.sweep.dir"]),
    (["-m", "hydra.sweep.dir=report.docx", "seed=1,2"], ["hydra.sweep.dir=report.docx", "is a file"]),
    # A mode's output never replaces a file unless overwrite=true, never the run's records, never its input.
    ([*PREDICT, "predict.output=keep.csv"], ["predict.output=keep.csv", "already exists", "overwrite=true"]),
    ([*PREDICT, "predict.output=report.docx"], ["predict.output=report.docx", "already exists", "overwrite=true"]),
    ([*PREDICT, r"predict.output={run}/metrics.json"], ["metrics.json", "run's own records"]),
    ([*PREDICT, r"predict.output={run}/metrics.json", "overwrite=true"], ["metrics.json", "run's own records"]),
    ([*PREDICT, r"predict.output={run}/checkpoints/best.pt", "overwrite=true"], ["best.pt", "run's own records"]),
    ([*PREDICT, "predict.output=iris.npy", "overwrite=true"], ["predict.output=iris.npy", "the input itself"]),
    ([*PREDICT, "predict.output=afolder"], ["predict.output=afolder", "is a folder", "give a file path"]),
    ([*PREDICT, "predict.output=report.docx/out.csv"], ["predict.output=report.docx/out.csv", "is a file"]),
    ([*EXPORT, "export.output=keep.csv"], ["export.output=keep.csv", "already exists", "overwrite=true"]),
    ([*EXPORT, r"export.output={run}/checkpoints/best.pt", "overwrite=true"], ["best.pt", "run's own records"]),
    ([*EXPORT, r"export.output={run}/.hydra/config.yaml", "overwrite=true"], ["config.yaml", "run's own records"]),
    ([*EXPORT, "export.output=afolder"], ["export.output=afolder", "is a folder"]),
    ([*EXPORT, "export.tolerance=-1"], ["export.tolerance=-1", "zero or positive"]),
    ([*EXPORT, "export.tolerance=nan"], ["export.tolerance=nan", "zero or positive and finite"]),
    ([*EXPORT, "export.format=onnx", "export.tolerance=-0.5", "export.output=keep.csv", "overwrite=true"],
     ["export.tolerance=-0.5"]),
    (["overwrite=maybe"], ["overwrite='maybe'", "true or false"]),
    # A run folder's files are data: they never make dl-run import or call code the user did not name.
    (["model=transfer", "model.source=evil"], ["model.source=evil", "os.system", "trust_code=[os.system]"]),
    (["resume=evilrun"], ["model._target_=os.system", "evilrun/.hydra/overrides.yaml", "again on the command line"]),
    (["mode=eval", "resume=evilrun"], ["model._target_=os.system", "again on the command line"]),
    (["resume=evilhydra"], ["hydra.callbacks.x._target_=os.system", "Hydra's own settings"]),
    (["mode=predict", "resume=evilcd", "predict.input=iris.npy"], ["--config-dir", "evilconf", "names code",
                                                                   "model/evil.yaml"]),
    (["trust_code=os.system"], ["trust_code='os.system'", "a list"]),
    # A reused run finds its data where it was, and refuses data that moved or changed, naming the key.
    (["mode=eval", "resume=moved"], ["dataset.path=gone.csv", "gone.csv is gone", "Give dataset.path="]),
    (["mode=eval", "resume=changed"], ["dataset.path=data.csv", "changed since the run trained"]),
    # A path with a space reaches dl-run's own message, not Hydra's parser error (accents: test_boundaries.py; an id
    # with them would not be this module's test id).
    (["dataset=csv", "dataset.path=my data.csv", "dataset.target=y"], ["my data.csv", "no such file"]),
    # Values that used to end in a traceback.
    (["seed=-1"], ["seed=-1", "4294967295"]),
    (["seed=4294967296"], ["seed=4294967296", "from 0 to 4294967295"]),
    (["optimizer.lr=nan"], ["optimizer.lr=nan", "positive and finite"]),
    (["optimizer.lr=inf"], ["optimizer.lr=inf", "positive and finite"]),
    (["optimizer.weight_decay=nan"], ["optimizer.weight_decay=nan", "zero or positive, and finite"]),
    (["optimizer=sgd", "optimizer.weight_decay=inf"], ["optimizer.weight_decay=inf", "finite"]),
    (["optimizer=rmsprop", "optimizer.eps=nan"], ["optimizer.eps=nan", "finite"]),
    (["model.hidden=[100000000000]"], ["model.hidden=[100000000000]", "memory"]),
    (["trainer.gradient_clip=nan"], ["trainer.gradient_clip", "positive or null"]),
]


def make_inputs(workdir: Path) -> None:
    """Write the files these cases name into the case's working folder."""
    (workdir / "mylogs").mkdir()
    (workdir / "mylogs" / "server.log").write_text("a server's log, not dl-run's\n")
    (workdir / "userdir").mkdir()
    (workdir / "userdir" / "notes.txt").write_text("my notes\n")
    (workdir / "report.docx").write_bytes(b"PK\x03\x04 a document")
    (workdir / "keep.csv").write_text("a file the user keeps\n")
    (workdir / "afolder").mkdir()
    np.save(workdir / "iris.npy", np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    # An earlier sweep, with its jobs.
    (workdir / "oldsweep" / "0_seed=1" / ".hydra").mkdir(parents=True)
    (workdir / "oldsweep" / "multirun.yaml").write_text("hydra: {}\n")
    (workdir / "oldsweep" / "0_seed=1" / "metrics.json").write_text("{}")
    # Run folders whose records name code: a transfer source, saved overrides, a recorded --config-dir.
    _fake_run(workdir / "evil", [], model={"_target_": "os.system", "command": "touch pwned"})
    _fake_run(workdir / "evilrun", ["model._target_=os.system", "+model.command=touch pwned"])
    _fake_run(workdir / "evilhydra", ["+hydra.callbacks.x._target_=os.system"])
    _fake_run(workdir / "evilcd", ["model=evil"], config_dir=workdir / "evilconf")
    (workdir / "evilconf" / "model").mkdir(parents=True)
    (workdir / "evilconf" / "model" / "evil.yaml").write_text("_target_: os.system\ncommand: touch pwned\n")
    # Runs trained on a CSV that has since moved away, or changed.
    csv = ["dataset=csv", "dataset.target=y"]
    _fake_run(workdir / "moved", [*csv, "dataset.path=gone.csv"],
              sources={"dataset.path": _source("gone.csv", workdir / "gone.csv", "0" * 64)})
    _fake_run(workdir / "changed", [*csv, "dataset.path=data.csv"],
              sources={"dataset.path": _source("data.csv", workdir / "data.csv", "1" * 64)})


def _source(given: str, resolved: Path, sha256: str) -> dict:
    return {"given": given, "resolved": str(resolved), "fingerprint": {"kind": "file", "sha256": sha256}}


def _fake_run(folder: Path, overrides: list[str], model: dict | None = None, config_dir: Path | None = None,
              sources: dict | None = None) -> None:
    """A folder laid out like a run (its checkpoint an empty file: the refusals come before it is read)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    for name in ("best.pt", "last.pt"):
        (folder / "checkpoints" / name).write_bytes(b"")
    (folder / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
    (folder / ".hydra" / "config.yaml").write_text(json.dumps({"model": model or {"name": "mlp"}}))
    if config_dir is not None:
        sources_ = [{"path": str(config_dir), "schema": "file", "provider": "command-line"}]
        (folder / ".hydra" / "hydra.yaml").write_text(json.dumps({"hydra": {"runtime": {"config_sources": sources_}}}))
    if sources is not None:
        (folder / "data_sources.json").write_text(json.dumps(sources))
