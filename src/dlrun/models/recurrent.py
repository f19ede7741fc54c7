"""Recurrent networks: a state updated at each step, gated in the LSTM and the GRU (course 3 §5.3).

For classification and forecasting the last state feeds a fully-connected head; for sequence to
sequence an encoder reads the source and its last state starts a decoder whose every state feeds
the head, one token per step.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from dlrun.data.base import DataInfo, SequenceInfo
from dlrun.errors import ConfigError
from dlrun.models.registry import MODELS
from dlrun.models.sequence import check_dropout, check_positive, require_sequences, split_packed

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
# The gate whose bias `forget_bias` sets, as its slice of torch's stacked gate biases: the LSTM's forget gate
# (gates i, f, g, o) and the GRU's update gate z, which in torch's GRU keeps the old state (h = (1 - z) n + z h).
REMEMBER_GATE = {"lstm": 1, "gru": 1}


def set_forget_bias(rnn: nn.RNNBase, cell: str, value: float) -> None:
    """Start the remembering gate at sigmoid(value) instead of about 0.5 (bias ~0), so the state is carried over
    many steps from the first update (Jozefowicz et al. 2015 for the LSTM: 1.0): b_ih of that gate = value,
    b_hh = 0, in every layer and direction."""
    hidden, gate = rnn.hidden_size, REMEMBER_GATE[cell]
    with torch.no_grad():
        for name, bias in rnn.named_parameters():
            if name.startswith("bias_"):
                bias[gate * hidden:(gate + 1) * hidden] = value if name.startswith("bias_ih") else 0.0


def _rnn(cell: str, inputs: int, hidden: int, layers: int, bidirectional: bool, dropout: float,
         nonlinearity: str, forget_bias: float | None = None) -> nn.RNNBase:
    kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    # torch's dropout acts between stacked layers only (and warns when there is one layer).
    rnn = CELLS[cell](inputs, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True,
                      dropout=dropout if layers > 1 else 0.0, **kwargs)
    if forget_bias is not None:
        set_forget_bias(rnn, cell, forget_bias)
    return rnn


def last_state(state: torch.Tensor | tuple[torch.Tensor, torch.Tensor], directions: int) -> torch.Tensor:
    """The top layer's final hidden state, both directions side by side: (batch, directions * hidden)."""
    h = state[0] if isinstance(state, tuple) else state  # an LSTM's state is (h, c)
    return torch.cat(list(h[-directions:]), dim=1)


class RecurrentNet(nn.Module):
    """INPUT (batch, steps, features) -> recurrent layers -> last state -> (DROPOUT) -> FC."""

    def __init__(self, cell: str, features: int, hidden: int, layers: int, bidirectional: bool, dropout: float,
                 out_features: int, nonlinearity: str = "tanh", forget_bias: float | None = None) -> None:
        super().__init__()
        self.directions = 2 if bidirectional else 1
        self.rnn = _rnn(cell, features, hidden, layers, bidirectional, dropout, nonlinearity, forget_bias)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * self.directions, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, state = self.rnn(x)
        return self.head(self.dropout(last_state(state, self.directions)))


class RecurrentSeq2Seq(nn.Module):
    """Encoder RNN over the source tokens; its final state starts a decoder RNN fed the shifted target."""

    def __init__(self, cell: str, seq: SequenceInfo, embedding: int, hidden: int, layers: int, bidirectional: bool,
                 dropout: float, nonlinearity: str = "tanh", forget_bias: float | None = None) -> None:
        super().__init__()
        self.seq = seq
        self.layers = layers
        self.directions = 2 if bidirectional else 1
        self.embed = nn.Embedding(seq.vocab_size, embedding, padding_idx=seq.pad_token)
        self.encoder = _rnn(cell, embedding, hidden, layers, bidirectional, dropout, nonlinearity, forget_bias)
        self.decoder = _rnn(cell, embedding, hidden, layers, False, dropout, nonlinearity, forget_bias)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, seq.vocab_size)

    def _bridge(self, h: torch.Tensor) -> torch.Tensor:
        # A bidirectional encoder has a state per direction; the one-way decoder starts from their sum.
        return h.view(self.layers, self.directions, *h.shape[1:]).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source, decoder_input = split_packed(x, self.seq)
        lengths = (source != self.seq.pad_token).sum(dim=1).clamp_min(1).cpu()
        # Packed, so the encoder's final state is taken at each source's last real token, not after padding.
        packed = pack_padded_sequence(self.dropout(self.embed(source)), lengths, batch_first=True,
                                      enforce_sorted=False)
        _, state = self.encoder(packed)
        state = tuple(self._bridge(s) for s in state) if isinstance(state, tuple) else self._bridge(state)
        out, _ = self.decoder(self.dropout(self.embed(decoder_input)), state)
        return self.head(self.dropout(out))


def _build(cell: str, info: DataInfo, out_features: int, hidden: int, layers: int, bidirectional: bool,
           dropout: float, embedding: int, nonlinearity: str = "tanh", forget_bias: float | None = None) -> nn.Module:
    seq = require_sequences(info, cell)
    check_positive(hidden=hidden, layers=layers, embedding=embedding)
    check_dropout(dropout)
    if info.task == "seq2seq":
        return RecurrentSeq2Seq(cell, seq, embedding, hidden, layers, bidirectional, dropout, nonlinearity,
                                forget_bias)
    return RecurrentNet(cell, seq.features, hidden, layers, bidirectional, dropout, out_features, nonlinearity,
                        forget_bias)


@MODELS.register("rnn")
def build_rnn(info: DataInfo, out_features: int, hidden: int = 64, layers: int = 1, bidirectional: bool = False,
              dropout: float = 0.0, embedding: int = 32, nonlinearity: str = "tanh") -> nn.Module:
    """The plain (Elman) recurrent network: h_t = act(W x_t + U h_(t-1) + b); hard to train on long sequences."""
    if nonlinearity not in ("tanh", "relu"):
        raise ConfigError(f"'model.nonlinearity={nonlinearity}' must be tanh or relu.", key="model.nonlinearity")
    return _build("rnn", info, out_features, hidden, layers, bidirectional, dropout, embedding, nonlinearity)


@MODELS.register("lstm")
def build_lstm(info: DataInfo, out_features: int, hidden: int = 64, layers: int = 1, bidirectional: bool = False,
               dropout: float = 0.0, embedding: int = 32, forget_bias: float | None = None) -> nn.Module:
    """Long short-term memory: input, forget and output gates around a cell state; `forget_bias` (null: torch's
    init) starts the forget gate at sigmoid(forget_bias)."""
    return _build("lstm", info, out_features, hidden, layers, bidirectional, dropout, embedding,
                  forget_bias=forget_bias)


@MODELS.register("gru")
def build_gru(info: DataInfo, out_features: int, hidden: int = 64, layers: int = 1, bidirectional: bool = False,
              dropout: float = 0.0, embedding: int = 32, forget_bias: float | None = None) -> nn.Module:
    """Gated recurrent unit: update and reset gates, no separate cell state; `forget_bias` (null: torch's init)
    starts the update gate, the share of the old state kept at each step, at sigmoid(forget_bias)."""
    return _build("gru", info, out_features, hidden, layers, bidirectional, dropout, embedding,
                  forget_bias=forget_bias)
