"""The loss-curve verdict of course 2 §4.2: which case the training and validation curves fall into.

Every verdict carries the numbers it was based on, so the learner can check it against the curves.
The thresholds are deliberately conservative: "healthy" unless a case is clear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dlrun.components.losses import Loss


@dataclass
class Verdict:
    case: str  # one of CASES
    summary: str  # what the curves show
    remedies: list[str]  # what the course suggests
    numbers: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"case": self.case, "summary": self.summary, "remedies": self.remedies, "numbers": self.numbers}

    def markdown(self) -> str:
        numbers = ", ".join(f"{k} = {_fmt(v)}" for k, v in self.numbers.items())
        remedies = "".join(f"\n- {r}" for r in self.remedies)
        return f"**{self.case}**: {self.summary}\n\nBased on: {numbers}{remedies}"


CASES = ("divergence", "stopped too early", "underfitting", "overfitting", "validation levels off",
         "unrepresentative training set", "unrepresentative validation set", "healthy")

# How far a curve must move to count as moving, as a fraction of its level.
STILL_FALLING = 0.05
FLAT = 0.05
# The validation curve counts as level from the first epoch within this fraction of its minimum.
LEVEL = 0.02
# The learning rate counts as annealed when it ends at most this fraction of its value at the last 20%.
ANNEALED = 0.5


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _smooth(values: list[float], window: int) -> list[float]:
    """A trailing moving average, so one noisy epoch does not decide a verdict."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _relative_drop(values: list[float], start: int) -> float:
    """(value at start - last value) / value at start; positive when the curve fell."""
    first, last = values[start], values[-1]
    return (first - last) / abs(first) if first else 0.0


def _roughness(values: list[float]) -> float:
    """Mean absolute epoch-to-epoch change relative to the mean level."""
    if len(values) < 3:
        return 0.0
    diffs = [abs(b - a) for a, b in zip(values, values[1:])]
    level = sum(abs(v) for v in values) / len(values)
    return (sum(diffs) / len(diffs)) / level if level else 0.0


def diagnose(train: list[float], val: list[float], chance: float, lrs: list[float] | None = None) -> Verdict:
    """Classify per-epoch training and validation losses; `chance` is the loss of a constant prediction,
    `lrs` the learning rate at each epoch's end (a schedule that anneals it explains a late fall)."""
    n = len(train)
    if n == 0:
        return Verdict("healthy", "no epoch finished, nothing to judge.", [], {})
    if not all(math.isfinite(v) for v in train + val):
        return Verdict("divergence", "the loss became NaN or infinite.",
                       ["lower the learning rate (optimizer.lr)", "use a scheduler with warm-up",
                        "clip gradients (trainer.gradient_clip)", "try another optimizer (adam)"],
                       {"epochs": n})
    if n < 3:
        return Verdict("too few epochs", f"{n} epoch(s) are too few to read a curve.",
                       ["train for at least 3 epochs (trainer.epochs) to get a verdict"], {"epochs": n})
    curves = _Curves(train, val, chance, lrs)
    diverging = _diverging(curves)  # judged before the tail's numbers are taken
    if diverging is not None:
        return diverging
    curves.read_tail()
    # A validation curve that jumps about (a split too small) is read first: its minimum, its last value and its
    # rise are the noise of a few samples, and read by the later cases they name a noisy curve overfitting,
    # levelling off or stopped too early.
    for case in (_unrepresentative_validation_set, _stopped_too_early, _underfitting, _overfitting,
                 _validation_levels_off, _unrepresentative_training_set):
        verdict = case(curves)
        if verdict is not None:
            return verdict
    return _healthy(curves)


class _Curves:
    """The smoothed curves of a run of at least 3 epochs and the numbers the verdict rests on."""

    def __init__(self, train: list[float], val: list[float], chance: float, lrs: list[float] | None) -> None:
        self.train, self.val, self.chance, self.lrs, self.n = train, val, chance, lrs, len(train)
        window = max(1, self.n // 20)
        self.t, self.v = _smooth(train, window), _smooth(val, window)
        self.tail = self.n - max(2, self.n // 5)  # start of the last 20% of epochs (at least 2)
        self.numbers = {"epochs": self.n, "train_first": train[0], "train_last": train[-1], "val_last": val[-1],
                        "chance_loss": chance}

    def read_tail(self) -> None:
        """How much each curve fell over the last 20% of epochs, the validation minimum, and the schedule."""
        t, v, n, tail, lrs = self.t, self.v, self.n, self.tail, self.lrs
        t_drop_tail, v_drop_tail = _relative_drop(t, tail), _relative_drop(v, tail)
        self.v_min = min(v)
        self.v_min_epoch = v.index(self.v_min) + 1
        self.numbers.update(train_drop_last_20pct=t_drop_tail, val_drop_last_20pct=v_drop_tail, val_min=self.v_min,
                            val_min_epoch=self.v_min_epoch)
        # A schedule that anneals the learning rate (onecycle, cosine, step) makes both curves fall over its last
        # epochs whatever the run's length: that fall is the schedule's doing, not a sign the run was cut short.
        self.annealed = bool(lrs) and len(lrs) == n and lrs[tail] > 0 and lrs[-1] <= ANNEALED * lrs[tail]
        if self.annealed:
            self.numbers.update(lr_at_last_20pct=lrs[tail], lr_last=lrs[-1])
        self.falling = t_drop_tail > STILL_FALLING and v_drop_tail > STILL_FALLING and v[-1] <= self.v_min * 1.01
        self.t_at_vmin = t[self.v_min_epoch - 1]


def _diverging(c: _Curves) -> Verdict | None:
    """Divergence or too-large momentum: worse than a constant prediction, or rising again after a while."""
    t_min = min(c.t)
    # "Rising" must be large against the chance level too: a converged, noisy loss (dropout) is no divergence.
    if c.t[-1] > 1.05 * c.chance or (c.t[-1] > 1.5 * t_min and c.t[-1] - t_min > 0.1 * c.chance):
        return Verdict(
            "divergence",
            "the training loss ends above the loss of a constant prediction, or rose again after a while: the "
            "steps overshoot (too large a learning rate, or too large a momentum).",
            ["lower the learning rate (optimizer.lr)", "lower the momentum (optimizer.momentum)",
             "add a scheduler (scheduler=cosine or step)", "try another optimizer (optimizer=adam)"],
            {**c.numbers, "train_min": t_min, "train_min_epoch": c.t.index(t_min) + 1},
        )
    return None


def _stopped_too_early(c: _Curves) -> Verdict | None:
    if c.falling and not c.annealed:
        return Verdict("stopped too early",
                       "both curves were still falling when training stopped.",
                       ["train longer (trainer.epochs)", "raise the learning rate (optimizer.lr)"], c.numbers)
    return None


def _underfitting(c: _Curves) -> Verdict | None:
    flat_start = max(0, c.n - max(2, (3 * c.n) // 10))
    t_change_flat = abs(_relative_drop(c.t, flat_start))
    if c.t[-1] > 0.3 * c.chance and t_change_flat < FLAT:
        return Verdict("underfitting",
                       "the training loss is flat at a high value: the model cannot fit even the training data.",
                       ["more capacity (wider or deeper model.hidden, a higher model.degree)",
                        "train longer or with a higher learning rate", "check the initialisation (init=he_normal)",
                        "more informative features or data"],
                       {**c.numbers, "train_last_over_chance": c.t[-1] / c.chance,
                        "train_change_last_30pct": t_change_flat})
    return None


def _overfitting(c: _Curves) -> Verdict | None:
    if c.v[-1] > 1.2 * c.v_min and c.v_min_epoch < 0.8 * c.n and c.t[-1] < c.t_at_vmin:
        return Verdict("overfitting",
                       "the validation loss rises while the training loss keeps falling: the model learns the "
                       "training points by heart.",
                       ["less capacity (smaller model, lower model.degree)", "a lower learning rate",
                        "dropout (model.dropout)", "weight decay (optimizer.weight_decay)",
                        "data augmentation", "early stopping (trainer.early_stopping_patience)"],
                       {**c.numbers, "val_rise": c.v[-1] / c.v_min - 1, "train_at_val_min": c.t_at_vmin})
    return None


def _validation_levels_off(c: _Curves) -> Verdict | None:
    # On a level curve the minimum is wherever the noise put it, often late: the curve levelled off at the first
    # epoch within LEVEL of its minimum. (Widening LEVEL by the curve's own wobble called the default digits run,
    # 97% accurate, "levels off": its validation loss wobbles ±15% about a slow fall.)
    level_epoch = next(i for i, v in enumerate(c.v) if v <= c.v_min + LEVEL * abs(c.v_min)) + 1
    t_at_level = c.t[level_epoch - 1]
    if level_epoch < 0.5 * c.n and c.t[-1] < 0.5 * t_at_level:
        return Verdict("validation levels off",
                       "the validation loss stopped improving in the first half of training while the training "
                       "loss kept falling.",
                       ["more data", "another architecture"],
                       {**c.numbers, "val_level_epoch": level_epoch, "train_at_val_level": t_at_level})
    return None


def _unrepresentative_training_set(c: _Curves) -> Verdict | None:
    gap = (c.v[-1] - c.t[-1]) / c.chance if c.chance else 0.0
    if gap > 0.2 and _relative_drop(c.t, 0) > 0.2 and _relative_drop(c.v, 0) > 0.2:
        return Verdict("unrepresentative training set",
                       "both curves improve but a large gap remains between them: the training set does not "
                       "represent the validation data well.",
                       ["more (or more varied) training data", "check how the splits are made"],
                       {**c.numbers, "gap_over_chance": gap})
    return None


def _unrepresentative_validation_set(c: _Curves) -> Verdict | None:
    half = c.n // 2
    v_rough, t_rough = _roughness(c.val[half:]), _roughness(c.train[half:])
    if c.n >= 10 and v_rough > 0.15 and v_rough > 4 * max(t_rough, 1e-12):
        return Verdict("unrepresentative validation set",
                       "the validation loss oscillates around a smooth training curve: the validation set is too "
                       "small or unlike the training data.",
                       ["a larger validation split (dataset.val_fraction)", "check how the splits are made"],
                       {**c.numbers, "val_roughness": v_rough, "train_roughness": t_rough})
    return None


def _healthy(c: _Curves) -> Verdict:
    if c.falling:  # and annealed: the schedule's doing
        lrs, tail = c.lrs, c.tail
        return Verdict("healthy", f"both curves fell together to the end, as the learning rate annealed from "
                                  f"{_fmt(lrs[tail])} to {_fmt(lrs[-1])}: a decaying schedule makes them fall over "
                                  f"its last epochs whatever the run's length, so this is no sign of stopping too "
                                  f"early (a longer run, trainer.epochs, tells whether more epochs help); nothing "
                                  f"the course warns about.", [], c.numbers)
    return Verdict("healthy", "both curves fell and levelled off together; nothing the course warns about.", [],
                   c.numbers)


def chance_loss(loss: Loss, targets: torch.Tensor, num_classes: int | None) -> float:
    """The loss of the best constant prediction (class frequencies, or the mean target): the level of
    a model that learned nothing from the inputs."""
    targets = targets.cpu()
    if loss.chance is not None:
        return loss.chance(targets)
    with torch.no_grad():
        if loss.class_dim == -1:  # tokens (seq2seq): each token's frequency, at every step, padding aside
            prior = torch.bincount(targets.flatten(), minlength=loss.out_features).float().clamp_min(1)
            output = (prior / prior.sum()).log().expand(*targets.shape, loss.out_features)
        elif num_classes is None:  # regression: predict the training mean
            output = targets.float().mean(dim=0, keepdim=True).expand_as(targets)
        elif loss.binary:
            p = targets.float().mean().clamp(1e-6, 1 - 1e-6)
            value = p if loss.output_activation == "sigmoid" else torch.log(p / (1 - p))
            output = value.expand(len(targets), 1)
        else:
            # One class per sample, or per pixel (segmentation: targets (N, H, W), outputs (N, classes, H, W)).
            prior = torch.bincount(targets.flatten(), minlength=num_classes).float().clamp_min(1) / targets.numel()
            output = prior.log().view(1, num_classes, *[1] * (targets.dim() - 1)).expand(
                len(targets), num_classes, *targets.shape[1:])
        return float(loss(output, targets))
