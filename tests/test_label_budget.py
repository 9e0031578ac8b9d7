"""The label budget (`finetune.max_labels`) and the step-budget fine-tuning that keeps the best pass."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tasks.lib.common import StageError, read_json
from tasks.lib.config import ParamsError, load_params, parse_params
from tasks.lib.label_budget import budget_rows

from .conftest import build_data, tiny_params

LABELS = ["a"] * 60 + ["b"] * 30 + ["c"] * 10


def test_the_sample_is_stratified_deterministic_and_covers_every_class():
    rows = budget_rows(LABELS, 10, ["a", "b", "c"], seed=7)
    picked = [LABELS[i] for i in rows]
    assert len(rows) == len(set(rows)) == 10 and (picked.count("a"), picked.count("b"), picked.count("c")) == (6, 3, 1)
    assert np.array_equal(rows, budget_rows(LABELS, 10, ["a", "b", "c"], seed=7))
    assert not np.array_equal(rows, budget_rows(LABELS, 10, ["a", "b", "c"], seed=8))
    assert np.array_equal(budget_rows(LABELS, None, ["a", "b", "c"], seed=7), np.arange(100))
    # Largest remainders: 7 rows split 4.2 / 2.1 / 0.7 -> 4 / 2 / 1.
    assert sorted(LABELS[i] for i in budget_rows(LABELS, 7, ["a", "b", "c"], seed=0)) == list("aaaabbc")


def test_bad_budgets_are_clear_errors():
    with pytest.raises(StageError, match=r"max_labels \(101\) is larger than the training split \(100 rows\)"):
        budget_rows(LABELS, 101, ["a", "b", "c"], seed=0)
    with pytest.raises(StageError, match="leaves class 'c' with no example"):
        budget_rows(LABELS, 3, ["a", "b", "c"], seed=0)  # 1.8 / 0.9 / 0.3 -> 2 / 1 / 0
    with pytest.raises(ParamsError, match=r"max_labels \(1\) is smaller than the number of classes \(2\)"):
        parse_params(tiny_params(finetune={"max_labels": 1}))


def _tiny_run(tmp_path, monkeypatch, **finetune):
    monkeypatch.chdir(tmp_path)
    from .conftest import tiny_frame

    tiny_frame().to_csv("tiny.csv", index=False)
    Path("params.yaml").write_text(yaml.safe_dump(tiny_params(finetune=finetune)))
    params = load_params()
    build_data(params)
    return params


def test_the_label_budget_reaches_fine_tuning_and_the_baseline(tmp_path, monkeypatch):
    from tasks.evaluate import evaluate
    from tasks.finetune import finetune
    from tasks.pretrain import pretrain

    params = _tiny_run(tmp_path, monkeypatch, max_labels=10, max_steps=8, eval_every=4)
    pretrain(params)
    summary = finetune(params, params.ingest.labels)
    assert summary["labelled_rows"] == 10
    assert evaluate(params)["labelled_rows"] == 10


def test_early_stopping_keeps_the_best_pass(tmp_path, monkeypatch):
    """Validation scores are scripted: the weights kept are the ones scored best, and training
    stops `patience` passes after it."""
    from tasks import finetune as ft
    from tasks.pretrain import pretrain

    params = _tiny_run(tmp_path, monkeypatch, max_steps=80, eval_every=4, patience=3)
    pretrain(params)
    scores, seen = iter([0.5, 0.9, 0.6, 0.7, 0.8, 0.99]), []

    def scripted(model, val_ids, val_y, run):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"val_macro_f1": next(scores), "val_accuracy": 0.0, "val_loss": 1.0}

    monkeypatch.setattr(ft, "_validate", scripted)
    summary = ft.finetune(params, params.ingest.labels)
    assert summary["best_step"] == 8 and summary["steps"] == 20 and len(seen) == 5  # stopped before 0.99
    kept = load_file("checkpoints/finetuned/model.safetensors")
    assert all(torch.equal(kept[k], seen[1][k]) for k in kept)
    assert [h["step"] for h in read_json("checkpoints/finetuned/checkpoint.json")["history"]] == [4, 8, 12, 16, 20]
