"""A pre-norm Transformer, its language-model heads (masked or causal) and its classifier.

Attention goes through `scaled_dot_product_attention`, so the fused kernels are used where
the hardware has them; both LM decoders share the token-embedding matrix (weight tying).
With `causal=True` every position attends only to itself and earlier positions (GPT-style).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.lm_loss import linear_cross_entropy


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

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.causal = cfg.causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        # key_mask: (b, t) True where the token is real; broadcast over heads and queries.
        # Causal attention needs no key mask: padding sits after the real tokens, which never see it.
        attn_mask = None if key_mask is None or self.causal else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
        )
        return self.out(y.transpose(1, 2).reshape(b, t, d))


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
        self.pos = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.apply(_init_weights)

    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        t = ids.shape[1]
        if t > self.cfg.max_positions:
            raise ValueError(f"sequence of {t} tokens exceeds max_positions={self.cfg.max_positions}")
        pos = torch.arange(t, device=ids.device)
        x = self.drop(self.tok(ids) + self.pos(pos))
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Bottom to top: embeddings, then one group per block (the final norm with the last)."""
        groups = [[*self.tok.parameters(), *self.pos.parameters()]] + [list(b.parameters()) for b in self.blocks]
        groups[-1] += list(self.norm.parameters())
        return groups


class MaskedLM(nn.Module):
    """Encoder plus a decoder tied to the token embeddings; loss over masked positions only."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.transform = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.LayerNorm(cfg.d_model))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (no targets), or (None, mean loss over the masked positions)."""
        h = self.encoder(ids)
        if targets is None:
            return self.transform(h) @ self.encoder.tok.weight.T + self.bias, None
        # Decode only the masked positions: the vocabulary projection dominates the cost.
        # (An empty selection, possible in a small micro-batch, gives a loss of 0, not NaN.)
        sel = targets != -100
        return None, linear_cross_entropy(self.transform(h[sel]), self.encoder.tok.weight, self.bias, targets[sel])


class CausalLM(nn.Module):
    """Causal encoder plus a decoder tied to the token embeddings: next-token prediction."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if not cfg.causal:
            raise ValueError("CausalLM needs an EncoderConfig with causal=True")
        self.encoder = Encoder(cfg)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (no targets), or (None, mean loss over the targets that are not -100)."""
        h = self.encoder(ids)
        if targets is None:
            return h @ self.encoder.tok.weight.T, None
        return None, linear_cross_entropy(h, self.encoder.tok.weight, None, targets)


class Classifier(nn.Module):
    """Encoder plus mean pooling over real tokens and a linear head."""

    def __init__(self, cfg: EncoderConfig, n_classes: int, head_dropout: float = 0.1):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(cfg.d_model, n_classes)
        _init_weights(self.head)

    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(ids, key_mask)
        m = key_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(self.drop(pooled))

    @property
    def body(self) -> Encoder:
        return self.encoder

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return self.encoder.layer_groups() + [list(self.head.parameters())]


def mask_tokens(
    ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: torch.Tensor,
    mask_prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: of the chosen positions 80% -> [MASK], 10% -> random token, 10% kept."""
    ids = ids.clone()
    candidate = ~torch.isin(ids, special_ids)
    chosen = (torch.rand(ids.shape, generator=generator) < mask_prob) & candidate
    targets = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    ids[chosen & (roll < 0.8)] = mask_id
    rand_pos = chosen & (roll >= 0.8) & (roll < 0.9)
    ids[rand_pos] = torch.randint(vocab_size, ids.shape, generator=generator)[rand_pos]
    return ids, targets


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices decay; norms, biases and embeddings' 1-d params do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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
