"""ELECTRA (Clark et al. 2020): replaced-token detection.

A small masked-LM generator fills the masked positions with tokens it samples; the
discriminator (the body fine-tuning starts from) learns, at every position, whether its token
is the original. Learning from every position rather than the masked 15% is what made
ELECTRA-Small beat a same-size BERT at equal compute. As in the paper: the generator is a
fraction of the discriminator's width and shares its token and position embeddings; the loss is
the generator's MLM loss plus 50 x the discriminator's; a sampled token equal to the original
counts as original; no gradient flows through the sampling.

Sampling is by inverse CDF from one uniform number per position that the batch carries, so a
batch gives the same replacements whether it runs whole, in micro-batches or across DDP ranks.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from models.build import model_config
from models.objectives import Objective, n_targets
from models.transformer import Block, Encoder, EncoderConfig, _init_weights

KEEP_SHARE = 0.15  # of the chosen positions, this share keeps its token in the generator's input (paper's code)


def generator_config(cfg: EncoderConfig, width_share: float) -> EncoderConfig:
    """The discriminator's config scaled in width (heads of the same size where possible)."""
    heads = max(1, round(cfg.n_heads * width_share))
    width = max(heads, round(cfg.d_model * width_share) // heads * heads)
    return replace(cfg, d_model=width, n_heads=heads, d_ff=max(8, round(cfg.d_ff * width_share)))


class Generator(nn.Module):
    """A narrow Transformer over the discriminator's embeddings with a tied MLM decoder."""

    def __init__(self, cfg: EncoderConfig, width_share: float):
        super().__init__()
        g = generator_config(cfg, width_share)
        self.up = nn.Linear(cfg.d_model, g.d_model)  # from the shared embeddings to its width
        self.blocks = nn.ModuleList(Block(g) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(g.d_model)
        self.transform = nn.Sequential(nn.Linear(g.d_model, cfg.d_model), nn.GELU(), nn.LayerNorm(cfg.d_model))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(_init_weights)

    def forward(self, embedded: torch.Tensor, selected: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits at the selected positions only."""
        x = self.up(embedded)
        for block in self.blocks:
            x = block(x, None)
        return self.transform(self.norm(x)[selected]) @ embedding.T + self.bias


class ElectraLM(nn.Module):
    """Discriminator body + replaced-token head, and the generator that corrupts its input."""

    STATS = ("gen_loss_sum", "masked", "disc_loss_sum", "positions", "correct", "replaced", "replaced_found")

    def __init__(self, body: Encoder, width_share: float, discriminator_weight: float, special_ids: torch.Tensor):
        super().__init__()
        d = body.cfg.d_model
        self.body = body
        self.generator = Generator(body.cfg, width_share)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.head.apply(_init_weights)
        self.discriminator_weight = discriminator_weight
        self.register_buffer("special_ids", special_ids, persistent=False)
        self.register_buffer("stats", torch.zeros(len(self.STATS), dtype=torch.float64), persistent=False)

    def forward(self, ids, targets=None, noise=None, gen_scale=None):
        """Without targets: the discriminator's replaced-token logits. With them: (None, loss)
        where the loss is this slice's share of gen_mean + weight x disc_mean over the whole
        batch (`gen_scale` = the batch's positions / masked positions, one value per row)."""
        if targets is None:
            return self.head(self.body(ids)).squeeze(-1), None
        selected = targets != -100
        gen_logits = self.generator(self.body.embed(ids), selected, self.body.tok.weight).float()
        gen_sum = F.cross_entropy(gen_logits, targets[selected], reduction="sum")
        original = torch.where(selected, targets, ids)
        corrupted = original.clone()
        corrupted[selected] = self.sample(gen_logits.detach(), noise[selected])
        replaced = corrupted != original
        disc_logits = self.head(self.body(corrupted)).squeeze(-1).float()
        disc_sum = F.binary_cross_entropy_with_logits(disc_logits, replaced.float(), reduction="sum")
        positions = ids.numel()
        scale = gen_scale[0] if len(gen_scale) else 1.0
        loss = (gen_sum * scale + self.discriminator_weight * disc_sum) / positions
        with torch.no_grad():
            found = (disc_logits > 0) == replaced
            self.stats += torch.stack([gen_sum.detach().double(), selected.sum().double(), disc_sum.detach().double(),
                                       torch.tensor(positions, dtype=torch.float64, device=ids.device),
                                       found.sum().double(), replaced.sum().double(),
                                       (found & replaced).sum().double()])  # fmt: skip
        return None, loss

    def sample(self, logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """One token per row of `logits` (never a special one), by inverse CDF at `uniform`."""
        logits = logits.index_fill(1, self.special_ids, float("-inf"))
        cdf = logits.softmax(-1).cumsum(-1)
        # right=True: the first token whose cumulative probability exceeds the draw, so a draw of
        # 0 cannot land on a zero-probability (special) token before the first real one.
        picked = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1).contiguous(), right=True).squeeze(-1)
        return picked.clamp(max=logits.shape[1] - 1)

    def take_stats(self) -> dict[str, float]:
        s = dict(zip(self.STATS, self.stats.tolist(), strict=True))
        self.stats.zero_()
        if not s["positions"]:
            return {}
        return {
            "gen_loss": s["gen_loss_sum"] / max(s["masked"], 1),
            "disc_loss": s["disc_loss_sum"] / s["positions"],
            "replaced_token_accuracy": s["correct"] / s["positions"],  # every position, replaced or not
            "replaced_share": s["replaced"] / s["positions"],
            "replaced_recall": s["replaced_found"] / max(s["replaced"], 1),
        }


class Electra(Objective):
    name = "electra"
    causal = False
    knobs = ("generator_width", "discriminator_weight")

    def __init__(self, tokens, mask_prob: float, generator_width: float = 0.25, discriminator_weight: float = 50.0):
        super().__init__(tokens, mask_prob)
        self.generator_width, self.discriminator_weight = generator_width, discriminator_weight

    @property
    def decoded_share(self) -> float:
        return self.mask_prob  # the generator decodes the masked positions

    def language_model(self, config: dict) -> ElectraLM:
        cfg = model_config({**config, "causal": False})
        if not isinstance(cfg, EncoderConfig):
            raise ValueError("the electra objective needs a Transformer body (model.arch: transformer)")
        return ElectraLM(Encoder(cfg), self.generator_width, self.discriminator_weight, self.tokens.tensor())

    def batch(self, rows, generator):
        """(generator input, masked originals or -100, a uniform number per position, the
        batch's positions / masked positions per row)."""
        ids = rows.clone()
        chosen = (torch.rand(ids.shape, generator=generator) < self.mask_prob) & ~torch.isin(ids, self.tokens.tensor())
        targets = torch.where(chosen, ids, torch.full_like(ids, -100))
        ids[chosen & (torch.rand(ids.shape, generator=generator) >= KEEP_SHARE)] = self.tokens.mask
        noise = torch.rand(ids.shape, generator=generator)
        gen_scale = torch.full((len(ids),), ids.numel() / max(n_targets(targets), 1), dtype=torch.float32)
        return ids, targets, noise, gen_scale

    def count(self, batch) -> int:
        return batch[0].numel()  # the loss is a mean over every position

    def take_metrics(self, model) -> dict[str, float]:
        return model.take_stats()
