"""Bad input: a non-zero exit, one clear message naming the key, the value and what is valid,
no traceback, and no run directory left looking like a run."""

from __future__ import annotations

import pytest

CASES = [
    # (arguments, words the message must contain)
    (["model=mlpp"], ["model=mlpp", "linear, mlp, polynomial", "Did you mean 'mlp'"]),
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
]


@pytest.mark.parametrize("args,words", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_refused_clearly(dl_run, tmp_path, args, words):
    (tmp_path / "data.csv").write_text("a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(30)))
    result = dl_run(*args, "trainer.progress=false")
    assert result.code != 0
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, f"{word!r} missing from: {result.output}"
    assert not list((tmp_path / "outputs").rglob("metrics.json")) if (tmp_path / "outputs").exists() else True
    leftovers = [p for p in (tmp_path / "outputs").rglob("*") if p.is_dir() and (p / ".hydra").exists()] \
        if (tmp_path / "outputs").exists() else []
    assert leftovers == []


def test_bad_input_leaves_an_earlier_run_untouched(dl_run, tmp_path):
    good = dl_run("trainer.epochs=1", "model.hidden=[8]", "trainer.progress=false")
    assert good.code == 0
    (run_dir,) = good.run_dirs()
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    bad = dl_run(f"resume={run_dir}", "optimizer.lr=-1")
    assert bad.code != 0 and "optimizer.lr" in bad.output
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
