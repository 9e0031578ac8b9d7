"""A pre-norm Transformer body and its classifier (the language-model heads are the
objectives' own: `models/objectives/`).

Attention goes through `scaled_dot_product_attention`, so the fused kernels are used where
the hardware has them. With `causal=True` every position attends only to itself and earlier
positions (GPT-style). Positions are a learned table added to the token embeddings
(`position="learned"`, BERT's) or rotations of the queries and keys by their position
(`"rotary"`, RoFormer's: Su et al. 2021), which make attention depend on the offset between
two tokens from the first step instead of after the table has been learnt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    arch: str = "transformer"
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    max_positions: int = 128
    causal: bool = False
    pad_id: int = 0
    position: str = "learned"  # learned | rotary; checkpoints from before the option carry none

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.causal = cfg.causal
        self.rotary = cfg.position == "rotary"
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if self.rotary:
            q, k = rotate(q), rotate(k)
        # key_mask: (b, t) True where the token is real; broadcast over heads and queries.
        # Causal attention needs no key mask: padding sits after the real tokens, which never see it.
        attn_mask = None if key_mask is None or self.causal else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
        )
        return self.out(y.transpose(1, 2).reshape(b, t, d))


def rotate(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of x (batch, heads, positions, head width): each pair of
    channels (i, i + half) at position m turns by m * base^(-i / half), so the dot product of a
    rotated query and key depends on their positions only through their offset."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half :]], -1)


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), key_mask))
        return x + self.drop(self.ff(self.norm2(x)))


class Encoder(nn.Module):
    """Token ids (b, t) -> contextual states (b, t, d_model)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.pos = nn.Embedding(cfg.max_positions, cfg.d_model) if cfg.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.apply(_init_weights)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings (ELECTRA's generator reads them too)."""
        t = ids.shape[1]
        if t > self.cfg.max_positions:
            raise ValueError(f"sequence of {t} tokens exceeds max_positions={self.cfg.max_positions}")
        x = self.tok(ids)
        return self.drop(x if self.pos is None else x + self.pos(torch.arange(t, device=ids.device)))

    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Bottom to top: embeddings, then one group per block (the final norm with the last)."""
        embeddings = [*self.tok.parameters(), *(self.pos.parameters() if self.pos is not None else ())]
        groups = [embeddings] + [list(b.parameters()) for b in self.blocks]
        groups[-1] += list(self.norm.parameters())
        return groups


class Classifier(nn.Module):
    """Encoder plus mean pooling over real tokens and a linear head."""

    def __init__(self, cfg: EncoderConfig, n_classes: int, head_dropout: float = 0.1):
        super().__init__()
        self.body = Encoder(cfg)
        self.drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(cfg.d_model, n_classes)
        _init_weights(self.head)

    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        h = self.body(ids, key_mask)
        m = key_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(self.drop(pooled))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return self.body.layer_groups() + [list(self.head.parameters())]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
