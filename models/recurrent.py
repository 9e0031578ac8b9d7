"""Recurrent bodies (Elman RNN, LSTM, GRU) and their classifier, ULMFiT-style.

The stack is one single-layer cell per layer, so each layer is its own parameter group for
discriminative learning rates and gradual unfreezing. The last layer's output is as wide as
the embeddings, so the LM decoder can share the embedding matrix (weight tying).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass(frozen=True)
class RecurrentConfig:
    vocab_size: int
    arch: str = "lstm"  # rnn | lstm | gru
    d_model: int = 128  # embedding width, and the last layer's output width (tied decoder)
    d_hidden: int = 512  # width of every layer but the last
    n_layers: int = 2
    dropout: float = 0.1
    pad_id: int = 0
    causal: bool = True  # a recurrence reads only the past: no other kind exists

    def __post_init__(self):
        if self.arch not in CELLS:
            raise ValueError(f"arch must be one of {sorted(CELLS)}, got {self.arch!r}")
        if not self.causal:
            raise ValueError(f"a recurrent ({self.arch}) body is causal: use a causal pretraining objective")

    def to_dict(self) -> dict:
        return asdict(self)


class RecurrentBody(nn.Module):
    """Token ids (b, t) -> states (b, t, d_model); position i has read tokens 0..i only."""

    def __init__(self, cfg: RecurrentConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        nn.init.uniform_(self.tok.weight, -0.1, 0.1)  # the AWD-LSTM range: a tied decoder wants small logits
        with torch.no_grad():
            self.tok.weight[cfg.pad_id].zero_()
        widths = [cfg.d_model] + [cfg.d_hidden] * (cfg.n_layers - 1) + [cfg.d_model]
        cell = CELLS[cfg.arch]
        self.layers = nn.ModuleList(cell(widths[i], widths[i + 1], batch_first=True) for i in range(cfg.n_layers))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        # Right padding never reaches the real positions: a recurrence only reads the past.
        x = self.drop(self.tok(ids))
        for layer in self.layers:
            x = self.drop(layer(x)[0])
        return x

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.tok.parameters())] + [list(layer.parameters()) for layer in self.layers]


class RecurrentClassifier(nn.Module):
    """Body plus ULMFiT's concat pooling (last real state, max and mean over real tokens) and a head."""

    def __init__(self, cfg: RecurrentConfig, n_classes: int, head_dropout: float = 0.1):
        super().__init__()
        self.body = RecurrentBody(cfg)
        self.drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(3 * cfg.d_model, n_classes)

    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        h = self.body(ids)
        m = key_mask.unsqueeze(-1)
        last = h[torch.arange(len(h), device=h.device), key_mask.sum(1).clamp(min=1) - 1]
        biggest = h.masked_fill(~m, float("-inf")).amax(1)
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return self.head(self.drop(torch.cat([last, biggest, mean], dim=-1)))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return self.body.layer_groups() + [list(self.head.parameters())]
