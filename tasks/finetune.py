"""finetune: the pretrained body plus a classification head, early stopping on validation macro-F1.

    python -m tasks.finetune          # reads data/tokenized/ and checkpoints/pretrained/, writes checkpoints/finetuned/

With `finetune.init: scratch` the same code trains the from-scratch control, so the value
of pretraining is measured rather than assumed. ULMFiT's options work for every
architecture: `lr_decay` gives each lower layer group a smaller learning rate
(discriminative fine-tuning), `gradual_unfreeze` trains only the top k groups in epoch k.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn
from tqdm import tqdm

from models import build_classifier, model_config
from tasks.common import atomic_dir, read_json, run_stage, seed_everything
from tasks.config import FinetuneParams, Params, load_params
from tasks.engine import (
    ENGINE_KNOBS,
    Engine,
    all_reduce_sum,
    barrier,
    broadcast_float,
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
    length_bucketed_batches,
    load_body_weights,
    load_weights,
    measure_matmul_peak,
    pad_batch,
    restore_resume_state,
    resume_meta,
    run_fingerprint,
    save_checkpoint,
    save_resume_state,
    warmup_cosine,
)

DATA_DIR = Path("data/tokenized")
PRETRAINED_DIR = Path("checkpoints/pretrained")
OUT_DIR = Path("checkpoints/finetuned")
RESUME_DIR = Path("checkpoints/.finetune-resume")  # not a DVC output: scratch state of an unfinished run


@torch.no_grad()
def predict_proba(model: nn.Module, sequences: list[list[int]], device, batch_size: int = 128) -> np.ndarray:
    """Class probabilities, in input order (batches are length-sorted for speed, then restored)."""
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = np.zeros((len(sequences), model.head.out_features), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([sequences[i] for i in idx])
        logits = model(ids.to(device), mask.to(device))
        out[idx] = F.softmax(logits.float(), dim=-1).cpu().numpy()
    return out


def build(params: Params, n_classes: int, pretrained_dir: Path) -> tuple[nn.Module, dict]:
    """The classifier for the pretrained checkpoint's network, its body loaded unless init is scratch."""
    # The pretrained network, with fine-tuning's own dropout.
    config = {**read_json(pretrained_dir / "checkpoint.json")["model_config"], "dropout": params.finetune.dropout}
    model = build_classifier(config, n_classes, head_dropout=params.finetune.dropout)
    if params.finetune.init == "pretrained":
        load_body_weights(pretrained_dir / "model.safetensors", model.body)
    return model, config


def load_classifier(directory: Path) -> tuple[nn.Module, list[str]]:
    """A fine-tuned classifier and its labels, from the checkpoint this stage writes."""
    meta = read_json(directory / "checkpoint.json")
    model = build_classifier(meta["model_config"], len(meta["labels"]))
    load_weights(directory, model)
    return model, meta["labels"]


def param_groups(model: nn.Module, f: FinetuneParams) -> list[dict]:
    """AdamW groups per layer group, bottom to top; with `lr_decay` d, group i of G gets
    lr / d^(G-1-i) (ULMFiT's discriminative fine-tuning). Norms and biases never decay."""
    layers = model.layer_groups()
    groups = []
    for i, params in enumerate(layers):
        lr = f.lr / f.lr_decay ** (len(layers) - 1 - i)
        for decay, chosen in (
            (f.weight_decay, [p for p in params if p.dim() >= 2]),
            (0.0, [p for p in params if p.dim() < 2]),
        ):
            if chosen:
                groups.append({"params": chosen, "lr": lr, "weight_decay": decay, "layer_group": i})
    return groups


def unfreeze_top(model: nn.Module, k: int) -> None:
    """Train only the top `k` layer groups (the head is the top one)."""
    layers = model.layer_groups()
    for i, params in enumerate(layers):
        for p in params:
            p.requires_grad_(i >= len(layers) - k)


def fingerprint(params: Params, labels: list[str], data_dir: Path, pretrained_dir: Path) -> str:
    knobs = {"seed": params.seed, "labels": labels, "finetune": params.finetune.model_dump(exclude=ENGINE_KNOBS)}
    return run_fingerprint(knobs, data_dir / "train", data_dir / "validation", pretrained_dir)


def resumable_run_id(params: Params, resume_dir: Path = RESUME_DIR) -> str | None:
    """The MLflow run a killed fine-tuning left behind, if its saved state fits these params."""
    meta = resume_meta(resume_dir, fingerprint(params, params.ingest.labels, DATA_DIR, PRETRAINED_DIR))
    return meta.get("mlflow_run_id") if meta else None


def finetune(
    params: Params,
    labels: list[str],
    data_dir: Path = DATA_DIR,
    pretrained_dir: Path = PRETRAINED_DIR,
    out_dir: Path = OUT_DIR,
    log=lambda metrics, step: None,
    resume_dir: Path = RESUME_DIR,
    run_id: str | None = None,
) -> dict:
    """Train the classifier; after every epoch the whole state goes to `resume_dir`, so a
    killed run continues from its last finished epoch and ends with the same weights."""
    import datasets

    f = params.finetune
    seed_everything(params.seed)
    run_key = fingerprint(params, labels, data_dir, pretrained_dir)
    saved = resume_meta(resume_dir, run_key)
    engine = start_engine(f, threads=saved and saved.get("threads"))
    device = engine.device
    train = datasets.load_from_disk(str(data_dir / "train"))
    val = datasets.load_from_disk(str(data_dir / "validation"))
    train_ids, train_y = train["input_ids"], torch.tensor(train["label"])
    val_ids, val_y = val["input_ids"], np.array(val["label"])
    model, config = build(params, len(labels), pretrained_dir)
    model.to(device)
    n_groups = len(model.layer_groups())
    gen = torch.Generator().manual_seed(params.seed)
    lengths = [len(s) for s in train_ids]
    steps_per_epoch = -(-len(train_ids) // f.batch_size)
    total = steps_per_epoch * f.max_epochs
    optimizer = torch.optim.AdamW(param_groups(model, f), lr=f.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(int(f.warmup_ratio * total), total))
    flops_tok = flops_per_token(model, model_config(config), int(np.mean(lengths)))
    peak = measure_matmul_peak(device, torch.bfloat16 if engine.bf16 else torch.float32)
    best = {"val_macro_f1": -1.0, "epoch": 0, "state": None}
    history, step, bad_epochs, first_epoch, wall = [], 0, 0, 1, 0.0
    if saved:
        meta, tensors = restore_resume_state(resume_dir, model, optimizer, schedule, gen)
        history, step, bad_epochs, wall = meta["history"], meta["step"], meta["bad_epochs"], meta["wall_s"]
        best = {**meta["best"], "state": {k.removeprefix("best."): v for k, v in tensors.items()}}
        first_epoch = meta["epoch"] + 1
        if engine.is_main:
            print(f"finetune: resuming after epoch {meta['epoch']} ({resume_dir})")
    maybe_compile(model.body, f.compile)
    if engine.is_main:
        print(f"finetune: {config['arch']} classifier, init {f.init}, {json.dumps(engine.describe())}")
    start = time.perf_counter() - wall
    for epoch in range(first_epoch, f.max_epochs + 1):
        unfreeze_top(model, epoch if f.gradual_unfreeze else n_groups)
        train_model = wrap_ddp(model, engine)  # re-wrapped: DDP syncs only what trains now
        model.train()
        epoch_start, tokens, loss_sum, n_batches = time.perf_counter(), 0, 0.0, 0
        batches = length_bucketed_batches(lengths, f.batch_size, gen)
        desc = f"finetune epoch {epoch}/{f.max_epochs}"
        for idx in tqdm(batches, desc=desc, unit="batch", mininterval=5, disable=not engine.is_main):
            if len(idx) < engine.world * f.grad_accum_steps:
                continue  # a tail batch too small to give every micro-batch a row
            loss, n_tokens = _train_step(train_model, optimizer, idx, train_ids, train_y, f, engine)
            schedule.step()
            step, n_batches = step + 1, n_batches + 1
            tokens += n_tokens
            loss_sum += loss
        tps = all_reduce_sum(tokens, engine) / (time.perf_counter() - epoch_start)
        val_f1, val_acc = _validate(model, val_ids, val_y, engine)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(n_batches, 1),
            "val_macro_f1": val_f1,
            "val_accuracy": val_acc,
            "tokens_per_s": tps,
            "mfu": tps / engine.world * flops_tok / peak,
        }
        history.append(row)
        if engine.is_main:
            log({k: v for k, v in row.items() if k != "epoch"}, epoch)
            print(f"epoch {epoch}: train loss {row['train_loss']:.4f}, val macro-F1 {val_f1:.4f}, {tps:,.0f} tokens/s")
        if val_f1 > best["val_macro_f1"]:
            best = {
                "val_macro_f1": val_f1,
                "epoch": epoch,
                "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            }
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= f.patience:
                if engine.is_main:
                    print(f"early stop: no gain in validation macro-F1 for {f.patience} epoch(s)")
                break
        if engine.is_main and epoch < f.max_epochs:
            meta = {
                "fingerprint": run_key,
                "mlflow_run_id": run_id,
                "threads": engine.threads,
                "epoch": epoch,
                "step": step,
                "bad_epochs": bad_epochs,
                "wall_s": time.perf_counter() - start,
                "history": history,
                "best": {k: v for k, v in best.items() if k != "state"},
            }
            best_tensors = {f"best.{k}": v.contiguous() for k, v in best["state"].items()}
            save_resume_state(resume_dir, model, optimizer, schedule, gen, meta, best_tensors)
    model.load_state_dict(best["state"])
    summary = {
        "best_val_macro_f1": best["val_macro_f1"],
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "wall_s": time.perf_counter() - start,
        "steps": step,
    }
    if engine.is_main:
        meta = {
            "model_config": config,
            "labels": labels,
            "init": f.init,
            "finetune": f.model_dump(),
            "engine": engine.describe(),
            "seed": params.seed,
            "mlflow_run_id": run_id,
            "history": history,
            **summary,
        }
        with atomic_dir(out_dir) as tmp:
            save_checkpoint(tmp, model.cpu(), meta)
        shutil.rmtree(resume_dir, ignore_errors=True)
    barrier(engine)
    stop_engine(engine)
    return summary


def _train_step(model, optimizer, idx, train_ids, train_y, f: FinetuneParams, engine: Engine) -> tuple[float, int]:
    """One optimizer step on this rank's micro-batches of the global batch `idx`; returns the
    global batch's mean loss and this rank's real tokens. Micro-batch losses are weighted by
    their share of the global batch, so accumulation and DDP match one big batch."""
    optimizer.zero_grad(set_to_none=True)
    slices = micro_slices(len(idx), engine, f.grad_accum_steps)
    local, tokens = 0.0, 0
    for i, part in enumerate(slices):
        rows = idx[part]
        ids, mask = pad_batch([train_ids[r] for r in rows])
        with no_sync(model, i == len(slices) - 1), engine.autocast():
            logits = model(ids.to(engine.device), mask.to(engine.device))
            loss = F.cross_entropy(logits.float(), train_y[rows].to(engine.device))
        share = len(rows) / len(idx)
        (loss * share * engine.world).backward()
        local += loss.item() * share
        tokens += int(mask.sum())
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], f.grad_clip)
    optimizer.step()
    return all_reduce_sum(local, engine), tokens


def _validate(model, val_ids, val_y, engine: Engine) -> tuple[float, float]:
    """Rank 0 scores the validation split; every rank gets its numbers, so all stop together."""
    f1 = acc = 0.0
    if engine.is_main:
        with engine.autocast():
            pred = predict_proba(model, val_ids, engine.device).argmax(1)
        f1, acc = float(f1_score(val_y, pred, average="macro")), float((pred == val_y).mean())
    return broadcast_float(f1, engine), broadcast_float(acc, engine)


def main() -> None:
    import mlflow

    from tasks.tracking import stage_run

    params = load_params()
    relaunch_under_torchrun(params.finetune.nproc_per_node, "tasks.finetune")
    if not is_rank_zero():
        finetune(params, params.ingest.labels)
        return
    # A killed run left its state behind: continue it, in the same MLflow run.
    with stage_run("finetune", {"finetune": params.finetune.model_dump()}, run_id=resumable_run_id(params)) as run:
        log = lambda m, s: mlflow.log_metrics(m, step=s)  # noqa: E731
        summary = finetune(params, params.ingest.labels, log=log, run_id=run.info.run_id)
        mlflow.log_metrics(summary)
    print(f"finetune: best validation macro-F1 {summary['best_val_macro_f1']:.4f} at epoch {summary['best_epoch']}")


if __name__ == "__main__":
    run_stage(main)
