"""Deployments as code: the scheduled pipeline, its training deployment, promotion, and the
base-language-model flow.

    prefect server start --host 127.0.0.1 --port 4200            # or a team server / Prefect Cloud
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    prefect work-pool create cpu --type process
    prefect work-pool create gpu --type process
    python -m flows.deploy --gpu-workspace /srv/gpu-box/text-classifier --cron "0 3 * * *"
    prefect worker start --pool cpu                               # on the data machine
    prefect worker start --pool gpu                               # on the GPU machine
    prefect deployment run text-classifier-pipeline/scheduled     # or wait for the schedule
    prefect deployment run base-language-model/on-demand -p profile=base_tweets

| deployment | work pool | runs |
| --- | --- | --- |
| `text-classifier-pipeline/scheduled` | `cpu` | ingest, validate, tokenize, evaluate, register; calls `train/gpu` |
| `train/gpu` | `gpu` | pretrain, finetune (in the GPU machine's clone of the repo) |
| `promote/on-demand` | `cpu` | the promotion flow |
| `base-language-model/on-demand` | `cpu` | ingest, validate, corpus, tokenize, register_lm; calls `train/gpu` for pretrain |

Each deployment's code and DVC workspace is a folder on the machine its pool's worker runs
on (`--cpu-workspace`, `--gpu-workspace`: clones of this repository at the same commit,
sharing a DVC remote). Which GPU the training uses is configuration: `--gpu-env
CUDA_VISIBLE_DEVICES=1` becomes a job variable of `train/gpu`, not code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PIPELINE = "text-classifier-pipeline/scheduled"
TRAIN = "train/gpu"
PROMOTE = "promote/on-demand"
BASE = "base-language-model/on-demand"
TAGS = ["text-classifier"]


def _deploy(name: str, workspace: Path, entrypoint: str, pool: str, tag: str, env: dict | None = None,
            parameters: dict | None = None, cron: str | None = None):  # fmt: skip
    """One deployment of a flow from `workspace` (a clone of this repository on the machine
    the pool's worker runs on). One run at a time: runs of a deployment share a workspace."""
    from prefect import flow

    return flow.from_source(source=str(workspace), entrypoint=entrypoint).deploy(
        name=name.split("/")[1],
        work_pool_name=pool,
        job_variables={"env": {"PYTHONPATH": str(workspace), **(env or {})}},
        parameters={"root": str(workspace), **(parameters or {})},
        cron=cron,
        concurrency_limit=1,
        tags=[*TAGS, tag],
        print_next_steps=False,
    )


def deploy(
    cpu_workspace: Path,
    gpu_workspace: Path,
    cron: str | None,
    profile: str | None = None,
    gpu_env: dict[str, str] | None = None,
    cpu_pool: str = "cpu",
    gpu_pool: str = "gpu",
) -> dict[str, str]:
    """Register (or update) the four deployments; returns their names and ids."""
    ids = {
        TRAIN: _deploy(TRAIN, gpu_workspace, "flows/pipeline.py:train", gpu_pool, "training", gpu_env),
        PIPELINE: _deploy(PIPELINE, cpu_workspace, "flows/pipeline.py:pipeline", cpu_pool, "pipeline", None,
                          {"refresh_source": True, "profile": profile, "training_deployment": TRAIN}, cron=cron),
        PROMOTE: _deploy(PROMOTE, cpu_workspace, "flows/promote.py:promote", cpu_pool, "promotion"),
        BASE: _deploy(BASE, cpu_workspace, "flows/base_model.py:base_model", cpu_pool, "base-model", None,
                      {"training_deployment": TRAIN}),  # run with -p profile=base_tweets
    }  # fmt: skip
    return {name: str(i) for name, i in ids.items()}


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --gpu-env takes KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Register the pipeline, training and promotion deployments.")
    ap.add_argument("--cpu-workspace", type=Path, default=Path("."), help="repo clone the cpu pool's worker uses")
    ap.add_argument("--gpu-workspace", type=Path, default=None, help="repo clone on the GPU machine (default: same)")
    ap.add_argument("--cron", default="0 3 * * *", help='pipeline schedule (default "0 3 * * *"; "" for none)')
    ap.add_argument("--profile", default=None, help="params profile the scheduled runs use (profiles/<name>.yaml)")
    ap.add_argument(
        "--gpu-env", action="append", default=[], help="KEY=VALUE for training runs, e.g. CUDA_VISIBLE_DEVICES=0"
    )
    ap.add_argument("--cpu-pool", default="cpu")
    ap.add_argument("--gpu-pool", default="gpu")
    args = ap.parse_args(argv)
    cpu = args.cpu_workspace.resolve()
    gpu = (args.gpu_workspace or cpu).resolve()
    ids = deploy(cpu, gpu, args.cron or None, args.profile, _env_pairs(args.gpu_env), args.cpu_pool, args.gpu_pool)
    for name, deployment_id in ids.items():
        print(f"deployed {name} ({deployment_id})")
    return 0


if __name__ == "__main__":
    from flows.runtime import offline_defaults

    with offline_defaults():
        raise SystemExit(main())
