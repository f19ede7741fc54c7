"""The jobs of a sweep share one process: a dataset built for one job is reused by the next with the same data."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dlrun.data.base import Dataset


class DatasetCache:
    """The last dataset a sweep's jobs built in this process, with the random states right after building it.

    A sweep over learning rates or models loads MNIST once, not once per job. Builders may draw from the
    global random generators; on reuse those are put where building would have left them, so a job's
    weights are the same as when it runs alone. Only the last dataset is kept: a sweep over datasets does
    not pile them up in memory. The jobs read the tensors, never change them.
    """

    def __init__(self) -> None:
        self._last: dict[str, Any] = {}

    def build(self, settings: Any, build: Callable[[], Dataset]) -> Dataset:
        """The dataset the previous job built with the same `settings`, else build()."""
        key = json.dumps(settings, sort_keys=True, default=str)
        if self._last.get("key") == key:
            torch.set_rng_state(self._last["torch"])
            np.random.set_state(self._last["numpy"])
            random.setstate(self._last["python"])
            return self._last["dataset"]
        self._last.clear()
        dataset = build()
        self._last.update(key=key, dataset=dataset, torch=torch.get_rng_state(), numpy=np.random.get_state(),
                          python=random.getstate())
        return dataset
