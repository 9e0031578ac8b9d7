"""Training-step throughput of our MLM beside Hugging Face's BertForMaskedLM, same size.

    pip install transformers==5.24.0          # only the benchmark needs it
    python bench/train_throughput.py          # prints a markdown table

Both models are built from the model section of params.yaml with random weights and trained
on the same masked batch (pretrain.batch_size x pretrain.block_size, vocabulary 8,000) with
AdamW, the same threads, in one process. Rounds alternate between the two so drift in the
machine's speed hits both. MFU is against an fp32 matmul peak measured in the same run.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.transformer import MaskedLM, mask_tokens  # noqa: E402
from tasks.config import load_params  # noqa: E402
from tasks.pretrain import MASK_ID, SPECIAL_IDS, encoder_config  # noqa: E402
from tasks.training import count_params, flops_per_token, measure_matmul_peak  # noqa: E402

VOCAB = 8000
ROUNDS, STEPS, WARMUP = 5, 8, 3


def hf_model(cfg):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff,
        max_position_embeddings=cfg.max_positions,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
    )
    config._attn_implementation = "sdpa"
    return BertForMaskedLM(config)


def ours_step(model, opt, ids, targets):
    _, loss = model(ids, targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def hf_step(model, opt, ids, targets):
    loss = model(input_ids=ids, labels=targets).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def seconds_per_step(step, model, opt, ids, targets, n) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step(model, opt, ids, targets)
    return (time.perf_counter() - start) / n


def main() -> None:
    params = load_params()
    p = params.pretrain
    cfg = encoder_config(params, VOCAB)
    torch.manual_seed(0)
    ids = torch.randint(5, VOCAB, (p.batch_size, p.block_size))
    masked, targets = mask_tokens(ids, MASK_ID, VOCAB, SPECIAL_IDS, p.mask_prob, torch.Generator().manual_seed(0))
    models = {"ours": MaskedLM(cfg), "hf": hf_model(cfg)}
    steps = {"ours": ours_step, "hf": hf_step}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    for k, m in models.items():
        m.train()
        seconds_per_step(steps[k], m, opts[k], masked, targets, WARMUP)
    timings = {k: [] for k in models}
    peaks = []
    for r in range(ROUNDS):
        peaks.append(measure_matmul_peak(torch.device("cpu"), size=1024, repeats=16))
        for k in ("ours", "hf") if r % 2 == 0 else ("hf", "ours"):
            timings[k].append(seconds_per_step(steps[k], models[k], opts[k], masked, targets, STEPS))
    tokens = p.batch_size * p.block_size
    peak = max(peaks)
    fpt = flops_per_token(models["ours"], cfg.n_layers, cfg.d_model, p.block_size)
    tps = {k: tokens / statistics.median(v) for k, v in timings.items()}
    print(
        f"config: {cfg.n_layers} layers x {cfg.d_model} wide, {cfg.n_heads} heads, d_ff {cfg.d_ff}, vocab {VOCAB}, "
        f"batch {p.batch_size} x {p.block_size}, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"non-embedding parameters: ours {count_params(models['ours']):,}, hf {count_params(models['hf']):,}; "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s (best of {ROUNDS})\n"
    )
    print("| model | tokens/s (median of 5 rounds) | ratio to HF | MFU |")
    print("|---|---|---|---|")
    for k, name in (("ours", "ours (MaskedLM)"), ("hf", "HF BertForMaskedLM (sdpa)")):
        print(f"| {name} | {tps[k]:,.0f} | {tps[k] / tps['hf']:.2f}x | {tps[k] * fpt / peak:.0%} |")


if __name__ == "__main__":
    main()
