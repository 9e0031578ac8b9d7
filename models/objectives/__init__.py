"""Pretraining objectives: each is one small object that knows its batch, its head, its loss
and its metric names. Adding one is a new module here, its class in `_registry`, its name in
`pretrain.objective`'s type (tasks/lib/config.py) and its test.

    objective = create("mlm", tokens, mask_prob=0.15)
    model = objective.language_model(config)          # body + the objective's head
    batch = objective.batch(rows, generator)          # (inputs, targets, *what else the loss needs)
    _, loss = model(*batch)
    objective.take_metrics(model)                     # the objective's own running figures, if any

Every tensor of a batch has the rows first, so a batch can be cut into micro-batches (gradient
accumulation, DDP); `count` says how much of the loss's mean a slice carries.
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

    knobs: tuple[str, ...] = ()  # the pretrain params, besides mask_prob, its constructor takes

    def __init__(self, tokens: SpecialTokens, mask_prob: float):
        self.tokens, self.mask_prob = tokens, mask_prob

    def head(self, config) -> nn.Module:
        raise NotImplementedError

    def batch(self, rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """(inputs, targets, ...) for a batch of packed rows; targets are -100 where nothing is predicted."""
        raise NotImplementedError

    def count(self, batch: tuple[torch.Tensor, ...]) -> int:
        """What the loss is a mean over, in (a slice of) a batch: micro-batches are weighted by it."""
        return n_targets(batch[1])

    def take_metrics(self, model: nn.Module) -> dict[str, float]:
        """Figures the objective gathered since the last call (besides its loss), then reset."""
        return {}

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
    from models.objectives.electra import Electra
    from models.objectives.mlm import MaskedLM

    return {cls.name: cls for cls in (MaskedLM, CausalLM, Electra)}


OBJECTIVES = _registry()


def create(name: str, tokens: SpecialTokens, mask_prob: float, **knobs) -> Objective:
    """The objective `name`; `knobs` may hold any pretrain params, it takes those it names."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown pretraining objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    return cls(tokens, mask_prob, **{k: knobs[k] for k in cls.knobs if k in knobs})
