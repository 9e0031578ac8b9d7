"""Pretraining objectives: each is one small object that knows its batch, its head, its loss
and its metric names. Adding one is a new module here, its class in `_registry`, its name in
`pretrain.objective`'s type (tasks/lib/config.py) and its test.

    objective = create("mlm", tokens, mask_prob=0.15)
    model = objective.language_model(config)          # body + the objective's head
    inputs, targets = objective.batch(rows, generator)
    _, loss = model(inputs, targets)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.build import build_body, model_config


@dataclass(frozen=True)
class SpecialTokens:
    """The tokenizer's special ids, read from it (never assumed)."""

    pad: int
    mask: int
    ids: tuple[int, ...]  # every special token: never masked or replaced
    vocab_size: int

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.ids)


class LanguageModel(nn.Module):
    """A body plus an objective's head; `forward(ids, targets)` returns (logits or None, loss or None)."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None):
        return self.head(self.body(ids), self.body.tok.weight, targets)


class Objective:
    """What every objective provides; subclasses set `name` and `causal`."""

    name: str
    causal: bool  # the body may look only backwards, and each row carries one extra token
    decoded_share: float  # share of positions the vocabulary projection decodes (for FLOPs)

    def __init__(self, tokens: SpecialTokens, mask_prob: float):
        self.tokens, self.mask_prob = tokens, mask_prob

    def head(self, config) -> nn.Module:
        raise NotImplementedError

    def batch(self, rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) for a batch of packed rows; targets are -100 where nothing is predicted."""
        raise NotImplementedError

    @property
    def extra_tokens(self) -> int:
        return int(self.causal)

    @property
    def loss_name(self) -> str:
        return f"{self.name}_loss"

    def language_model(self, config: dict) -> LanguageModel:
        """The network of `config` with this objective's head (the body is built first, so
        initialisation draws the same random numbers as before the head existed)."""
        body = build_body({**config, "causal": self.causal})
        return LanguageModel(body, self.head(model_config({**config, "causal": self.causal})))


def n_targets(targets: torch.Tensor) -> int:
    return int((targets != -100).sum())


def _registry() -> dict[str, type[Objective]]:
    from models.objectives.causal import CausalLM
    from models.objectives.mlm import MaskedLM

    return {cls.name: cls for cls in (MaskedLM, CausalLM)}


OBJECTIVES = _registry()


def create(name: str, tokens: SpecialTokens, mask_prob: float) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown pretraining objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](tokens, mask_prob)
