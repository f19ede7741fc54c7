"""Reconstruction (course 3 §5.2): autoencoders learn to give back their input; labels are ignored."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from dlrun.components.losses import Loss
from dlrun.data.base import DataInfo
from dlrun.data.prepare import as_is
from dlrun.diagnostics.checkerboard import checkerboard_energies
from dlrun.engine import distributed
from dlrun.engine.evaluating import evaluating
from dlrun.errors import ConfigError
from dlrun.tasks.base import TASKS, Task
from dlrun.tasks.protocols import Variational, VariationalOutput, unwrapped
from dlrun.views.generative import checkerboard_at_start, reconstruction_view, test_reconstructions


def inputs_as_targets(task: type[Task], info: DataInfo) -> DataInfo:
    """A dataset's DataInfo seen by a task that learns from the inputs alone: its inputs are also its targets."""
    if info.sequence is not None and info.sequence.tokens:
        raise ConfigError(f"'task={task.name}' generates real-valued inputs; dataset '{info.name}' holds token ids. "
                          f"Use an image dataset such as digits or mnist.", key="task")
    return replace(info, task=task.name, num_classes=None, class_names=None, target_mean=None, target_std=None,
                   target_dim=info.input_dim)


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)), summed over the code, averaged over the batch (course 3 §5.2)."""
    return (-0.5 * (1 + log_var - mean ** 2 - log_var.exp()).sum(dim=1)).mean()



@TASKS.register("reconstruction")
class Reconstruction(Task):
    """model(x) -> loss(output, x): the target is the clean input; labels are ignored.

    A VAE's output carries its code's mean and log-variance: the loss is then the negative ELBO,
    reconstruction + beta * KL. The reconstruction term is the loss per sample summed over the input's
    values (input_dim x the mean-reduced loss), so that it weighs against the KL summed over the code.
    """

    name = "reconstruction"
    # psnr and checkerboard for images, the ELBO's terms for a VAE
    metric_names = ("mse", "psnr", "checkerboard", "reconstruction", "kl")
    main_metric = "mse"
    higher_is_better = frozenset({"psnr"})
    takes_labels = False
    epoch_views = (reconstruction_view, checkerboard_at_start)
    test_views = (test_reconstructions,)

    @classmethod
    def info_for(cls, info: DataInfo) -> DataInfo:
        return inputs_as_targets(cls, info)

    def __init__(self, loss_fn: Loss, info: DataInfo, model: nn.Module | None = None,
                 make_optimizer: Callable[[Any], torch.optim.Optimizer] | None = None) -> None:
        super().__init__(loss_fn, info)
        self.variational = isinstance(unwrapped(model), Variational) if model is not None else False
        self.images = len(info.input_shape) == 3
        self.input_dim = info.input_dim
        self.metric_names = (("mse", "psnr", "checkerboard") if self.images else ("mse",)) + (
            ("reconstruction", "kl") if self.variational else ())
        self.main_metric = "psnr" if self.images else "mse"
        self._sums: torch.Tensor | None = None  # this epoch's sums of the two ELBO terms, and the step count
        self._last: torch.Tensor | None = None

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        output = model(x)
        if not isinstance(output, VariationalOutput):
            return self.loss_fn(output.float().reshape(x.shape), x)
        reconstruction, kl = self._elbo_terms(output, x)
        terms = torch.stack([reconstruction.detach(), kl.detach(), torch.ones((), device=x.device)])
        self._sums = terms if self._sums is None else self._sums.to(terms.device) + terms
        self._last = terms
        return reconstruction + output.beta * kl

    def _elbo_terms(self, output: VariationalOutput, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reconstruction = self.input_dim * self.loss_fn(output.reconstruction.float().reshape(x.shape), x)
        return reconstruction, kl_divergence(output.mean.float(), output.log_var.float())

    def step_scalars(self) -> dict[str, torch.Tensor]:
        if self._last is None:
            return {}
        return {"train/reconstruction_step": self._last[0], "train/kl_step": self._last[1]}

    def epoch_scalars(self) -> dict[str, float]:
        if self._sums is None:
            return {}
        reconstruction, kl, steps = (self._sums / self._sums[2].clamp_min(1)).tolist()
        self._sums = None
        return {"train/reconstruction": reconstruction, "train/kl": kl}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, info: DataInfo, batch_size: int,
                 prepare: Callable | None = None, all_ranks: bool = False) -> dict[str, float]:
        """The loss (the negative ELBO for a VAE), MSE and, for images, PSNR in pixels of 0..1 and the checkerboard
        score of the reconstructions (dlrun.diagnostics.checkerboard); with all_ranks,
        each rank of a torchrun job sums its share of the split and the sums are added up."""
        prepare = prepare or as_is
        unstandardise = getattr(prepare, "unstandardise", as_is)
        names = ("loss", "reconstruction", "kl", "mse") if self.variational else ("loss", "mse")
        # the checkerboard score's sums (course 3 §3.2), kept as sums so that ranks and batches add up
        names += ("_periodic", "_energy") if self.images else ()
        totals = dict.fromkeys(names, 0.0)
        with evaluating(model):
            for xb in (distributed.share_of(x) if all_ranks else x).split(batch_size):
                target = prepare(xb)
                output = model(target)
                recon = (output.reconstruction if isinstance(output, VariationalOutput) else output).float().reshape(
                    target.shape)
                if isinstance(output, VariationalOutput):
                    r, kl = self._elbo_terms(output, target)
                    values = {"loss": (r + output.beta * kl).item(), "reconstruction": r.item(), "kl": kl.item()}
                else:
                    values = {"loss": self.loss_fn(recon, target).item()}
                values["mse"] = nn.functional.mse_loss(unstandardise(recon), unstandardise(target)).item()
                for k, v in values.items():
                    totals[k] += v * len(xb)
                if self.images:
                    periodic, energy = checkerboard_energies(unstandardise(recon))
                    totals["_periodic"] += periodic
                    totals["_energy"] += energy
        if all_ranks:
            totals = dict(zip(names, distributed.sum_over_ranks(torch.tensor(list(totals.values()),
                                                                              dtype=torch.float64)).tolist()))
        metrics = {k: v / len(x) for k, v in totals.items() if not k.startswith("_")}
        if self.images:  # peak signal-to-noise ratio, pixels in 0..1: 10 log10(1 / MSE)
            metrics["psnr"] = 10 * math.log10(1.0 / max(metrics["mse"], 1e-12))
            # the share of the reconstructions' variation in a 2x2-periodic pattern (course 3 §3.2)
            metrics["checkerboard"] = totals["_periodic"] / totals["_energy"] if totals["_energy"] > 0 else 0.0
        return metrics

    @torch.no_grad()
    def startup_check(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, y_train: torch.Tensor,
                      info: DataInfo) -> tuple[float | None, float | None, str | None]:
        """(chance, initial, warning): chance = the loss of outputting the mean input whatever the input."""
        constant = x.mean(dim=0, keepdim=True).expand_as(x)
        chance = float(self.loss_fn(constant, x)) * (self.input_dim if self.variational else 1)
        initial = self.evaluate(model, x, y, info, len(x))["loss"]  # evaluate() switches to eval mode itself
        warning = None
        if not math.isfinite(initial):
            warning = f"The initial loss is {initial}: the untrained model already produces non-finite outputs."
        elif initial > 3 * chance + 0.1 and not self.variational:
            warning = (f"The initial loss {initial:.4g} is far above outputting the mean input ({chance:.4g}): the "
                       f"initial weights are probably too large (try init=he_normal or xavier_uniform).")
        return chance, initial, warning

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self._sums.cpu() if self._sums is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = state.get("sums")  # on the CPU until the next step adds to it on the training device
