"""pretrain: a Transformer encoder trained from scratch with masked-LM on the training text.

    python -m tasks.pretrain          # reads data/tokenized/train, writes checkpoints/pretrained/

The training split's token ids are packed end to end into fixed blocks, so no compute is
spent on padding; labels are never read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models.transformer import EncoderConfig, MaskedLM, decay_groups, mask_tokens
from tasks.common import StageError, atomic_dir, pick_device, read_json, run_stage, seed_everything
from tasks.config import Params, load_params
from tasks.training import (
    flops_per_token,
    load_optimizer_state,
    load_weights,
    measure_matmul_peak,
    save_checkpoint,
    warmup_cosine,
)

DATA_DIR = Path("data/tokenized")
TOKENIZER_DIR = Path("checkpoints/tokenizer")
OUT_DIR = Path("checkpoints/pretrained")
RESUME_DIR = Path("checkpoints/.pretrain-resume")  # not a DVC output: scratch state of an unfinished run
SPECIAL_IDS = torch.tensor([0, 1, 2, 3, 4])  # [PAD] [UNK] [CLS] [SEP] [MASK]
MASK_ID = 4


def pack(sequences: list[list[int]], block_size: int) -> torch.Tensor:
    """Concatenate the examples ([CLS] ... [SEP] each) and cut the stream into blocks."""
    stream = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise StageError(
            f"only {len(stream)} training tokens: fewer than one block of pretrain.block_size={block_size}"
        )
    return stream[: n_blocks * block_size].view(n_blocks, block_size)


def encoder_config(params: Params, vocab_size: int) -> EncoderConfig:
    m = params.model
    return EncoderConfig(
        vocab_size=vocab_size,
        d_model=m.d_model,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        d_ff=m.d_ff,
        dropout=m.dropout,
        max_positions=m.max_positions,
    )


@torch.no_grad()
def evaluate_mlm(
    model: MaskedLM, blocks: torch.Tensor, cfg, device, batch_size: int, mask_prob: float, seed: int
) -> float:
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids, targets = mask_tokens(
            blocks[start : start + batch_size], MASK_ID, cfg.vocab_size, SPECIAL_IDS, mask_prob, gen
        )
        _, loss = model(ids.to(device), targets.to(device))
        total, n = total + loss.item() * len(ids), n + len(ids)
    model.train()
    return total / max(n, 1)


def fingerprint(params: Params, data_dir: Path = DATA_DIR) -> str:
    """Identifies a training run: a saved resume state is only used by the identical run."""
    h = hashlib.sha256()
    knobs = {
        "seed": params.seed,
        "model": params.model.model_dump(),
        "pretrain": params.pretrain.model_dump(exclude={"log_every", "checkpoint_every", "device"}),
    }
    h.update(json.dumps(knobs, sort_keys=True).encode())
    for f in sorted((data_dir / "train").iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _resume_meta(resume_dir: Path, run_key: str) -> dict | None:
    """The saved state's metadata, only if it belongs to the run identified by `run_key`."""
    meta_file = resume_dir / "checkpoint.json"
    meta = read_json(meta_file) if meta_file.exists() else None
    return meta if meta and meta.get("fingerprint") == run_key else None


def resumable_run_id(params: Params, resume_dir: Path = RESUME_DIR, data_dir: Path = DATA_DIR) -> str | None:
    """The MLflow run a killed pretraining left behind, if its saved state fits these params."""
    meta = _resume_meta(resume_dir, fingerprint(params, data_dir))
    return meta.get("mlflow_run_id") if meta else None


def pretrain(
    params: Params,
    data_dir: Path = DATA_DIR,
    out_dir: Path = OUT_DIR,
    log=lambda metrics, step: None,
    resume_dir: Path = RESUME_DIR,
    run_id: str | None = None,
) -> dict:
    """Train the MLM; every `checkpoint_every` steps the whole state goes to `resume_dir`,
    so a killed run continues where it stopped and ends with the same weights."""
    import datasets

    p = params.pretrain
    seed_everything(params.seed)
    device = pick_device(p.device)
    vocab_size = read_json(data_dir / "stats.json")["vocab_size"]
    blocks = pack(datasets.load_from_disk(str(data_dir / "train"))["input_ids"], p.block_size)
    val_blocks = pack(datasets.load_from_disk(str(data_dir / "validation"))["input_ids"], p.block_size)
    cfg = encoder_config(params, vocab_size)
    model = MaskedLM(cfg).to(device)
    optimizer = torch.optim.AdamW(decay_groups(model, p.weight_decay), lr=p.lr, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(p.warmup_steps, p.max_steps))
    gen = torch.Generator().manual_seed(params.seed)
    flops_tok = flops_per_token(model, cfg.n_layers, cfg.d_model, p.block_size)
    peak = measure_matmul_peak(device)
    run_key = fingerprint(params, data_dir)
    state = {"step": 0, "cursor": 0, "tokens_seen": 0, "window_loss": 0.0, "window_tokens": 0, "wall_s": 0.0}
    order = torch.randperm(len(blocks), generator=gen)
    if _resume_meta(resume_dir, run_key):
        state, order = _restore(resume_dir, model, optimizer, schedule, gen)
        print(f"pretrain: resuming from step {state['step']} ({resume_dir})")
    cursor, window_start, start = state["cursor"], time.perf_counter(), time.perf_counter() - state["wall_s"]
    bar = tqdm(
        range(state["step"], p.max_steps),
        desc="pretrain",
        unit="step",
        mininterval=5,
        initial=state["step"],
        total=p.max_steps,
    )
    for step in bar:
        if cursor + p.batch_size > len(order):
            order, cursor = torch.randperm(len(blocks), generator=gen), 0
        batch = blocks[order[cursor : cursor + p.batch_size]]
        cursor += p.batch_size
        ids, targets = mask_tokens(batch, MASK_ID, cfg.vocab_size, SPECIAL_IDS, p.mask_prob, gen)
        _, loss = model(ids.to(device), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        optimizer.step()
        schedule.step()
        state["tokens_seen"] += batch.numel()
        state["window_loss"] += loss.item()
        state["window_tokens"] += batch.numel()
        if (step + 1) % p.log_every == 0 or step + 1 == p.max_steps:
            tps = state["window_tokens"] / (time.perf_counter() - window_start)
            metrics = {
                "train_mlm_loss": state["window_loss"] / ((step % p.log_every) + 1),
                "tokens_per_s": tps,
                "mfu": tps * flops_tok / peak,
                "lr": schedule.get_last_lr()[0],
            }
            bar.set_postfix(loss=f"{metrics['train_mlm_loss']:.3f}", tok_s=f"{tps:,.0f}", mfu=f"{metrics['mfu']:.0%}")
            log(metrics, step + 1)
            state["window_loss"], state["window_tokens"], window_start = 0.0, 0, time.perf_counter()
        if (step + 1) % p.checkpoint_every == 0 and step + 1 < p.max_steps:
            state.update(step=step + 1, cursor=cursor, wall_s=time.perf_counter() - start)
            _save_resume(resume_dir, model, optimizer, schedule, gen, order, state, run_key, run_id)
    val_loss = evaluate_mlm(model, val_blocks, cfg, device, p.batch_size, p.mask_prob, params.seed)
    wall = time.perf_counter() - start
    summary = {
        "val_mlm_loss": val_loss,
        "tokens_seen": state["tokens_seen"],
        "wall_s": wall,
        "mean_tokens_per_s": state["tokens_seen"] / wall,
        "matmul_peak_gflops": peak / 1e9,
    }
    log({"val_mlm_loss": val_loss}, p.max_steps)
    meta = {
        "model_config": cfg.to_dict(),
        "step": p.max_steps,
        "seed": params.seed,
        "pretrain": p.model_dump(),
        "mlflow_run_id": run_id,
        **summary,
    }
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(tmp, model.cpu(), meta, optimizer)
    shutil.rmtree(resume_dir, ignore_errors=True)
    return summary


def _save_resume(directory, model, optimizer, schedule, gen, order, state, run_key, run_id) -> None:
    """Everything the loop needs to continue bit-for-bit: weights, optimizer, schedule,
    both random generators, the data order and where in it we are."""
    with atomic_dir(directory) as tmp:
        meta = {
            **state,
            "fingerprint": run_key,
            "mlflow_run_id": run_id,
            "schedule": {k: v for k, v in schedule.state_dict().items() if k != "lr_lambdas"},
        }
        save_checkpoint(tmp, model, meta, optimizer)
        save_file(
            {"generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "order": order},
            str(tmp / "state.safetensors"),
        )


def _restore(directory, model, optimizer, schedule, gen) -> tuple[dict, torch.Tensor]:
    meta = read_json(directory / "checkpoint.json")
    load_weights(directory, model)
    load_optimizer_state(directory, optimizer)
    schedule.load_state_dict({**meta["schedule"], "lr_lambdas": [None]})
    tensors = load_file(str(directory / "state.safetensors"))
    gen.set_state(tensors["generator"])
    torch.set_rng_state(tensors["torch_rng"])
    keys = ("step", "cursor", "tokens_seen", "window_loss", "window_tokens", "wall_s")
    return {k: meta[k] for k in keys}, tensors["order"]


def main() -> None:
    import mlflow

    from tasks.tracking import stage_run

    params = load_params()
    section = {"pretrain": params.pretrain.model_dump(), "model": params.model.model_dump()}
    # A killed run left its state behind: continue it, in the same MLflow run.
    with stage_run("pretrain", section, run_id=resumable_run_id(params)) as run:
        summary = pretrain(params, log=lambda m, s: mlflow.log_metrics(m, step=s), run_id=run.info.run_id)
        mlflow.log_metrics({k: v for k, v in summary.items() if k != "val_mlm_loss"})
        mlflow.set_tag("checkpoint", str(OUT_DIR))
    print(
        f"pretrain: {summary['tokens_seen']:,} tokens in {summary['wall_s']:.0f} s, "
        f"validation MLM loss {summary['val_mlm_loss']:.3f} (run {run.info.run_id})"
    )


if __name__ == "__main__":
    run_stage(main)
