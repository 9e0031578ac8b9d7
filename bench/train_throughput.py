"""Training-step throughput of our language models beside Hugging Face's, same size, one run.

    pip install transformers==5.24.0                      # only the benchmark needs it
    python bench/train_throughput.py                      # the model section of params.yaml
    python bench/train_throughput.py --d-model 256 --n-layers 4 --d-ff 1024
    python bench/train_throughput.py --device cuda --precision bf16 --batch-size 128

Our masked LM runs beside `BertForMaskedLM`, our causal LM beside `GPT2LMHeadModel`, each
built from the same config with random weights and trained on the same batch with AdamW,
the same threads, in one process. Rounds alternate between the models, so drift in the
machine's speed hits all of them. MFU is against a matmul peak measured in the same run,
in the same dtype; the model FLOPs are our count (non-embedding matmuls, the decoded share
of the tied vocabulary projection, attention) for both sides of a pair.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.build import model_config  # noqa: E402
from models.objectives import create  # noqa: E402
from tasks.lib.config import load_params  # noqa: E402
from tasks.lib.training import count_params, flops_per_token, measure_matmul_peak  # noqa: E402
from tasks.pretrain import synthetic_objective  # noqa: E402

VOCAB = 8000


# Our config keys -> each Hugging Face config's names for them.
HF_NAMES = {
    "bert": {"vocab_size": "vocab_size", "d_model": "hidden_size", "n_layers": "num_hidden_layers",
             "n_heads": "num_attention_heads", "d_ff": "intermediate_size",
             "max_positions": "max_position_embeddings",
             "dropout": ("hidden_dropout_prob", "attention_probs_dropout_prob")},
    "gpt2": {"vocab_size": "vocab_size", "d_model": "n_embd", "n_layers": "n_layer", "n_heads": "n_head",
             "d_ff": "n_inner", "max_positions": "n_positions", "dropout": ("resid_pdrop", "embd_pdrop", "attn_pdrop")},
}  # fmt: skip


def _hf_kwargs(kind: str, cfg: dict) -> dict:
    out = {}
    for ours, theirs in HF_NAMES[kind].items():
        out |= dict.fromkeys(theirs if isinstance(theirs, tuple) else (theirs,), cfg[ours])
    return out


def hf_bert(cfg):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(**_hf_kwargs("bert", cfg), loss_type="ForMaskedLM")
    config._attn_implementation = "sdpa"
    return BertForMaskedLM(config)


def hf_gpt2(cfg):
    from transformers import GPT2Config, GPT2LMHeadModel

    # bos/eos: our [CLS]/[SEP]; GPT-2's defaults lie outside an 8,000-word vocabulary.
    config = GPT2Config(**_hf_kwargs("gpt2", cfg), bos_token_id=2, eos_token_id=3, loss_type="ForCausalLM")
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config)


def ours_loss(model, ids, targets):
    return model(ids, targets)[1]


def hf_loss(model, ids, targets):
    return model(input_ids=ids, labels=targets).loss


def make_step(loss_fn, model, ids, targets, device, bf16: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, ids, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def seconds_per_step(step, n: int, device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - start) / n


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_cases(cfg: dict, batch: int, block: int, mask_prob: float, device, bf16: bool, compile_: bool) -> dict:
    """name -> (step function, tokens per step, our FLOPs per token) for each model."""
    torch.manual_seed(0)
    ids = torch.randint(5, VOCAB, (batch, block)).to(device)
    tokens = synthetic_objective(load_params(), VOCAB).tokens
    masked, targets = create("mlm", tokens, mask_prob).batch(ids.cpu(), torch.Generator().manual_seed(0))
    masked, targets = masked.to(device), targets.to(device)
    cases = {}
    for objective in ("mlm", "causal"):
        lm = create(objective, tokens, mask_prob)
        ours = lm.language_model(cfg).to(device)
        theirs = (hf_bert if objective == "mlm" else hf_gpt2)(cfg).to(device)
        if compile_:
            ours.body.compile()
        fpt = flops_per_token(ours, model_config({**cfg, "causal": lm.causal}), block, lm.decoded_share)
        if objective == "mlm":
            pairs = {
                "ours MaskedLM": (ours, ours_loss, masked, targets),
                "HF BertForMaskedLM": (theirs, hf_loss, masked, targets),
            }
        else:
            # Same T input tokens for both: GPT-2 shifts its labels inside, ours takes them shifted.
            shifted = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
            pairs = {
                "ours CausalLM": (ours, ours_loss, ids, shifted),
                "HF GPT2LMHeadModel": (theirs, hf_loss, ids, ids),
            }
        for name, (model, loss_fn, x, y) in pairs.items():
            model.train()
            cases[name] = (make_step(loss_fn, model, x, y, device, bf16), batch * block, fpt, count_params(model))
    return cases


def main() -> None:
    params = load_params()
    m, p = params.model, params.pretrain
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-model", type=int, default=m.d_model)
    ap.add_argument("--n-layers", type=int, default=m.n_layers)
    ap.add_argument("--n-heads", type=int, default=m.n_heads)
    ap.add_argument("--d-ff", type=int, default=m.d_ff)
    ap.add_argument("--dropout", type=float, default=p.dropout)
    ap.add_argument("--batch-size", type=int, default=p.batch_size)
    ap.add_argument("--block-size", type=int, default=p.block_size)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile our encoder")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, bf16 = torch.device(args.device), args.precision == "bf16"
    cfg = {
        "arch": "transformer",
        "vocab_size": VOCAB,
        "d_model": args.d_model,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "d_ff": args.d_ff,
        "dropout": args.dropout,
        "max_positions": max(args.block_size, m.max_positions),
    }
    cases = build_cases(cfg, args.batch_size, args.block_size, p.mask_prob, device, bf16, args.compile)
    for step, *_ in cases.values():
        seconds_per_step(step, 3, device)  # warm-up (and compilation)
    timings = {k: [] for k in cases}
    peaks = []
    dtype = torch.bfloat16 if bf16 else torch.float32
    for r in range(args.rounds):
        peaks.append(measure_matmul_peak(device, dtype))
        names = list(cases) if r % 2 == 0 else list(reversed(cases))
        for k in names:
            timings[k].append(seconds_per_step(cases[k][0], args.steps, device))
    peak = max(peaks)
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(
        f"config: {args.n_layers} layers x {args.d_model} wide, {args.n_heads} heads, d_ff {args.d_ff}, "
        f"vocab {VOCAB}, batch {args.batch_size} x {args.block_size}, {args.precision}"
        f"{', compiled' if args.compile else ''}, {where}, torch {torch.__version__}"
    )
    print(f"matmul peak {peak / 1e12:.3g} TFLOP/s ({args.precision}, best of {args.rounds} measurements in this run)\n")
    print(f"| model | non-embedding params | tokens/s (median of {args.rounds} rounds) | ratio to HF | MFU |")
    print("|---|---|---|---|---|")
    names = list(cases)
    for i in range(0, len(names), 2):
        ours, theirs = names[i], names[i + 1]
        tps = {k: cases[k][1] / statistics.median(timings[k]) for k in (ours, theirs)}
        for k in (ours, theirs):
            mfu = tps[k] * cases[ours][2] / peak
            print(f"| {k} | {cases[k][3]:,} | {tps[k]:,.0f} | {tps[k] / tps[theirs]:.2f}x | {mfu:.0%} |")


if __name__ == "__main__":
    main()
