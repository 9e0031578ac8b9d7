"""Masked LM (BERT): predict a sample of hidden tokens from both sides."""

from __future__ import annotations

import torch
from torch import nn

from models.lm_loss import linear_cross_entropy
from models.objectives import Objective


class MaskedLMHead(nn.Module):
    """Transform plus a decoder tied to the token embeddings; loss over masked positions only."""

    def __init__(self, cfg):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.LayerNorm(cfg.d_model))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor, targets: torch.Tensor | None):
        if targets is None:
            return self.transform(h) @ embedding.T + self.bias, None
        # Decode only the masked positions: the vocabulary projection dominates the cost.
        # (An empty selection, possible in a small micro-batch, gives a loss of 0, not NaN.)
        sel = targets != -100
        return None, linear_cross_entropy(self.transform(h[sel]), embedding, self.bias, targets[sel])


class MaskedLM(Objective):
    name = "mlm"
    causal = False
    knobs = ("mask_token_share",)

    def __init__(self, tokens, mask_prob: float, mask_token_share: float = 0.8):
        super().__init__(tokens, mask_prob)
        self.mask_token_share = mask_token_share

    @property
    def decoded_share(self) -> float:
        return self.mask_prob

    def head(self, config) -> nn.Module:
        return MaskedLMHead(config)

    def batch(self, rows, generator):
        return mask_tokens(rows, self.tokens.mask, self.tokens.vocab_size, self.tokens.tensor(), self.mask_prob, generator,
                           self.mask_token_share)  # fmt: skip


def mask_tokens(
    ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: torch.Tensor,
    mask_prob: float,
    generator: torch.Generator,
    mask_token_share: float = 0.8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: of the chosen positions `mask_token_share` (BERT: 80%) -> [MASK], half of the
    rest -> a random token, half kept. 1.0 shows [MASK] everywhere (Wettig et al. 2023): the
    loss then scores only positions whose token is hidden."""
    ids = ids.clone()
    candidate = ~torch.isin(ids, special_ids)
    chosen = (torch.rand(ids.shape, generator=generator) < mask_prob) & candidate
    targets = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    random_until = mask_token_share + (1 - mask_token_share) / 2
    ids[chosen & (roll < mask_token_share)] = mask_id
    rand_pos = chosen & (roll >= mask_token_share) & (roll < random_until)
    ids[rand_pos] = torch.randint(vocab_size, ids.shape, generator=generator)[rand_pos]
    return ids, targets
