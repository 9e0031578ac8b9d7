"""End to end: the base-model flow registers a language model (real Prefect, MLflow and DVC
in a temporary git clone), and the classifier pipeline adapts it by `pretrain.init_from`."""

from __future__ import annotations

import json
import sys

import mlflow
import pytest
import yaml

from .conftest import make_project, run_ok, tiny_corpus_params

pytestmark = pytest.mark.slow


def test_a_base_model_is_registered_then_adapted_and_named_in_the_classifier_lineage(tmp_path):
    env = make_project(tmp_path, tiny_corpus_params(base_model={"name": "tiny-lm"}))
    run = run_ok([sys.executable, "-m", "flows.base_model"], tmp_path, env)
    assert "base model models:/tiny-lm@base = version 1" in run.stdout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    lm = client.get_model_version_by_alias("tiny-lm", "base")
    assert lm.tags["model_kind"] == "language-model" and lm.tags["corpus_hash"] not in ("", "unknown")
    assert int(lm.tags["tokens_seen"]) > 0 and float(lm.tags["val_loss"]) > 0
    parent = client.get_run(json.loads((tmp_path / "reports/registered_lm.json").read_text())["run_id"])
    flow_run = client.get_run(parent.data.tags["mlflow.parentRunId"])
    assert flow_run.data.tags["registered_lm"] == "tiny-lm/1"
    assert "corpus/index.html" in {a.path for a in client.list_artifacts(flow_run.info.run_id, "corpus")}
    assert not (tmp_path / "checkpoints/finetuned").exists()  # no classifier was trained

    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["pretrain"]["init_from"] = "models:/tiny-lm@base"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = run_ok([sys.executable, "-m", "flows.pipeline"], tmp_path, env)
    out = run.stdout + run.stderr
    assert "reusing the tokenizer of models:/tiny-lm@base" in out and "starting from models:/tiny-lm@base" in out
    for stage in ("ingest", "validate", "corpus"):
        assert f"{stage}: up to date" in out
    classifier = client.get_model_version_by_alias("text-classifier", "challenger")
    assert classifier.tags["base_model"].startswith("models:/tiny-lm@base (version 1) sha256 ")
