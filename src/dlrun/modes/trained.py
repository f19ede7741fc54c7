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
