"""Transfer learning and fine-tuning (course 3 §4.2), and the class-subset and fraction options it needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from conftest import compose_config
from dlrun.errors import ConfigError
from dlrun.logger import NullLogger
from dlrun.run.experiment import Experiment, build_data
from dlrun.engine.trainer import Trainer, TrainingOutputs
from dlrun.run.run_directory import RunDirectory

BACKBONE = "model.backbone={name:cnn,channels:[8,8],hidden:[],batch_norm:true}"
QUIET = ("trainer.progress=false", "trainer.device=cpu", "logger=none")


# ---- dataset.classes and dataset.train_fraction -----------------------------------------------------------------

def test_a_class_subset_is_relabelled_in_order_in_every_split():
    full = build_data(compose_config()["dataset"], seed=0)
    part = build_data({**compose_config()["dataset"], "classes": [7, 5]}, seed=0)
    assert part.info.num_classes == 2 and part.info.class_names == ["7", "5"]
    for split in ("train", "val", "test"):
        x, y = full.splits.split(split)
        px, py = part.splits.split(split)
        assert torch.equal(px, x[(y == 7) | (y == 5)])
        assert torch.equal(py, (y[(y == 7) | (y == 5)] == 5).long())  # 7 -> 0, 5 -> 1


def test_a_training_fraction_keeps_every_class_and_leaves_validation_and_test_whole():
    cfg = {**compose_config()["dataset"], "classes": [5, 6, 7, 8, 9]}
    whole = build_data(cfg, seed=0)
    small = build_data({**cfg, "train_fraction": 0.05}, seed=0)
    counts, all_counts = torch.bincount(small.splits.y_train), torch.bincount(whole.splits.y_train)
    assert counts.tolist() == [max(1, round(n * 0.05)) for n in all_counts.tolist()]
    assert torch.equal(small.splits.x_val, whole.splits.x_val) and torch.equal(small.splits.y_test, whole.splits.y_test)
    again = build_data({**cfg, "train_fraction": 0.05}, seed=0)
    assert torch.equal(again.splits.x_train, small.splits.x_train)  # seeded


@pytest.mark.parametrize("overrides,words", [
    (("dataset.classes=[3,3]",), "at least two different class indices"),
    (("dataset.classes=[4,12]",), "from 0 to 9"),
    (("dataset=diabetes", "dataset.classes=[0,1]"), "regression"),
    (("dataset.train_fraction=0",), "dataset.train_fraction=0"),
])
def test_bad_subsets_are_refused_by_name(tmp_path, overrides, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
        Experiment(compose_config(*overrides, *QUIET), tmp_path)


# ---- freezing and fine-tuning -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Overrides that pretrain a small CNN on digits 0-4 once (kept in a folder every test reuses)."""
    folder = tmp_path_factory.mktemp("pretrained")
    return ("model=transfer", "model.pretrain_classes=[0,1,2,3,4]", BACKBONE, "model.pretrain_epochs=1",
            f"model.pretrain_dir={folder}", "dataset.classes=[5,6,7,8,9]", "dataset.train_fraction=0.1",
            "trainer.epochs=2", *QUIET)


def _train(tmp_path, *overrides: str) -> tuple[dict, dict, Experiment]:
    """The weights before and after training with the runner's loop, and the built experiment."""
    exp = Experiment(compose_config(*overrides), tmp_path)
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    Trainer(exp.parts, TrainingOutputs(RunDirectory(tmp_path), NullLogger()), generator=torch.Generator().manual_seed(0)).fit()
    return before, exp.model.state_dict(), exp


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k]) and not k.endswith("num_batches_tracked")}


def test_a_frozen_backbone_stays_bit_identical_while_the_new_head_learns(tmp_path, pretrained):
    before, after, exp = _train(tmp_path, *pretrained, "model.freeze=true")
    # Convolutions, batch-norm weights and running statistics all untouched; only the new head moved.
    assert _changed(before, after) == {"net.head.out.weight", "net.head.out.bias"}
    assert any("running_mean" in k for k in before)
    rows, total, trainable = exp.summary
    assert trainable == sum(p.numel() for p in exp.model.net.head.out.parameters()) < total


def test_fine_tuning_changes_the_backbone_all_of_it_or_the_last_blocks(tmp_path, pretrained):
    before, after, _ = _train(tmp_path / "all", *pretrained, "model.freeze=false")
    assert {"net.features.stage1.conv1.weight", "net.features.stage2.conv1.weight"} <= _changed(before, after)
    before, after, exp = _train(tmp_path / "last", *pretrained, "model.freeze=false", "model.trainable_blocks=1",
                                "model.backbone_lr=0.0001")
    changed = _changed(before, after)
    assert "net.features.stage2.conv1.weight" in changed and "net.features.stage2.bn1.running_mean" in changed
    assert not any(k.startswith("net.features.stage1") for k in changed)
    assert [g["lr"] for g in exp.optimizer.param_groups] == [0.001, 0.0001]


def test_a_run_directory_is_a_backbone_and_a_mismatching_one_is_refused(tmp_path, pretrained):
    exp = Experiment(compose_config(*pretrained), tmp_path / "first")
    folder = next(o.split("=", 1)[1] for o in pretrained if o.startswith("model.pretrain_dir="))
    (source,) = [p for p in Path(folder).iterdir() if p.is_dir()]  # the pretraining's run directory
    again = Experiment(compose_config("model=transfer", f"model.source={source}", "dataset.classes=[5,6,7,8,9]",
                                      *QUIET), tmp_path / "second")
    for key, value in again.model.state_dict().items():
        if not key.startswith("net.head.out"):
            assert torch.equal(value, exp.model.state_dict()[key])
    with pytest.raises(ConfigError) as err:  # 32x32 shapes, where the backbone was trained on 8x8 digits
        Experiment(compose_config("model=transfer", f"model.source={source}", "dataset=shapes",
                                  "dataset.n_samples=20", *QUIET), tmp_path / "third")
    assert "do not fit" in str(err.value) and "'head.out.weight'" in str(err.value)


def test_torchvision_weights_come_from_a_file_and_must_match_the_architecture(tmp_path):
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), weights)
    common = ("model=transfer", f"model.weights={weights}", "dataset=shapes", "dataset.n_samples=20",
              "dataset.channels=3", *QUIET)
    exp = Experiment(compose_config(*common, "model.arch=resnet18"), tmp_path / "ok")
    assert torch.equal(exp.model.net.layer4[1].conv2.weight, torch.load(weights)["layer4.1.conv2.weight"])
    assert exp.model.net.fc.out_features == 3
    with pytest.raises(ConfigError, match=r"do not fit.*layer1\.2"):
        Experiment(compose_config(*common, "model.arch=resnet34"), tmp_path / "bad")
    with pytest.raises(ConfigError, match="model.download=true"):
        Experiment(compose_config(*common[:1], "model.arch=resnet18", "model.weights=DEFAULT", *common[2:]),
                   tmp_path / "offline")
