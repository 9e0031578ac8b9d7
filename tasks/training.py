"""What pretrain and finetune share: schedule, checkpoints, batching, throughput."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from tasks.common import StageError, atomic_dir, read_json, write_json_atomic


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
    save_model(model, str(directory / "model.safetensors"))
    if optimizer is not None:
        state = optimizer.state_dict()
        tensors = {f"{idx}.{name}": t.contiguous() for idx, s in state["state"].items() for name, t in s.items()}
        save_file(tensors, str(directory / "optimizer.safetensors"))
        meta = {**meta, "optimizer_param_groups": state["param_groups"]}
    write_json_atomic(directory / "checkpoint.json", meta)


def load_optimizer_state(directory: Path, optimizer: torch.optim.Optimizer) -> None:
    meta = read_json(directory / "checkpoint.json")
    state: dict = {}
    for key, tensor in load_file(str(directory / "optimizer.safetensors")).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})


def run_fingerprint(knobs: dict, *folders: Path) -> str:
    """Identifies a training run by its result-changing params and input files: a saved resume
    state is only used by the identical run."""
    h = hashlib.sha256(json.dumps(knobs, sort_keys=True).encode())
    for folder in folders:
        for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()[:16]


def resume_meta(directory: Path, fingerprint: str) -> dict | None:
    """The saved state's metadata, only if it belongs to the run with this fingerprint."""
    meta_file = directory / "checkpoint.json"
    meta = read_json(meta_file) if meta_file.exists() else None
    return meta if meta and meta.get("fingerprint") == fingerprint else None


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


def restore_resume_state(directory: Path, model, optimizer, schedule, gen) -> tuple[dict, dict]:
    """Load what `save_resume_state` wrote; returns the loop's meta and its extra tensors."""
    meta = read_json(directory / "checkpoint.json")
    load_weights(directory, model)
    load_optimizer_state(directory, optimizer)
    schedule.load_state_dict({**meta["schedule"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    tensors = load_file(str(directory / "state.safetensors"))
    gen.set_state(tensors.pop("generator"))
    torch.set_rng_state(tensors.pop("torch_rng"))
    return meta, tensors


def load_weights(directory: Path, model: nn.Module, strict: bool = True) -> None:
    path = directory / "model.safetensors"
    if not path.exists():
        raise StageError(f"{path} not found: run the stage that writes it first")
    load_model(model, str(path), strict=strict)


def load_body_weights(path: Path, body: nn.Module) -> None:
    """Copy a pretrained LM's body (`encoder.*` or `body.*` tensors) into a classifier's body."""
    weights = load_file(str(path))
    state = {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith("encoder.") or k.startswith("body.")}
    missing, unexpected = body.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise StageError(
            f"{path} does not fit the model in params.yaml (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "re-run pretrain after changing the model section"
        )


def pad_batch(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, ids != pad_id


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
    what this machine does, not a datasheet."""
    if device.type == "cuda":
        size, repeats = 8192, 20  # small GPU matmuls measure launch overhead, not the tensor cores
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
