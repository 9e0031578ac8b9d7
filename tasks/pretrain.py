"""pretrain: a language model trained from scratch on the training text.

    python -m tasks.pretrain          # reads data/tokenized/train, writes checkpoints/pretrained/

`model.arch` picks the network (Transformer, or an Elman RNN / LSTM / GRU) and
`pretrain.objective` the task: masked-LM (BERT-style, Transformer only) or causal next-token
prediction (GPT-style; the recurrent models' only one). The training split's token ids are
packed end to end into fixed blocks, so no compute is spent on padding; labels are never read.
With `pretrain.nproc_per_node` > 1 the stage re-launches itself under torchrun (DDP).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from models import build_language_model, model_config
from models.transformer import decay_groups, mask_tokens
from tasks.common import StageError, atomic_dir, read_json, run_stage, seed_everything
from tasks.config import Params, load_params
from tasks.engine import (
    ENGINE_KNOBS,
    Engine,
    all_reduce_sum,
    barrier,
    is_rank_zero,
    maybe_compile,
    micro_slices,
    no_sync,
    relaunch_under_torchrun,
    start_engine,
    stop_engine,
    wrap_ddp,
)
from tasks.training import (
    flops_per_token,
    measure_matmul_peak,
    restore_resume_state,
    resume_meta,
    run_fingerprint,
    save_checkpoint,
    save_resume_state,
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


def lm_config(params: Params, vocab_size: int) -> dict:
    """The `model_config` of the network params.yaml describes (see `models.model_config`)."""
    m = params.model
    if m.arch == "transformer":
        fields = {"d_model", "n_layers", "n_heads", "d_ff", "max_positions"}
        extra = {"causal": params.pretrain.objective == "causal"}
    else:
        fields, extra = {"d_model", "d_hidden", "n_layers"}, {}
    extra["dropout"] = params.pretrain.dropout
    return model_config({"arch": m.arch, "vocab_size": vocab_size, **m.model_dump(include=fields), **extra}).to_dict()


def lm_batch(rows: torch.Tensor, objective: str, vocab_size: int, gen: torch.Generator, mask_prob: float):
    """(inputs, targets) of one batch: masked copies for MLM, the rows shifted by one for causal LM."""
    if objective == "mlm":
        return mask_tokens(rows, MASK_ID, vocab_size, SPECIAL_IDS, mask_prob, gen)
    return rows[:, :-1], rows[:, 1:]


def n_targets(targets: torch.Tensor) -> int:
    return int((targets != -100).sum())


@torch.no_grad()
def evaluate_lm(model, rows: torch.Tensor, params: Params, vocab_size: int, engine: Engine) -> float:
    """Mean loss per predicted token over the validation blocks (same masking seed every time)."""
    p = params.pretrain
    model.eval()
    gen = torch.Generator().manual_seed(params.seed)
    total, count = 0.0, 0
    for start in range(0, len(rows), p.batch_size):
        ids, targets = lm_batch(rows[start : start + p.batch_size], p.objective, vocab_size, gen, p.mask_prob)
        with engine.autocast():
            _, loss = model(ids.to(engine.device), targets.to(engine.device))
        total, count = total + loss.item() * n_targets(targets), count + n_targets(targets)
    model.train()
    return total / max(count, 1)


def fingerprint(params: Params, data_dir: Path = DATA_DIR) -> str:
    knobs = {
        "seed": params.seed,
        "model": params.model.model_dump(),
        "pretrain": params.pretrain.model_dump(exclude=ENGINE_KNOBS | {"log_every", "checkpoint_every"}),
    }
    return run_fingerprint(knobs, *(d for d in (data_dir / "train", data_dir / "extra") if d.exists()))


def resumable_run_id(params: Params, resume_dir: Path = RESUME_DIR, data_dir: Path = DATA_DIR) -> str | None:
    """The MLflow run a killed pretraining left behind, if its saved state fits these params."""
    meta = resume_meta(resume_dir, fingerprint(params, data_dir))
    return meta.get("mlflow_run_id") if meta else None


def pretrain(
    params: Params,
    data_dir: Path = DATA_DIR,
    out_dir: Path = OUT_DIR,
    log=lambda metrics, step: None,
    resume_dir: Path = RESUME_DIR,
    run_id: str | None = None,
) -> dict:
    """Train the LM; every `checkpoint_every` steps the whole state goes to `resume_dir`,
    so a killed run continues where it stopped and ends with the same weights."""
    import datasets

    p = params.pretrain
    seed_everything(params.seed)
    run_key = fingerprint(params, data_dir)
    saved = resume_meta(resume_dir, run_key)
    engine = start_engine(p, threads=saved and saved.get("threads"))
    device = engine.device
    vocab_size = read_json(data_dir / "stats.json")["vocab_size"]
    width = p.block_size + (p.objective == "causal")  # causal rows carry one extra token: the last target
    texts = datasets.load_from_disk(str(data_dir / "train"))["input_ids"]
    if (data_dir / "extra").exists():  # tokenize.extra_text: unlabelled text for pretraining only
        texts = list(texts) + list(datasets.load_from_disk(str(data_dir / "extra"))["input_ids"])
    blocks = pack(texts, width)
    val_blocks = pack(datasets.load_from_disk(str(data_dir / "validation"))["input_ids"], width)
    config = lm_config(params, vocab_size)
    model = build_language_model(config).to(device)
    optimizer = torch.optim.AdamW(decay_groups(model, p.weight_decay), lr=p.lr, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(p.warmup_steps, p.max_steps))
    gen = torch.Generator().manual_seed(params.seed)
    decoded = p.mask_prob if p.objective == "mlm" else 1.0
    flops_tok = flops_per_token(model, model_config(config), p.block_size, decoded_share=decoded)
    peak = measure_matmul_peak(device, torch.bfloat16 if engine.bf16 else torch.float32)
    state = {"step": 0, "cursor": 0, "tokens_seen": 0, "window_loss": 0.0, "window_tokens": 0, "wall_s": 0.0}
    order = torch.randperm(len(blocks), generator=gen)
    if saved:
        meta, tensors = restore_resume_state(resume_dir, model, optimizer, schedule, gen)
        state, order = {k: meta[k] for k in state}, tensors["order"]
        if engine.is_main:
            print(f"pretrain: resuming from step {state['step']} ({resume_dir})")
    maybe_compile(model.encoder if hasattr(model, "encoder") else model.body, p.compile)
    train_model = wrap_ddp(model, engine)
    if engine.is_main:
        print(f"pretrain: {config['arch']} {p.objective} LM, {json.dumps(engine.describe())}")
    cursor, window_start, start = state["cursor"], time.perf_counter(), time.perf_counter() - state["wall_s"]
    bar = tqdm(
        range(state["step"], p.max_steps),
        desc="pretrain",
        unit="step",
        mininterval=5,
        initial=state["step"],
        total=p.max_steps,
        disable=not engine.is_main,
    )
    for step in bar:
        if cursor + p.batch_size > len(order):
            order, cursor = torch.randperm(len(blocks), generator=gen), 0
        batch = blocks[order[cursor : cursor + p.batch_size]]
        cursor += p.batch_size
        # Every rank draws the same global batch (same generator) and trains on its own slices.
        inputs, targets = lm_batch(batch, p.objective, vocab_size, gen, p.mask_prob)
        step_loss = _train_step(train_model, optimizer, inputs, targets, p, engine)
        schedule.step()
        state["tokens_seen"] += inputs.numel()
        state["window_loss"] += step_loss
        state["window_tokens"] += inputs.numel()
        if (step + 1) % p.log_every == 0 or step + 1 == p.max_steps:
            tps = state["window_tokens"] / (time.perf_counter() - window_start)
            metrics = {
                f"train_{p.objective}_loss": state["window_loss"] / ((step % p.log_every) + 1),
                "tokens_per_s": tps,
                "mfu": tps / engine.world * flops_tok / peak,
                "lr": schedule.get_last_lr()[0],
            }
            bar.set_postfix(
                loss=f"{metrics[f'train_{p.objective}_loss']:.3f}", tok_s=f"{tps:,.0f}", mfu=f"{metrics['mfu']:.0%}"
            )
            if engine.is_main:
                log(metrics, step + 1)
            state["window_loss"], state["window_tokens"], window_start = 0.0, 0, time.perf_counter()
        if (step + 1) % p.checkpoint_every == 0 and step + 1 < p.max_steps and engine.is_main:
            state.update(step=step + 1, cursor=cursor, wall_s=time.perf_counter() - start)
            meta = {**state, "fingerprint": run_key, "mlflow_run_id": run_id, "threads": engine.threads}
            save_resume_state(resume_dir, model, optimizer, schedule, gen, meta, {"order": order})
    summary = {"tokens_seen": state["tokens_seen"], "wall_s": time.perf_counter() - start}
    if engine.is_main:
        summary |= _finish(
            model, optimizer, val_blocks, params, vocab_size, engine, out_dir, resume_dir, config, run_id, log, summary
        )
        summary |= {"mean_tokens_per_s": summary["tokens_seen"] / summary["wall_s"], "matmul_peak_gflops": peak / 1e9}
    barrier(engine)
    stop_engine(engine)
    return summary


def _train_step(model, optimizer, inputs, targets, p, engine: Engine) -> float:
    """One optimizer step over this rank's micro-batches of the global batch; returns the
    global batch's mean loss. Each micro-batch's loss is weighted by its share of the global
    batch's targets, so accumulation and DDP give the gradient of the one big batch."""
    total = n_targets(targets)
    slices = micro_slices(len(inputs), engine, p.grad_accum_steps)
    optimizer.zero_grad(set_to_none=True)
    local = 0.0
    for i, part in enumerate(slices):
        x, y = inputs[part].to(engine.device), targets[part].to(engine.device)
        share = n_targets(y) / max(total, 1)
        with no_sync(model, i == len(slices) - 1), engine.autocast():
            _, loss = model(x, y)
        # DDP averages gradients over ranks; the shares already sum to one over all ranks.
        (loss * share * engine.world).backward()
        local += loss.item() * share
    torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
    optimizer.step()
    return all_reduce_sum(local, engine)


def _finish(model, optimizer, val_blocks, params, vocab_size, engine, out_dir, resume_dir, config, run_id, log, done):
    """Rank 0: validation loss, then the checkpoint the finetune stage reads."""
    p = params.pretrain
    val_loss = evaluate_lm(model, val_blocks, params, vocab_size, engine)
    log({f"val_{p.objective}_loss": val_loss}, p.max_steps)
    meta = {
        "model_config": config,
        "objective": p.objective,
        "step": p.max_steps,
        "seed": params.seed,
        "pretrain": p.model_dump(),
        "engine": engine.describe(),
        "mlflow_run_id": run_id,
        "val_loss": val_loss,
        **done,  # tokens seen and training seconds
    }
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(tmp, model.cpu(), meta, optimizer)
    shutil.rmtree(resume_dir, ignore_errors=True)
    return {"val_loss": val_loss}


def main() -> None:
    import mlflow

    from tasks.tracking import stage_run

    params = load_params()
    relaunch_under_torchrun(params.pretrain.nproc_per_node, "tasks.pretrain")
    if not is_rank_zero():
        pretrain(params)
        return
    section = {"pretrain": params.pretrain.model_dump(), "model": params.model.model_dump()}
    # A killed run left its state behind: continue it, in the same MLflow run.
    with stage_run("pretrain", section, run_id=resumable_run_id(params)) as run:
        summary = pretrain(params, log=lambda m, s: mlflow.log_metrics(m, step=s), run_id=run.info.run_id)
        mlflow.log_metrics({k: v for k, v in summary.items() if k != "val_loss"})
        mlflow.set_tag("checkpoint", str(OUT_DIR))
    print(
        f"pretrain: {summary['tokens_seen']:,} tokens in {summary['wall_s']:.0f} s, "
        f"validation {params.pretrain.objective} loss {summary['val_loss']:.3f} (run {run.info.run_id})"
    )


if __name__ == "__main__":
    run_stage(main)
