"""The networks, as plain nn.Module code (no I/O), and factories keyed by `arch`.

A checkpoint's `model_config` dict (the config dataclass's fields, `arch` among them) is all
that is needed to rebuild its network: the registered model uses these factories too.
"""

from __future__ import annotations

from torch import nn

from models.recurrent import CELLS, RecurrentClassifier, RecurrentConfig, RecurrentLM
from models.transformer import CausalLM, Classifier, EncoderConfig, MaskedLM

ARCHS = ("transformer", *CELLS)


def model_config(config: dict) -> EncoderConfig | RecurrentConfig:
    """The config dataclass for a checkpoint's `model_config`; older ones carry no `arch`."""
    arch = config.get("arch", "transformer")
    if arch == "transformer":
        return EncoderConfig(**config)
    if arch in CELLS:
        return RecurrentConfig(**config)
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def build_language_model(config: dict) -> nn.Module:
    """MaskedLM for a bidirectional Transformer, CausalLM for a causal one, RecurrentLM otherwise."""
    cfg = model_config(config)
    if isinstance(cfg, RecurrentConfig):
        return RecurrentLM(cfg)
    return CausalLM(cfg) if cfg.causal else MaskedLM(cfg)


def build_classifier(config: dict, n_classes: int, head_dropout: float = 0.1) -> nn.Module:
    cfg = model_config(config)
    if isinstance(cfg, RecurrentConfig):
        return RecurrentClassifier(cfg, n_classes, head_dropout)
    return Classifier(cfg, n_classes, head_dropout)
