"""Does `threads: auto` keep training at least as fast as one thread when a neighbour is busy?

    python bench/thread_choice.py

Times our default pretraining step (params.yaml's model and pretrain sections, fp32) with
one thread and with every core, on an idle machine and then with a neighbour process
spinning on one core, and shows what `tasks.lib.engine.choose_threads("auto")` picked in each
case. Rounds alternate between thread counts, so drift hits both.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.lib.config import load_params  # noqa: E402
from tasks.lib.engine import choose_threads  # noqa: E402
from tasks.pretrain import lm_config, synthetic_objective  # noqa: E402

VOCAB = 8000
ROUNDS, STEPS = 5, 5


def step_fn(params):
    p = params.pretrain
    torch.manual_seed(0)
    objective = synthetic_objective(params, VOCAB)
    model = objective.language_model(lm_config(params, objective))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = torch.randint(5, VOCAB, (p.batch_size, p.block_size + objective.extra_tokens))
    ids, targets = objective.batch(rows, torch.Generator().manual_seed(0))

    def step():
        _, loss = model(ids, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, ids.numel()


def tokens_per_s(step, tokens: int, threads: int) -> float:
    torch.set_num_threads(threads)
    step()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    return tokens * STEPS / (time.perf_counter() - start)


def measure(step, tokens: int, counts: list[int]) -> dict[int, float]:
    runs = {n: [] for n in counts}
    for r in range(ROUNDS):
        for n in counts if r % 2 == 0 else reversed(counts):
            runs[n].append(tokens_per_s(step, tokens, n))
    return {n: statistics.median(v) for n, v in runs.items()}


def main() -> None:
    params = load_params()
    step, tokens = step_fn(params)
    cores = len(os.sched_getaffinity(0))
    counts = sorted({1, cores})
    print(f"{cores} cores, torch {torch.__version__}; tokens/s, median of {ROUNDS} alternating rounds\n")
    print(
        "| condition | " + " | ".join(f"{n} thread{'s' * (n > 1)}" for n in counts) + " | auto picked | auto vs best |"
    )
    print("|---|" + "---|" * len(counts) + "---|---|")
    for condition in ("idle", "one core busy"):
        neighbour = None
        if condition != "idle":
            neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            picked = choose_threads("auto")
            speed = measure(step, tokens, counts)
        finally:
            if neighbour:
                neighbour.kill()
                neighbour.wait()
        cells = " | ".join(f"{speed[n]:,.0f}" for n in counts)
        print(f"| {condition} | {cells} | {picked} | {speed[picked] / max(speed.values()):.0%} |")


if __name__ == "__main__":
    main()
