"""What one training step and one evaluation compute, per task: train.fit() is the one loop for all of them.

A task hands fit() its `updates`: for each optimizer of the step, the loss to back-propagate and the
parameters it moves. Supervised learning (classification, regression, seq2seq) has one: model(x) ->
loss(output, y). Reconstruction (autoencoders, VAE) has one whose target is the clean input itself.
A GAN has two, in turn: the discriminator's, then the generator's (course 3 §5.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from dlrun.engine import distributed
from dlrun.data.base import DataInfo
from dlrun.diagnostics.curves import Verdict, chance_loss, diagnose
from dlrun.diagnostics.startup import initial_loss_check
from dlrun.errors import ConfigError
from dlrun.engine.evaluating import evaluating
from dlrun.components.losses import LOSSES, Loss
from dlrun.tasks.metrics import metric_names, task_metrics
from dlrun.models.autoencoder import VAE, VAEOutput
from dlrun.models.gan import GAN

# Tasks that take any dataset's inputs and ignore its labels; every other task is the dataset's own.
INPUT_TASKS = ("reconstruction", "gan")
GAN_MODELS = ("gan", "dcgan")


@dataclass
class Update:
    """One optimizer's share of a training step: the loss it descends and the parameters it moves."""

    optimizer: torch.optim.Optimizer
    parameters: list[nn.Parameter]
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _as_is(x: torch.Tensor, train: bool = False) -> torch.Tensor:
    return x


class Supervised:
    """model(x) -> loss(output, y): classification, regression and sequence to sequence."""

    name = "supervised"
    picks_best = True  # the monitored validation metric picks the best checkpoint

    def __init__(self, loss_fn: Loss, info: DataInfo | None = None) -> None:
        self.loss_fn = loss_fn
        self.metric_names = metric_names(info.task) if info is not None else ()
        task = info.task if info is not None else None
        self.main_metric = {"classification": "accuracy", "seq2seq": "sequence_accuracy", "segmentation": "mean_iou",
                            "detection": "map50"}.get(task, "rmse")

    def updates(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Update, ...]:
        return (Update(optimizer, list(model.parameters()), self.loss),)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(model(x).float(), y)

    def step_scalars(self) -> dict[str, torch.Tensor]:
        """Values beside train/loss_step at each logging step (none here)."""
        return {}

    def epoch_scalars(self) -> dict[str, float]:
        """This epoch's means of the task's own training terms; resets them."""
        return {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, info: DataInfo, batch_size: int,
                 prepare: Callable | None = None, all_ranks: bool = False) -> dict[str, float]:
        """Mean loss and the task's metrics over one split, in evaluation mode (no dropout, no augmentation).

        all_ranks: every rank of a torchrun job calls this together (validation during training), and each
        computes a share of the outputs; the metrics come out the same on every rank."""
        prepare = prepare or _as_is
        with evaluating(model):
            if all_ranks:
                outputs = distributed.forward_shared(lambda xb: model(prepare(xb)), x, batch_size)
            else:
                outputs = torch.cat([model(prepare(xb)) for xb in x.split(batch_size)])
            metrics = {"loss": self.loss_fn(outputs.float(), y).item()}
            metrics.update(task_metrics(model, self.loss_fn, outputs, x, y, info, batch_size))
        return metrics

    def startup_check(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, y_train: torch.Tensor,
                      info: DataInfo) -> tuple[float | None, float | None, str | None]:
        """(chance loss, initial loss, warning): the untrained model against a constant prediction."""
        chance = chance_loss(self.loss_fn, y_train, info.num_classes)
        initial, warning = initial_loss_check(model, self.loss_fn, x, y, chance, info.num_classes)
        return chance, initial, warning

    def verdict(self, history: list[dict[str, float]], chance: float | None) -> Verdict:
        """The loss-curve verdict of course 2 §4.2."""
        lrs = [h["lr"] for h in history] if all("lr" in h for h in history) else None
        return diagnose([h["train/loss"] for h in history], [h["val/loss"] for h in history], chance, lrs)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)), summed over the code, averaged over the batch (course 3 §5.2)."""
    return (-0.5 * (1 + log_var - mean ** 2 - log_var.exp()).sum(dim=1)).mean()


class Reconstruction(Supervised):
    """model(x) -> loss(output, x): the target is the clean input; labels are ignored.

    A VAE's output carries its code's mean and log-variance: the loss is then the negative ELBO,
    reconstruction + beta * KL. The reconstruction term is the loss per sample summed over the input's
    values (input_dim x the mean-reduced loss), so that it weighs against the KL summed over the code.
    """

    name = "reconstruction"

    def __init__(self, loss_fn: Loss, info: DataInfo, variational: bool) -> None:
        super().__init__(loss_fn)
        self.variational = variational
        self.images = len(info.input_shape) == 3
        self.input_dim = info.input_dim
        self.metric_names = (("mse", "psnr") if self.images else ("mse",)) + (
            ("reconstruction", "kl") if variational else ())
        self.main_metric = "psnr" if self.images else "mse"
        self._sums: torch.Tensor | None = None  # this epoch's sums of the two ELBO terms, and the step count
        self._last: torch.Tensor | None = None

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        output = model(x)
        if not isinstance(output, VAEOutput):
            return self.loss_fn(output.float().reshape(x.shape), x)
        reconstruction, kl = self._elbo_terms(output, x)
        terms = torch.stack([reconstruction.detach(), kl.detach(), torch.ones((), device=x.device)])
        self._sums = terms if self._sums is None else self._sums.to(terms.device) + terms
        self._last = terms
        return reconstruction + output.beta * kl

    def _elbo_terms(self, output: VAEOutput, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        """The loss (the negative ELBO for a VAE), MSE and, for images, PSNR in pixels of 0..1; with all_ranks,
        each rank of a torchrun job sums its share of the split and the sums are added up."""
        prepare = prepare or _as_is
        unstandardise = getattr(prepare, "unstandardise", _as_is)
        names = ("loss", "reconstruction", "kl", "mse") if self.variational else ("loss", "mse")
        totals = dict.fromkeys(names, 0.0)
        with evaluating(model):
            for xb in (distributed.share_of(x) if all_ranks else x).split(batch_size):
                target = prepare(xb)
                output = model(target)
                recon = (output.reconstruction if isinstance(output, VAEOutput) else output).float().reshape(
                    target.shape)
                if isinstance(output, VAEOutput):
                    r, kl = self._elbo_terms(output, target)
                    values = {"loss": (r + output.beta * kl).item(), "reconstruction": r.item(), "kl": kl.item()}
                else:
                    values = {"loss": self.loss_fn(recon, target).item()}
                values["mse"] = nn.functional.mse_loss(unstandardise(recon), unstandardise(target)).item()
                for k, v in values.items():
                    totals[k] += v * len(xb)
        if all_ranks:
            totals = dict(zip(names, distributed.sum_over_ranks(torch.tensor(list(totals.values()),
                                                                              dtype=torch.float64)).tolist()))
        metrics = {k: v / len(x) for k, v in totals.items()}
        if self.images:  # peak signal-to-noise ratio, pixels in 0..1: 10 log10(1 / MSE)
            metrics["psnr"] = 10 * math.log10(1.0 / max(metrics["mse"], 1e-12))
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


class Adversarial(Supervised):
    """A GAN's step: the discriminator learns real from fake, then the generator learns to fool it.

    The discriminator's loss is criterion(D(x), real) + criterion(D(G(z)), fake); the generator's is the
    non-saturating criterion(D(G(z)), real) of Goodfellow et al. (2014), whose gradient does not vanish
    while the discriminator wins. criterion = binary cross-entropy on logits, or MSE (least-squares GAN).
    The run's `train/loss` and `val/loss` are the discriminator's loss.
    """

    name = "gan"
    picks_best = False  # no loss says which generator is best: the last epoch's is kept as best.pt
    metric_names = ("g_loss", "d_accuracy_real", "d_accuracy_fake")
    main_metric = "g_loss"

    def __init__(self, loss_fn: Loss, generator_optimizer: torch.optim.Optimizer) -> None:
        super().__init__(loss_fn)
        self.generator_optimizer = generator_optimizer
        self.threshold = 0.0 if loss_fn.name == "bce_with_logits" else 0.5  # a logit above 0, a score above 1/2
        self._fake: torch.Tensor | None = None
        self._sums: torch.Tensor | None = None  # d_loss, g_loss, accuracy real, accuracy fake, steps
        self._last: torch.Tensor | None = None

    def updates(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Update, ...]:
        return (Update(optimizer, list(model.discriminator.parameters()), self.discriminator_loss),
                Update(self.generator_optimizer, list(model.generator.parameters()), self.generator_loss))

    def _scores(self, model: GAN, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, ...]:
        real_score, fake_score = model.discriminator(real).float(), model.discriminator(fake).float()
        d_loss = (self.loss_fn.module(real_score, torch.ones_like(real_score))
                  + self.loss_fn.module(fake_score, torch.zeros_like(fake_score)))
        accuracy_real = (real_score > self.threshold).float().mean()
        accuracy_fake = (fake_score <= self.threshold).float().mean()
        return d_loss, fake_score, accuracy_real, accuracy_fake

    def discriminator_loss(self, model: GAN, real: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._fake = model.sample(len(real), real.device)
        # detach(): this update moves the discriminator only; the generator's turn comes next.
        d_loss, _, accuracy_real, accuracy_fake = self._scores(model, real, self._fake.detach())
        self._last = torch.stack([d_loss.detach(), torch.zeros((), device=real.device), accuracy_real,
                                  accuracy_fake, torch.ones((), device=real.device)])
        return d_loss

    def generator_loss(self, model: GAN, real: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        score = model.discriminator(self._fake).float()  # the discriminator just updated judges the same fakes
        self._fake = None
        g_loss = self.loss_fn.module(score, torch.ones_like(score))
        self._last[1] = g_loss.detach()
        self._sums = self._last if self._sums is None else self._sums.to(self._last.device) + self._last
        return g_loss

    def step_scalars(self) -> dict[str, torch.Tensor]:
        if self._last is None:
            return {}
        return {"train/g_loss_step": self._last[1], "train/d_accuracy_real_step": self._last[2],
                "train/d_accuracy_fake_step": self._last[3]}

    def epoch_scalars(self) -> dict[str, float]:
        if self._sums is None:
            return {}
        _, g_loss, real, fake, _ = (self._sums / self._sums[4].clamp_min(1)).tolist()
        self._sums = None
        return {"train/g_loss": g_loss, "train/d_accuracy_real": real, "train/d_accuracy_fake": fake}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, info: DataInfo, batch_size: int,
                 prepare: Callable | None = None, all_ranks: bool = False) -> dict[str, float]:
        """Both losses and the discriminator's accuracy on the split's real images and as many fixed-noise fakes
        (every rank scores the whole split: its fakes come from one noise sequence, which shares would cut)."""
        prepare = prepare or _as_is
        noise = torch.Generator().manual_seed(0)  # the same fakes at every evaluation
        totals = torch.zeros(4)
        with evaluating(model):
            for xb in x.split(batch_size):
                fake = model.generator(torch.randn(len(xb), model.latent_dim, generator=noise).to(xb.device))
                d_loss, fake_score, real, fake_right = self._scores(model, prepare(xb), fake)
                g_loss = self.loss_fn.module(fake_score, torch.ones_like(fake_score))
                totals += torch.stack([d_loss, g_loss, real, fake_right]).cpu() * len(xb)
        d_loss, g_loss, real, fake = (totals / len(x)).tolist()
        return {"loss": d_loss, "g_loss": g_loss, "d_accuracy_real": real, "d_accuracy_fake": fake}

    def startup_check(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, y_train: torch.Tensor,
                      info: DataInfo) -> tuple[float | None, float | None, str | None]:
        return None, None, None  # no constant prediction to compare a two-player game with

    def verdict(self, history: list[dict[str, float]], chance: float | None) -> Verdict:
        last = history[-1] if history else {}
        numbers = {k: last[f"val/{k}"] for k in ("loss", "g_loss", "d_accuracy_real", "d_accuracy_fake")
                   if f"val/{k}" in last}
        return Verdict("not applicable", "The loss-curve verdict does not apply to a GAN: its two losses are a game, "
                       "not a fit, and neither falls steadily when training goes well. Judge the samples "
                       "(gan/samples in TensorBoard's Images tab). A discriminator accuracy near 100% on both "
                       "real and fake means the generator has lost the game.",
                       ["If the samples collapse to one image (mode collapse) or stop changing, lower "
                        "optimizer.lr (DCGAN uses 2e-4 and optimizer.rho1=0.5), or give the discriminator dropout."],
                       {f"val/{k}": v for k, v in numbers.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"generator_optimizer": self.generator_optimizer.state_dict(),
                "sums": self._sums.cpu() if self._sums is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self._sums = state.get("sums")


def task_info(task: str | None, info: DataInfo) -> DataInfo:
    """The DataInfo the model, loss and metrics see: the dataset's own, or a view of its inputs for `task`."""
    if task in (None, info.task):
        return info
    if task not in INPUT_TASKS:
        needs = {"segmentation": " (it has no per-pixel masks)", "detection": " (it has no boxes)"}
        raise ConfigError(f"'task={task}' does not fit dataset '{info.name}', which is {info.task}"
                          f"{needs.get(task, '')}. Leave task unset, or pick a {task} dataset"
                          f"{' such as shapes' if task in needs else ''}.", key="task")
    if info.sequence is not None and info.sequence.tokens:
        raise ConfigError(f"'task={task}' generates real-valued inputs; dataset '{info.name}' holds token ids. Use an "
                          f"image dataset such as digits or mnist.", key="task")
    return replace(info, task=task, num_classes=None, class_names=None, target_mean=None, target_std=None,
                   target_dim=info.input_dim)


def model_config(model_cfg: dict[str, Any], info: DataInfo) -> dict[str, Any]:
    """The model config for the task: task=gan reads the default model=mlp as model=gan with its hidden widths."""
    if info.task != "gan" or "_target_" in model_cfg:
        return model_cfg
    name = model_cfg.get("name")
    if name == "mlp":
        return {"name": "gan", **({"hidden": model_cfg["hidden"]} if "hidden" in model_cfg else {})}
    if name not in GAN_MODELS:
        raise ConfigError(f"'model={name}' is not a generator and discriminator pair: task=gan trains model=gan "
                          f"(MLPs; the default model=mlp means it) or model=dcgan (convolutional).", key="model")
    return model_cfg


def build_loss(loss_cfg: dict[str, Any], info: DataInfo, train_targets: torch.Tensor) -> Loss:
    """The task's loss: a GAN's adversarial criterion, or the loss group's choice checked against the task."""
    if info.task != "gan":
        return LOSSES.build(loss_cfg, info=info,
                            train_targets=None if info.task in INPUT_TASKS else train_targets)
    name = loss_cfg.get("name")
    if name in ("auto", "bce_with_logits"):
        return Loss(nn.BCEWithLogitsLoss(), "bce_with_logits", 1)
    if name == "mse":
        return Loss(nn.MSELoss(), "mse", 1)  # least-squares GAN (Mao et al. 2017)
    raise ConfigError(f"'loss={name}' cannot train a GAN: the discriminator scores real against fake with one "
                      f"output. Use loss=auto or bce_with_logits (the original GAN), or mse (least-squares GAN).",
                      key="loss")


def main_parameters(model: nn.Module) -> Any:
    """The parameters the optimizer group's optimizer moves: a GAN's discriminator, any other model's all."""
    return model.discriminator.parameters() if isinstance(model, GAN) else model.parameters()


def build_task(info: DataInfo, loss: Loss, model: nn.Module,
               make_optimizer: Callable[[Any], torch.optim.Optimizer], scheduler: str | None, mode: str,
               early_stopping_patience: int | None = None) -> Supervised:
    """The task object fit() asks what a step and an evaluation compute."""
    if info.task in INPUT_TASKS and mode == "lr_find":
        raise ConfigError(f"'mode=lr_find' sweeps a supervised loss; task={info.task} is not supported. Train with "
                          f"mode=train.", key="mode")
    if info.task == "gan":
        if scheduler not in (None, "none"):
            raise ConfigError(f"'scheduler={scheduler}' with task=gan: a GAN trains with a constant learning rate "
                              f"for both players here; use scheduler=none.", key="scheduler")
        if distributed.launched():
            raise ConfigError("task=gan trains on one process here: its two alternating updates are not wrapped in "
                              "DistributedDataParallel. Run it without torchrun / trainer.devices.", key="task")
        if early_stopping_patience is not None:
            raise ConfigError(f"'trainer.early_stopping_patience={early_stopping_patience}' with task=gan: no loss says "
                              f"when a GAN stops improving; set trainer.epochs and judge the samples (null = off).",
                              key="trainer.early_stopping_patience")
        # The generator's optimizer is a second one of the optimizer group's kind and settings (course 3 §5.2).
        return Adversarial(loss, make_optimizer(model.generator.parameters()))
    if info.task == "reconstruction":
        return Reconstruction(loss, info, variational=isinstance(_unwrap(model), VAE))
    return Supervised(loss, info)


def _unwrap(model: nn.Module) -> nn.Module:
    return model[0] if isinstance(model, nn.Sequential) and len(model) == 2 else model
