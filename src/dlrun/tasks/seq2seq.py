"""Sequence to sequence: a token sequence in, another out (course 3 §5.4); decoded greedily to be scored."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.data.base import DataInfo, SequenceInfo
from dlrun.models.decoding import greedy_decode
from dlrun.tasks.base import TASKS, Task
from dlrun.views.sequence import decoded_view


@torch.no_grad()
def seq2seq_metrics(model: nn.Module, predicted: torch.Tensor, x: torch.Tensor, y: torch.Tensor, seq: SequenceInfo,
                    batch_size: int) -> dict[str, float]:
    """Token accuracy with the true previous tokens given, and exact-sequence accuracy of greedy decoding."""
    real = y != seq.pad_token
    token_accuracy = ((predicted == y) & real).sum() / real.sum()
    # Exact sequences are scored as the model would be used: decoding its own tokens, not the true ones.
    decoded = torch.cat([greedy_decode(model, xb[:, :seq.source_length], seq)[0].to(y.device)  # y may be on the host
                         for xb in x.split(batch_size)])
    exact = (decoded == y).all(dim=1).float().mean()
    return {"token_accuracy": token_accuracy.item(), "sequence_accuracy": exact.item()}


@TASKS.register("seq2seq")
class Seq2Seq(Task):
    """model(source, shifted target) -> one score per target token and vocabulary entry (teacher forcing)."""

    name = "seq2seq"
    metric_names = ("token_accuracy", "sequence_accuracy")
    main_metric = "sequence_accuracy"
    higher_is_better = frozenset({"token_accuracy", "sequence_accuracy"})
    default_loss = "cross_entropy"
    epoch_views = (decoded_view,)

    def metrics(self, model: nn.Module, outputs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, info: DataInfo,
                batch_size: int) -> dict[str, float]:
        return seq2seq_metrics(model, self.loss_fn.predict_classes(outputs), x, y, info.sequence, batch_size)
