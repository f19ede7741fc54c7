"""The CUDA path's fixes that a CPU can check (#22): placement, precision choice, determinism, detection targets.

What needs a GPU itself is in test_gpu.py (marked `gpu`, run by scripts/gpu_check.sh).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn
from torchvision.ops import batched_nms

from conftest import compose_config
from dlrun.components.losses import LOSSES, per_pixel_rows
from dlrun.data.base import DataInfo
from dlrun.engine import checkpoint, distributed
from dlrun.engine.determinism import BilinearUpsample2d, GlobalAveragePool2d, deterministic_twins
from dlrun.engine.memory import check_fits_on_device
from dlrun.engine.options import auto_gpu_precision, set_up_cuda
from dlrun.errors import ConfigError
from dlrun.run.experiment import Experiment
from dlrun.run.pretrain import pretraining_options
from dlrun.tasks.detection import YoloLoss, decode, encode_targets

CPU = ("trainer.device=cpu", "trainer.threads=1", "trainer.progress=false", "logger=none")


def _info(task: str, num_classes: int = 2) -> DataInfo:
    return DataInfo(name="toy", task=task, input_shape=(3,), num_classes=num_classes)


# ---- losses ---------------------------------------------------------------------------------------------------------

def test_bce_on_probabilities_is_computed_outside_autocast_in_float32():
    seen = []

    class Recording(nn.BCELoss):
        def forward(self, output, target):
            seen.append((torch.is_autocast_enabled("cpu"), output.dtype))
            return super().forward(output, target)

    loss = LOSSES.build({"name": "bce"}, info=_info("classification"))
    loss.module = Recording()
    probs = torch.tensor([[0.2], [0.9]], dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(probs, torch.tensor([0, 1]))
    # CUDA's autocast raises on binary_cross_entropy: inside the loss, autocast must be off and the inputs float32.
    assert seen == [(False, torch.float32)]
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(nn.functional.binary_cross_entropy(
        probs.float(), torch.tensor([[0.0], [1.0]])).item())


def test_msle_statistics_move_with_the_loss_to_the_training_device():
    info = DataInfo(name="toy", task="regression", input_shape=(3,), target_dim=1,
                    target_mean=torch.tensor([2.0]), target_std=torch.tensor([3.0]))
    loss = LOSSES.build({"name": "msle"}, info=info).to(torch.device("meta"))
    assert {b.device.type for b in loss.module.buffers()} == {"meta"}
    assert loss(torch.zeros(4, 1, device="meta"), torch.zeros(4, 1, device="meta")).device.type == "meta"


def test_an_experiment_puts_its_loss_buffers_on_its_device():
    exp = Experiment(compose_config("dataset=diabetes", "loss=msle", "model=linear", *CPU), "unused")
    assert {b.device for b in exp.loss.module.buffers()} == {exp.device}


def test_per_pixel_and_per_token_cross_entropy_score_as_the_unflattened_forms():
    torch.manual_seed(0)
    scores, masks = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
    rows, targets = per_pixel_rows(scores, masks)
    assert rows.shape == (60, 4)
    assert nn.functional.cross_entropy(rows, targets).item() == pytest.approx(
        nn.functional.cross_entropy(scores, masks).item(), rel=1e-6)
    segmentation = LOSSES.build({"name": "cross_entropy", "label_smoothing": 0.1}, info=_info("segmentation", 4))
    assert segmentation(scores, masks).item() == pytest.approx(
        nn.functional.cross_entropy(scores, masks, label_smoothing=0.1).item(), rel=1e-6)
    from dlrun.components.losses import TokenCrossEntropy

    tokens, words = torch.randn(3, 7, 11), torch.randint(0, 11, (3, 7))
    words[0, 5:] = 0  # padding
    expected = nn.functional.cross_entropy(tokens.transpose(1, 2), words, ignore_index=0, label_smoothing=0.1)
    assert TokenCrossEntropy(0, 0.1)(tokens, words).item() == pytest.approx(expected.item(), rel=1e-6)


# ---- detection ------------------------------------------------------------------------------------------------------

def test_two_boxes_in_one_cell_give_it_the_later_ones_box_and_class_together():
    # Both centres in cell (row 0, col 0) of a 4x4 grid; the later box (class 2) must win both fields.
    boxes = torch.tensor([[[1.0, 0.05, 0.05, 0.15, 0.15], [2.0, 0.10, 0.10, 0.30, 0.30], [-1.0, 0, 0, 0, 0]]])
    with_later = encode_targets(boxes, 4)
    obj, box, cls = with_later
    assert obj.sum().item() == 1 and obj[0, 0, 0]
    assert cls[0, 0, 0].item() == 2
    assert box[0, 0, 0].tolist() == pytest.approx([0.8, 0.8, 0.2 ** 0.5, 0.2 ** 0.5])
    swapped = encode_targets(boxes[:, [1, 0, 2]], 4)  # now the class-1 box is later
    assert swapped[2][0, 0, 0].item() == 1
    assert swapped[1][0, 0, 0].tolist() == pytest.approx([0.4, 0.4, 0.1 ** 0.5, 0.1 ** 0.5])


def test_the_yolo_loss_without_boolean_masks_equals_the_masked_sums():
    torch.manual_seed(1)
    boxes = torch.tensor([[[0.0, 0.1, 0.1, 0.4, 0.3], [1.0, 0.6, 0.5, 0.9, 0.9]], [[2.0, 0.3, 0.6, 0.5, 0.8],
                                                                                    [-1.0, 0, 0, 0, 0]]])
    out = torch.randn(2, 8, 4, 4)
    obj, box, cls = encode_targets(boxes, 4)
    o = out.permute(0, 2, 3, 1)
    objectness = nn.functional.binary_cross_entropy_with_logits(o[..., 0], obj.float(), reduction="none")
    expected = (objectness[obj].sum() + 0.5 * objectness[~obj].sum()
                + 5.0 * ((torch.sigmoid(o[..., 1:5][obj]) - box[obj]) ** 2).sum()
                + nn.functional.cross_entropy(o[..., 5:][obj], cls[obj], reduction="sum")) / 2
    assert YoloLoss()(out, boxes).item() == pytest.approx(expected.item(), rel=1e-6)


def test_one_suppression_for_all_images_keeps_what_suppressing_each_image_keeps():
    torch.manual_seed(2)
    out = torch.randn(3, 8, 6, 6)
    found = decode(out)
    probs = torch.softmax(out.permute(0, 2, 3, 1)[..., 5:], -1)
    assert len(found) == 3
    for i, image in enumerate(found):  # the reference: each image on its own, as before
        scores = (torch.sigmoid(out[i, 0]) * probs[i].max(-1).values).flatten()
        keep = scores >= 0.05
        labels = probs[i].max(-1).indices.flatten()[keep]
        kept = batched_nms(decode_boxes(out[i:i + 1]).reshape(-1, 4)[keep], scores[keep], labels, 0.5)[:100]
        assert torch.equal(image["scores"], scores[keep][kept])
        assert torch.equal(image["labels"], labels[kept])


def decode_boxes(output: torch.Tensor) -> torch.Tensor:
    """The grid's boxes (1, S, S, 4) as decode() places them, written out again."""
    grid = output.shape[-1]
    offsets = torch.sigmoid(output.permute(0, 2, 3, 1)[..., 1:5])
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    cx, cy = (cols + offsets[..., 0]) / grid, (rows + offsets[..., 1]) / grid
    w, h = offsets[..., 2] ** 2, offsets[..., 3] ** 2
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1).clamp(0, 1)


# ---- determinism ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 3])
def test_the_deterministic_bilinear_twin_computes_torchs_bilinear_upsampling_and_its_gradient(scale):
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    ours, theirs = BilinearUpsample2d(scale)(x), nn.Upsample(scale_factor=scale, mode="bilinear")(x)
    assert torch.allclose(ours, theirs, atol=1e-12)
    grad = torch.randn_like(ours)
    assert torch.allclose(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(theirs, x, grad)[0], atol=1e-12)


def test_deterministic_twins_replace_global_pooling_and_bilinear_upsampling_in_place():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear")),
                          nn.Upsample(scale_factor=2, mode="nearest"), nn.AdaptiveAvgPool2d(1),
                          nn.AdaptiveAvgPool2d(3))
    x = torch.randn(2, 1, 9, 9)
    before = model(x)
    assert deterministic_twins(model) == ["1.0", "3"]
    assert isinstance(model[1][0], BilinearUpsample2d) and isinstance(model[3], GlobalAveragePool2d)
    assert isinstance(model[4], nn.AdaptiveAvgPool2d)  # not global: left as it is
    assert torch.allclose(model(x), before, atol=1e-6)


def test_a_deterministic_run_sets_cublas_workspace_before_cuda_starts(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    set_up_cuda(torch.device("cpu"), deterministic=False)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    Experiment(compose_config("trainer.deterministic=true", *CPU), "unused")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


# ---- precision, placement, memory, resume ---------------------------------------------------------------------------

def test_auto_precision_takes_bf16_only_where_the_gpu_computes_it_natively(monkeypatch):
    # A V100 or T4: bf16 "supported" through emulation only.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert auto_gpu_precision() == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100
    assert auto_gpu_precision() == "bf16"


def test_data_parallel_placement_refuses_a_gpu_index_and_more_processes_than_gpus():
    distributed.check_placement("cuda", 2, 2)
    distributed.check_placement("auto", 1, 4)
    with pytest.raises(ConfigError, match=r"'trainer.device=cuda:1' with 2 processes.*CUDA_VISIBLE_DEVICES") as err:
        distributed.check_placement("cuda:1", 2, 4)
    assert err.value.key == "trainer.device"
    with pytest.raises(ConfigError, match=r"'trainer.devices=4' on a machine with 2 visible GPU\(s\)") as err:
        distributed.check_placement("cuda", 4, 2)
    assert err.value.key == "trainer.devices"


def test_dl_run_refuses_a_gpu_index_for_several_processes_before_starting_any(dl_run):
    result = dl_run("trainer.devices=2", "trainer.device=cuda:1", "trainer.epochs=1", "trainer.progress=false")
    assert result.code != 0
    assert "trainer.device=cuda:1" in result.output and "local rank" in result.output
    assert "Traceback" not in result.output and not (result.cwd / "outputs").exists()


def test_resume_restores_the_gpu_random_states_of_the_gpus_this_machine_has():
    saved = [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]  # written on a 4-GPU machine
    assert [i for i, _ in checkpoint.cuda_states_to_restore(saved, 2)] == [0, 1]
    assert checkpoint.cuda_states_to_restore(saved, 2)[1][1] is saved[1]
    assert len(checkpoint.cuda_states_to_restore(saved, 8)) == 4
    assert checkpoint.cuda_states_to_restore(saved, 0) == []


def test_a_single_process_checkpoint_keeps_no_per_rank_states():
    assert "ranks" not in checkpoint.rng_state(torch.Generator())


def test_data_that_would_fill_most_of_a_gpu_is_refused_before_it_moves():
    tensors = [torch.zeros(1000, 1000), torch.zeros(1000, dtype=torch.long)]  # 4.008 MB
    check_fits_on_device(tensors, torch.device("cuda"), free_bytes=10_000_000)
    with pytest.raises(ConfigError, match=r"splits take 0.00 GiB.*0.01 GiB free.*at most 50%.*in_memory=false"):
        check_fits_on_device(tensors, torch.device("cuda"), free_bytes=7_000_000)
    check_fits_on_device(tensors, torch.device("cpu"))  # the host's limit is the dataset's own


# ---- transfer pretraining and GAN compile -----------------------------------------------------------------------------

def test_pretraining_takes_the_runs_precision_and_decides_channels_last_for_its_backbone():
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    opts = pretraining_options({"precision": "bf16", "deterministic": True, "channels_last": "auto"}, 3,
                               torch.device("cpu"), cnn)
    assert (opts.precision, opts.deterministic, opts.epochs) == ("bf16", True, 3)
    assert opts.channels_last is True  # a decision, never the string "auto"
    assert pretraining_options({}, 1, torch.device("cpu"), nn.Linear(3, 2)).channels_last is False
    assert pretraining_options({}, 1, torch.device("meta"), cnn).channels_last is False  # NHWC auto: CPU only


def test_compile_reaches_a_gans_generator_and_discriminator(tmp_path):
    from dlrun.engine.trainer import Trainer, TrainingOutputs
    from dlrun.run.run_directory import RunDirectory

    exp = Experiment(compose_config("task=gan", "dataset=digits", "trainer.compile=true", *CPU), tmp_path)
    Trainer(exp.parts, TrainingOutputs(RunDirectory(tmp_path)))
    # nn.Module.compile() in place: the task calls these two, so they are what must be compiled.
    assert exp.model.generator._compiled_call_impl is not None
    assert exp.model.discriminator._compiled_call_impl is not None


def test_the_default_suite_hides_gpus_so_device_auto_trains_on_the_cpu_everywhere():
    # tests/conftest.py: tests that leave trainer.device=auto must not train in bf16 on CUDA on a GPU machine.
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert not torch.cuda.is_available()


# ---- every rank's random streams --------------------------------------------------------------------------------------

def test_each_rank_resumes_its_own_random_streams_from_the_checkpoint(monkeypatch):
    streams = [torch.Generator().manual_seed(seed).get_state() for seed in (1, 2)]
    state = {**checkpoint.rng_state(torch.Generator()), "ranks": [{"torch": s} for s in streams]}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    checkpoint.set_rng_state(state, torch.Generator())
    assert torch.equal(torch.get_rng_state(), streams[1])  # rank 1 takes its own, not rank 0's
    monkeypatch.setenv("WORLD_SIZE", "3")  # resumed with another number of processes: rank 0's streams for all
    checkpoint.set_rng_state(state, torch.Generator())
    assert torch.equal(torch.get_rng_state(), state["torch"])


@pytest.mark.slow
def test_two_processes_killed_and_resumed_end_bitwise_identical_with_dropout(tmp_path):
    """Batches of 31 split 16 + 15: the two ranks draw different numbers of dropout masks, so their CPU streams
    part ways from the first step, and a resume that gave rank 1 rank 0's streams would not end identical."""
    import signal
    import subprocess
    import time

    from test_resume import write_slow_augmentation

    root = write_slow_augmentation(tmp_path)
    args = [sys.executable, "-m", "dlrun", "--config-dir", "conf", "augmentation=slow", "dataset=digits",
            "model.hidden=[16]", "model.dropout=0.3", "trainer.epochs=2", "trainer.batch_size=31",
            "trainer.devices=2", "trainer.deterministic=true", "trainer.checkpoint_every_n_steps=5", *CPU[:3]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*args, "hydra.run.dir=baseline"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    killed = root / "killed"
    proc = subprocess.Popen([*args, f"hydra.run.dir={killed}"], cwd=root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "last.pt").exists():  # a mid-epoch checkpoint (step 5 or later)
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks at once
    proc.wait(timeout=60)
    resumed = subprocess.run([sys.executable, "-m", "dlrun", f"resume={killed}", "--config-dir", "conf"], cwd=root,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Resuming from epoch" in resumed.stdout + resumed.stderr
    ours, theirs = (checkpoint.load(d / "checkpoints" / "last.pt")["model"] for d in (killed, root / "baseline"))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "resumed data-parallel weights differ"


def test_under_torchrun_the_stop_flag_is_all_reduced_every_few_steps_not_every_step(tmp_path, monkeypatch):
    from dlrun.engine.trainer import STOP_POLL_STEPS, Trainer, TrainingOutputs
    from dlrun.run.run_directory import RunDirectory

    exp = Experiment(compose_config("model.hidden=[8]", *CPU), tmp_path)
    trainer = Trainer(exp.parts, TrainingOutputs(RunDirectory(tmp_path)))
    asked = []
    # The collective itself is torch's; what is under test is when the loop asks for it.
    monkeypatch.setattr(distributed, "any_rank", lambda flag: asked.append(trainer.state.step) or flag)
    trainer.stop_poll_steps = STOP_POLL_STEPS  # as under torchrun (checked: launched() sets it)
    for step in range(1, 31):
        trainer.state.step = trainer.state.batch = step
        trainer._checkpoint_mid_epoch(torch.zeros(()), n_batches=100)
    assert asked == [10, 20, 30]


def test_outputs_larger_than_their_share_of_the_gpu_are_gathered_on_the_host():
    from dlrun.engine.memory import OUTPUTS_SHARE_OF_GPU, outputs_home

    first = torch.zeros(64, 10, device="meta")  # a batch of 64 rows of 10 float32 scores: 2,560 bytes
    whole = 2560 * 100  # the split's 6,400 rows
    assert outputs_home(first, 6400, free_bytes=int(whole / OUTPUTS_SHARE_OF_GPU)).type == "meta"
    assert outputs_home(first, 6400, free_bytes=int(whole / OUTPUTS_SHARE_OF_GPU) - 1).type == "cpu"
    assert outputs_home(torch.zeros(4, 10), 10_000_000).type == "cpu"  # CPU outputs stay where they are
