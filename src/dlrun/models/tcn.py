"""Temporal convolutional network: 1-D causal convolutions whose dilation doubles at each level (course 3 §1-2).

Causal: the output at step t sees steps <= t only (the input is padded on the left). With kernel k
and L levels of two convolutions each, one output sees 1 + 2(k-1)(2^L - 1) steps back.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dlrun.data.base import DataInfo, SequenceInfo
from dlrun.models.registry import MODELS
from dlrun.models.sequence import check_dropout, check_positive, require_sequences, split_packed


class CausalConv1d(nn.Conv1d):
    """A 1-D convolution padded on the left only, so no output sees a later step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, ((self.kernel_size[0] - 1) * self.dilation[0], 0)))


class TemporalBlock(nn.Module):
    """[CAUSAL CONV -> RELU -> DROPOUT] * 2, plus a skip connection (course 3 §3.1)."""

    def __init__(self, inputs: int, channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            CausalConv1d(inputs, channels, kernel_size, dilation=dilation), nn.ReLU(), nn.Dropout(dropout),
            CausalConv1d(channels, channels, kernel_size, dilation=dilation), nn.ReLU(), nn.Dropout(dropout),
        )
        self.skip = nn.Conv1d(inputs, channels, 1) if inputs != channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.net(x) + self.skip(x))


def _levels(inputs: int, channels: int, levels: int, kernel_size: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(*(TemporalBlock(inputs if i == 0 else channels, channels, kernel_size, 2 ** i, dropout)
                           for i in range(levels)))


class TCN(nn.Module):
    """INPUT (batch, steps, features) -> temporal blocks -> the last step's channels -> FC."""

    def __init__(self, features: int, channels: int, levels: int, kernel_size: int, dropout: float,
                 out_features: int) -> None:
        super().__init__()
        self.blocks = _levels(features, channels, levels, kernel_size, dropout)
        self.head = nn.Linear(channels, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x.transpose(1, 2))[:, :, -1])


class TCNSeq2Seq(nn.Module):
    """Reads source then decoder input as one causal stream; each decoder position predicts the next token."""

    def __init__(self, seq: SequenceInfo, embedding: int, channels: int, levels: int, kernel_size: int,
                 dropout: float) -> None:
        super().__init__()
        self.seq = seq
        self.embed = nn.Embedding(seq.vocab_size, embedding, padding_idx=seq.pad_token)
        self.blocks = _levels(embedding, channels, levels, kernel_size, dropout)
        self.head = nn.Linear(channels, seq.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source, _ = split_packed(x, self.seq)
        features = self.blocks(self.embed(x).transpose(1, 2)).transpose(1, 2)
        return self.head(features[:, source.shape[1]:])


@MODELS.register("tcn")
def build_tcn(info: DataInfo, out_features: int, channels: int = 32, levels: int = 5, kernel_size: int = 3,
              dropout: float = 0.0, embedding: int = 32) -> nn.Module:
    """Causal dilated 1-D convolutions (dilation 1, 2, 4, ...), a skip connection around each level."""
    seq = require_sequences(info, "tcn")
    check_positive(channels=channels, levels=levels, kernel_size=kernel_size, embedding=embedding)
    check_dropout(dropout)
    if info.task == "seq2seq":
        return TCNSeq2Seq(seq, embedding, channels, levels, kernel_size, dropout)
    return TCN(seq.features, channels, levels, kernel_size, dropout, out_features)


def receptive_field(levels: int, kernel_size: int) -> int:
    """How many steps one output sees: 1 + 2(k-1)(2^L - 1)."""
    return 1 + 2 * (kernel_size - 1) * (2 ** levels - 1)
