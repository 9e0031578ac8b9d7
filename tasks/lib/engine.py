"""How a training stage runs: device, threads, precision, compilation and data parallelism.

Nothing here changes what a stage computes beyond float rounding, so these knobs are kept
out of the resume fingerprint. Under `torchrun` every process runs the same loop on its
slice of each global batch; rank 0 alone logs, prints and writes files.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from tasks.lib.common import StageError, pick_device

# Params that change how a stage runs, not what it computes: kept out of resume fingerprints.
ENGINE_KNOBS = frozenset({"device", "precision", "compile", "threads", "grad_accum_steps", "nproc_per_node"})


@dataclass(frozen=True)
class Engine:
    device: torch.device
    bf16: bool
    threads: int
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """bf16 autocast where asked for; master weights and optimizer state stay fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def describe(self) -> dict:
        return {
            "device": str(self.device),
            "precision": "bf16" if self.bf16 else "fp32",
            "threads": self.threads,
            "world_size": self.world,
        }


def start_engine(settings, threads: int | None = None) -> Engine:
    """Set up the process for a stage section (`pretrain` or `finetune` params).

    `threads` forces a count (a resumed run keeps the one it started with: the count
    changes float rounding, so bit-identical resumes need the same one)."""
    rank, world, local_rank = (
        int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))
    )
    device = pick_device(settings.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    n = threads or choose_threads(settings.threads, world)
    torch.set_num_threads(n)
    bf16 = settings.precision == "bf16" or (settings.precision == "auto" and device.type == "cuda")
    if bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise StageError("precision bf16 was asked for but this GPU does not support bf16; use fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast
    return Engine(device=device, bf16=bf16, threads=n, rank=rank, world=world)


def choose_threads(setting, world: int = 1, candidates: tuple[int, ...] | None = None) -> int:
    """An explicit count is used as is. `auto` times a burst of small matmuls (a training
    step is many small ops, each ending in a barrier) with one thread and with every core this
    process may use, and takes the faster: a neighbour busy on one core stalls every barrier
    of a two-thread op, making two threads slower than one."""
    if setting != "auto":
        return int(setting)
    most = max(1, len(os.sched_getaffinity(0)) // world)
    candidates = candidates or tuple(sorted({1, most}))
    if len(candidates) == 1:
        return candidates[0]
    a, b = torch.randn(512, 128), torch.randn(128, 512)
    timings: dict[int, list[float]] = {n: [] for n in candidates}
    before = torch.get_num_threads()
    for _ in range(8):  # interleaved rounds; the mean counts the stalls a busy core causes
        for n in candidates:
            torch.set_num_threads(n)
            a @ b
            start = time.perf_counter()
            for _ in range(40):
                (a @ b).relu_()
            timings[n].append(time.perf_counter() - start)
    torch.set_num_threads(before)
    return min(candidates, key=lambda n: statistics.fmean(timings[n]))


def maybe_compile(body: nn.Module, enabled: bool) -> None:
    """Compile the body in place (its state_dict keys stay the same); heads with data-dependent
    shapes, such as MLM's masked positions, stay eager to avoid recompiles."""
    if enabled:
        body.compile()


def wrap_ddp(model: nn.Module, engine: Engine) -> nn.Module:
    if engine.world == 1:
        return model
    ids = [engine.device.index] if engine.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def no_sync(model: nn.Module, last_micro_step: bool):
    """Gradients are all-reduced once per optimizer step, on its last micro-batch."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not last_micro_step:
        return model.no_sync()
    return contextlib.nullcontext()


def all_reduce_sum(value: float, engine: Engine) -> float:
    if engine.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=engine.device)
    dist.all_reduce(t)
    return float(t.item())


def broadcast_float(value: float, engine: Engine) -> float:
    """Rank 0's value on every rank, so decisions such as early stopping agree."""
    if engine.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=engine.device)
    dist.broadcast(t, 0)
    return float(t.item())


def barrier(engine: Engine) -> None:
    if engine.world > 1:
        dist.barrier()


def stop_engine(engine: Engine) -> None:
    if engine.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def is_rank_zero() -> bool:
    """Before the engine starts: is this the process that logs and writes (rank 0, or alone)?"""
    return int(os.environ.get("RANK", 0)) == 0


def relaunch_under_torchrun(nproc: int, module: str) -> None:
    """With `nproc_per_node` > 1 a stage started as `python -m <module>` replaces itself with
    `torchrun --standalone --nproc-per-node N -m <module>`; under torchrun it just runs."""
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return
    sys.stdout.flush()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", module]
    os.execv(sys.executable, cmd)


def micro_slices(n_rows: int, engine: Engine, accum: int) -> list[slice]:
    """This rank's micro-batches of a global batch of `n_rows`: the batch is cut into
    world x accum near-equal parts, rank r taking parts r*accum ... r*accum + accum - 1."""
    parts = engine.world * accum
    bounds = [round(i * n_rows / parts) for i in range(parts + 1)]
    mine = range(engine.rank * accum, engine.rank * accum + accum)
    return [slice(bounds[i], bounds[i + 1]) for i in mine]
