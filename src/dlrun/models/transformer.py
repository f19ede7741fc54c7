"""Transformers: attention layers whose weights are functions of the inputs (course 3 §5.4).

For classification and forecasting an encoder reads the embedded, position-encoded steps and a
pooled state feeds a fully-connected head. For sequence to sequence the encoder's output gives the
keys and values the decoder attends to; the decoder sees the target shifted right, masked so that
each position only sees earlier ones, and is decoded greedily until the end token.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrun.data.base import DataInfo, SequenceInfo
from dlrun.errors import ConfigError
from dlrun.models.registry import MODELS
from dlrun.models.sequence import PositionalEncoding, check_dropout, check_positive, require_sequences, split_packed

POOLS = ("last", "mean")


def _layer_options(width: int, heads: int, feedforward: int, dropout: float) -> dict:
    # Pre-norm (LayerNorm before attention) trains stably without a learning-rate warm-up.
    return {"d_model": width, "nhead": heads, "dim_feedforward": feedforward, "dropout": dropout,
            "batch_first": True, "norm_first": True}


class TransformerEncoderNet(nn.Module):
    """INPUT (batch, steps, features) -> FC to width -> + positions -> encoder layers -> pool -> FC."""

    def __init__(self, seq: SequenceInfo, width: int, heads: int, layers: int, feedforward: int, dropout: float,
                 pool: str, out_features: int) -> None:
        super().__init__()
        self.pool = pool
        self.embed = nn.Linear(seq.features, width)
        self.positions = PositionalEncoding(width, seq.length)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**_layer_options(width, heads, feedforward,
                                                                                         dropout)),
                                             layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.positions(self.embed(x)))
        return self.head(h[:, -1] if self.pool == "last" else h.mean(dim=1))


class TransformerSeq2Seq(nn.Module):
    """Token embedding + positions -> encoder -> decoder (causal self-attention, attention to the encoder) -> FC."""

    def __init__(self, seq: SequenceInfo, width: int, heads: int, layers: int, feedforward: int,
                 dropout: float) -> None:
        super().__init__()
        self.seq = seq
        self.embed = nn.Embedding(seq.vocab_size, width, padding_idx=seq.pad_token)
        self.positions = PositionalEncoding(width, max(seq.source_length, seq.target_length))
        self.dropout = nn.Dropout(dropout)
        options = _layer_options(width, heads, feedforward, dropout)
        # Built here rather than by nn.Transformer, whose encoder would warn that pre-norm rules out nested tensors.
        encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**options), layers, norm=nn.LayerNorm(width),
                                        enable_nested_tensor=False)
        decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**options), layers, norm=nn.LayerNorm(width))
        self.transformer = nn.Transformer(custom_encoder=encoder, custom_decoder=decoder, **options)
        self.head = nn.Linear(width, seq.vocab_size)
        mask = nn.Transformer.generate_square_subsequent_mask(seq.target_length)
        self.register_buffer("causal_mask", mask, persistent=False)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        # Token vectors start as N(0, 1), the same size as the sin/cos positions, so neither drowns the other.
        return self.dropout(self.positions(self.embed(tokens)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source, decoder_input = split_packed(x, self.seq)
        padding = source == self.seq.pad_token  # attention ignores the source's padding
        steps = decoder_input.shape[1]
        out = self.transformer(self._embed(source), self._embed(decoder_input),
                               tgt_mask=self.causal_mask[:steps, :steps], src_key_padding_mask=padding,
                               memory_key_padding_mask=padding, tgt_is_causal=True)
        return self.head(out)


@MODELS.register("transformer")
def build_transformer(info: DataInfo, out_features: int, width: int = 64, heads: int = 4, layers: int = 2,
                      feedforward: int = 128, dropout: float = 0.1, pool: str = "last") -> nn.Module:
    """An encoder (classification, forecasting) or an encoder-decoder (seq2seq) with sinusoidal positions."""
    seq = require_sequences(info, "transformer")
    check_positive(width=width, heads=heads, layers=layers, feedforward=feedforward)
    check_dropout(dropout)
    if width % heads:
        raise ConfigError(f"'model.width={width}' must be divisible by 'model.heads={heads}': each head attends "
                          f"with width/heads dimensions.", key="model.width")
    if pool not in POOLS:
        raise ConfigError(f"'model.pool={pool}' must be one of {', '.join(POOLS)}.", key="model.pool")
    if info.task == "seq2seq":
        return TransformerSeq2Seq(seq, width, heads, layers, feedforward, dropout)
    return TransformerEncoderNet(seq, width, heads, layers, feedforward, dropout, pool, out_features)
