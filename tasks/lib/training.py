"""The training skeleton pretrain and finetune share: resume, engine, optimizer step,
checkpoint, barrier; plus the schedule, batching and throughput helpers. A non-finite loss,
gradient norm or weight fails the stage (`Diverged`), and a resume state is used only when
its checksums match.

A stage builds its model, optimizer and batches, then:

    run = TrainingRun(section, knobs, inputs, resume_dir, run_id)   # engine + saved state
    saved = run.restore(model, optimizer, schedule, gen)            # None: a fresh start
    loss = run.step(model, optimizer, micro_batches, loss_of, clip, n)  # step n; NaN/Inf fails
    run.save_resume(model, optimizer, schedule, gen, meta, tensors)   # every checkpoint
    run.finish(out_dir, meta, save, model)                            # rank 0 saves; all stop
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from models.checksum import file_sha256
from tasks.lib import catalog
from tasks.lib.common import StageError, atomic_dir, clear_dead_runs, read_json, write_json_atomic
from tasks.lib.engine import (
    ENGINE_KNOBS,
    Engine,
    all_reduce_sum,
    barrier,
    is_rank_zero,
    no_sync,
    start_engine,
    stop_engine,
)


def warmup_cosine(warmup: int, total: int, floor: float = 0.1):
    """LR multiplier: linear warm-up, then cosine decay to `floor` of the peak."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def save_checkpoint(
    directory: Path, model: nn.Module, meta: dict, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Weights (and optimizer tensors) as safetensors, everything else as JSON: no pickle."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / catalog.WEIGHTS))
    if optimizer is not None:
        state = optimizer.state_dict()
        tensors = {f"{idx}.{name}": t.contiguous() for idx, s in state["state"].items() for name, t in s.items()}
        save_file(tensors, str(directory / catalog.OPTIMIZER))
        meta = {**meta, "optimizer_param_groups": state["param_groups"]}
    write_json_atomic(directory / catalog.META, meta)


def load_optimizer_state(directory: Path, optimizer: torch.optim.Optimizer) -> None:
    meta = read_json(directory / catalog.META)
    state: dict = {}
    for key, tensor in load_file(str(directory / catalog.OPTIMIZER)).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})


def run_fingerprint(knobs: dict, *folders: Path) -> str:
    """Identifies a training run by its result-changing params and input files: a saved resume
    state is only used by the identical run."""
    h = hashlib.sha256(json.dumps(knobs, sort_keys=True).encode())
    for folder in folders:
        for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            h.update(str(f.relative_to(folder)).encode())
            with open(f, "rb") as data:  # a block at a time: corpus shards can be large
                for block in iter(lambda: data.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


CHECKSUMS = "checksums.json"  # written last into a resume state: the SHA-256 of every other file in it


def resume_meta(directory: Path, fingerprint: str) -> dict | None:
    """The saved state's metadata, only if it belongs to the run with this fingerprint (an
    unreadable one belongs to no run: `usable_resume` sets it aside)."""
    meta_file = directory / catalog.META
    try:
        meta = read_json(meta_file) if meta_file.exists() else None
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("fingerprint") == fingerprint else None


def resume_damage(directory: Path) -> str | None:
    """What is wrong with a saved resume state's files (None: every checksum matches)."""
    try:
        expected = read_json(directory / CHECKSUMS)
    except (OSError, ValueError):
        return f"{CHECKSUMS} is missing or unreadable"
    present = {f.name for f in directory.iterdir() if f.is_file()} - {CHECKSUMS}
    if set(expected) != present:
        return f"it holds {sorted(present)}, its checksums name {sorted(expected)}"
    bad = [name for name, digest in sorted(expected.items()) if file_sha256(directory / name) != digest]
    return f"{', '.join(bad)} changed since it was written" if bad else None


def usable_resume(directory: Path, fingerprint: str, say=print) -> dict | None:
    """The metadata of a resume state that belongs to this run and is intact. A damaged one
    (a flipped byte, a cut file, an unreadable header) is never resumed: it is moved aside,
    with one line saying so, and the run starts fresh."""
    directory = Path(directory)
    clear_dead_runs(directory)
    if not directory.is_dir():
        return None
    damage = resume_damage(directory)
    if damage is None:
        return resume_meta(directory, fingerprint)
    aside = directory.with_name(
        f"{directory.name.removesuffix('-resume')}-damaged-{time.strftime('%Y%m%dT%H%M%S')}-resume"
    )
    directory.rename(aside)
    say(f"warning: the saved resume state {directory} is damaged ({damage}); moved to {aside}, starting fresh")
    return None


def save_resume_state(directory: Path, model, optimizer, schedule, gen, meta: dict, tensors: dict) -> None:
    """Everything a loop needs to continue bit-for-bit: weights, optimizer, schedule, both
    random generators, plus the loop's own `meta` (JSON) and `tensors` (safetensors)."""
    with atomic_dir(directory) as tmp:
        meta = {**meta, "schedule": {k: v for k, v in schedule.state_dict().items() if k != "lr_lambdas"}}
        save_checkpoint(tmp, model, meta, optimizer)
        save_file(
            {"generator": gen.get_state(), "torch_rng": torch.get_rng_state(), **tensors},
            str(tmp / "state.safetensors"),
        )
        write_json_atomic(tmp / CHECKSUMS, {f.name: file_sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()})


def restore_resume_state(directory: Path, model, optimizer, schedule, gen) -> tuple[dict, dict]:
    """Load what `save_resume_state` wrote; returns the loop's meta and its extra tensors."""
    meta = read_json(directory / catalog.META)
    load_weights(directory, model)
    load_optimizer_state(directory, optimizer)
    schedule.load_state_dict({**meta["schedule"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    tensors = load_file(str(directory / "state.safetensors"))
    gen.set_state(tensors.pop("generator"))
    torch.set_rng_state(tensors.pop("torch_rng"))
    return meta, tensors


def load_weights(directory: Path, model: nn.Module, name: str = catalog.WEIGHTS) -> None:
    path = directory / name
    if not path.exists():
        raise StageError(f"{path} not found: run the stage that writes it first")
    try:
        load_model(model, str(path))
    except RuntimeError as err:  # missing or unexpected tensors, or other shapes
        first = str(err).splitlines()[0]
        raise StageError(
            f"{path} does not fit the model in params.yaml ({first}); re-run the stage that wrote it "
            "after changing the model section"
        ) from None


def length_bucketed_batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar-length examples, so little compute goes to padding."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def count_params(model: nn.Module, exclude_embeddings: bool = True) -> int:
    n = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        n -= sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return n


def flops_per_token(model: nn.Module, cfg, seq_len: int, decoded_share: float = 0.0) -> float:
    """Training FLOPs per token: 6N for the matmuls (N without embeddings), plus the tied
    vocabulary projection for the share of positions decoded (all for causal LM, the masked
    ones for MLM, none for a classifier), plus attention scores (PaLM appendix B)."""
    attention_layers = cfg.n_layers if cfg.arch == "transformer" else 0
    decoder = decoded_share * cfg.d_model * cfg.vocab_size
    return 6 * (count_params(model) + decoder) + 12 * attention_layers * cfg.d_model * seq_len


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 8
) -> float:
    """Matmul FLOP/s on this device in the training dtype, measured now, so MFU is against
    what this machine does, not a datasheet. The fastest of the repeats: a slower one measured
    a neighbour's load, not the hardware."""
    if device.type == "cuda":
        size, repeats = 8192, 20  # small GPU matmuls measure launch overhead, not the tensor cores
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    fastest = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        fastest = min(fastest, time.perf_counter() - start)
    return 2 * size**3 / fastest


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TrainingRun:
    """One stage's training run: the engine, the resume state that belongs to exactly this run
    (same result-changing knobs and input files), and the steps every loop shares."""

    def __init__(self, section, knobs: dict, inputs: list[Path], resume_dir: Path, run_id: str | None):
        self.fingerprint = run_fingerprint(knobs, *inputs)
        self.resume_dir, self.run_id = resume_dir, run_id
        self.saved = usable_resume(resume_dir, self.fingerprint, say=print if is_rank_zero() else lambda _: None)
        # A resumed run keeps its thread count: the count changes float rounding.
        self.engine: Engine = start_engine(section, threads=self.saved and self.saved.get("threads"))

    @property
    def is_main(self) -> bool:
        return self.engine.is_main

    def restore(self, model, optimizer, schedule, gen) -> tuple[dict, dict] | None:
        """The saved loop state (meta, extra tensors) loaded into these objects, or None."""
        if not self.saved:
            return None
        return restore_resume_state(self.resume_dir, model, optimizer, schedule, gen)

    def save_resume(self, model, optimizer, schedule, gen, meta: dict, tensors: dict) -> None:
        check_weights(model, meta["step"])
        if self.is_main:
            meta = {
                **meta,
                "fingerprint": self.fingerprint,
                "mlflow_run_id": self.run_id,
                "threads": self.engine.threads,
            }
            save_resume_state(self.resume_dir, model, optimizer, schedule, gen, meta, tensors)

    def step(self, model, optimizer, micro_batches: list[tuple[object, float]], loss_of, grad_clip: float,
             step: int) -> float:  # fmt: skip
        """One optimizer step (`step` counts from 1); a loss or gradient that is NaN or
        infinite fails the stage here, before the optimizer writes it into the weights."""
        return optimizer_step(model, optimizer, micro_batches, loss_of, grad_clip, self.engine, step)

    def finish(self, out_dir: Path, meta: dict, save, model: nn.Module) -> None:
        """Rank 0 writes the stage's output (`model`, finite, through `save(folder, meta)`) and
        drops the resume state; every rank then waits for it and leaves the process group."""
        check_weights(model, "at the end of training")
        if self.is_main:
            meta = {**meta, "engine": self.engine.describe(), "mlflow_run_id": self.run_id}
            with atomic_dir(out_dir) as tmp:
                save(tmp, meta)
            shutil.rmtree(self.resume_dir, ignore_errors=True)
        barrier(self.engine)
        stop_engine(self.engine)


def optimizer_step(model, optimizer, micro_batches: list[tuple[object, float]], loss_of, grad_clip: float,
                   engine: Engine, step: int = 0) -> float:  # fmt: skip
    """One optimizer step over this rank's micro-batches of a global batch, each given with
    its share of the global batch; returns the global batch's mean loss. Weighting each
    micro-batch's loss by its share makes accumulation and DDP give the gradient of the one
    big batch."""
    optimizer.zero_grad(set_to_none=True)
    local = 0.0
    for i, (batch, share) in enumerate(micro_batches):
        with no_sync(model, i == len(micro_batches) - 1), engine.autocast():
            loss = loss_of(model, batch)
        # DDP averages gradients over ranks; the shares already sum to one over all ranks.
        (loss * share * engine.world).backward()
        local += loss.item() * share
    # The norm is of the all-reduced gradients: every rank sees the same value and stops together.
    norm = float(torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip))
    if not math.isfinite(norm):
        raise Diverged(step, "gradient norm", norm)
    optimizer.step()
    total = all_reduce_sum(local, engine)
    if not math.isfinite(total):
        raise Diverged(step, "loss", total)
    return total


class Diverged(StageError):
    """Training produced NaN or Inf: the stage fails, its previous outputs stay in place."""

    def __init__(self, step: int | str, quantity: str, value: float | None = None):
        at = f"at step {step}" if isinstance(step, int) else step
        shown = f" is {value}" if value is not None else " holds NaN or Inf"
        super().__init__(
            f"training diverged {at}: the {quantity}{shown}. Nothing was written and the previous outputs "
            "are untouched; lower the learning rate (or raise warm-up) and run again"
        )


def check_weights(model: nn.Module, step: int | str) -> None:
    """Fail, naming the first tensor, if any weight is NaN or Inf (checked at every checkpoint)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise Diverged(step, f"weight tensor '{name}'")


def result_knobs(section, *exclude: str) -> dict:
    """A section's knobs that change what training computes (not how it runs, not its logging)."""
    return section.model_dump(exclude=ENGINE_KNOBS | set(exclude))


class Throughput:
    """Tokens per second and MFU against the matmul peak measured on this device now. Training
    that runs faster than the measured peak (larger matmuls than the probe's) raises the peak
    to what it achieved, so MFU stays a share: at most 1, with the peak logged beside it."""

    def __init__(self, flops_per_token: float, engine: Engine):
        self.flops_per_token, self.world = flops_per_token, engine.world
        self.peak = measure_matmul_peak(engine.device, torch.bfloat16 if engine.bf16 else torch.float32)

    def mfu(self, tokens_per_s: float) -> float:
        achieved = tokens_per_s / self.world * self.flops_per_token
        self.peak = max(self.peak, achieved)
        return achieved / self.peak
