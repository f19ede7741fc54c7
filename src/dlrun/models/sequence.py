"""What the sequence models share: the input checks, the source/decoder split, positional encoding."""

from __future__ import annotations

import math

import torch
from torch import nn

from dlrun.data.base import DataInfo, SequenceInfo
from dlrun.errors import ConfigError

SEQUENCE_MODELS = "rnn, lstm, gru, tcn or transformer"


def require_sequences(info: DataInfo, model: str) -> SequenceInfo:
    """The dataset's sequence description, or a ConfigError for a tabular or image dataset."""
    if info.sequence is None:
        raise ConfigError(
            f"'model={model}' reads its input as a sequence, step by step, but dataset '{info.name}' is not a "
            f"sequence dataset (inputs of shape {tuple(info.input_shape)}). Pick a sequence dataset (e.g. "
            f"dataset=sine, digits_rows or toy_seq2seq), or a model for this one (e.g. model=mlp).", key="model")
    return info.sequence


def refuse_tokens(info: DataInfo, model: str) -> None:
    """Models that take numbers only cannot read token ids nor write a sequence of tokens."""
    if info.task == "seq2seq" or (info.sequence is not None and info.sequence.tokens):
        raise ConfigError(
            f"'model={model}' maps a fixed-size vector of numbers to a fixed-size output, but dataset '{info.name}' "
            f"maps a sequence of tokens to another sequence ({info.task}). Use a sequence model: "
            f"model={SEQUENCE_MODELS.replace(', ', ', model=').replace(' or ', ' or model=')}.", key="model")


def check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"'model.dropout={dropout}' must be in [0, 1).", key="model.dropout")


def check_positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ConfigError(f"'model.{key}={value}' must be a positive integer.", key=f"model.{key}")


def split_packed(x: torch.Tensor, seq: SequenceInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Seq2seq inputs hold the source tokens, then the decoder's input: split them."""
    return x[:, :seq.source_length], x[:, seq.source_length:]


class PositionalEncoding(nn.Module):
    """Adds sin/cos of the position at geometric wavelengths: attention alone ignores order (course 3 §5.4)."""

    def __init__(self, width: int, max_length: int) -> None:
        super().__init__()
        position = torch.arange(max_length).unsqueeze(1)
        rate = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
        table = torch.zeros(max_length, width)
        table[:, 0::2] = torch.sin(position * rate)
        table[:, 1::2] = torch.cos(position * rate[: width // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table[: x.shape[1]].to(x.dtype)
