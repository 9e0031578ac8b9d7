"""The training engine: micro-batches, gradient accumulation, DDP on gloo, ULMFiT options, threads."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tasks.finetune import finetune, param_groups
from tasks.lib.common import read_json
from tasks.lib.config import load_params
from tasks.lib.engine import Engine, choose_threads, micro_slices
from tasks.pretrain import pretrain

from .conftest import ROOT, build_data, tiny_params

CPU = torch.device("cpu")


def _engine(rank=0, world=1) -> Engine:
    return Engine(device=CPU, bf16=False, threads=1, rank=rank, world=world)


def _prepare(**overrides):
    """Tiny params (dropout off, so runs are comparable across process layouts) and tokenized data."""
    deterministic = {"pretrain": {"dropout": 0.0}, "finetune": {"dropout": 0.0}}
    for section, values in overrides.items():
        deterministic.setdefault(section, {}).update(values)
    Path("params.yaml").write_text(yaml.safe_dump(tiny_params(**deterministic)))
    params = load_params()
    build_data(params)
    return params


def _weights(path) -> dict:
    return load_file(str(Path(path) / "model.safetensors"))


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < atol, f"largest weight difference {worst:.2e}"


def test_micro_slices_split_a_global_batch_across_ranks_and_steps():
    parts = [s for r in range(2) for s in micro_slices(10, _engine(r, 2), accum=2)]
    assert [(s.start, s.stop) for s in parts] == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert micro_slices(7, _engine(), accum=1) == [slice(0, 7)]


def test_thread_choice_is_explicit_or_measured():
    assert choose_threads(3) == 3
    assert choose_threads("auto", candidates=(1,)) == 1
    assert choose_threads("auto") in {1, len(os.sched_getaffinity(0))}


@pytest.mark.parametrize("objective", ["mlm", "electra"])
def test_gradient_accumulation_matches_the_full_batch(workdir, objective):
    params = _prepare(pretrain={"batch_size": 8, "max_steps": 8, "objective": objective})
    pretrain(params, out_dir=Path("full"))
    accum = params.model_copy(update={"pretrain": params.pretrain.model_copy(update={"grad_accum_steps": 4})})
    pretrain(accum, out_dir=Path("accumulated"))
    _assert_close(_weights("full"), _weights("accumulated"), atol=1e-5)


def test_two_process_ddp_on_gloo_matches_one_process(workdir):
    """`nproc_per_node: 2` re-launches the real stage under torchrun (gloo on CPU); pretraining
    and fine-tuning end where one process with the same global batch ends."""
    params = _prepare(pretrain={"batch_size": 8, "max_steps": 8}, finetune={"max_steps": 16})
    pretrain(params, out_dir=Path("single-pretrained"))
    finetune(params, params.ingest.labels, pretrained_dir=Path("single-pretrained"), out_dir=Path("single-finetuned"))

    raw = yaml.safe_load(open("params.yaml"))
    raw["pretrain"]["nproc_per_node"] = raw["finetune"]["nproc_per_node"] = 2
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for stage in ("pretrain", "finetune"):
        done = subprocess.run([sys.executable, "-m", f"tasks.{stage}"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    assert read_json("checkpoints/pretrained/checkpoint.json")["engine"]["world_size"] == 2
    _assert_close(_weights("single-pretrained"), _weights("checkpoints/pretrained"), atol=1e-5)
    _assert_close(_weights("single-finetuned"), _weights("checkpoints/finetuned"), atol=1e-4)


def _sgd_steps(rank: int, world: int, accum: int, init_file: str, out: str) -> None:
    """Two SGD steps (no clipping: SGD, unlike Adam, shows a wrong gradient scale) of each stage's
    `_train_step` on fixed batches; rank 0 saves the weights and the losses it reports."""
    from dataclasses import replace
    from types import SimpleNamespace

    import torch.distributed as dist
    from safetensors.torch import save_file

    from models.build import build_classifier
    from tasks import finetune as ft
    from tasks import pretrain as pt
    from tasks.lib.engine import wrap_ddp
    from tasks.lib.training import optimizer_step

    from .test_models import TOKENS, create

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    engine = Engine(device=CPU, bf16=False, threads=1, rank=rank, world=world)
    knobs = SimpleNamespace(grad_accum_steps=accum, grad_clip=1e9)
    config = {"vocab_size": 40, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "dropout": 0.0}
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    lms = [create(name, replace(TOKENS, vocab_size=40), 0.3) for name in ("mlm", "electra")]
    models = [(lm, lm.language_model(config)) for lm in lms] + [(None, build_classifier(config, 2, head_dropout=0.0))]
    losses = []
    for objective, model in models:
        ddp = wrap_ddp(model, engine)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(2):
            if objective is not None:
                rows = torch.randint(5, 40, (8, 12), generator=gen)
                parts = pt.micro_batches(objective.batch(rows, gen), objective, engine, knobs.grad_accum_steps)
                losses.append(optimizer_step(ddp, opt, parts, pt.lm_loss, knobs.grad_clip, engine))
            else:
                seqs = [
                    torch.randint(5, 40, (int(n),), generator=gen).tolist()
                    for n in torch.randint(3, 12, (8,), generator=gen)
                ]
                labels = torch.randint(0, 2, (8,), generator=gen)
                parts, _ = ft.micro_batches(list(range(8)), seqs, labels, engine, knobs.grad_accum_steps, 0)
                losses.append(optimizer_step(ddp, opt, parts, ft.classification_loss, knobs.grad_clip, engine))
    if rank == 0:
        weights = {f"{i}.{k}": v for i, (_, model) in enumerate(models) for k, v in model.state_dict().items()}
        save_file({**weights, "losses": torch.tensor(losses, dtype=torch.float64)}, out)
    if world > 1:
        dist.destroy_process_group()


def test_ddp_and_accumulation_give_the_gradient_of_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    _sgd_steps(0, 1, 1, "", str(tmp_path / "single.safetensors"))
    mp.spawn(_sgd_steps, args=(2, 2, str(tmp_path / "init"), str(tmp_path / "ddp.safetensors")), nprocs=2)
    single, ddp = load_file(str(tmp_path / "single.safetensors")), load_file(str(tmp_path / "ddp.safetensors"))
    torch.testing.assert_close(ddp.pop("losses"), single.pop("losses"), atol=1e-5, rtol=0)
    _assert_close(single, ddp, atol=1e-5)


def test_gradual_unfreezing_trains_only_the_head_in_the_first_interval(workdir):
    params = _prepare(finetune={"gradual_unfreeze": True, "max_steps": 8})
    pretrain(params)
    finetune(params, params.ingest.labels)
    before, after = _weights("checkpoints/pretrained"), _weights("checkpoints/finetuned")
    body = [k for k in after if k.startswith("body.")]
    assert body and all(torch.equal(after[k], before[k]) for k in body)
    assert not torch.equal(after["head.weight"], torch.zeros_like(after["head.weight"]))


def test_discriminative_learning_rates_shrink_toward_the_embeddings():
    from models.build import build_classifier

    model = build_classifier({"vocab_size": 40, "arch": "lstm", "d_model": 8, "d_hidden": 8, "n_layers": 2}, 2)
    knobs = load_params(ROOT / "params.yaml").finetune.model_copy(update={"lr": 1.0, "lr_decay": 2.0})
    groups = param_groups(model, knobs)
    by_layer = {g["layer_group"]: g["lr"] for g in groups}
    assert by_layer == {0: 0.125, 1: 0.25, 2: 0.5, 3: 1.0}
    assert all(g["weight_decay"] == 0.0 for g in groups if any(p.dim() < 2 for p in g["params"]))


def test_bf16_autocast_runs_when_asked_for(workdir):
    """bf16 is the default only on CUDA; asked for on CPU, the same code path runs (slowly)."""
    params = _prepare(pretrain={"precision": "bf16", "max_steps": 2}, finetune={"precision": "bf16", "max_steps": 8})
    summary = pretrain(params)
    assert read_json("checkpoints/pretrained/checkpoint.json")["engine"]["precision"] == "bf16"
    assert torch.isfinite(torch.tensor(summary["val_loss"]))
    finetune(params, params.ingest.labels)
    assert all(t.dtype == torch.float32 for t in _weights("checkpoints/finetuned").values())  # fp32 master weights


@pytest.mark.slow
def test_compiled_body_trains_to_the_eager_weights(workdir):
    params = _prepare(pretrain={"max_steps": 3})
    pretrain(params, out_dir=Path("eager"))
    compiled = params.model_copy(update={"pretrain": params.pretrain.model_copy(update={"compile": True})})
    pretrain(compiled, out_dir=Path("compiled"))
    _assert_close(_weights("eager"), _weights("compiled"), atol=1e-4)
