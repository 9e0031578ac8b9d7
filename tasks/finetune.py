"""finetune: the pretrained encoder plus a classification head, early stopping on validation macro-F1.

    python -m tasks.finetune          # reads data/tokenized/ and checkpoints/pretrained/, writes checkpoints/finetuned/

With `finetune.init: scratch` the same code trains the from-scratch control, so the value
of pretraining is measured rather than assumed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from tqdm import tqdm

from models.transformer import Classifier, EncoderConfig, decay_groups
from tasks.common import atomic_dir, pick_device, read_json, run_stage, seed_everything
from tasks.config import Params, load_params
from tasks.training import (
    flops_per_token,
    length_bucketed_batches,
    load_encoder_weights,
    load_weights,
    measure_matmul_peak,
    pad_batch,
    save_checkpoint,
    warmup_cosine,
)

DATA_DIR = Path("data/tokenized")
PRETRAINED_DIR = Path("checkpoints/pretrained")
OUT_DIR = Path("checkpoints/finetuned")


@torch.no_grad()
def predict_proba(model: Classifier, sequences: list[list[int]], device, batch_size: int = 128) -> np.ndarray:
    """Class probabilities, in input order (batches are length-sorted for speed, then restored)."""
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = np.zeros((len(sequences), model.head.out_features), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([sequences[i] for i in idx])
        out[idx] = F.softmax(model(ids.to(device), mask.to(device)), dim=-1).cpu().numpy()
    return out


def build_classifier(params: Params, n_classes: int, pretrained_dir: Path) -> tuple[Classifier, dict]:
    meta = read_json(pretrained_dir / "checkpoint.json")
    cfg = EncoderConfig(**meta["model_config"])
    model = Classifier(cfg, n_classes, head_dropout=params.finetune.dropout)
    if params.finetune.init == "pretrained":
        load_encoder_weights(pretrained_dir / "model.safetensors", model.encoder)
    return model, cfg.to_dict()


def load_classifier(directory: Path) -> tuple[Classifier, list[str]]:
    """A fine-tuned classifier and its labels, from the checkpoint this stage writes."""
    meta = read_json(directory / "checkpoint.json")
    model = Classifier(EncoderConfig(**meta["model_config"]), len(meta["labels"]))
    load_weights(directory, model)
    return model, meta["labels"]


def finetune(
    params: Params,
    labels: list[str],
    data_dir: Path = DATA_DIR,
    pretrained_dir: Path = PRETRAINED_DIR,
    out_dir: Path = OUT_DIR,
    log=lambda metrics, step: None,
) -> dict:
    import datasets

    f = params.finetune
    seed_everything(params.seed)
    device = pick_device(f.device)
    train = datasets.load_from_disk(str(data_dir / "train"))
    val = datasets.load_from_disk(str(data_dir / "validation"))
    train_ids, train_y = train["input_ids"], torch.tensor(train["label"])
    val_ids, val_y = val["input_ids"], np.array(val["label"])
    model, model_cfg = build_classifier(params, len(labels), pretrained_dir)
    model.to(device)
    gen = torch.Generator().manual_seed(params.seed)
    lengths = [len(s) for s in train_ids]
    steps_per_epoch = -(-len(train_ids) // f.batch_size)
    total = steps_per_epoch * f.max_epochs
    optimizer = torch.optim.AdamW(decay_groups(model, f.weight_decay), lr=f.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(int(f.warmup_ratio * total), total))
    flops_tok = flops_per_token(model, model_cfg["n_layers"], model_cfg["d_model"], int(np.mean(lengths)))
    peak = measure_matmul_peak(device)
    best = {"val_macro_f1": -1.0, "epoch": 0, "state": None}
    history, step, start, bad_epochs = [], 0, time.perf_counter(), 0
    for epoch in range(1, f.max_epochs + 1):
        model.train()
        epoch_start, tokens, loss_sum = time.perf_counter(), 0, 0.0
        batches = length_bucketed_batches(lengths, f.batch_size, gen)
        for idx in tqdm(batches, desc=f"finetune epoch {epoch}/{f.max_epochs}", unit="batch", mininterval=5):
            ids, mask = pad_batch([train_ids[i] for i in idx])
            loss = F.cross_entropy(model(ids.to(device), mask.to(device)), train_y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), f.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            tokens += int(mask.sum())
            loss_sum += loss.item()
        tps = tokens / (time.perf_counter() - epoch_start)
        pred = predict_proba(model, val_ids, device).argmax(1)
        val_f1 = float(f1_score(val_y, pred, average="macro"))
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / len(batches),
            "val_macro_f1": val_f1,
            "val_accuracy": float((pred == val_y).mean()),
            "tokens_per_s": tps,
            "mfu": tps * flops_tok / peak,
        }
        history.append(row)
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
                print(f"early stop: no gain in validation macro-F1 for {f.patience} epoch(s)")
                break
    model.load_state_dict(best["state"])
    summary = {
        "best_val_macro_f1": best["val_macro_f1"],
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "wall_s": time.perf_counter() - start,
        "steps": step,
    }
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(
            tmp,
            model.cpu(),
            {
                "model_config": model_cfg,
                "labels": labels,
                "init": f.init,
                "finetune": f.model_dump(),
                "seed": params.seed,
                "history": history,
                **summary,
            },
        )
    return summary


def main() -> None:
    import mlflow

    from tasks.tracking import stage_run

    params = load_params()
    with stage_run("finetune", {"finetune": params.finetune.model_dump()}):
        summary = finetune(params, params.ingest.labels, log=lambda m, s: mlflow.log_metrics(m, step=s))
        mlflow.log_metrics(summary)
    print(f"finetune: best validation macro-F1 {summary['best_val_macro_f1']:.4f} at epoch {summary['best_epoch']}")


if __name__ == "__main__":
    run_stage(main)
