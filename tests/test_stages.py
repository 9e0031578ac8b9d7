"""The stages after validation, chained on a tiny corpus in a scratch folder."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from tasks.evaluate import classification_metrics, evaluate, expected_calibration_error
from tasks.finetune import finetune, load_classifier
from tasks.lib.common import clear_dead_runs, read_json
from tasks.lib.config import load_params, parse_params
from tasks.lib.tracking import stage_run
from tasks.pretrain import pack, pretrain
from tasks.register import register
from tasks.tokenize import train_tokenizer

from .conftest import build_data, tiny_params


def test_tokenizer_trains_on_train_split_only(workdir):
    cfg = parse_params(tiny_params()).tokenize
    for kind in ("bpe", "wordpiece"):
        tok = train_tokenizer(["the cat sat", "the dog ran"] * 20, cfg.model_copy(update={"kind": kind}))
        ids = tok.encode("the cat").ids
        assert ids[0] == tok.token_to_id("[CLS]") == 2 and ids[-1] == tok.token_to_id("[SEP]") == 3
        assert tok.token_to_id("[PAD]") == 0 and tok.token_to_id("[MASK]") == 4
        assert len(tok.encode("word " * 100).ids) == cfg.max_length
        assert tok.token_to_id("zebra") is None


def test_tokenize_writes_every_split(tokenized):
    import datasets

    stats = read_json("data/tokenized/stats.json")
    for split in ("train", "validation", "test"):
        ds = datasets.load_from_disk(f"data/tokenized/{split}")
        assert set(ds.column_names) == {"input_ids", "label"} and len(ds) > 0
        assert stats[f"{split}_tokens"] == sum(len(x) for x in ds["input_ids"])
    assert read_json("checkpoints/tokenizer/labels.json") == ["negative", "positive"]


def test_pack_drops_only_the_tail():
    blocks = pack([[2, 5, 3], [2, 6, 7, 3], [2, 8, 3]], block_size=4)
    assert blocks.tolist() == [[2, 5, 3, 2], [6, 7, 3, 2]]


def test_pretrain_finetune_evaluate_register_chain(tokenized):
    params = tokenized
    logged = []
    summary = pretrain(params, log=lambda m, s: logged.append((s, m)))
    assert summary["tokens_seen"] == 6 * 4 * 16
    assert {"train_mlm_loss", "tokens_per_s", "mfu", "lr"} <= set(logged[0][1])
    # The like-for-like loss at [MASK] positions and the linear probe, logged and kept with the model.
    assert {"val_mlm_loss", "val_masked_loss", "probe_accuracy", "probe_macro_f1"} <= set(logged[-1][1])
    assert 0 <= summary["probe_accuracy"] <= 1 and summary["probe_rows"] == len(
        pd.read_parquet("data/validated/train.parquet")
    )
    meta = read_json("checkpoints/pretrained/checkpoint.json")
    assert meta["step"] == 6 and "optimizer_param_groups" in meta

    result = finetune(params, params.ingest.labels)
    assert 0 <= result["best_val_macro_f1"] <= 1 and result["steps"] >= 1
    _, labels = load_classifier(Path("checkpoints/finetuned"))
    assert labels == ["negative", "positive"]

    metrics = evaluate(params)
    for name in ("test", "baseline"):
        assert 0 <= metrics[name]["accuracy"] <= 1 and set(metrics[name]["per_class"]) == set(labels)
    assert json.loads(open("reports/metrics.json").read())["test_rows"] == metrics["test_rows"]
    assert open("reports/evaluation/confusion_matrix.png", "rb").read(4) == b"\x89PNG"
    # The baseline's C comes from validation: scrambling the test split changes none of it.
    tuning = metrics["baseline"]["tuning"]
    assert tuning["chosen_c"] in params.evaluate.baseline_c and len(tuning["grid"]) == len(params.evaluate.baseline_c)
    test = pd.read_parquet("data/validated/test.parquet")
    test.assign(
        label=test["label"].sample(frac=1, random_state=0).to_numpy(), text=test["text"].str.upper()
    ).to_parquet("data/validated/test.parquet")
    assert evaluate(params)["baseline"]["tuning"] == tuning
    test.to_parquet("data/validated/test.parquet")
    metrics = evaluate(params)
    assert "C=" in open("reports/evaluation/index.html").read()

    with stage_run("register"):
        record = register(params)
    assert record["alias"] == "challenger" and record["version"] == "1"
    loaded = mlflow.pyfunc.load_model(record["model_uri"])
    out = loaded.predict(["what a great flight", "lost my bag again"])
    assert list(out.columns) == ["label", "proba_negative", "proba_positive"]
    assert set(out["label"]) <= set(labels)
    np.testing.assert_allclose(out[["proba_negative", "proba_positive"]].sum(axis=1), 1.0, rtol=1e-5)
    version = mlflow.MlflowClient().get_model_version_by_alias("text-classifier", "challenger")
    assert {"git_commit", "data_hash", "params", "test_macro_f1"} <= set(version.tags)
    assert version.tags["labelled_rows"] == str(read_json("checkpoints/finetuned/checkpoint.json")["labelled_rows"])

    # One inference path: the registered model scores the test split exactly as evaluate did.
    evaluated = pd.read_csv("reports/evaluation/predictions.csv", keep_default_na=False)
    served = loaded.predict(evaluated["text"].tolist())
    assert served["label"].tolist() == evaluated["predicted"].tolist()
    columns = [f"proba_{c}" for c in labels]
    np.testing.assert_allclose(served[columns].to_numpy(), evaluated[columns].to_numpy(), rtol=0, atol=1e-6)


def test_training_is_deterministic(tokenized):
    params = tokenized
    pretrain(params)
    first = open("checkpoints/pretrained/model.safetensors", "rb").read()
    pretrain(params)
    assert open("checkpoints/pretrained/model.safetensors", "rb").read() == first


def test_finetune_from_scratch_skips_the_pretrained_weights(tokenized, monkeypatch):
    params = parse_params(tiny_params(finetune={"init": "scratch", "max_steps": 8}))
    pretrain(tokenized)
    calls = []
    monkeypatch.setattr("tasks.finetune.load_weights", lambda *a: calls.append(a))
    finetune(params, params.ingest.labels)
    assert calls == []


def test_calibration_and_metrics():
    y = np.array([0, 1, 1, 0])
    perfect = np.eye(2)[y].astype(float)
    assert expected_calibration_error(perfect, y, 10) == 0.0
    m = classification_metrics(y, perfect, ["a", "b"], 10)
    assert m["accuracy"] == m["macro_f1"] == 1.0
    assert expected_calibration_error(np.full((4, 2), 0.5) + [[0.4, -0.4]] * 4, y, 10) == pytest.approx(0.4)


def test_urls_collapse_to_one_word(workdir):
    cfg = parse_params(tiny_params()).tokenize
    tok = train_tokenizer(["see http now", "the cat"] * 20, cfg)
    a = tok.encode("see https://t.co/y4YOxaqI now").ids
    assert a == tok.encode("see http now").ids
    keep = train_tokenizer(["see http now"] * 20, cfg.model_copy(update={"collapse_urls": False}))
    assert len(keep.encode("see https://t.co/y4YOxaqI now").ids) > len(a)


def _progress(meta: Path, key: str) -> int:
    """Where a running stage's resume state stands; -1 while there is none, including the
    instant a checkpoint swaps its folder in (the old one moved aside, the new not yet in)."""
    try:
        return read_json(meta)[key]
    except FileNotFoundError:
        return -1


def _kill_and_restart(stage: str, progress_key: str, at_least: int) -> int:
    """Start `python -m tasks.<stage>`, SIGKILL it once its resume state records
    `progress_key` >= `at_least`, run it again to the end; returns where it was killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", f"tasks.{stage}"], env=env, stderr=subprocess.DEVNULL)
    meta = Path(f"checkpoints/.{stage}-resume/checkpoint.json")
    deadline = time.time() + 120
    while time.time() < deadline and _progress(meta, progress_key) < at_least:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    clear_dead_runs(meta.parent)  # a kill between the two renames of a save: what the next run does first
    killed_at = read_json(meta)[progress_key]
    assert not Path("checkpoints", {"pretrain": "pretrained", "finetune": "finetuned"}[stage]).exists()
    subprocess.run([sys.executable, "-m", f"tasks.{stage}"], env=env, check=True, capture_output=True)
    assert not meta.parent.exists()
    return killed_at


@pytest.mark.parametrize("objective,masking", [("mlm", {}), ("electra", {"mask_prob": 0.4, "mask_prob_final": 0.15})])
def test_killed_pretraining_resumes_to_the_same_weights_and_run(tokenized, objective, masking):
    """SIGKILL a real `python -m tasks.pretrain` mid-run, start it again, and compare with
    an uninterrupted run of the same params (ELECTRA with a decaying mask rate, too)."""
    import yaml

    raw = yaml.safe_load(open("params.yaml"))
    raw["pretrain"].update(max_steps=400, checkpoint_every=20, log_every=20, warmup_steps=10, objective=objective,
                           **masking)  # fmt: skip
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    killed_at = _kill_and_restart("pretrain", "step", 60)
    assert 60 <= killed_at < 400
    resumed = Path("checkpoints/pretrained/model.safetensors").read_bytes()

    pretrain(load_params(), out_dir=Path("uninterrupted"), resume_dir=Path("unused-resume"))
    assert Path("uninterrupted/model.safetensors").read_bytes() == resumed

    run_id = read_json("checkpoints/pretrained/checkpoint.json")["mlflow_run_id"]
    client = mlflow.MlflowClient()
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    steps = [m.step for m in client.get_metric_history(run_id, f"train_{objective}_loss")]
    assert steps[0] == 20 and steps[-1] == 400 and killed_at in steps


@pytest.mark.parametrize(
    "arch,objective",
    [("transformer", "causal"), ("transformer", "electra"), ("rnn", "causal"), ("lstm", "causal"), ("gru", "causal")],
)
def test_every_architecture_pretrains_finetunes_and_serves_by_params(workdir, arch, objective):
    """A params change is all it takes: the same stages train, evaluate and register each network."""
    import yaml

    ulmfit = {"lr_decay": 2.6, "gradual_unfreeze": True, "max_steps": 24, "patience": 3}
    raw = tiny_params(model={"arch": arch, "d_hidden": 48}, pretrain={"objective": objective}, finetune=ulmfit)
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params()
    build_data(params)
    logged = []
    summary = pretrain(params, log=lambda m, s: logged.append(m))
    assert summary["val_loss"] > 0 and f"train_{objective}_loss" in logged[0] and logged[0]["mfu"] > 0
    if objective == "electra":  # both losses and how well replacements are found, in training and held out
        assert {"train_gen_loss", "train_disc_loss", "train_replaced_token_accuracy"} <= set(logged[0])
        assert 0 < summary["val_replaced_token_accuracy"] <= 1 and summary["val_gen_loss"] > 0
    meta = read_json("checkpoints/pretrained/checkpoint.json")
    assert meta["model_config"]["arch"] == arch and meta["objective"] == objective
    finetune(params, params.ingest.labels)
    assert len(read_json("checkpoints/finetuned/checkpoint.json")["history"]) == 3
    evaluate(params)
    with stage_run("register"):
        record = register(params)
    out = mlflow.pyfunc.load_model(record["model_uri"]).predict(["what a great flight", "lost my bag again"])
    np.testing.assert_allclose(out[["proba_negative", "proba_positive"]].sum(axis=1), 1.0, rtol=1e-5)


def test_recurrent_models_refuse_the_masked_objective(workdir):
    from tasks.lib.config import ParamsError

    with pytest.raises(ParamsError, match=r"pretrain.objective to one of \[.causal.\]"):
        parse_params(tiny_params(model={"arch": "lstm"}))


def test_killed_finetuning_resumes_to_the_same_weights_and_run(tokenized):
    """SIGKILL a real `python -m tasks.finetune` after some validation passes, start it again, and compare
    with an uninterrupted run: same weights, one MLflow run whose curve spans the kill."""
    import yaml

    pretrain(tokenized)
    raw = yaml.safe_load(open("params.yaml"))
    raw["finetune"].update(batch_size=2, max_steps=60 * 32, eval_every=32, patience=60)
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    killed_at = _kill_and_restart("finetune", "step", 3 * 32)
    assert 3 * 32 <= killed_at < 60 * 32
    resumed = Path("checkpoints/finetuned/model.safetensors").read_bytes()

    params = load_params()
    finetune(params, params.ingest.labels, out_dir=Path("uninterrupted"), resume_dir=Path("unused-resume"))
    assert Path("uninterrupted/model.safetensors").read_bytes() == resumed

    run_id = read_json("checkpoints/finetuned/checkpoint.json")["mlflow_run_id"]
    client = mlflow.MlflowClient()
    steps = [m.step for m in client.get_metric_history(run_id, "val_macro_f1")]
    assert steps == list(range(32, 60 * 32 + 1, 32))
