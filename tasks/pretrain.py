"""pretrain: a language model trained on the corpus, from random weights or from an earlier one.

    python -m tasks.pretrain          # reads data/tokenized/corpus, writes checkpoints/pretrained/

`model.arch` picks the network (Transformer, or an Elman RNN / LSTM / GRU) and
`pretrain.objective` the task (`models/objectives/`: masked LM, BERT-style, Transformer only;
causal next-token prediction, GPT-style, the recurrent models' only one). Batches are blocks of
consecutive corpus tokens (documents end to end, so no compute is spent on padding) sampled
from the memory-mapped shards tokenize wrote; labels are never read. With
`pretrain.init_from` the network starts from that language model (`tasks/lib/base_model.py`:
the whole LM when the objective is the same, else its body) instead of random weights. The
output folder is itself a language model another run can start from: weights, checkpoint.json
and the tokenizer. With `pretrain.nproc_per_node` > 1 the stage re-launches itself under
torchrun (DDP).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from tqdm import tqdm

from models.build import decay_groups, model_config
from models.objectives import Objective, SpecialTokens, create
from tasks.lib import base_model, catalog, leak_guard
from tasks.lib.common import StageError, run_stage, seed_everything
from tasks.lib.config import Params, load_params
from tasks.lib.engine import Engine, is_rank_zero, maybe_compile, micro_slices, relaunch_under_torchrun, wrap_ddp
from tasks.lib.probe import linear_probe
from tasks.lib.shards import TokenShards
from tasks.lib.training import (
    Throughput,
    TrainingRun,
    flops_per_token,
    result_knobs,
    save_checkpoint,
    warmup_cosine,
)
from tasks.lib.vocab import SPECIAL_TOKENS, load_tokenizer, special_ids


def pack(sequences: list[list[int]], block_size: int) -> torch.Tensor:
    """Concatenate the examples ([CLS] ... [SEP] each) and cut the stream into blocks."""
    stream = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise StageError(
            f"only {len(stream)} training tokens: fewer than one block of pretrain.block_size={block_size}"
        )
    return stream[: n_blocks * block_size].view(n_blocks, block_size)


def special_tokens(ids: dict[str, int], vocab_size: int) -> SpecialTokens:
    return SpecialTokens(pad=ids["[PAD]"], mask=ids["[MASK]"], ids=tuple(sorted(ids.values())), vocab_size=vocab_size)


def objective_of(params: Params, tokenizer_file: Path = catalog.TOKENIZER_FILE) -> Objective:
    """params.yaml's objective, with the special ids of the tokenizer the data was encoded with."""
    tokenizer = load_tokenizer(tokenizer_file)
    tokens = special_tokens(special_ids(tokenizer), tokenizer.get_vocab_size())
    return _create(params.pretrain, tokens)


def _create(p, tokens: SpecialTokens) -> Objective:
    return create(p.objective, tokens, p.mask_prob, **p.model_dump(exclude={"objective", "mask_prob"}))


def synthetic_objective(params: Params, vocab_size: int) -> Objective:
    """The objective for benchmarks on random ids: the ids a trained tokenizer gives its
    special tokens (the first ones, in SPECIAL_TOKENS order)."""
    tokens = special_tokens({name: i for i, name in enumerate(SPECIAL_TOKENS)}, vocab_size)
    return _create(params.pretrain, tokens)


def mask_rate(p, step: int) -> float:
    """`mask_prob`, or with `mask_prob_final` set, the rate falling linearly to it by the last step."""
    if p.mask_prob_final is None:
        return p.mask_prob
    return p.mask_prob + (p.mask_prob_final - p.mask_prob) * step / max(1, p.max_steps - 1)


def lm_config(params: Params, objective: Objective) -> dict:
    """The `model_config` of the network params.yaml describes (see `models.model_config`)."""
    m = params.model
    fields = {"d_model", "n_layers", "n_heads", "d_ff", "max_positions", "position"} if m.arch == "transformer" else {
        "d_model", "d_hidden", "n_layers"}  # fmt: skip
    return model_config(
        {
            "arch": m.arch,
            "vocab_size": objective.tokens.vocab_size,
            "pad_id": objective.tokens.pad,
            "causal": objective.causal,
            "dropout": params.pretrain.dropout,
            **m.model_dump(include=fields),
        }
    ).to_dict()


def lm_loss(model, batch) -> torch.Tensor:
    return model(*batch)[1]


def micro_batches(batch: tuple, objective: Objective, engine: Engine, accum: int) -> list[tuple[tuple, float]]:
    """This rank's micro-batches of a global batch, each weighted by its share of what the
    objective's loss is a mean over (`Objective.count`)."""
    total, device = max(objective.count(batch), 1), engine.device
    parts = []
    for s in micro_slices(len(batch[0]), engine, accum):
        part = tuple(t[s] for t in batch)
        parts.append((tuple(t.to(device) for t in part), objective.count(part) / total))
    return parts


@torch.no_grad()
def evaluate_lm(model, rows: torch.Tensor, objective: Objective, params: Params, run: TrainingRun) -> dict:
    """Mean loss over the validation blocks (same masking seed every time, at the rate training
    ended with), plus the objective's own figures."""
    model.eval()
    objective.take_metrics(model)  # drop what training gathered since the last log
    objective.mask_prob = mask_rate(params.pretrain, params.pretrain.max_steps - 1)
    gen = torch.Generator().manual_seed(params.seed)
    # MLM's loss also scores the chosen positions left unchanged or made random, and copying
    # the unchanged ones is cheap: the loss at [MASK] positions alone is the like-for-like figure.
    views = {"loss": lambda b: b}
    if objective.name == "mlm":
        views["masked_loss"] = lambda b: masked_only(b, objective.tokens.mask)
    sums = {name: [0.0, 0] for name in views}
    for start in range(0, len(rows), params.pretrain.batch_size):
        batch = objective.batch(rows[start : start + params.pretrain.batch_size], gen)
        for name, view in views.items():
            scored = view(batch)
            with run.engine.autocast():
                loss = lm_loss(model, tuple(t.to(run.engine.device) for t in scored))
            sums[name][0] += loss.item() * objective.count(scored)
            sums[name][1] += objective.count(scored)
    model.train()
    means = {name: total / max(count, 1) for name, (total, count) in sums.items()}
    return means | objective.take_metrics(model)


def masked_only(batch: tuple, mask_id: int) -> tuple:
    """An MLM batch whose targets are kept only where the input is [MASK]."""
    ids, targets = batch[0], batch[1]
    return ids, torch.where(ids == mask_id, targets, torch.full_like(targets, -100)), *batch[2:]


def start_from(
    model, params: Params, objective: Objective, config: dict, tokenizer_file: Path, held_out
) -> dict | None:
    """Load `pretrain.init_from` into `model` after checking it fits and held out this run's
    validation and test texts (`held_out`: leak_guard.current); its lineage, or None."""
    if not params.pretrain.init_from:
        return None
    with base_model.opened(params.pretrain.init_from) as base:
        base.check_fits(tokenizer_file, config, model_config(base.meta["model_config"]).to_dict())
        leak_guard.check(base.source, base.meta, base.folder, *held_out)
        same_objective = base.meta["objective"] == objective.name
        # Another objective's head predicts something else: only the body carries over.
        target, weights = (model, catalog.WEIGHTS) if same_objective else (model.body, catalog.BODY_WEIGHTS)
        load_model(target, str(base.folder / weights))
        print(f"pretrain: starting from {base.source}" + (f" (version {base.version})" if base.version else "")
              + ("" if same_objective else f", its body only (it was trained with {base.meta['objective']})"))  # fmt: skip
        return base.lineage()


def inputs_of(data_dir: Path) -> list[Path]:
    """The token files pretraining reads (the resume state belongs to exactly these)."""
    return [data_dir / catalog.CORPUS_TOKENS.name]


def knobs(params: Params) -> dict:
    return {"seed": params.seed, "model": params.model.model_dump(),
            "pretrain": result_knobs(params.pretrain, "log_every", "checkpoint_every")}  # fmt: skip


def validation_blocks(data_dir: Path, width: int) -> torch.Tensor:
    """The validation split's text, packed: the held-out measure of the language model."""
    import datasets

    return pack(list(datasets.load_from_disk(str(data_dir / "validation"))["input_ids"]), width)


def pretrain(
    params: Params,
    data_dir: Path = catalog.TOKENIZED,
    out_dir: Path = catalog.PRETRAINED,
    log=lambda metrics, step: None,
    resume_dir: Path = catalog.PRETRAIN_RESUME,
    run_id: str | None = None,
    tokenizer_file: Path = catalog.TOKENIZER_FILE,
) -> dict:
    """Train the LM; every `checkpoint_every` steps the whole state goes to `resume_dir`,
    so a killed run continues where it stopped and ends with the same weights."""
    p = params.pretrain
    seed_everything(params.seed)
    run = TrainingRun(p, knobs(params), inputs_of(data_dir), resume_dir, run_id)
    device = run.engine.device
    objective = objective_of(params, tokenizer_file)
    width = p.block_size + objective.extra_tokens
    corpus = TokenShards(data_dir / catalog.CORPUS_TOKENS.name)  # memory-mapped, never loaded whole
    val_blocks = validation_blocks(data_dir, width)
    config = lm_config(params, objective)
    model = objective.language_model(config)
    held_out = leak_guard.current(params)  # what this corpus held out: recorded, and checked against init_from's
    # DDP copies rank 0's weights to the other ranks when it wraps the model.
    init_from = start_from(model, params, objective, config, tokenizer_file, held_out) if run.is_main else None
    model = model.to(device)
    optimizer = torch.optim.AdamW(decay_groups(model, p.weight_decay), lr=p.lr, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(p.warmup_steps, p.max_steps))
    gen = torch.Generator().manual_seed(params.seed)
    meter = Throughput(flops_per_token(model, model_config(config), p.block_size, objective.decoded_share), run.engine)
    state = {"step": 0, "tokens_seen": 0, "window_loss": 0.0, "window_tokens": 0, "wall_s": 0.0}
    if saved := run.restore(model, optimizer, schedule, gen):
        state = {k: saved[0][k] for k in state}
        if run.is_main:
            print(f"pretrain: resuming from step {state['step']} ({resume_dir})")
    maybe_compile(model.body, p.compile)
    train_model = wrap_ddp(model, run.engine)
    if run.is_main:
        print(f"pretrain: {config['arch']} {objective.name} LM, {json.dumps(run.engine.describe())}")
    window_start, start = time.perf_counter(), time.perf_counter() - state["wall_s"]
    bar = tqdm(range(state["step"], p.max_steps), desc="pretrain", unit="step", mininterval=5,
               initial=state["step"], total=p.max_steps, disable=not run.is_main)  # fmt: skip
    for step in bar:
        # Every rank draws the same global batch (same generator) and trains on its own slices.
        objective.mask_prob = mask_rate(p, step)
        batch = objective.batch(corpus.sample(p.batch_size, width, gen), gen)
        parts = micro_batches(batch, objective, run.engine, p.grad_accum_steps)
        step_loss = run.step(train_model, optimizer, parts, lm_loss, p.grad_clip, step + 1)
        schedule.step()
        state["tokens_seen"] += batch[0].numel()
        state["window_loss"] += step_loss
        state["window_tokens"] += batch[0].numel()
        if (step + 1) % p.log_every == 0 or step + 1 == p.max_steps:
            tps = state["window_tokens"] / (time.perf_counter() - window_start)
            loss = state["window_loss"] / ((step % p.log_every) + 1)
            metrics = {f"train_{objective.loss_name}": loss, "tokens_per_s": tps, "mfu": meter.mfu(tps),
                       "lr": schedule.get_last_lr()[0], "mask_prob": objective.mask_prob,
                       **{f"train_{k}": v for k, v in objective.take_metrics(model).items()}}  # fmt: skip
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}", mfu=f"{metrics['mfu']:.0%}")
            if run.is_main:
                log(metrics, step + 1)
            state["window_loss"], state["window_tokens"], window_start = 0.0, 0, time.perf_counter()
        if (step + 1) % p.checkpoint_every == 0 and step + 1 < p.max_steps:
            state.update(step=step + 1, wall_s=time.perf_counter() - start)
            run.save_resume(model, optimizer, schedule, gen, state, {})
    summary = {"tokens_seen": state["tokens_seen"], "wall_s": time.perf_counter() - start}
    if run.is_main:
        val = evaluate_lm(model, val_blocks, objective, params, run)
        summary["val_loss"] = val.pop("loss")
        summary |= {f"val_{k}": v for k, v in val.items()} | linear_probe(model.body, data_dir, device)
        log({f"val_{objective.loss_name}": summary["val_loss"], **{f"val_{k}": v for k, v in val.items()},
             **{k: v for k, v in summary.items() if k.startswith("probe_")}}, p.max_steps)  # fmt: skip
        summary |= {"mean_tokens_per_s": summary["tokens_seen"] / summary["wall_s"],
                    "matmul_peak_gflops": meter.peak / 1e9}  # fmt: skip
    meta = {"model_config": config, "objective": objective.name, "step": p.max_steps, "seed": params.seed,
            "pretrain": p.model_dump(), "init_from": init_from, "held_out": held_out[0], **summary}  # fmt: skip

    def save(folder: Path, meta: dict) -> None:
        save_checkpoint(folder, model.cpu(), meta, optimizer)
        save_model(model.body, str(folder / catalog.BODY_WEIGHTS))
        shutil.copyfile(tokenizer_file, folder / catalog.LM_TOKENIZER)  # so the folder is a reusable LM
        leak_guard.write(folder, held_out[1])

    run.finish(out_dir, meta, save, model)
    return summary


def main() -> None:
    import mlflow

    from tasks.lib.tracking import log_metrics, stage_run

    params = load_params()
    relaunch_under_torchrun(params.pretrain.nproc_per_node, "tasks.pretrain")
    if not is_rank_zero():
        pretrain(params)
        return
    section = {"pretrain": params.pretrain.model_dump(), "model": params.model.model_dump()}
    # A killed run left its state behind: continue it, in the same MLflow run.
    with stage_run("pretrain", section, run_id=resumable_run_id(params)) as run:
        summary = pretrain(params, log=log_metrics, run_id=run.info.run_id)
        log_metrics({k: v for k, v in summary.items() if not k.startswith("val_")})
        mlflow.set_tag("checkpoint", str(catalog.PRETRAINED))
    print(
        f"pretrain: {summary['tokens_seen']:,} tokens in {summary['wall_s']:.0f} s, "
        f"validation {params.pretrain.objective} loss {summary['val_loss']:.3f} (run {run.info.run_id})"
    )


def resumable_run_id(params: Params, resume_dir: Path = catalog.PRETRAIN_RESUME) -> str | None:
    """The MLflow run a killed pretraining left behind, if its saved state fits these params."""
    from tasks.lib.training import resume_meta, run_fingerprint

    meta = resume_meta(resume_dir, run_fingerprint(knobs(params), *inputs_of(catalog.TOKENIZED)))
    return meta.get("mlflow_run_id") if meta else None


if __name__ == "__main__":
    run_stage(main)
