"""finetune: the pretrained body plus a classification head, the best validation macro-F1 kept.

    python -m tasks.finetune          # reads data/tokenized/ and checkpoints/pretrained/, writes checkpoints/finetuned/

With `finetune.init: scratch` the same code trains the from-scratch control, so the value
of pretraining is measured rather than assumed. ULMFiT's options work for every
architecture: `lr_decay` gives each lower layer group a smaller learning rate
(discriminative fine-tuning), `gradual_unfreeze` trains only the top k groups in the k-th
evaluation interval.

Training is a step budget, not a count of epochs: the validation split is scored every
`eval_every` steps, the best weights are kept and training stops after `patience` passes
without a gain, so a 3k-row and a 60k-row dataset both train until they stop improving with
the same params. `finetune.max_labels` trains on a stratified sample of the labelled rows
(`tasks/lib/label_budget.py`).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn
from tqdm import tqdm

from models.build import build_classifier, model_config
from models.inference import pad_batch, predict_proba
from tasks.lib import catalog
from tasks.lib.common import read_json, run_stage, seed_everything
from tasks.lib.config import FinetuneParams, Params, load_params
from tasks.lib.engine import (
    Engine,
    all_reduce_sum,
    broadcast_float,
    is_rank_zero,
    maybe_compile,
    micro_slices,
    relaunch_under_torchrun,
    wrap_ddp,
)
from tasks.lib.label_budget import budget_rows, finetune_seed
from tasks.lib.training import (
    Throughput,
    TrainingRun,
    flops_per_token,
    length_bucketed_batches,
    load_weights,
    result_knobs,
    save_checkpoint,
    warmup_cosine,
)


def build(params: Params, n_classes: int, pretrained_dir: Path) -> tuple[nn.Module, dict]:
    """The classifier for the pretrained checkpoint's network, its body loaded unless init is scratch."""
    # The pretrained network, with fine-tuning's own dropout.
    config = {**read_json(pretrained_dir / catalog.META)["model_config"], "dropout": params.finetune.dropout}
    model = build_classifier(config, n_classes, head_dropout=params.finetune.dropout)
    if params.finetune.init == "pretrained":
        load_weights(pretrained_dir, model.body, catalog.BODY_WEIGHTS)
    return model, config


def load_classifier(directory: Path) -> tuple[nn.Module, list[str]]:
    """A fine-tuned classifier and its labels, from the checkpoint this stage writes."""
    meta = read_json(directory / catalog.META)
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


def knobs(params: Params, labels: list[str]) -> dict:
    return {"seed": params.seed, "split_seed": params.ingest.split_seed, "labels": labels,
            "finetune": result_knobs(params.finetune)}  # fmt: skip


def inputs_of(data_dir: Path, pretrained_dir: Path) -> list[Path]:
    return [data_dir / "train", data_dir / "validation", pretrained_dir]


def classification_loss(model, batch) -> torch.Tensor:
    ids, mask, y = batch
    return F.cross_entropy(model(ids, mask).float(), y)


def micro_batches(idx, train_ids, train_y, engine: Engine, accum: int, pad_id: int):
    """This rank's micro-batches of the global batch `idx` (each weighted by its share of the
    rows), and the real tokens in them."""
    parts, tokens, device = [], 0, engine.device
    for s in micro_slices(len(idx), engine, accum):
        rows = idx[s]
        ids, mask = pad_batch([train_ids[r] for r in rows], pad_id)
        parts.append(((ids.to(device), mask.to(device), train_y[rows].to(device)), len(rows) / len(idx)))
        tokens += int(mask.sum())
    return parts, tokens


def batch_stream(lengths: list[int], batch_size: int, seed: int, min_rows: int):
    """Length-bucketed batches of the training rows, epoch after epoch without end; epoch e's
    order comes from (seed, e) alone, so a resumed run replays the stream by skipping steps."""
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        for idx in length_bucketed_batches(lengths, batch_size, gen):
            if len(idx) >= min_rows:  # a tail batch too small to give every micro-batch a row
                yield idx
        epoch += 1


def training_rows(params: Params, labels: list[str], train) -> list[int]:
    """The rows fine-tuning learns from: all, or the label budget's stratified sample."""
    names = [labels[y] for y in train["label"]]
    return budget_rows(names, params.finetune.max_labels, labels, finetune_seed(params)).tolist()


def finetune(
    params: Params,
    labels: list[str],
    data_dir: Path = catalog.TOKENIZED,
    pretrained_dir: Path = catalog.PRETRAINED,
    out_dir: Path = catalog.FINETUNED,
    log=lambda metrics, step: None,
    resume_dir: Path = catalog.FINETUNE_RESUME,
    run_id: str | None = None,
) -> dict:
    """Train the classifier for at most `max_steps` steps, scoring the validation split every
    `eval_every` steps and keeping the best; stops after `patience` passes without a gain. After
    every pass the whole state goes to `resume_dir`, so a killed run continues from its last
    pass and ends with the same weights."""
    import datasets

    f = params.finetune
    seed = finetune_seed(params)
    seed_everything(seed)
    run = TrainingRun(f, knobs(params, labels), inputs_of(data_dir, pretrained_dir), resume_dir, run_id)
    train = datasets.load_from_disk(str(data_dir / "train"))
    val = datasets.load_from_disk(str(data_dir / "validation"))
    rows = training_rows(params, labels, train)
    train = train.select(rows)
    train_ids, train_y = train["input_ids"], torch.tensor(train["label"])
    val_ids, val_y = val["input_ids"], np.array(val["label"])
    model, config = build(params, len(labels), pretrained_dir)
    model.to(run.engine.device)
    n_groups, pad_id = len(model.layer_groups()), model_config(config).pad_id
    lengths = [len(s) for s in train_ids]
    optimizer = torch.optim.AdamW(param_groups(model, f), lr=f.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(int(f.warmup_ratio * f.max_steps), f.max_steps)
    )
    meter = Throughput(flops_per_token(model, model_config(config), int(np.mean(lengths))), run.engine)
    gen = torch.Generator().manual_seed(seed)  # the resume state's; the batch order is batch_stream's
    best = {"val_macro_f1": -1.0, "step": 0, "state": None}
    history, step, bad_passes, wall, tokens_seen = [], 0, 0, 0.0, 0
    if saved := run.restore(model, optimizer, schedule, gen):
        meta, tensors = saved
        history, step, bad_passes, wall = meta["history"], meta["step"], meta["bad_passes"], meta["wall_s"]
        tokens_seen = meta["tokens_seen"]
        best = {**meta["best"], "state": {k.removeprefix("best."): v for k, v in tensors.items()}}
        if run.is_main:
            print(f"finetune: resuming after step {step} ({resume_dir})")
    maybe_compile(model.body, f.compile)
    if run.is_main:
        print(f"finetune: {config['arch']} classifier, init {f.init}, {len(rows):,} labelled rows, "
              f"{json.dumps(run.engine.describe())}")  # fmt: skip
    stream = itertools.islice(
        batch_stream(lengths, f.batch_size, seed, run.engine.world * f.grad_accum_steps), step, None
    )
    start = time.perf_counter() - wall
    bar = tqdm(total=f.max_steps, initial=step, desc="finetune", unit="step", mininterval=5, disable=not run.is_main)
    while step < f.max_steps:
        interval = step // f.eval_every + 1  # gradual unfreezing opens one more layer group per interval
        unfreeze_top(model, interval if f.gradual_unfreeze else n_groups)
        train_model = wrap_ddp(model, run.engine)  # re-wrapped: DDP syncs only what trains now
        model.train()
        window_start, tokens, loss_sum, n_steps = time.perf_counter(), 0, 0.0, 0
        for _ in range(min(f.eval_every, f.max_steps - step)):
            idx = next(stream)
            parts, n_tokens = micro_batches(idx, train_ids, train_y, run.engine, f.grad_accum_steps, pad_id)
            loss_sum += run.step(train_model, optimizer, parts, classification_loss, f.grad_clip, step + 1)
            schedule.step()
            step, n_steps, tokens = step + 1, n_steps + 1, tokens + n_tokens
            bar.update()
        window_tokens = all_reduce_sum(tokens, run.engine)
        tokens_seen += window_tokens
        tps = window_tokens / (time.perf_counter() - window_start)
        scores = _validate(model, val_ids, val_y, run)
        val_f1 = scores["val_macro_f1"]
        row = {"step": step, "epoch": round(step * f.batch_size / len(rows), 2), "train_loss": loss_sum / n_steps,
               **scores, "tokens_per_s": tps, "mfu": meter.mfu(tps)}  # fmt: skip
        history.append(row)
        if run.is_main:
            log({k: v for k, v in row.items() if k != "step"}, step)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_f1=f"{val_f1:.4f}")
        if val_f1 > best["val_macro_f1"]:
            best = {"val_macro_f1": val_f1, "step": step,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}  # fmt: skip
            bad_passes = 0
        else:
            bad_passes += 1
            if bad_passes >= f.patience:
                if run.is_main:
                    print(
                        f"finetune: early stop at step {step}: no gain in validation macro-F1 for {f.patience} passes"
                    )
                break
        if step < f.max_steps:
            meta = {"step": step, "bad_passes": bad_passes, "wall_s": time.perf_counter() - start,
                    "tokens_seen": tokens_seen, "history": history,
                    "best": {k: v for k, v in best.items() if k != "state"}}  # fmt: skip
            best_tensors = {f"best.{k}": v.contiguous() for k, v in best["state"].items()}
            run.save_resume(model, optimizer, schedule, gen, meta, best_tensors)
    bar.close()
    model.load_state_dict(best["state"])
    summary = {"best_val_macro_f1": best["val_macro_f1"], "best_step": best["step"], "steps": step,
               "labelled_rows": len(rows), "tokens_seen": tokens_seen,
               "wall_s": time.perf_counter() - start, "matmul_peak_gflops": meter.peak / 1e9}  # fmt: skip
    # The language model the pretrained body itself started from: the classifier's lineage names it.
    base = read_json(pretrained_dir / catalog.META).get("init_from") if f.init == "pretrained" else None
    meta = {"model_config": config, "labels": labels, "init": f.init, "base_model": base, "finetune": f.model_dump(),
            "seed": seed, "history": history, **summary}  # fmt: skip
    run.finish(out_dir, meta, lambda folder, meta: save_checkpoint(folder, model.cpu(), meta), model)
    return summary


def _validate(model, val_ids, val_y, run: TrainingRun) -> dict[str, float]:
    """Rank 0 scores the validation split (macro-F1, accuracy, cross-entropy); every rank gets
    its numbers, so all stop together."""
    scores = {"val_macro_f1": 0.0, "val_accuracy": 0.0, "val_loss": 0.0}
    if run.is_main:
        with run.engine.autocast():
            proba = predict_proba(model, val_ids, run.engine.device)
        pred, p_true = proba.argmax(1), proba[np.arange(len(val_y)), val_y]
        scores = {"val_macro_f1": float(f1_score(val_y, pred, average="macro")),
                  "val_accuracy": float((pred == val_y).mean()),
                  "val_loss": float(-np.log(np.clip(p_true, 1e-12, None)).mean())}  # fmt: skip
    return {k: broadcast_float(v, run.engine) for k, v in scores.items()}


def resumable_run_id(params: Params, resume_dir: Path = catalog.FINETUNE_RESUME) -> str | None:
    """The MLflow run a killed fine-tuning left behind, if its saved state fits these params."""
    from tasks.lib.training import resume_meta, run_fingerprint

    inputs = inputs_of(catalog.TOKENIZED, catalog.PRETRAINED)
    meta = resume_meta(resume_dir, run_fingerprint(knobs(params, params.ingest.labels), *inputs))
    return meta.get("mlflow_run_id") if meta else None


def main() -> None:
    from tasks.lib.tracking import log_metrics, stage_run

    params = load_params()
    relaunch_under_torchrun(params.finetune.nproc_per_node, "tasks.finetune")
    if not is_rank_zero():
        finetune(params, params.ingest.labels)
        return
    # A killed run left its state behind: continue it, in the same MLflow run.
    with stage_run("finetune", {"finetune": params.finetune.model_dump()}, run_id=resumable_run_id(params)) as run:
        summary = finetune(params, params.ingest.labels, log=log_metrics, run_id=run.info.run_id)
        log_metrics(summary)
    print(f"finetune: best validation macro-F1 {summary['best_val_macro_f1']:.4f} at step {summary['best_step']} "
          f"of {summary['steps']} ({summary['labelled_rows']:,} labelled rows)")  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
