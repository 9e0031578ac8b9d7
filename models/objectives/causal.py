"""Causal LM (GPT, ULMFiT): predict every next token from the ones before it."""

from __future__ import annotations

import torch
from torch import nn

from models.lm_loss import linear_cross_entropy
from models.objectives import Objective


class NextTokenHead(nn.Module):
    """A decoder tied to the token embeddings, plus a bias."""

    def __init__(self, cfg):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor, targets: torch.Tensor | None):
        if targets is None:
            return h @ embedding.T + self.bias, None
        return None, linear_cross_entropy(h, embedding, self.bias, targets)


class CausalLM(Objective):
    name = "causal"
    causal = True
    decoded_share = 1.0

    def head(self, config) -> nn.Module:
        return NextTokenHead(config)

    def batch(self, rows, generator):
        """Rows carry block_size + 1 tokens: the inputs and, shifted by one, their targets."""
        return rows[:, :-1], rows[:, 1:]
