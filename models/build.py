"""Factories keyed by `arch`: a checkpoint's `model_config` dict is all that is needed to
rebuild its network (the registered model uses these too)."""

from __future__ import annotations

from torch import nn

from models.recurrent import CELLS, RecurrentBody, RecurrentClassifier, RecurrentConfig
from models.transformer import Classifier, Encoder, EncoderConfig

ARCHS = ("transformer", *CELLS)


def model_config(config: dict) -> EncoderConfig | RecurrentConfig:
    """The config dataclass for a checkpoint's `model_config`; older ones carry no `arch`."""
    arch = config.get("arch", "transformer")
    if arch == "transformer":
        return EncoderConfig(**config)
    if arch in CELLS:
        return RecurrentConfig(**config)
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def build_body(config: dict) -> nn.Module:
    cfg = model_config(config)
    return RecurrentBody(cfg) if isinstance(cfg, RecurrentConfig) else Encoder(cfg)


def build_classifier(config: dict, n_classes: int, head_dropout: float = 0.1) -> nn.Module:
    cfg = model_config(config)
    if isinstance(cfg, RecurrentConfig):
        return RecurrentClassifier(cfg, n_classes, head_dropout)
    return Classifier(cfg, n_classes, head_dropout)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices decay; norms, biases and embeddings' 1-d params do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
