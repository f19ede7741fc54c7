"""What every mode that uses a trained run shares: the run's best checkpoint in the rebuilt model, on the
scale the model was trained on.

Each such mode takes `resume=<run dir>`: cli.py turns that into the run's own overrides, so the Experiment is
rebuilt exactly as it was trained (same data split, same normalisation, same model), and the best checkpoint
is loaded into it. Nothing the run wrote before is changed; each mode adds its own file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dlrun.data.prepare import Prepare
from dlrun.errors import ConfigError
from dlrun.views import console

if TYPE_CHECKING:
    from dlrun.run.experiment import Experiment


def refuse_without_run(exp: Experiment) -> None:
    """A mode that uses a trained run needs resume=<run dir>."""
    mode = exp.cfg["mode"]
    if not exp.cfg.get("resume"):
        raise ConfigError(f"'mode={mode}' works on a trained run: give it with resume=<run dir>, e.g. "
                          f"dl-run mode={mode} resume=outputs/2026-01-01/12-00-00_1234.", key="resume")


def load_trained(exp: Experiment) -> Path:
    """Load the run's best checkpoint (else last.pt, else previous.pt) into the rebuilt model; refuse a mode
    without a run."""
    refuse_without_run(exp)
    saved, path = exp.directory.load_best()
    match_by_name(exp, saved)
    try:
        exp.model.load_state_dict(saved["model"])
    except RuntimeError as err:  # the overrides given now build a different model than the one trained
        first = str(err).strip().splitlines()
        raise ConfigError(f"The checkpoint {path} does not fit the model built from this run's config and the "
                          f"overrides given now (dataset '{exp.info.name}', input shape "
                          f"{tuple(exp.info.input_shape)}): {' '.join(first[:2])}. Use a dataset with the same "
                          f"inputs and classes as the one the run was trained on.", key="dataset") from None
    exp.model.eval()
    rescaled = on_training_scale(exp, saved.get("scaling"))
    if rescaled:
        console.console.print(f"Dataset {exp.info.name}: {' and '.join(rescaled)} standardised with the training "
                              f"split's statistics of {exp.run_dir.name}, as the model was trained, not with its own.")
    return path


def on_training_scale(exp: Experiment, saved: dict[str, Any] | None) -> list[str]:
    """Put the rebuilt data on the scale the model was trained on; return what was changed.

    The run's own dataset is rebuilt with the same split and statistics, so nothing changes. Another dataset
    (mode=eval dataset.path=other.csv) was standardised with its own training split's mean and std: those are
    undone and the trained run's applied (course 2 §3.3: new data gets the training statistics). Sequence
    datasets keep their own (their windows are cut from one standardised series); checkpoints written before
    dl-run saved the statistics have none to apply.
    """
    info = exp.info
    if not saved or info.sequence is not None:
        return []
    changed, splits = [], {}
    for what, prefix, side in (("inputs", "feature", "x"), ("targets", "target", "y")):
        old = (saved.get(f"{prefix}_mean"), saved.get(f"{prefix}_std"))
        now = (getattr(info, f"{prefix}_mean"), getattr(info, f"{prefix}_std"))
        if old[0] is None or now[0] is None or (torch.equal(old[0], now[0]) and torch.equal(old[1], now[1])):
            continue
        for split in ("train", "val", "test"):
            t = getattr(exp.splits, f"{side}_{split}")
            mean_now, std_now, mean_old, std_old = (v.to(t).reshape(1, *t.shape[1:]) for v in (*now, *old))
            splits[f"{side}_{split}"] = (t * std_now + mean_now - mean_old) / std_old
        info = replace(info, **{f"{prefix}_mean": old[0], f"{prefix}_std": old[1]})
        changed.append(what)
    pixels = (saved.get("pixel_mean"), saved.get("pixel_std"))
    if pixels[0] is not None and info.pixel_mean is not None and pixels != (info.pixel_mean, info.pixel_std):
        info = replace(info, pixel_mean=tuple(pixels[0]), pixel_std=tuple(pixels[1]))
        exp.prepare = Prepare(info, None, exp.device)  # pixels are standardised per batch, as drawn
        changed.append("pixels")
    if changed:
        exp.info, exp.splits = info, replace(exp.splits, **splits)
    return changed


def match_by_name(exp: Experiment, saved: dict[str, Any]) -> None:
    """Another file scored by the trained run (mode=eval dataset.path=other.csv): its feature columns are put in the
    run's order by name, and its classes must be the run's, by name, not by position. Checkpoints written before
    dl-run saved the names are matched by position, with a warning."""
    info, scaling = exp.info, saved.get("scaling") or {}
    trained_features, trained_classes = scaling.get("feature_names"), scaling.get("class_names")
    where = _dataset_words(exp)
    if info.feature_names is not None and trained_features is not None:
        now, trained = list(info.feature_names), list(trained_features)
        lacking, extra = [n for n in trained if n not in now], [n for n in now if n not in trained]
        if lacking:
            raise ConfigError(f"{where} lacks the feature column(s) {', '.join(lacking)} that {exp.run_dir.name} was "
                              f"trained on (its columns: {', '.join(trained)}).", key="dataset.path")
        if extra:
            raise ConfigError(f"{where} has the column(s) {', '.join(extra)} that {exp.run_dir.name} was not trained "
                              f"on: score it with the run's columns, dataset.features=[{','.join(trained)}].",
                              key="dataset.features")
        if now != trained:
            _reorder_features(exp, [now.index(n) for n in trained], trained)
            console.console.print(f"{where}: its columns are read by name in the order the run was trained on "
                                  f"({', '.join(trained)}).", soft_wrap=True)
    if info.task == "classification" and info.class_names is not None and trained_classes is not None:
        now, trained = list(info.class_names), list(trained_classes)
        unseen, lacking = [c for c in now if c not in trained], [c for c in trained if c not in now]
        if unseen or lacking:
            what = (f"has class(es) {', '.join(unseen)} that {exp.run_dir.name} never saw" if unseen else
                    f"lacks the class(es) {', '.join(lacking)} of {exp.run_dir.name}")
            raise ConfigError(f"{where} {what} (the run's classes: {', '.join(trained)}): its model scores those "
                              f"classes only, matched by name. Score a file whose target holds the same classes.",
                              key="dataset.target")
    if (trained_features is None and info.feature_names is not None or trained_classes is None and
            info.class_names is not None and info.task == "classification") and _another_dataset(exp, saved):
        warning = (f"The checkpoint of {exp.run_dir.name} was written before dl-run saved its feature and class names: "
                   f"{where}'s columns and classes are matched to the run's by position, not by name.")
        exp.data.warnings.append(warning)
        console.print_warning(warning)


def _dataset_words(exp: Experiment) -> str:
    path = (exp.cfg.get("dataset") or {}).get("path")
    return f"'dataset.path={path}'" if path else f"Dataset {exp.info.name}"


def _another_dataset(exp: Experiment, saved: dict[str, Any]) -> bool:
    """Whether the dataset given now differs from the one the run was trained on (its config in the checkpoint)."""
    from omegaconf import OmegaConf

    try:
        trained = OmegaConf.to_container(OmegaConf.create(saved.get("config") or "{}")).get("dataset")
    except Exception:  # noqa: BLE001 - an unreadable old config: say nothing rather than guess
        return False
    if trained is None:
        return False
    # A key the saved config lacks came to dl-run after the run was made (dataset.outliers): it cannot tell the
    # datasets apart.
    now = exp.cfg.get("dataset") or {}
    return trained != {k: v for k, v in now.items() if k in trained}


def _reorder_features(exp: Experiment, order: list[int], names: list[str]) -> None:
    """The inputs' last axis (tabular columns, or a series' values per step) put in `order`."""
    info, index = exp.info, torch.tensor(order)
    changes: dict[str, Any] = {"feature_names": names}
    for key in ("feature_mean", "feature_std"):
        if getattr(info, key) is not None:
            changes[key] = getattr(info, key)[index.to(getattr(info, key).device)]
    if info.sequence is not None:
        changes["sequence"] = replace(info.sequence, target_feature=order.index(info.sequence.target_feature))
    exp.info = replace(info, **changes)
    exp.splits = replace(exp.splits, **{f"x_{split}": getattr(exp.splits, f"x_{split}")[..., index.to(
        getattr(exp.splits, f"x_{split}").device)] for split in ("train", "val", "test")})
