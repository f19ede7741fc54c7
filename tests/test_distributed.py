"""Data-parallel training with real torch.distributed (gloo on CPU): torchrun processes, as a user starts them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import DL_RUN, compose_config
from dlrun.engine import checkpoint, distributed
from dlrun.run.experiment import Experiment

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
# 1168 training digits in global batches of 32: 36 batches of 16 per rank and a last one of 8 per rank.
ARGS = ("dataset=digits", "model.hidden=[32]", "trainer.epochs=2", "trainer.batch_size=32", "trainer.device=cpu",
        "trainer.progress=false")


def _env(tmp: Path) -> dict[str, str]:
    tmp.mkdir(exist_ok=True)
    # TMPDIR: the scratch directories Hydra makes for ranks other than 0 land here, to check they are removed.
    return {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "TMPDIR": str(tmp),
            "OMP_NUM_THREADS": "1"}


def _metrics(cwd: Path) -> tuple[list[Path], dict]:
    runs = sorted(p.parent for p in (cwd / "outputs").rglob("metrics.json"))
    return runs, json.loads((runs[0] / "metrics.json").read_text())


def test_two_processes_train_like_one_with_the_same_global_batch_and_write_one_run_directory(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    # Side by side: `dl-run trainer.devices=2` starts torchrun itself.
    procs = [subprocess.Popen([DL_RUN, *ARGS], cwd=one, env=_env(tmp_path / "tmp1"), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
             subprocess.Popen([DL_RUN, *ARGS, "trainer.devices=2"], cwd=two, env=_env(tmp_path / "tmp2"), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[1][-3000:]
    assert "data parallel: 2 processes, global batch 32" in outputs[1]

    (single_dir,), single = _metrics(one)
    runs, double = _metrics(two)
    assert len(runs) == 1  # rank 1 wrote nothing of its own
    assert [p.name for p in (two / "outputs").rglob("*") if p.is_dir() and (p / ".hydra").is_dir()] == [runs[0].name]
    assert not list((tmp_path / "tmp2").glob("dlrun-rank*"))  # rank 1's scratch run directory is gone
    assert (runs[0] / "checkpoints" / "last.pt").is_file() and any((runs[0] / "tb").iterdir())
    # DDP averages the two half-batch gradients: the same step as the full batch, up to float rounding.
    # Stated tolerance: 1e-4 relative on every epoch's train and validation loss, 0.5% on test accuracy.
    for a, b in zip(single["history"], double["history"], strict=True):
        assert abs(a["train/loss"] - b["train/loss"]) <= 1e-4 * a["train/loss"]
        assert abs(a["val/loss"] - b["val/loss"]) <= 1e-4 * a["val/loss"]
        assert abs(a["val/accuracy"] - b["val/accuracy"]) <= 0.005  # each rank scored half: outputs in order
    assert abs(single["test"]["accuracy"] - double["test"]["accuracy"]) <= 0.005
    assert single["steps"] == double["steps"]


FAULTY = '''
import os
from torch import nn


class FailsOnRankOne(nn.Module):
    """A linear model whose fifth training step raises on rank 1 only, as a bug on one machine would."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(inputs, outputs)
        self.steps = 0

    def forward(self, x):
        if self.training:
            self.steps += 1
            if self.steps == 5 and os.environ.get("RANK") == "1":
                raise RuntimeError("rank 1 fails on purpose")
        return self.linear(x.flatten(1))


def build(info, out_features: int) -> nn.Module:
    return FailsOnRankOne(64, out_features)
'''


def test_when_one_rank_raises_every_rank_exits_non_zero_in_bounded_time(tmp_path):
    (tmp_path / "faulty.py").write_text(FAULTY)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "faulty.yaml").write_text("# dl-run --config-dir conf model=faulty\n"
                                                             "_target_: faulty.build\n")
    started = time.monotonic()
    proc = subprocess.run([TORCHRUN, "--nproc_per_node=2", "-m", "dlrun", "--config-dir", "conf", "model=faulty",
                           *(a for a in ARGS if not a.startswith("model."))], cwd=tmp_path, env=_env(tmp_path / "tmp"), text=True, capture_output=True,
                          timeout=300)
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in output
    assert "FAILED" in output and "rank      : 0" in output  # torchrun stopped rank 0 as well
    assert elapsed < 120, f"took {elapsed:.0f} s"
    assert not list(tmp_path.glob("outputs/**/metrics.json"))


def test_each_rank_takes_its_slice_of_every_global_batch(monkeypatch):
    order = torch.randperm(70, generator=torch.Generator().manual_seed(0))
    batches = order.split(32)  # 32, 32 and a last batch of 6
    for world in (1, 2, 3):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        slices = []
        for rank in range(world):
            monkeypatch.setenv("RANK", str(rank))
            slices.append([distributed.shard(b) for b in distributed.usable_batches(batches)])
        for i, batch in enumerate(batches):  # together the ranks see each global batch exactly once
            assert torch.equal(torch.cat([s[i] for s in slices]), batch)
    monkeypatch.setenv("WORLD_SIZE", "8")  # a last batch of 6 cannot give each of 8 ranks a sample
    assert len(distributed.usable_batches(batches)) == 2


SHARED_EVALUATION = '''
import os, sys
import torch
import torch.distributed as dist
from dlrun.engine import distributed

dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}", rank=int(os.environ["RANK"]),
                        world_size=int(os.environ["WORLD_SIZE"]))
weights = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
results = []
for rows in (11, 12, 2, 1):  # uneven shares, even ones, one row each, fewer rows than ranks
    x = torch.arange(rows * 5, dtype=torch.float32).reshape(rows, 5)
    seen = []
    out = distributed.forward_shared(lambda xb: (seen.append(len(xb)), xb @ weights)[1], x, batch_size=4)
    total = distributed.sum_over_ranks(distributed.share_of(x).sum(0, keepdim=True))
    results.append((torch.equal(out, x @ weights), sum(seen), torch.equal(total, x.sum(0, keepdim=True))))
print(os.environ["RANK"], results, flush=True)
dist.destroy_process_group()
'''


def test_validation_is_shared_between_ranks_and_every_rank_gets_all_outputs_in_order(tmp_path):
    """Each of 2 gloo processes computes its share of the rows; all outputs come back in order on both."""
    script = tmp_path / "shared.py"
    script.write_text(SHARED_EVALUATION)
    env = {**_env(tmp_path / "tmp"), "WORLD_SIZE": "2", "PYTHONPATH": str(Path(distributed.__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "rendezvous")], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # Rows computed on each rank: 11 -> 6 and 5, 12 -> 6 and 6, 2 -> 1 and 1; 1 row (fewer than ranks): both.
    expected = {"0": [(True, 6, True), (True, 6, True), (True, 1, True), (True, 1, True)],
                "1": [(True, 5, True), (True, 6, True), (True, 1, True), (True, 1, True)]}
    for out in outputs:
        rank, results = out.strip().splitlines()[-1].split(" ", 1)
        assert results == str(expected[rank]), out


def test_an_autoencoders_validation_summed_over_two_ranks_is_the_whole_splits(tmp_path):
    """Each rank sums its share of the validation split; the total is what one process scores on the weights."""
    args = ("task=reconstruction", "model=vae", "dataset=digits", "trainer.device=cpu", "logger=none")
    done = subprocess.run([DL_RUN, *args, "trainer.epochs=1", "trainer.progress=false", "trainer.devices=2",
                           "hydra.run.dir=run"], cwd=tmp_path, env=_env(tmp_path / "tmp"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    logged = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"][-1]
    exp = Experiment(compose_config(*args), tmp_path / "check")
    exp.model.load_state_dict(checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["model"])
    scored = exp.task.evaluate(exp.model, exp.splits.x_val, exp.splits.y_val, exp.info, 4096, exp.prepare)
    for key in ("loss", "reconstruction", "kl", "mse"):
        assert abs(logged[f"val/{key}"] - scored[key]) <= 1e-5 * abs(scored[key]), key
