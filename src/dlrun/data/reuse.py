"""The jobs of a sweep share one process: a dataset built for one job is reused by the next with the same data."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dlrun.data.base import Dataset

_last: dict[str, Any] = {}  # the last dataset built: its key, the Dataset, the random states right after building it
between_jobs = False  # set by the CLI for a multirun: its jobs run one after another in this process


def build_dataset(settings: Any, build: Callable[[], Dataset]) -> Dataset:
    """build(), or in a multirun the previous job's dataset when it was built with the same `settings`.

    A sweep over learning rates or models loads MNIST once, not once per job. Builders may draw from the
    global random generators; on reuse those are put where building would have left them, so a job's
    weights are the same as when it runs alone. Only the last dataset is kept: a sweep over datasets does
    not pile them up in memory. The jobs read the tensors, never change them.
    """
    if not between_jobs:
        return build()
    key = json.dumps(settings, sort_keys=True, default=str)
    if _last.get("key") == key:
        torch.set_rng_state(_last["torch"])
        np.random.set_state(_last["numpy"])
        random.setstate(_last["python"])
        return _last["dataset"]
    _last.clear()
    dataset = build()
    _last.update(key=key, dataset=dataset, torch=torch.get_rng_state(), numpy=np.random.get_state(),
                 python=random.getstate())
    return dataset
