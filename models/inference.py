"""The one inference path: encode, pad, predict. `evaluate`, fine-tuning's validation and the
registered model (which ships `models/` as its code) all call it, so served predictions are
the evaluated ones."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids per text; the tokenizer carries its own normalisation and truncation."""
    return [e.ids for e in tokenizer.encode_batch(texts)]


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask): right-padded ids and True where a token is real."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, ids != pad_id


@torch.no_grad()
def predict_proba(model: nn.Module, sequences: list[list[int]], device="cpu", batch_size: int = 128) -> np.ndarray:
    """Class probabilities, in input order (batches are length-sorted for speed, then restored)."""
    model.eval()
    pad_id = model.body.cfg.pad_id
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = np.zeros((len(sequences), model.head.out_features), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([sequences[i] for i in idx], pad_id)
        logits = model(ids.to(device), mask.to(device))
        out[idx] = F.softmax(logits.float(), dim=-1).cpu().numpy()
    return out


def vector_columns(width: int) -> list[str]:
    """The column names of `embed`'s vectors in a registered language model's output."""
    return [f"dim_{i}" for i in range(width)]


@torch.no_grad()
def embed(body: nn.Module, sequences: list[list[int]], device="cpu", batch_size: int = 128) -> np.ndarray:
    """A language model's text vectors: its body's states averaged over each text's real tokens."""
    body.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = np.zeros((len(sequences), body.cfg.d_model), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([sequences[i] for i in idx], body.cfg.pad_id)
        states = body(ids.to(device), mask.to(device)).float()
        weights = mask.to(device).unsqueeze(-1).float()
        out[idx] = ((states * weights).sum(1) / weights.sum(1).clamp(min=1)).cpu().numpy()
    return out
