"""A GAN (course 3 §5.2): a generator and a discriminator trained in turn; labels are ignored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dlrun.components.losses import Loss
from dlrun.data.base import DataInfo
from dlrun.data.prepare import as_is
from dlrun.diagnostics.curves import Verdict
from dlrun.engine import distributed
from dlrun.engine.evaluating import evaluating
from dlrun.errors import ConfigError
from dlrun.tasks.base import TASKS, Choices, Task, Update
from dlrun.tasks.protocols import GeneratorAndCritic
from dlrun.tasks.reconstruction import inputs_as_targets
from dlrun.views.generative import gan_view

GAN_MODELS = ("gan", "dcgan")  # the model configs that build a generator and discriminator pair


@TASKS.register("gan")
class Adversarial(Task):
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
    higher_is_better = frozenset({"d_accuracy_real", "d_accuracy_fake"})
    takes_labels = False
    epoch_views = (gan_view,)

    def __init__(self, loss_fn: Loss, info: DataInfo, model: nn.Module | None = None,
                 make_optimizer: Callable[[Any], torch.optim.Optimizer] | None = None) -> None:
        super().__init__(loss_fn, info)
        # The generator's optimizer is a second one of the optimizer group's kind and settings (course 3 §5.2).
        self.generator_optimizer = make_optimizer(model.generator.parameters())
        self.threshold = 0.0 if loss_fn.name == "bce_with_logits" else 0.5  # a logit above 0, a score above 1/2
        self._fake: torch.Tensor | None = None
        self._sums: torch.Tensor | None = None  # d_loss, g_loss, accuracy real, accuracy fake, steps
        self._last: torch.Tensor | None = None

    @classmethod
    def info_for(cls, info: DataInfo) -> DataInfo:
        return inputs_as_targets(cls, info)

    @classmethod
    def model_config(cls, model_cfg: dict[str, Any]) -> dict[str, Any]:
        """task=gan reads the default model=mlp as model=gan with its hidden widths."""
        if "_target_" in model_cfg:
            return model_cfg
        name = model_cfg.get("name")
        if name == "mlp":
            return {"name": "gan", **({"hidden": model_cfg["hidden"]} if "hidden" in model_cfg else {})}
        if name not in GAN_MODELS:
            raise ConfigError(f"'model={name}' is not a generator and discriminator pair: task=gan trains model=gan "
                              f"(MLPs; the default model=mlp means it) or model=dcgan (convolutional).", key="model")
        return model_cfg

    @classmethod
    def build_loss(cls, loss_cfg: dict[str, Any], info: DataInfo, train_targets: torch.Tensor) -> Loss:
        """The discriminator's criterion: binary cross-entropy on logits, or MSE (least-squares GAN)."""
        name = loss_cfg.get("name")
        if name in ("auto", "bce_with_logits"):
            return Loss(nn.BCEWithLogitsLoss(), "bce_with_logits", 1)
        if name == "mse":
            return Loss(nn.MSELoss(), "mse", 1)  # least-squares GAN (Mao et al. 2017)
        raise ConfigError(f"'loss={name}' cannot train a GAN: the discriminator scores real against fake with one "
                          f"output. Use loss=auto or bce_with_logits (the original GAN), or mse (least-squares GAN).",
                          key="loss")

    @classmethod
    def optimizer_parameters(cls, model: nn.Module) -> Any:
        """The optimizer group's optimizer moves the discriminator; the task builds the generator's."""
        return model.discriminator.parameters()

    @classmethod
    def refuse(cls, choices: Choices) -> None:
        super().refuse(choices)
        if choices.scheduler not in (None, "none"):
            raise ConfigError(f"'scheduler={choices.scheduler}' with task=gan: a GAN trains with a constant learning "
                              f"rate for both players here; use scheduler=none.", key="scheduler")
        if distributed.launched():
            raise ConfigError("task=gan trains on one process here: its two alternating updates are not wrapped in "
                              "DistributedDataParallel. Run it without torchrun / trainer.devices.", key="task")
        if choices.early_stopping_patience is not None:
            raise ConfigError(f"'trainer.early_stopping_patience={choices.early_stopping_patience}' with task=gan: no "
                              f"loss says when a GAN stops improving; set trainer.epochs and judge the samples (null = "
                              f"off).", key="trainer.early_stopping_patience")

    def updates(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Update, ...]:
        return (Update(optimizer, list(model.discriminator.parameters()), self.discriminator_loss),
                Update(self.generator_optimizer, list(model.generator.parameters()), self.generator_loss))

    def compiled(self, forward: nn.Module) -> nn.Module:
        """The generator and the discriminator compiled in place: the steps call them, not the pair's forward, so a
        compiled wrapper around the pair would compile nothing."""
        forward.generator.compile()
        forward.discriminator.compile()
        return forward

    def _scores(self, model: GeneratorAndCritic, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, ...]:
        real_score, fake_score = model.discriminator(real).float(), model.discriminator(fake).float()
        d_loss = (self.loss_fn.module(real_score, torch.ones_like(real_score))
                  + self.loss_fn.module(fake_score, torch.zeros_like(fake_score)))
        accuracy_real = (real_score > self.threshold).float().mean()
        accuracy_fake = (fake_score <= self.threshold).float().mean()
        return d_loss, fake_score, accuracy_real, accuracy_fake

    def discriminator_loss(self, model: GeneratorAndCritic, real: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._fake = model.sample(len(real), real.device)
        # detach(): this update moves the discriminator only; the generator's turn comes next.
        d_loss, _, accuracy_real, accuracy_fake = self._scores(model, real, self._fake.detach())
        self._last = torch.stack([d_loss.detach(), torch.zeros((), device=real.device), accuracy_real,
                                  accuracy_fake, torch.ones((), device=real.device)])
        return d_loss

    def generator_loss(self, model: GeneratorAndCritic, real: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
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
        prepare = prepare or as_is
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
