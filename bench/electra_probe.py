"""Does ELECTRA's discriminator learn at this budget? A short run of the electra objective on
the workspace's tokenized corpus (params.yaml's network), printing the replaced-token figures
every 50 steps; `--unigram` replaces the masked tokens with draws from the corpus's unigram
distribution instead of the generator's samples. That is the contextual control: a frequent
word dropped where it does not fit can only be spotted from its neighbours, whereas a
uniformly random id is mostly a rare piece that gives itself away alone.

    python bench/electra_probe.py --steps 200             # after `dvc repro tokenize`
    python bench/electra_probe.py --steps 200 --unigram
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.build import decay_groups  # noqa: E402
from tasks.lib import catalog  # noqa: E402
from tasks.lib.config import load_params  # noqa: E402
from tasks.lib.shards import TokenShards  # noqa: E402
from tasks.lib.training import warmup_cosine  # noqa: E402
from tasks.pretrain import lm_config, objective_of  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--unigram", action="store_true", help="unigram draws instead of the generator's samples")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params()
    params = params.model_copy(update={"pretrain": params.pretrain.model_copy(update={"objective": "electra"})})
    p, objective = params.pretrain, objective_of(params)
    torch.manual_seed(params.seed)
    model = objective.language_model(lm_config(params, objective))
    corpus = TokenShards(catalog.TOKENIZED / catalog.CORPUS_TOKENS.name)
    if args.unigram:  # the corpus's word frequencies, whatever the generator proposes
        counts = torch.bincount(corpus.sample(2000, p.block_size, torch.Generator().manual_seed(0)).flatten(),
                                minlength=objective.tokens.vocab_size).double()  # fmt: skip
        log_unigram, generator_sample = (counts + 1e-3).log(), model.sample
        model.sample = lambda logits, u: generator_sample(log_unigram.expand(len(u), -1), u)
    optimizer = torch.optim.AdamW(decay_groups(model, p.weight_decay), lr=p.lr, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(min(p.warmup_steps, args.steps // 4), args.steps)
    )
    gen, start = torch.Generator().manual_seed(params.seed), time.perf_counter()
    for step in range(1, args.steps + 1):
        _, loss = model(*objective.batch(corpus.sample(p.batch_size, p.block_size, gen), gen))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            figures = objective.take_metrics(model)
            share = figures["replaced_share"]
            base_rate = -(share * torch.tensor(share).log() + (1 - share) * torch.tensor(1 - share).log()).item()
            print(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
                  + f", base-rate loss {base_rate:.3f}, {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
