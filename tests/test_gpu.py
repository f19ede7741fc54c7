"""dl-run's CUDA branch, run on a CUDA GPU (#22): each precision, compile, channels_last, deterministic training of
the models whose CUDA backward needs care, exact resume after SIGKILL, NCCL data parallel, streaming with pinned
memory, and every loss and task for one step.

Marked `gpu` and skipped with the reason where no GPU is visible. The default suite hides GPUs (tests/conftest.py),
so select these with `pytest -m gpu`; scripts/gpu_check.sh runs them with the speedrun and the benchmark's GPU rows.
Every run is tiny (a few steps of digits or shapes): the whole module is meant to take a few minutes on one GPU.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_config
from dlrun.engine import checkpoint
from dlrun.engine.memory import check_fits_on_device
from dlrun.engine.options import auto_gpu_precision
from dlrun.errors import ConfigError
from dlrun.run.training import run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU and none is visible (the default suite hides GPUs: select these with pytest -m gpu, "
           "or run scripts/gpu_check.sh)")]

GPU = ("trainer.device=cuda", "trainer.threads=1", "trainer.progress=false", "logger=none")
DL_RUN = [sys.executable, "-m", "dlrun"]  # the console script may not be installed beside the wheels of a GPU box


def train(run_dir: Path, *overrides: str) -> dict:
    """One in-process run on the GPU; what metrics.json holds."""
    args = [*GPU, *overrides]
    return run(OmegaConf.create(compose_config(*args)), run_dir, args)


def dl_run(cwd: Path, *args: str, env: dict | None = None, timeout: float = 300,
           on_gpu: bool = True) -> subprocess.CompletedProcess:
    """`dl-run ARGS` (then the GPU settings, unless a resumed run takes its own) in its own process (its own CUDA
    context and cuBLAS handles), as a user runs it. Hydra's flags (--config-dir) must come before the overrides."""
    done = subprocess.run([*DL_RUN, *args, *(GPU if on_gpu else ())], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def finite_history(metrics: dict) -> bool:
    return all(math.isfinite(h["train/loss"]) and math.isfinite(h["val/loss"]) for h in metrics["history"])


# ---- precision ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["bf16", "fp16", "32", "auto"])
def test_each_precision_trains_a_cnn_on_cuda(tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    metrics = train(tmp_path, "model=cnn", "trainer.epochs=2", f"trainer.precision={precision}")
    assert finite_history(metrics)
    assert metrics["test"]["accuracy"] > 0.5, metrics["test"]  # digits, 10 classes: chance is 0.1
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.pt")["train_state"]
    used = auto_gpu_precision() if precision == "auto" else precision
    assert (saved["scaler"] is not None) == (used == "fp16")  # fp16's gradient scaler travels in checkpoints
    if precision == "32":
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.benchmark is True


def test_auto_precision_is_bf16_exactly_where_the_gpu_computes_it_natively():
    native = torch.cuda.get_device_capability()[0] >= 8  # Ampere and later
    assert auto_gpu_precision() == ("bf16" if native else "fp16")


def test_the_lr_finder_runs_in_fp16_with_its_scaler(tmp_path):
    result = train(tmp_path, "mode=lr_find", "lr_find.steps=30", "trainer.precision=fp16")
    assert result["status"] == "completed" and result["mode"] == "lr_find", result


# ---- compile, channels_last -----------------------------------------------------------------------------------------

def test_compile_trains_a_model_and_a_gans_two_players(tmp_path):
    metrics = train(tmp_path / "mlp", "trainer.compile=true", "trainer.max_steps=20", "trainer.epochs=1")
    assert finite_history(metrics)
    gan = train(tmp_path / "gan", "task=gan", "trainer.compile=true", "trainer.max_steps=10", "trainer.epochs=1")
    assert all(math.isfinite(h["val/g_loss"]) for h in gan["history"])


def test_channels_last_on_cuda_trains_an_nhwc_cnn(tmp_path):
    metrics = train(tmp_path, "model=cnn", "trainer.channels_last=true", "trainer.epochs=2")
    assert finite_history(metrics) and metrics["test"]["accuracy"] > 0.5


# ---- deterministic --------------------------------------------------------------------------------------------------

DETERMINISTIC_MODELS = {
    "resnet": ("model=resnet", "model.widths=[8,16]", "model.blocks_per_stage=1"),
    "cnn_global_pool": ("model=cnn", "model.global_pool=true"),
    "torchvision_resnet18": ("model=torchvision", "model.arch=resnet18"),
    "unet_bilinear": ("experiment=segmentation", "model.upsampling=bilinear", "dataset.n_samples=200"),
    "seq2seq_transformer": ("experiment=seq2seq_transformer", "dataset.n_samples=400"),
    "yolo": ("experiment=detection", "dataset.n_samples=200"),
}


@pytest.mark.parametrize("model", DETERMINISTIC_MODELS)
def test_deterministic_training_on_cuda_repeats_bitwise(tmp_path, model):
    # Each in its own process: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when the process first uses it.
    overrides = (*DETERMINISTIC_MODELS[model], "trainer.deterministic=true", "trainer.max_steps=6", "trainer.epochs=1")
    for name in ("a", "b"):
        dl_run(tmp_path, *overrides, f"hydra.run.dir={name}")
    first, second = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(first[k], second[k]) for k in first), f"{model}: two deterministic runs differ"


# ---- resume -----------------------------------------------------------------------------------------------------------

def test_killed_with_sigkill_on_cuda_and_resumed_ends_bitwise_identical(tmp_path):
    from test_resume import ARGS, write_slow_augmentation

    root = write_slow_augmentation(tmp_path)
    args = [a for a in ARGS if a != "trainer.device=cpu"]  # dropout and a per-step schedule, deterministic
    dl_run(root, *args, "hydra.run.dir=baseline")
    run_dir, steps = root / "killed", root / "steps.txt"
    proc = subprocess.Popen([*DL_RUN, *args, *GPU, f"hydra.run.dir={run_dir}"], cwd=root,
                            env={**os.environ, "STEP_LOG": str(steps)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (steps.exists() and steps.read_text().split()[:1] and int(steps.read_text().split()[0]) >= 23):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before step 23"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # mid-epoch 2, after the checkpoint of step 20
    assert proc.wait(timeout=60) == -signal.SIGKILL
    dl_run(root, "--config-dir", str(root / "conf"), f"resume={run_dir}", on_gpu=False)  # the run's own device
    ours, theirs = weights(run_dir), weights(root / "baseline")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "resumed on CUDA, the weights differ (bitwise)"
    got, expected = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, root / "baseline"))
    assert got["history"] == expected["history"]


def test_a_checkpoint_from_a_machine_with_more_gpus_resumes_here():
    state = checkpoint.rng_state(torch.Generator())
    state["cuda"] = state["cuda"] + [state["cuda"][0].clone()] * 3  # three GPUs more than this machine has
    checkpoint.set_rng_state(state, torch.Generator())  # torch.cuda.set_rng_state_all raised IndexError here


# ---- data parallel --------------------------------------------------------------------------------------------------

def test_nccl_in_one_process_steps_a_ddp_model_on_the_gpu(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(nn.Linear(4, 2).cuda(), device_ids=[0])
        model(torch.randn(8, 4, device="cuda")).sum().backward()
        total = torch.ones(1, device="cuda")
        dist.all_reduce(total)
        assert total.item() == 1.0 and model.module.weight.grad is not None
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs for 2 NCCL processes")
def test_two_processes_on_two_gpus_train_like_one(tmp_path):
    args = ("model.hidden=[32]", "trainer.epochs=2", "trainer.batch_size=32", "trainer.deterministic=true")
    dl_run(tmp_path, *args, "hydra.run.dir=one")
    done = dl_run(tmp_path, *args, "trainer.devices=2", "hydra.run.dir=two")
    assert "data parallel: 2 processes" in done.stdout + done.stderr
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    for a, b in zip(one["history"], two["history"], strict=True):  # as tests/test_distributed.py states it
        assert abs(a["train/loss"] - b["train/loss"]) <= 1e-3 * a["train/loss"]


def test_more_processes_than_gpus_is_refused_before_any_starts(tmp_path):
    done = subprocess.run([*DL_RUN, f"trainer.devices={torch.cuda.device_count() + 1}", *GPU], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "visible GPU(s)" in done.stdout + done.stderr


# ---- data on the GPU ------------------------------------------------------------------------------------------------

def test_streamed_images_reach_the_gpu_through_pinned_memory(tmp_path):
    from image_fixtures import write_image_folder

    folder = write_image_folder(tmp_path / "images", per_class=12)
    metrics = train(tmp_path / "run", "dataset=image_folder", f"dataset.path={folder}", "dataset.image_size=16",
                    "dataset.in_memory=false", "dataset.pin_memory=true", "model=cnn", "trainer.epochs=2",
                    "trainer.batch_size=8")
    assert finite_history(metrics)


def test_data_larger_than_half_the_free_gpu_memory_is_refused():
    free = torch.cuda.mem_get_info()[0]
    huge = torch.zeros(1).expand(free // 4 + 1)  # 4 bytes a value, no memory behind it
    with pytest.raises(ConfigError, match="GiB free"):
        check_fits_on_device([huge], torch.device("cuda"))
    check_fits_on_device([torch.zeros(10)], torch.device("cuda"))


SCORED = {"classification": ("model=cnn",), "msle": ("dataset=diabetes", "loss=msle"),
          "forecast": ("dataset=sine", "model=lstm"), "seq2seq": ("dataset=toy_seq2seq", "dataset.n_samples=300"),
          "segmentation": ("experiment=segmentation", "dataset.n_samples=100")}


@pytest.mark.parametrize("case", SCORED)
def test_outputs_gathered_on_the_host_score_as_on_the_gpu(monkeypatch, case):
    from dlrun.engine import memory
    from dlrun.run.experiment import Experiment

    exp = Experiment(compose_config(*GPU, *SCORED[case]), "unused")
    on_gpu = exp.score_every_split()
    monkeypatch.setattr(memory, "OUTPUTS_SHARE_OF_GPU", 0.0)  # no split's outputs may stay on the GPU
    on_host = exp.score_every_split()
    for split, metrics in on_gpu.items():
        assert on_host[split] == pytest.approx(metrics, rel=1e-5), split
    assert {b.device.type for b in exp.loss.module.buffers()} <= {"cuda"}  # the loss went back to the GPU


# ---- every loss and task ----------------------------------------------------------------------------------------------

ONE_STEP = {
    "cross_entropy": ("loss=cross_entropy",),
    "nll": ("loss=nll",),
    "bce": ("dataset=moons", "loss=bce"),
    "bce_with_logits": ("dataset=moons", "loss=bce_with_logits"),
    "mse": ("dataset=diabetes", "loss=mse"),
    "mae": ("dataset=diabetes", "loss=mae"),
    "huber": ("dataset=diabetes", "loss=huber"),
    "msle": ("dataset=diabetes", "loss=msle"),
    "segmentation": ("experiment=segmentation", "dataset.n_samples=100"),
    "detection": ("experiment=detection", "dataset.n_samples=100"),
    "seq2seq": ("dataset=toy_seq2seq", "dataset.n_samples=300"),
    "reconstruction": ("task=reconstruction",),
    "vae": ("task=reconstruction", "model=vae"),
    "gan": ("task=gan",),
}


@pytest.mark.parametrize("case", ONE_STEP)
def test_every_loss_and_task_takes_a_step_and_is_scored_on_cuda(tmp_path, case):
    metrics = train(tmp_path, *ONE_STEP[case], "trainer.max_steps=1", "trainer.epochs=1")
    assert metrics["steps"] == 1
    assert math.isfinite(metrics["history"][-1]["val/loss"]), metrics["history"]
