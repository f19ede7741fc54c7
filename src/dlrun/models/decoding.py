"""Greedy decoding: produce one token per step, each fed back in, until the end token (course 3 §5.4)."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.data.base import SequenceInfo


@torch.no_grad()
def greedy_decode(model: nn.Module, source: torch.Tensor, seq: SequenceInfo) -> tuple[torch.Tensor, int]:
    """Tokens (batch, target_length), padded after each end token, and the number of decoding steps taken.

    The model reads source and decoder input as one row, like the training inputs; its decoder is
    causal, so the output at step t depends only on the tokens decoded before t.
    """
    n = len(source)
    decoder_input = torch.full((n, seq.target_length), seq.pad_token, dtype=torch.long, device=source.device)
    decoder_input[:, 0] = seq.start_token
    decoded = torch.full_like(decoder_input, seq.pad_token)
    finished = torch.zeros(n, dtype=torch.bool, device=source.device)
    steps = 0
    for t in range(seq.target_length):
        logits = model(torch.cat([source, decoder_input], dim=1))
        token = logits[:, t].argmax(dim=-1)
        token = torch.where(finished, torch.full_like(token, seq.pad_token), token)
        decoded[:, t] = token
        finished |= token == seq.end_token
        steps += 1
        if bool(finished.all()):
            break  # every sequence has produced its end token
        if t + 1 < seq.target_length:
            decoder_input[:, t + 1] = token
    return decoded, steps


def to_text(tokens: torch.Tensor, seq: SequenceInfo) -> str:
    """Token ids as words, up to and including the end token; padding left out."""
    names = seq.token_names or [str(i) for i in range(seq.vocab_size)]
    words = []
    for token in tokens.tolist():
        if token == seq.pad_token:
            continue
        words.append(names[token])
        if token == seq.end_token:
            break
    return " ".join(words)
